//! The backends: how each installs N mappings in the router, changes one, and what
//! that costs.

use std::{
    io::Write as _,
    net::IpAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    programs::{LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode, tc::TcAttachOptions},
};
use rewrite_common::{
    mapping::AddressMapping,
    pinned::{PROG_BENCH_TC_PASS, PROG_BENCH_XDP_PASS},
};
use rewrite_tests::{cli::rewrite_binary, netns::PinDir};
use rewrite_user::{
    dataplane::{objects, pins::PinLayout, status},
    table::live::MappingTable,
};

use crate::topology::{ROUTER_TO_SERVER, Topology, real_addr, virtual_addr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    /// Plain routing to the REAL addresses: the ceiling.
    None,
    RewriteXdp,
    RewriteTc,
    /// One DNAT and one SNAT rule per mapping, loaded with iptables-restore.
    IptablesNft,
    IptablesLegacy,
    /// `dnat to ip daddr map @…` and `snat to ip saddr map @…`: one rule, two maps.
    NftMap,
    /// Plain routing with programs that do nothing on the hooks rewrite-xdp uses (XDP
    /// and TC ingress, TC egress): the floor of any XDP program on the device.
    EmptyXdp,
    /// The same on the hooks rewrite-tc uses (TC ingress and egress).
    EmptyTc,
}

impl Backend {
    pub const ALL: [Self; 8] = [
        Self::None,
        Self::RewriteXdp,
        Self::RewriteTc,
        Self::IptablesNft,
        Self::IptablesLegacy,
        Self::NftMap,
        Self::EmptyXdp,
        Self::EmptyTc,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::RewriteXdp => "rewrite-xdp",
            Self::RewriteTc => "rewrite-tc",
            Self::IptablesNft => "iptables-nft",
            Self::IptablesLegacy => "iptables-legacy",
            Self::NftMap => "nft-map",
            Self::EmptyXdp => "empty-xdp",
            Self::EmptyTc => "empty-tc",
        }
    }

    /// The largest table measured: netfilter stops at 100,000 (its rule walk makes
    /// larger tables pointless to wait for), rewrite goes on to 1,000,000. The empty
    /// programs hold no table: measured once, at N = 1.
    pub fn max_mappings(self) -> u32 {
        match self {
            Self::EmptyXdp | Self::EmptyTc => 1,
            _ if self.is_rewrite() => 1_000_000,
            _ => 100_000,
        }
    }

    pub fn is_rewrite(self) -> bool {
        matches!(self, Self::RewriteXdp | Self::RewriteTc)
    }

    /// Where the client sends for mapping `index`: the VIRTUAL address, except without
    /// translation, where it goes straight to REAL.
    pub fn target(self, index: u32) -> std::net::Ipv4Addr {
        if self.translates() { virtual_addr(index) } else { real_addr(index) }
    }

    pub fn translates(self) -> bool {
        !matches!(self, Self::None | Self::EmptyXdp | Self::EmptyTc)
    }
}

/// A backend installed in a topology's router, with what installing it cost.
pub struct Installed {
    /// Time to install all N mappings (the tool's process for netfilter, the batch
    /// map update for rewrite).
    pub install: Duration,
    /// Time to retarget one mapping with N installed, through the tool's CLI.
    pub change_one: Duration,
    /// Peak RSS of that CLI process, in KiB.
    pub change_rss_kib: u64,
    /// Kernel memory of rewrite's maps (their `memlock`), in bytes.
    pub map_bytes: Option<u64>,
    pins: Option<PinDir>,
    /// The empty programs' object (dropping it detaches them), and its pins.
    empty: Option<(Ebpf, PinDir)>,
    router: String,
}

impl Installed {
    /// For the iptables backends, after traffic: checks from the rules' packet counters
    /// that the traffic walked the whole list (a rule in its last tenth was hit), so
    /// the figures measure what they claim. Panics otherwise. Returns the number of
    /// DNAT rules hit, for the progress line.
    pub fn check_rule_walk(&self, backend: Backend, topology: &Topology, mappings: u32) -> Option<usize> {
        let iptables = match backend {
            Backend::IptablesNft => "iptables-nft",
            Backend::IptablesLegacy => "iptables-legacy",
            _ => return None,
        };
        let out = topology.router.must(iptables, &["-t", "nat", "-L", "PREROUTING", "-v", "-x", "-n"]);
        // Two header lines, then one line per rule whose first column is its packets.
        let packets: Vec<u64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(2)
            .map(|line| line.split_whitespace().next().and_then(|count| count.parse().ok()).unwrap_or(0))
            .collect();
        assert_eq!(packets.len(), mappings as usize, "{iptables}: expected one DNAT rule per mapping");
        let last_tenth = packets.len() - packets.len().div_ceil(10);
        assert!(
            packets[last_tenth..].iter().any(|count| *count > 0),
            "{iptables}: no rule in the last tenth of {mappings} was hit: the traffic did not walk the list"
        );
        Some(packets.iter().filter(|count| **count > 0).count())
    }

    /// Detaches rewrite (netfilter goes with the router namespace).
    pub fn remove(self, topology: &Topology) {
        if let Some(pins) = &self.pins {
            let status = topology
                .router
                .command(&rewrite_binary().to_string_lossy())
                .args(["--pin-dir", &pins.path().to_string_lossy(), "detach", "--iface", ROUTER_TO_SERVER])
                .output()
                .expect("run rewrite detach");
            assert!(status.status.success(), "rewrite detach failed in {}: {status:?}", self.router);
        }
    }
}

pub fn install(backend: Backend, topology: &Topology, mappings: u32) -> Installed {
    let router = &topology.router;
    let mut installed = Installed {
        install: Duration::ZERO,
        change_one: Duration::ZERO,
        change_rss_kib: 0,
        map_bytes: None,
        pins: None,
        empty: None,
        router: router.name().to_owned(),
    };
    let middle = mappings / 2;
    // An address in the server's REAL block that no mapping uses yet.
    let new_real = real_addr(mappings);
    match backend {
        Backend::None => {}
        Backend::EmptyXdp | Backend::EmptyTc => {
            let pins = PinDir::new("bench-empty");
            let layout = PinLayout::new(pins.path());
            layout.create_dir(&layout.maps_dir()).expect("create the pin directory");
            let ebpf = router.run(|| attach_empty(&layout, backend == Backend::EmptyXdp));
            installed.empty = Some((ebpf, pins));
        }
        Backend::RewriteXdp | Backend::RewriteTc => {
            let pins = PinDir::new("bench");
            let layout = PinLayout::new(pins.path());
            layout.create_dir(&layout.maps_dir()).expect("create the pin directory");
            drop(objects::load(&layout.maps_dir(), None).expect("load the eBPF object"));
            let mut table = MappingTable::open(&layout).expect("open the maps");
            let batch: Vec<AddressMapping> = (0..mappings)
                .map(|index| AddressMapping {
                    virtual_addr: IpAddr::V4(virtual_addr(index)),
                    real_addr: IpAddr::V4(real_addr(index)),
                })
                .collect();
            let started = Instant::now();
            table.insert_new_unchecked(&batch).expect("install the mappings");
            installed.install = started.elapsed();
            installed.map_bytes = Some(status::maps_memory(&layout).expect("read the maps' kernel memory"));
            let binary = rewrite_binary();
            let pin_dir = pins.path().to_string_lossy().into_owned();
            let ingress = if backend == Backend::RewriteXdp { "xdp" } else { "tc" };
            let mut attach = router.command(&binary.to_string_lossy());
            attach.args(["--pin-dir", &pin_dir, "attach", "--iface", ROUTER_TO_SERVER, "--ingress", ingress]);
            timed(attach, "");
            let mut change = router.command(&binary.to_string_lossy());
            let (middle_virtual, new_real) = (virtual_addr(middle).to_string(), new_real.to_string());
            change.args(["--pin-dir", &pin_dir, "map", "add", &middle_virtual, &new_real]);
            (installed.change_one, installed.change_rss_kib) = timed(change, "");
            installed.pins = Some(pins);
        }
        Backend::IptablesNft | Backend::IptablesLegacy => {
            let restore =
                if backend == Backend::IptablesNft { "iptables-nft-restore" } else { "iptables-legacy-restore" };
            let mut rules = String::with_capacity(mappings as usize * 120);
            rules.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
            for index in 0..mappings {
                let (v, r) = (virtual_addr(index), real_addr(index));
                rules.push_str(&format!("-A PREROUTING -d {v}/32 -j DNAT --to-destination {r}\n"));
            }
            for index in 0..mappings {
                let (v, r) = (virtual_addr(index), real_addr(index));
                rules.push_str(&format!("-A POSTROUTING -s {r}/32 -j SNAT --to-source {v}\n"));
            }
            rules.push_str("COMMIT\n");
            installed.install = timed(router.command(restore), &rules).0;
            let rule = middle + 1;
            let (v, r) = (virtual_addr(middle), new_real);
            let change = format!(
                "*nat\n-R PREROUTING {rule} -d {v}/32 -j DNAT --to-destination {r}\n\
                 -R POSTROUTING {rule} -s {r}/32 -j SNAT --to-source {v}\nCOMMIT\n"
            );
            let mut command = router.command(restore);
            command.arg("--noflush");
            (installed.change_one, installed.change_rss_kib) = timed(command, &change);
            short_close_timeout(topology);
        }
        Backend::NftMap => {
            let mut forward = String::with_capacity(mappings as usize * 30);
            let mut reverse = String::with_capacity(mappings as usize * 30);
            for index in 0..mappings {
                let (v, r) = (virtual_addr(index), real_addr(index));
                forward.push_str(&format!("{v} : {r}, "));
                reverse.push_str(&format!("{r} : {v}, "));
            }
            let ruleset = format!(
                "table ip bench {{\n\
                 map forward {{ type ipv4_addr : ipv4_addr; elements = {{ {forward} }} }}\n\
                 map reverse {{ type ipv4_addr : ipv4_addr; elements = {{ {reverse} }} }}\n\
                 chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; dnat to ip daddr map @forward; }}\n\
                 chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; snat to ip saddr map @reverse; }}\n\
                 }}\n"
            );
            let mut command = router.command("nft");
            command.args(["-f", "-"]);
            installed.install = timed(command, &ruleset).0;
            let (v, old_r, r) = (virtual_addr(middle), real_addr(middle), new_real);
            let change = format!(
                "delete element ip bench forward {{ {v} }}\nadd element ip bench forward {{ {v} : {r} }}\n\
                 delete element ip bench reverse {{ {old_r} }}\nadd element ip bench reverse {{ {r} : {v} }}\n"
            );
            let mut command = router.command("nft");
            command.args(["-f", "-"]);
            (installed.change_one, installed.change_rss_kib) = timed(command, &change);
            short_close_timeout(topology);
        }
    }
    installed
}

/// Attaches the programs that do nothing to the router's hooks toward the server, as
/// `rewrite attach` does its own (XDP in driver mode, TC through tcx links): XDP
/// ingress (with `xdp`), TC ingress, TC egress. Runs inside the router's namespace.
fn attach_empty(layout: &PinLayout, xdp: bool) -> Ebpf {
    let mut ebpf = objects::load(&layout.maps_dir(), None).expect("load the eBPF object");
    if xdp {
        let program: &mut Xdp = ebpf
            .program_mut(PROG_BENCH_XDP_PASS)
            .and_then(|program| program.try_into().ok())
            .expect("the empty XDP program");
        program.load().expect("load the empty XDP program");
        program.attach(ROUTER_TO_SERVER, XdpMode::Driver).expect("attach the empty XDP program");
    }
    let program: &mut SchedClassifier =
        ebpf.program_mut(PROG_BENCH_TC_PASS).and_then(|program| program.try_into().ok()).expect("the empty TC program");
    program.load().expect("load the empty TC program");
    for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
        let options = TcAttachOptions::TcxOrder(LinkOrder::default());
        program.attach_with_options(ROUTER_TO_SERVER, hook, options).expect("attach the empty TC program");
    }
    ebpf
}

/// Connections the client resets stay in conntrack for the close timeout (10 s); at
/// thousands per second that would fill the table and measure the wrong thing.
fn short_close_timeout(topology: &Topology) {
    topology.router.sysctl("net.netfilter.nf_conntrack_tcp_timeout_close", "1");
}

/// Runs `command` with `input` on stdin; returns its wall time and peak RSS (KiB).
/// Panics with its output if it fails.
///
/// The peak RSS is the `VmHWM` of the program's own image, sampled every millisecond
/// while it runs: `wait4`'s `ru_maxrss` would include the pages the child shared with
/// this (large) process before it exec'd.
fn timed(mut command: Command, input: &str) -> (Duration, u64) {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error} (run `cargo xtask setup`)"));
    let status_path = format!("/proc/{}/status", child.id());
    let done = std::sync::atomic::AtomicBool::new(false);
    let (status, peak_kib) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let hwm = std::fs::read_to_string(&status_path).ok().and_then(|status| {
                    status
                        .lines()
                        .find_map(|line| line.strip_prefix("VmHWM:"))
                        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                });
                peak = peak.max(hwm.unwrap_or(0));
                std::thread::sleep(Duration::from_millis(1));
            }
            peak
        });
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write the command's input");
        drop(stdin);
        let status = child.wait().expect("wait for the command");
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (status, sampler.join().unwrap_or(0))
    });
    let elapsed = started.elapsed();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read as _;
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(status.success(), "{command:?} failed: {stderr}");
    (elapsed, peak_kib)
}
