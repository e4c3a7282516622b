//! `cargo xtask dist`: the release artefacts, in `target/dist/`, for nodes that have no
//! toolchain:
//!
//! * `rewrite`: the binary, statically linked (glibc's static libraries; the eBPF
//!   objects are inside it), so it runs on any x86_64 Linux it supports, glibc 2.31
//!   (Debian 11) included;
//! * `rewrite_VERSION_amd64.deb`: the binary in /usr/bin, the agent's systemd unit
//!   (installed, not enabled: installing starts nothing), an example
//!   /etc/rewrite/rewrite.toml that names nothing (a conffile), shell completions,
//!   man pages, the documentation and the licences;
//! * `rewrite-VERSION-x86_64-linux.tar.gz`: the same files, for other distributions;
//! * `SHA256SUMS`.
//!
//! The .deb is built with `dpkg-deb` from a staged tree (what cargo-deb would do, without
//! a second tool to install); `tests/tests/install.rs` installs it into a fresh Debian 11
//! root and runs it there.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};

use crate::{cargo, output, run};

/// The target the static binary is built for (and the only one the toolchain has).
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// What `dist` made.
#[derive(Debug)]
pub struct Artefacts {
    pub deb: PathBuf,
}

pub fn dist(root: &Path) -> anyhow::Result<Artefacts> {
    let version = workspace_version(root)?;
    let built = build_static(root)?;
    let out = root.join("target").join("dist");
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("cannot empty {}", out.display()))?;
    }
    // The installed tree, as the .deb lays it out; the tarball carries the same files.
    let tree = out.join("tree");
    let binary = out.join("rewrite");
    copy(&built, &binary)?;
    // Symbols are of no use on a node (the eBPF objects inside keep their BTF).
    run(Command::new("strip").arg("--strip-all").arg(&binary), "strip")?;
    stage(root, &binary, &tree)?;

    let deb = out.join(format!("rewrite_{version}_amd64.deb"));
    write_control(&tree, &version)?;
    run(
        Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&tree).arg(&deb),
        "dpkg-deb --build",
    )?;
    fs::remove_dir_all(tree.join("DEBIAN")).context("cannot remove the staged DEBIAN directory")?;

    let tarball = out.join(format!("rewrite-{version}-x86_64-linux.tar.gz"));
    let top = format!("rewrite-{version}");
    run(
        Command::new("tar")
            .args(["--owner=0", "--group=0", "--sort=name", "-czf"])
            .arg(&tarball)
            .arg("-C")
            .arg(&tree)
            .args(["--transform", &format!("s,^\\.,{top},"), "."]),
        "tar",
    )?;
    fs::remove_dir_all(&tree).context("cannot remove the staged tree")?;

    let names = [&binary, &deb, &tarball].map(|path| path.file_name().expect("a file name").to_owned());
    let sums = output(Command::new("sha256sum").current_dir(&out).args(names))?;
    fs::write(out.join("SHA256SUMS"), &sums).context("cannot write SHA256SUMS")?;
    for path in [&binary, &deb, &tarball] {
        let size = fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?.len();
        eprintln!("dist: {} ({:.1} MiB)", path.display(), size as f64 / (1024.0 * 1024.0));
    }
    eprintln!("dist: {}", out.join("SHA256SUMS").display());
    Ok(Artefacts { deb })
}

/// A pristine Debian 11 (bullseye, glibc 2.31) root made by debootstrap, cached in
/// target/dist-test/ (about 35 s and 215 MB, once), for the install test to copy.
pub fn debian_root(root: &Path) -> anyhow::Result<PathBuf> {
    let cache = root.join("target").join("dist-test");
    let debian = cache.join("bullseye-root");
    let complete = cache.join("bullseye-root.complete");
    if complete.is_file() && debian.join("usr/bin/dpkg").is_file() {
        return Ok(debian);
    }
    if debian.exists() {
        fs::remove_dir_all(&debian).with_context(|| format!("cannot remove {}", debian.display()))?;
    }
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    eprintln!("dist: making a Debian 11 root for the install test (once)");
    run(
        Command::new("debootstrap")
            .args(["--variant=minbase", "bullseye"])
            .arg(&debian)
            .arg(crate::kernels::debian_archive("/debian")),
        "debootstrap bullseye",
    )?;
    fs::write(&complete, "").with_context(|| format!("cannot write {}", complete.display()))?;
    Ok(debian)
}

/// The workspace's version, from `[workspace.package]`.
fn workspace_version(root: &Path) -> anyhow::Result<String> {
    let manifest = fs::read_to_string(root.join("Cargo.toml")).context("cannot read Cargo.toml")?;
    manifest
        .lines()
        .find_map(|line| line.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .map(str::to_owned)
        .context("no version = \"...\" in Cargo.toml")
}

/// Builds the release binary with glibc linked statically. Only the target's own code
/// gets `crt-static` (build scripts and the eBPF build are host or BPF code), which is
/// why the target is named.
fn build_static(root: &Path) -> anyhow::Result<PathBuf> {
    run(
        cargo()
            .env(
                format!("CARGO_TARGET_{}_RUSTFLAGS", TARGET.to_uppercase().replace('-', "_")),
                "-C target-feature=+crt-static",
            )
            .args(["build", "--release", "--package", "rewrite-user", "--bin", "rewrite", "--target", TARGET]),
        "cargo build (the static release binary)",
    )?;
    let binary = root.join("target").join(TARGET).join("release").join("rewrite");
    let linked = Command::new("ldd").arg(&binary).output().context("cannot run ldd")?;
    let said = String::from_utf8_lossy(&linked.stdout).to_string() + &String::from_utf8_lossy(&linked.stderr);
    ensure!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "{} is not statically linked: ldd says {said}",
        binary.display()
    );
    Ok(binary)
}

/// Lays out the installed files under `tree` (as /).
fn stage(root: &Path, binary: &Path, tree: &Path) -> anyhow::Result<()> {
    copy(binary, &tree.join("usr/bin/rewrite"))?;
    // The unit runs the packaged binary.
    let unit = fs::read_to_string(root.join("deploy/rewrite-agent.service")).context("cannot read the unit")?;
    let unit = unit.replace("/usr/local/bin/rewrite", "/usr/bin/rewrite");
    ensure!(unit.contains("ExecStart=/usr/bin/rewrite "), "the unit's ExecStart does not run /usr/bin/rewrite");
    write(&tree.join("lib/systemd/system/rewrite-agent.service"), &unit)?;
    copy(&root.join("deploy/rewrite.toml"), &tree.join("etc/rewrite/rewrite.toml"))?;

    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/rewrite"),
        ("zsh", "usr/share/zsh/vendor-completions/_rewrite"),
        ("fish", "usr/share/fish/vendor_completions.d/rewrite.fish"),
    ] {
        let script = output(Command::new(binary).args(["completions", shell]))?;
        ensure!(!script.is_empty(), "rewrite completions {shell} printed nothing");
        write(&tree.join(path), &script)?;
    }
    let man = tree.join("usr/share/man/man1");
    run(Command::new(binary).arg("manpages").arg(&man), "rewrite manpages")?;
    ensure!(man.join("rewrite.1").is_file(), "rewrite manpages wrote no rewrite.1");
    run(Command::new("gzip").args(["-9n", "-r"]).arg(&man), "gzip the man pages")?;

    let doc = tree.join("usr/share/doc/rewrite");
    for file in ["README.md", "ARCHITECTURE.md", "LICENSE-MIT", "LICENSE-APACHE", "LICENSE-GPL-2.0"] {
        copy(&root.join(file), &doc.join(file))?;
    }
    for entry in fs::read_dir(root.join("docs")).context("cannot read docs/")? {
        let path = entry.context("cannot read docs/")?.path();
        if path.extension().is_some_and(|extension| extension == "md") {
            copy(&path, &doc.join("docs").join(path.file_name().expect("a file name")))?;
        }
    }
    write(&doc.join("copyright"), COPYRIGHT)?;
    Ok(())
}

/// Debian's machine-readable copyright file.
const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
Upstream-Name: rewrite\n\n\
Files: *\n\
Copyright: 2026 The rewrite authors\n\
License: MIT or Apache-2.0\n \
The user-space program; see LICENSE-MIT and LICENSE-APACHE in this directory.\n\n\
Files: usr/bin/rewrite (the eBPF programs inside it)\n\
Copyright: 2026 The rewrite authors\n\
License: MIT or GPL-2.0\n \
The programs loaded into the kernel; see LICENSE-MIT and LICENSE-GPL-2.0.\n";

fn write_control(tree: &Path, version: &str) -> anyhow::Result<()> {
    let installed_kib = du_kib(tree)?;
    write(
        &tree.join("DEBIAN/control"),
        &format!(
            "Package: rewrite\n\
             Version: {version}\n\
             Architecture: amd64\n\
             Maintainer: The rewrite authors <maintainers@rewrite.invalid>\n\
             Installed-Size: {installed_kib}\n\
             Section: net\n\
             Priority: optional\n\
             Description: stateless eBPF address rewriting for moving live servers\n \
             rewrite looks each packet's addresses up in BPF maps and rewrites them\n \
             (VIRTUAL to REAL and back) in XDP or TC, with correct checksums and no\n \
             conntrack, so that servers keep their old addresses while they move\n \
             between networks. The binary is statically linked.\n"
        ),
    )?;
    write(&tree.join("DEBIAN/conffiles"), "/etc/rewrite/rewrite.toml\n")
}

/// The size of the files under `dir`, in KiB, as dpkg counts Installed-Size.
fn du_kib(dir: &Path) -> anyhow::Result<u64> {
    let said = output(Command::new("du").args(["-sk"]).arg(dir))?;
    said.split_whitespace().next().and_then(|kib| kib.parse().ok()).context("cannot read du's output")
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
