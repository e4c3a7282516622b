//! `cargo xtask bench` (gate): the gatekeeper against what Neti used, on the router of
//! the `versus` topology, for N allowed sources (8,000 and 100,000):
//!
//! - rewrite's gate in XDP and in TC: the N sources are the REAL addresses of N
//!   mappings (so allowed packets are also rewritten, as a fleet member's are);
//! - iptables-legacy with one ACCEPT rule per source and a final DROP (Neti's first
//!   version), in FORWARD;
//! - iptables-legacy with one `-m set --match-set` rule over an ipset `hash:ip` (Neti's
//!   second version);
//! - plain routing with no gate: the ceiling of the pass rate.
//!
//! The client floods minimum-size UDP datagrams from its 32 source addresses to the
//! protected ports. **Pass rate**: the 32 sources are in the allowed set, spread
//! evenly over it (a linear rule list walks N/2 rules on average); datagrams per second
//! at the server. **Drop rate**: no client source is allowed (a linear list walks all N
//! rules); datagrams per second the gate dropped, by its own counter (rewrite's
//! `dropped`, the DROP rule's packet count), and the server must receive none.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    reason = "counts and durations of a benchmark, shown as f64"
)]

#[path = "versus/load.rs"]
#[allow(dead_code, reason = "shared with the versus benchmark, which uses the rest")]
mod load;
#[path = "versus/report.rs"]
#[allow(dead_code, reason = "shared with the versus benchmark, which uses the rest")]
mod report;
#[path = "versus/topology.rs"]
#[allow(dead_code, reason = "shared with the versus benchmark, which uses the rest")]
mod topology;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::Stdio,
    time::Duration,
};

use report::summarise;
use rewrite_common::mapping::AddressMapping;
use rewrite_tests::{
    cli::{RewriteCli, rewrite_binary},
    machine,
};
use rewrite_user::{dataplane::pins::PinLayout, table::live::MappingTable};
use topology::{CLIENT_SOURCES, Topology, client_source, real_addr, virtual_addr};

/// The flood's destination ports (`load::udp_flood` sends to 1024..5120).
const PROTECTED: &str = "udp/1024-5119";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Backend {
    Routing,
    GateXdp,
    GateTc,
    IptablesRules,
    Ipset,
}

impl Backend {
    const ALL: [Self; 5] = [Self::Routing, Self::GateXdp, Self::GateTc, Self::IptablesRules, Self::Ipset];

    const fn name(self) -> &'static str {
        match self {
            Self::Routing => "routing, no gate (ceiling)",
            Self::GateXdp => "rewrite gate (XDP)",
            Self::GateTc => "rewrite gate (TC)",
            Self::IptablesRules => "iptables, a rule per source",
            Self::Ipset => "iptables + ipset",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Pass,
    Drop,
}

/// The `index`th allowed source that is not one of the client's: 10.96.0.0/12, apart
/// from the VIRTUAL (10.64.0.0/12) and REAL (10.128.0.0/12) blocks.
fn other_source(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be_bytes([10, 96, 0, 0]) + index)
}

/// The N allowed sources: with `clients`, the client's 32 addresses spread evenly
/// through the list.
fn allowed_sources(n: u32, clients: bool) -> Vec<Ipv4Addr> {
    let mut sources: Vec<Ipv4Addr> = (0..n).map(other_source).collect();
    if clients {
        let step = n / CLIENT_SOURCES;
        for index in 0..CLIENT_SOURCES {
            sources[(index * step + step / 2) as usize] = client_source(index);
        }
    }
    sources
}

/// What a backend installed; the rewrite pins go with it.
struct Installed<'a> {
    cli: Option<RewriteCli<'a>>,
}

fn install<'a>(backend: Backend, topology: &'a Topology, sources: &[Ipv4Addr]) -> Installed<'a> {
    let router = &topology.router;
    match backend {
        Backend::Routing => Installed { cli: None },
        Backend::GateXdp | Backend::GateTc => {
            let cli = RewriteCli::new(router);
            let layout = PinLayout::new(cli.pins().path());
            layout.create_dir(&layout.maps_dir()).expect("create the pin directory");
            drop(rewrite_user::dataplane::objects::load(&layout.maps_dir(), None).expect("load the eBPF object"));
            // Each allowed source is a fleet member: the REAL of a mapping.
            let mappings: Vec<AddressMapping> = sources
                .iter()
                .enumerate()
                .map(|(index, source)| AddressMapping {
                    virtual_addr: IpAddr::V4(virtual_addr(u32::try_from(index).expect("fits"))),
                    real_addr: IpAddr::V4(*source),
                })
                .collect();
            MappingTable::open(&layout).expect("open the maps").insert_new_unchecked(&mappings).expect("mappings");
            let ingress = if backend == Backend::GateXdp { "xdp" } else { "tc" };
            cli.ok(&["attach", "--iface", "rc", "--ingress", ingress]);
            cli.ok(&["gate", "protect", PROTECTED]);
            cli.ok(&["gate", "mode", "enforce"]);
            Installed { cli: Some(cli) }
        }
        Backend::IptablesRules | Backend::Ipset => {
            let mut rules = String::from("*filter\n:FORWARD ACCEPT [0:0]\n");
            if backend == Backend::IptablesRules {
                for source in sources {
                    let _ = writeln!(rules, "-A FORWARD -i rc -p udp -s {source}/32 -j ACCEPT");
                }
            } else {
                let mut set = String::from("create fleet hash:ip maxelem 262144\n");
                for source in sources {
                    let _ = writeln!(set, "add fleet {source}");
                }
                feed(router.command("ipset"), &["restore"], &set);
                rules.push_str("-A FORWARD -i rc -p udp -m set --match-set fleet src -j ACCEPT\n");
            }
            rules.push_str("-A FORWARD -i rc -p udp --dport 1024:5119 -j DROP\nCOMMIT\n");
            feed(router.command("iptables-legacy-restore"), &[], &rules);
            Installed { cli: None }
        }
    }
}

/// Runs `command ARGS` with `input` on its standard input; panics unless it succeeds.
fn feed(mut command: std::process::Command, args: &[&str], input: &str) {
    use std::io::Write as _;
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the rule loader (cargo xtask setup installs iptables and ipset)");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write the rules");
    let output = child.wait_with_output().expect("wait for the rule loader");
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// Packets the backend's gate dropped so far.
fn dropped(backend: Backend, installed: &Installed<'_>, topology: &Topology) -> u64 {
    match backend {
        Backend::Routing => 0,
        Backend::GateXdp | Backend::GateTc => {
            let cli = installed.cli.as_ref().expect("rewrite is installed");
            let stats: serde_json::Value =
                serde_json::from_str(&cli.ok(&["gate", "stats", "--json"])).expect("gate stats prints JSON");
            stats["dropped"].as_u64().expect("a dropped counter")
        }
        Backend::IptablesRules | Backend::Ipset => {
            let out = topology.router.must("iptables-legacy", &["-L", "FORWARD", "-v", "-x", "-n"]);
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines()
                .find(|line| line.contains("DROP"))
                .and_then(|line| line.split_whitespace().next())
                .and_then(|packets| packets.parse().ok())
                .unwrap_or_else(|| panic!("no DROP rule counter in:\n{text}"))
        }
    }
}

/// Datagrams per second: passed to the server, or dropped by the gate.
fn measure(backend: Backend, phase: Phase, n: u32, duration: Duration) -> f64 {
    let topology = Topology::new();
    let sources = allowed_sources(n, phase == Phase::Pass);
    let installed = install(backend, &topology, &sources);
    let target = |k: u64| real_addr((k % 1024) as u32);
    let before = dropped(backend, &installed, &topology);
    let received = load::udp_flood(&topology, &target, duration);
    let seconds = duration.as_secs_f64();
    match phase {
        Phase::Pass => received as f64 / seconds,
        Phase::Drop => {
            assert!(received < 100, "{}: {received} datagrams from unknown sources reached the server", backend.name());
            (dropped(backend, &installed, &topology) - before) as f64 / seconds
        }
    }
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let (passes, sizes, duration): (usize, &[u32], Duration) =
        if quick { (1, &[8_000], Duration::from_millis(500)) } else { (3, &[8_000, 100_000], Duration::from_secs(3)) };
    // The binary must exist before the first namespace needs it.
    assert!(rewrite_binary().exists(), "build rewrite first (cargo xtask bench does)");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf();
    let report_path = root.join(if quick { "target/bench-quick/gate.md" } else { "docs/gate-benchmarks.md" });
    if let Some(dir) = report_path.parent() {
        std::fs::create_dir_all(dir).expect("create the report directory");
    }
    let mut results: BTreeMap<(u32, Phase, Backend), Vec<f64>> = BTreeMap::new();
    for pass in 0..passes {
        for &n in sizes {
            for phase in [Phase::Pass, Phase::Drop] {
                for turn in 0..Backend::ALL.len() {
                    let backend = Backend::ALL[(turn + pass) % Backend::ALL.len()];
                    if phase == Phase::Drop && backend == Backend::Routing {
                        continue;
                    }
                    let rate = measure(backend, phase, n, duration);
                    eprintln!("pass {pass}: N={n} {phase:?} {}: {rate:.0}/s", backend.name());
                    results.entry((n, phase, backend)).or_default().push(rate);
                }
            }
        }
    }
    let report = render(&results, sizes, passes, duration);
    print!("{report}");
    std::fs::write(&report_path, &report).expect("write the report");
    println!("report: {}", report_path.display());
}

fn render(
    results: &BTreeMap<(u32, Phase, Backend), Vec<f64>>,
    sizes: &[u32],
    passes: usize,
    duration: Duration,
) -> String {
    let mut out = String::from("# The gatekeeper against iptables and ipset\n\n");
    let _ = writeln!(
        out,
        "Machine: {}. Client, router (the gate) and server namespaces on veth; the client floods 18-byte UDP \
         datagrams from 32 sources to the protected ports for {} s; {passes} passes, backends interleaved; median \
         [min–max], datagrams per second. Pass: the client's sources are among the N allowed, spread evenly. Drop: \
         none is; the rate is what the gate's own counter dropped, and the server received none.\n",
        machine::describe(),
        duration.as_secs_f64()
    );
    for phase in [Phase::Pass, Phase::Drop] {
        let _ = writeln!(out, "## {} rate\n", if phase == Phase::Pass { "Pass" } else { "Drop" });
        out.push_str("| backend |");
        for n in sizes {
            let _ = write!(out, " N = {n} |");
        }
        if sizes.len() > 1 {
            let _ = write!(out, " N = {} ÷ N = {} |", sizes[sizes.len() - 1], sizes[0]);
        }
        out.push_str("\n|---|");
        for _ in 0..sizes.len() + usize::from(sizes.len() > 1) {
            out.push_str("---:|");
        }
        out.push('\n');
        for backend in Backend::ALL {
            let cells: Vec<Option<f64>> = sizes
                .iter()
                .map(|&n| results.get(&(n, phase, backend)).and_then(|runs| summarise(runs)).map(|s| s.median))
                .collect();
            if cells.iter().all(Option::is_none) {
                continue;
            }
            let _ = write!(out, "| {} |", backend.name());
            for &n in sizes {
                let cell = results
                    .get(&(n, phase, backend))
                    .and_then(|runs| summarise(runs))
                    .map_or_else(|| "–".to_owned(), |s| format!("{:.0} [{:.0}–{:.0}]", s.median, s.min, s.max));
                let _ = write!(out, " {cell} |");
            }
            if let (true, Some(Some(first)), Some(Some(last))) = (sizes.len() > 1, cells.first(), cells.last()) {
                let _ = write!(out, " {:.2}× |", last / first.max(f64::MIN_POSITIVE));
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out
}
