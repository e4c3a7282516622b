//! Recipes as tests: the shell and config blocks of a Markdown page (the README, a page
//! of docs/recipes/), run in order on the namespaces a test built, exactly as written.
//! A page cannot drift from what is tested, because the page is what is run.
//!
//! A block takes part when its info string names where it runs:
//!
//! ````text
//! ```sh host=peer-a                      run on peer-a with `sh -e`
//! ```sh host=peer-b expect="peer-a"      ... and its output must contain peer-a
//! ```toml host=peer-a file=rewrite.toml  written to rewrite.toml in peer-a's directory
//! ```sh host=a1,a2,a3                    run on a1, then a2, then a3
//! ````
//!
//! Each host has a working directory of its own (where its files are written and its
//! commands run), its own pin directory (`REWRITE_PIN_DIR`), and the `rewrite` binary
//! under test first on its PATH. Output goes to a file rather than a pipe, so that a
//! block may leave a process running in the background (`... &`); every process left
//! in a host's namespace is killed when the run ends.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{
    cli::rewrite_binary,
    netns::{Netns, PinDir},
};

/// One block of a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The line of the opening fence, for messages.
    pub line: usize,
    pub language: String,
    /// Where it runs (or is written), in order.
    pub hosts: Vec<String>,
    /// For a file block: the file's name in the host's directory.
    pub file: Option<String>,
    /// Text the block's output must contain.
    pub expect: Option<String>,
    pub text: String,
}

/// The text of each block of `markdown` whose info string has `attribute=value`, in
/// order (for blocks that run elsewhere than in a namespace, like the README's install
/// line, which the install test runs in a Debian root).
pub fn texts_where(markdown: &str, attribute: &str, value: &str) -> Vec<String> {
    fenced(markdown)
        .into_iter()
        .filter(|(_, _, attributes, _)| attributes.get(attribute).is_some_and(|found| found == value))
        .map(|(_, _, _, text)| text)
        .collect()
}

/// Every fenced block: its line, language, attributes and text.
fn fenced(markdown: &str) -> Vec<(usize, String, BTreeMap<String, String>, String)> {
    let mut found = Vec::new();
    let mut lines = markdown.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else { continue };
        let mut body = Vec::new();
        for (_, inner) in lines.by_ref() {
            if inner.trim_start().starts_with("```") {
                break;
            }
            body.push(inner);
        }
        let (language, attributes) = info.split_once(' ').unwrap_or((info, ""));
        found.push((index + 1, language.to_owned(), parse_attributes(attributes), body.join("\n") + "\n"));
    }
    found
}

/// The blocks of `markdown` that name a host, in order.
pub fn blocks(markdown: &str) -> Vec<Block> {
    fenced(markdown)
        .into_iter()
        .filter_map(|(line, language, attributes, text)| {
            let host = attributes.get("host")?;
            Some(Block {
                line,
                language,
                hosts: host.split(',').map(str::to_owned).collect(),
                file: attributes.get("file").cloned(),
                expect: attributes.get("expect").cloned(),
                text,
            })
        })
        .collect()
}

/// `key=value key="a value"` pairs.
fn parse_attributes(text: &str) -> BTreeMap<String, String> {
    let mut attributes = BTreeMap::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
        } else {
            after.split_once(' ').unwrap_or((after, ""))
        };
        attributes.insert(key.trim().to_owned(), value.to_owned());
        rest = remaining.trim();
    }
    attributes
}

/// The hosts a page runs on, each a namespace the test built.
#[derive(Debug)]
pub struct Recipe<'a> {
    page: PathBuf,
    hosts: BTreeMap<String, Host<'a>>,
    scratch: PathBuf,
}

#[derive(Debug)]
struct Host<'a> {
    netns: &'a Netns,
    dir: PathBuf,
    pins: PinDir,
}

impl<'a> Recipe<'a> {
    /// `page` relative to the repository's root; `hosts` names each host's namespace.
    pub fn new(page: &str, hosts: &[(&str, &'a Netns)]) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
        let tag = page.replace(['/', '.'], "-");
        let scratch = std::env::temp_dir().join(format!("rewrite-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        let hosts = hosts
            .iter()
            .map(|(name, netns)| {
                let dir = scratch.join(name);
                std::fs::create_dir_all(&dir).unwrap_or_else(|error| panic!("create {}: {error}", dir.display()));
                (name.to_string(), Host { netns, dir, pins: PinDir::new(&format!("recipe-{name}")) })
            })
            .collect();
        Self { page: root.join(page), hosts, scratch }
    }

    /// Runs every block of the page in order (a block for several hosts on each in
    /// turn), panicking at the first that fails (or whose output lacks its `expect`),
    /// with the block and its output. Returns each run's output.
    pub fn run(&self) -> Vec<String> {
        let markdown =
            std::fs::read_to_string(&self.page).unwrap_or_else(|error| panic!("read {}: {error}", self.page.display()));
        let blocks = blocks(&markdown);
        assert!(!blocks.is_empty(), "{} has no block that names a host", self.page.display());
        let mut outputs = Vec::new();
        for block in &blocks {
            for host in &block.hosts {
                outputs.push(self.run_block(block, host));
            }
        }
        outputs
    }

    fn run_block(&self, block: &Block, name: &str) -> String {
        let at = format!("{}:{}", self.page.display(), block.line);
        let host = self.hosts.get(name).unwrap_or_else(|| panic!("{at}: no host {name:?} in this test"));
        if let Some(file) = &block.file {
            let path = host.dir.join(file);
            std::fs::write(&path, &block.text)
                .unwrap_or_else(|error| panic!("{at}: write {}: {error}", path.display()));
            return String::new();
        }
        assert_eq!(block.language, "sh", "{at}: a block with a host and no file must be sh");
        let log = host.dir.join(format!("block-{}.log", block.line));
        let file = std::fs::File::create(&log).expect("create the block's log");
        let binary_dir = rewrite_binary().parent().expect("the binary's directory").to_path_buf();
        let path = format!("{}:{}", binary_dir.display(), std::env::var("PATH").unwrap_or_default());
        let status = host
            .netns
            .command("timeout")
            .args(["120", "sh", "-ec", &block.text])
            .current_dir(&host.dir)
            .env("PATH", path)
            .env("REWRITE_PIN_DIR", host.pins.path())
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().expect("clone the log's handle"))
            .stderr(file)
            .status()
            .unwrap_or_else(|error| panic!("{at}: run the block: {error}"));
        // A background process may still write; what the block itself printed is there.
        std::thread::sleep(Duration::from_millis(50));
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(status.success(), "{at}: the block on {} failed ({status}):\n{}\noutput:\n{output}", name, block.text);
        if let Some(expected) = &block.expect {
            assert!(output.contains(expected.as_str()), "{at}: the output must contain {expected:?}:\n{output}");
        }
        output
    }

    /// The directory a host's files are written to and its commands run in.
    pub fn dir(&self, host: &str) -> &Path {
        &self.hosts[host].dir
    }
}

impl Drop for Recipe<'_> {
    fn drop(&mut self) {
        for host in self.hosts.values() {
            let pids = Command::new("ip").args(["netns", "pids", host.netns.name()]).output();
            if let Ok(pids) = pids {
                for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
        }
        // Processes gone, the pins (PinDir) and the scratch directory can go.
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_with_a_host_are_found_with_their_attributes() {
        let page = "text\n```sh\nnot mine\n```\n```sh host=a expect=\"two words\"\necho two words\n```\n\
                    ```toml host=b file=x.toml\nk = 1\n```\n";
        let found = blocks(page);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].hosts, ["a"]);
        assert_eq!(found[0].expect.as_deref(), Some("two words"));
        assert_eq!(found[0].text, "echo two words\n");
        assert_eq!(found[0].line, 5);
        assert_eq!(found[1].file.as_deref(), Some("x.toml"));
        assert_eq!(found[1].language, "toml");
        assert_eq!(blocks("```sh host=a1,a2\ntrue\n```\n")[0].hosts, ["a1", "a2"]);
        assert_eq!(texts_where("```sh chroot=x\napt install\n```\n", "chroot", "x"), ["apt install\n"]);
    }
}
