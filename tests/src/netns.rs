//! Network namespaces, veth pairs and bpffs pin directories for tests, each behind a
//! guard that removes it on drop, also when the test panics.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sched::{CloneFlags, setns};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);
static SWEEP: std::sync::Once = std::sync::Once::new();

/// A name unique to this process and call: `rw<pid>-<n>-<tag>`.
fn unique(tag: &str) -> String {
    SWEEP.call_once(sweep_leftovers);
    format!("rw{}-{}-{tag}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

/// Removes namespaces and pin directories that earlier test processes created and
/// could not clean up (they were killed): their names carry a pid that is gone.
fn sweep_leftovers() {
    let dead = |name: &str, prefix: &str| {
        let pid =
            name.strip_prefix(prefix).and_then(|rest| rest.split('-').next()).and_then(|pid| pid.parse::<u32>().ok());
        pid.is_some_and(|pid| pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists())
    };
    for entry in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if dead(&name, "rw") {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
    for entry in std::fs::read_dir("/sys/fs/bpf").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if dead(&name, "rewrite-test-rw") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Runs `program args`, panicking with its output if it fails.
pub fn must(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program} {args:?}: {error} (run `cargo xtask setup`)"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        must("ip", &["netns", "add", &name]);
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n NAME args...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        must("ip", &full)
    }

    /// Runs a command inside the namespace with `nsenter --net`, which, unlike
    /// `ip netns exec`, keeps the host's /sys and so its bpffs mount.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net={}", self.path().display())).arg("--").arg(program);
        command
    }

    /// Like [`Self::command`], panicking with the output if the command fails.
    pub fn must(&self, program: &str, args: &[&str]) -> Output {
        let out =
            self.command(program).args(args).output().unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
        assert!(
            out.status.success(),
            "{program} {args:?} in {} failed ({}): {}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.must("sysctl", &["-qw", &format!("{key}={value}")]);
    }

    /// Switches the calling thread into the namespace. Sockets created afterwards belong
    /// to it for their whole life.
    pub fn enter(&self) {
        let file =
            File::open(self.path()).unwrap_or_else(|error| panic!("cannot open {}: {error}", self.path().display()));
        setns(file, CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|error| panic!("setns into {} failed: {error}", self.name));
    }

    /// Runs `work` on a new thread inside the namespace and returns its result.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter();
                    work()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Sets checksum offloads on an interface of the namespace with ethtool.
    pub fn offload(&self, iface: &str, tx: bool, rx: bool) {
        let onoff = |on: bool| if on { "on" } else { "off" };
        self.must("ethtool", &["-K", iface, "tx", onoff(tx), "rx", onoff(rx)]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes its veth ends.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// One end of a veth pair: its namespace, name and fixed MAC address.
#[derive(Clone, Copy, Debug)]
pub struct VethEnd<'a> {
    pub netns: &'a Netns,
    pub name: &'a str,
    pub mac: [u8; 6],
}

impl VethEnd<'_> {
    pub fn mac_text(&self) -> String {
        self.mac.iter().map(|byte| format!("{byte:02x}")).collect::<Vec<_>>().join(":")
    }
}

/// Creates a veth pair between two namespaces (or within one), brings both ends up and
/// assigns each its `addr/prefix`.
pub fn veth(a: VethEnd<'_>, a_addr: &str, b: VethEnd<'_>, b_addr: &str) {
    let (a_mac, b_mac) = (a.mac_text(), b.mac_text());
    must(
        "ip",
        &[
            "link",
            "add",
            a.name,
            "address",
            &a_mac,
            "netns",
            a.netns.name(),
            "type",
            "veth",
            "peer",
            "name",
            b.name,
            "address",
            &b_mac,
            "netns",
            b.netns.name(),
        ],
    );
    for (end, addr) in [(a, a_addr), (b, b_addr)] {
        // IPv6: no duplicate address detection, so the address works at once.
        let nodad: &[&str] = if addr.contains(':') { &["nodad"] } else { &[] };
        end.netns.ip(&[&["addr", "add", addr, "dev", end.name], nodad].concat());
        end.netns.ip(&["link", "set", end.name, "up"]);
    }
}

/// A directory on bpffs for one test's pins, removed on drop (which detaches whatever
/// links are pinned in it).
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    pub fn new(tag: &str) -> Self {
        let path = Path::new("/sys/fs/bpf").join(format!("rewrite-test-{}", unique(tag)));
        assert!(
            Path::new("/sys/fs/bpf").join(".").exists(),
            "/sys/fs/bpf does not exist; run `cargo xtask setup` (it mounts bpffs)"
        );
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        // And what rewrite keeps about it in /run/rewrite (versions, agent lock).
        rewrite_user::dataplane::pins::PinLayout::new(&self.path).remove_run_records();
    }
}
