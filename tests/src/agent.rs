//! `rewrite agent` as a child process inside a test namespace, killed on drop, and
//! scrapes of its metrics.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::{cli::rewrite_binary, netns::Netns};

/// How long an agent may take from its start to serving metrics: its first apply comes
/// first, and 10,000 mappings under an emulated CPU (the kernel matrix's guests) take
/// several seconds. A bound against hanging, not a speed target.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one scrape of the metrics may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(30);

/// A config file in the temporary directory, removed on drop.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
}

impl ConfigFile {
    pub fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("rewrite-test-{}-{name}.toml", std::process::id()));
        let file = Self { path };
        file.write(text);
        file
    }

    /// Replaces the contents the way editors do: a new file renamed over the old one.
    pub fn write(&self, text: &str) {
        let staging = self.path.with_extension("toml.new");
        std::fs::write(&staging, text).unwrap_or_else(|error| panic!("write {}: {error}", staging.display()));
        std::fs::rename(&staging, &self.path)
            .unwrap_or_else(|error| panic!("rename to {}: {error}", self.path.display()));
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn as_arg(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A running agent, killed (SIGKILL) and reaped on drop. Its log (JSON lines on
/// stderr) goes to a file that [`Self::log`] reads.
#[derive(Debug)]
pub struct AgentProcess<'a> {
    netns: &'a Netns,
    child: Child,
    pub metrics: SocketAddr,
    log: PathBuf,
}

impl<'a> AgentProcess<'a> {
    /// Starts `rewrite --pin-dir PINS agent --config CONFIG --metrics 127.0.0.1:PORT` in
    /// `netns` and waits until it serves metrics.
    pub fn start(netns: &'a Netns, pin_dir: &Path, config: &ConfigFile, port: u16) -> Self {
        Self::start_with(netns, pin_dir, &["--config", config.as_arg()], port)
    }

    /// Starts `rewrite --pin-dir PINS agent ARGS --metrics 127.0.0.1:PORT` in `netns` and
    /// waits until it serves metrics.
    pub fn start_with(netns: &'a Netns, pin_dir: &Path, args: &[&str], port: u16) -> Self {
        let mut agent = Self::spawn_with(netns, pin_dir, args, port);
        agent.wait_serving();
        agent
    }

    /// Like [`Self::start_with`], without waiting: for agents that must start together.
    pub fn spawn_with(netns: &'a Netns, pin_dir: &Path, args: &[&str], port: u16) -> Self {
        let metrics = SocketAddr::from(([127, 0, 0, 1], port));
        let log =
            std::env::temp_dir().join(format!("rewrite-test-{}-{}-agent-{port}.log", std::process::id(), netns.name()));
        let log_file = std::fs::File::create(&log).unwrap_or_else(|error| panic!("create {}: {error}", log.display()));
        let child = netns
            .command(rewrite_binary().to_str().expect("utf-8 path"))
            .arg("--pin-dir")
            .arg(pin_dir)
            .arg("agent")
            .args(args)
            .args(["--metrics", &metrics.to_string()])
            .env("REWRITE_LOG", "rewrite_user=debug,info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start rewrite agent");
        Self { netns, child, metrics, log }
    }

    /// Waits until the agent serves metrics (it binds them after its first apply);
    /// panics with its log if it exits first.
    pub fn wait_serving(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while self.scrape().is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the agent exited at start ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "the agent serves no metrics after {START_TIMEOUT:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal to the agent.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pid fits"));
        nix::sys::signal::kill(pid, signal).unwrap_or_else(|error| panic!("kill -{signal} {pid}: {error}"));
    }

    /// `kill -9`, and waits for the process to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The body of `GET /metrics`, or `None` if it cannot be fetched.
    pub fn scrape(&self) -> Option<String> {
        let address = self.metrics;
        self.netns.run(move || {
            let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
            // Rendering walks every map: 10,000 mappings take seconds under an emulated
            // CPU (the kernel matrix's guests). A bound against hanging.
            stream.set_read_timeout(Some(SCRAPE_TIMEOUT)).ok()?;
            write!(stream, "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).ok()?;
            let (head, body) = response.split_once("\r\n\r\n")?;
            head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
        })
    }

    /// Waits up to `timeout` for `condition` on the metrics text.
    pub fn wait_for(&self, what: &str, timeout: Duration, condition: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.scrape().unwrap_or_default();
            if condition(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not seen within {timeout:?}\nmetrics:\n{text}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for AgentProcess<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The value of the sample of `metric` whose labels include every `label="value"`
/// pair in `labels`, from Prometheus text.
pub fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(metric)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let wanted = labels.iter().all(|(name, value)| label_text.contains(&format!("{name}=\"{value}\"")));
        if wanted { value.trim().parse().ok() } else { None }
    })
}
