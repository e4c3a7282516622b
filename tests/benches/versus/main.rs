//! `cargo xtask bench` (with `prog_cost`): rewrite against plain routing, iptables (nft
//! and legacy back ends) and an nftables map, in one run, on the same namespace
//! topology and the same traffic. Writes a markdown report, a CSV and an SVG per
//! figure. `--quick` runs tiny tables briefly, to prove the harness works.
//!
//! Each measurement builds a fresh client/router/server topology, installs one backend
//! in the router, runs the traffic and tears everything down; backends take turns
//! within each pass (rotating the order), so slow drifts of a noisy machine spread
//! over all of them, and ratios are taken within a pass.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "socket API sizes, descriptor tokens and counts are small; figures are plotted as f64"
)]

mod backend;
mod load;
mod profile;
mod report;
mod topology;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use backend::Backend;
use report::{Figure, human, thousands};
use topology::Topology;

struct Plan {
    quick: bool,
    sizes: Vec<u32>,
    passes: usize,
    traffic: Duration,
    /// `nf_conntrack_max` for the exhaustion figure, and how many connections to hold.
    conntrack_max: u32,
    held_connections: usize,
    out_dir: PathBuf,
    report: PathBuf,
}

impl Plan {
    fn new(quick: bool) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf();
        if quick {
            Self {
                quick,
                sizes: vec![1, 100],
                passes: 2,
                traffic: Duration::from_millis(500),
                conntrack_max: 512,
                held_connections: 800,
                out_dir: root.join("target/bench-quick"),
                report: root.join("target/bench-quick/benchmarks.md"),
            }
        } else {
            Self {
                quick,
                sizes: vec![1, 100, 1_000, 10_000, 100_000, 1_000_000],
                passes: 5,
                traffic: Duration::from_secs(2),
                conntrack_max: 4_096,
                held_connections: 6_000,
                out_dir: root.join("docs/benchmarks"),
                report: root.join("docs/benchmarks.md"),
            }
        }
    }
}

/// Sets the init namespace's `nf_conntrack_max` (the limit of every namespace's own
/// table) and restores it on drop, also when the benchmark fails.
struct ConntrackMax {
    previous: String,
}

const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

impl ConntrackMax {
    fn set(value: u32) -> Self {
        let previous = std::fs::read_to_string(CONNTRACK_MAX).expect("read nf_conntrack_max");
        std::fs::write(CONNTRACK_MAX, value.to_string()).expect("set nf_conntrack_max");
        Self { previous }
    }
}

impl Drop for ConntrackMax {
    fn drop(&mut self) {
        let _ = std::fs::write(CONNTRACK_MAX, self.previous.trim());
    }
}

/// `--quick`, and for looking closer: `--backends a,b`, `--sizes 1,1000`, `--passes N`,
/// `--seconds S` (these write to target/bench-custom/).
fn parse_args() -> (Plan, Vec<Backend>) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut plan = Plan::new(args.iter().any(|arg| arg == "--quick"));
    let mut backends = Backend::ALL.to_vec();
    let value = |name: &str| args.iter().position(|arg| arg == name).and_then(|at| args.get(at + 1)).cloned();
    let mut custom = false;
    if let Some(list) = value("--backends") {
        backends = list
            .split(',')
            .map(|name| {
                Backend::ALL
                    .into_iter()
                    .find(|backend| backend.name() == name)
                    .unwrap_or_else(|| panic!("--backends: unknown backend {name:?}"))
            })
            .collect();
        custom = true;
    }
    if let Some(list) = value("--sizes") {
        plan.sizes =
            list.split(',').map(|n| n.parse().unwrap_or_else(|_| panic!("--sizes: bad number {n:?}"))).collect();
        custom = true;
    }
    if let Some(passes) = value("--passes") {
        plan.passes = passes.parse().expect("--passes: a number");
        custom = true;
    }
    if let Some(seconds) = value("--seconds") {
        plan.traffic = Duration::from_secs_f64(seconds.parse().expect("--seconds: a number"));
        custom = true;
    }
    if custom {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
        plan.out_dir = root.join("target/bench-custom");
        plan.report = plan.out_dir.join("benchmarks.md");
    }
    (plan, backends)
}

fn main() {
    let (plan, backends) = parse_args();
    raise_open_files(plan.held_connections * 2 + 1_000);
    let started = Instant::now();
    let mut connections = Figure::new("connections", "New TCP connections per second", "conn/s", true, false);
    let mut udp = Figure::new("udp", "Small UDP packets per second, 131,072 flows", "packets/s", true, false);
    let mut bulk = Figure::new("bulk", "Bulk TCP, one stream", "Gbit/s", true, false);
    let mut install = Figure::new("install", "Time to install N mappings", "s", false, true);
    let mut change =
        Figure::new("change", "Time to change one mapping with N installed (one CLI process)", "ms", false, true);
    let mut map_memory = Figure::new("map_memory", "Kernel memory of rewrite's maps per mapping", "bytes", false, true);
    let mut cli_rss = Figure::new("cli_rss", "Peak RSS of the CLI that changes one mapping", "MiB", false, false);

    let mut runs: Vec<(u32, usize, Backend)> = Vec::new();
    for &n in &plan.sizes {
        for pass in 0..plan.passes {
            // Rotate the order each pass, so no backend always runs first.
            for i in 0..backends.len() {
                let backend = backends[(i + pass) % backends.len()];
                if n <= backend.max_mappings() {
                    runs.push((n, pass, backend));
                }
            }
        }
    }
    for (index, (n, pass, backend)) in runs.iter().copied().enumerate() {
        let run_started = Instant::now();
        let topology = Topology::new();
        let installed = backend::install(backend, &topology, n);
        let target = move |k: u64| backend.target(load::spread(k, n));
        let conn = load::connection_rate(&topology, &target, plan.traffic);
        let rules_hit = installed.check_rule_walk(backend, &topology, n);
        let gbps = load::bulk_tcp(&topology, backend.target(load::spread(12_345, n)), plan.traffic);
        // Last: it turns the server's REAL block into a sink.
        let packets = load::udp_flood(&topology, &target, plan.traffic);
        installed_figures(&installed, n, backend, pass, &mut install, &mut change, &mut map_memory, &mut cli_rss);
        installed.remove(&topology);
        drop(topology);
        let seconds = plan.traffic.as_secs_f64();
        connections.record(n, backend.name(), pass, conn.completed as f64 / seconds);
        udp.record(n, backend.name(), pass, packets as f64 / seconds);
        bulk.record(n, backend.name(), pass, gbps);
        let done = index + 1;
        let eta = started.elapsed().as_secs_f64() / done as f64 * (runs.len() - done) as f64;
        eprintln!(
            "[{done:>3}/{}] N={:<9} pass {} {:<15} {:>8} conn/s ({} failed{})  {:>10} UDP pkt/s  {:>6} Gbit/s  \
             install {:>8} s  ({:.1} s, about {:.0} s left)",
            runs.len(),
            thousands(n),
            pass + 1,
            backend.name(),
            human(conn.completed as f64 / seconds),
            conn.failed,
            rules_hit.map_or(String::new(), |hit| format!(", {hit} DNAT rules hit")),
            human(packets as f64 / seconds),
            human(gbps),
            human(installed_seconds(&install, n, backend, pass)),
            run_started.elapsed().as_secs_f64(),
            eta
        );
    }

    let profiles = profile_udp(&plan, &backends);
    let exhaustion = exhaustion(&plan, &backends);
    let machine = machine();
    let figures = [&connections, &udp, &bulk, &install, &change, &map_memory, &cli_rss];
    std::fs::create_dir_all(&plan.out_dir).expect("create the output directory");
    for figure in figures {
        figure.write_files(&plan.out_dir);
    }
    exhaustion.write_files(&plan.out_dir);
    let report = render(&plan, &machine, &figures, &exhaustion, &profiles, started.elapsed());
    std::fs::write(&plan.report, report).expect("write the report");
    eprintln!("report: {} (CSV and SVG in {})", plan.report.display(), plan.out_dir.display());
}

#[allow(clippy::too_many_arguments)]
fn installed_figures(
    installed: &backend::Installed,
    n: u32,
    backend: Backend,
    pass: usize,
    install: &mut Figure,
    change: &mut Figure,
    map_memory: &mut Figure,
    cli_rss: &mut Figure,
) {
    if !backend.translates() {
        return;
    }
    install.record(n, backend.name(), pass, installed.install.as_secs_f64());
    change.record(n, backend.name(), pass, installed.change_one.as_secs_f64() * 1e3);
    cli_rss.record(n, backend.name(), pass, installed.change_rss_kib as f64 / 1024.0);
    if let Some(bytes) = installed.map_bytes {
        map_memory.record(n, backend.name(), pass, bytes as f64 / f64::from(n));
    }
}

fn installed_seconds(install: &Figure, n: u32, backend: Backend, _pass: usize) -> f64 {
    install.summary(n, backend.name()).map_or(0.0, |summary| summary.max)
}

/// The UDP figure once more at the smallest and the largest N for every backend, under
/// `perf record`: where its CPU time goes (see `profile`). Apart from the measured
/// passes, so that sampling does not disturb their figures.
fn profile_udp(plan: &Plan, backends: &[Backend]) -> Vec<(u32, Backend, profile::Breakdown)> {
    let smallest = *plan.sizes.iter().min().expect("sizes");
    let largest = *plan.sizes.iter().max().expect("sizes");
    let mut sizes = vec![smallest];
    if largest != smallest {
        sizes.push(largest);
    }
    std::fs::create_dir_all(&plan.out_dir).expect("create the output directory");
    let mut profiles = Vec::new();
    for n in sizes {
        for &backend in backends.iter().filter(|backend| n <= backend.max_mappings()) {
            let topology = Topology::new();
            let installed = backend::install(backend, &topology, n);
            let target = move |k: u64| backend.target(load::spread(k, n));
            // The flood's time; its set-up before and the drain after are mostly idle.
            let recording = profile::Recording::start(&plan.out_dir.join("perf-udp.data"), plan.traffic);
            let packets = load::udp_flood(&topology, &target, plan.traffic);
            let breakdown = recording.finish(packets);
            installed.remove(&topology);
            eprintln!(
                "profile N={} {:<15} {:.0} ns of CPU per packet, {:.0} in rewrite's programs",
                thousands(n),
                backend.name(),
                breakdown.total,
                breakdown.groups[0]
            );
            profiles.push((n, backend, breakdown));
        }
    }
    profiles
}

/// The profile section of the report: one row per backend and N, then the costliest
/// functions of each rewrite backend at the largest N.
fn render_profiles(profiles: &[(u32, Backend, profile::Breakdown)]) -> String {
    let names: Vec<&str> = profile::GROUPS.iter().map(|(name, _)| *name).collect();
    let mut out = format!(
        "### Where the CPU goes in the UDP figure (ns of CPU per packet)\n\n\
         The UDP figure run once more under `perf record -a -e cpu-clock` (all CPUs; idle left out), its samples \
         summed by the kind of work their function does and divided by the packets the server received. Client, \
         router and server share the CPUs: this is the whole path's cost, and the difference to `none` is what \
         a backend adds.\n\n| N | backend | total | {} |\n|---:|---|---:|{}\n",
        names.join(" | "),
        "---:|".repeat(names.len())
    );
    for (n, backend, breakdown) in profiles {
        let cells: Vec<String> = breakdown.groups.iter().map(|ns| format!("{ns:.0}")).collect();
        out.push_str(&format!(
            "| {} | {} | {:.0} | {} |\n",
            thousands(*n),
            backend.name(),
            breakdown.total,
            cells.join(" | ")
        ));
    }
    if let Some(largest) = profiles.iter().map(|(n, _, _)| *n).max() {
        for (n, backend, breakdown) in profiles.iter().filter(|(n, backend, _)| {
            *n == largest && matches!(backend, Backend::None | Backend::RewriteXdp | Backend::RewriteTc)
        }) {
            let top: Vec<String> = breakdown.top.iter().map(|(symbol, ns)| format!("`{symbol}` {ns:.0}")).collect();
            out.push_str(&format!(
                "\nCostliest functions, {} at N = {}: {}.\n",
                backend.name(),
                thousands(*n),
                top.join(", ")
            ));
        }
    }
    out.push('\n');
    out
}

/// Figure 5: more concurrent connections than conntrack holds. Counts the failures.
fn exhaustion(plan: &Plan, backends: &[Backend]) -> Figure {
    let mut figure = Figure::new(
        "conntrack_exhaustion",
        "Connections that failed when more are open than conntrack holds",
        "failed connections",
        false,
        false,
    );
    let n = 1_000.min(*plan.sizes.iter().max().expect("sizes"));
    let _limit = ConntrackMax::set(plan.conntrack_max);
    for pass in 0..plan.passes {
        for &backend in backends.iter().filter(|backend| n <= backend.max_mappings()) {
            let topology = Topology::new();
            let installed = backend::install(backend, &topology, n);
            let target = move |k: u64| backend.target(load::spread(k, n));
            let held = load::hold_connections(&topology, &target, plan.held_connections, Duration::from_secs(3));
            installed.remove(&topology);
            eprintln!(
                "conntrack limit {}: {} concurrent connections through {} (N={n}): {} established, {} failed",
                plan.conntrack_max,
                plan.held_connections,
                backend.name(),
                held.completed,
                held.failed
            );
            figure.record(n, backend.name(), pass, held.failed as f64);
        }
    }
    figure
}

/// Raises the open-file limit to its hard limit: the exhaustion figure holds both ends
/// of thousands of connections in this process.
fn raise_open_files(needed: usize) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: reads and sets this process's own limit through a live local.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit), 0, "getrlimit");
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit), 0, "setrlimit");
    }
    assert!(
        limit.rlim_cur as usize >= needed,
        "the open-file limit is {} but the exhaustion figure needs {needed}; raise it (ulimit -Hn)",
        limit.rlim_cur
    );
}

fn first_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).lines().next().map(str::to_owned))
        .unwrap_or_else(|| format!("{program}: not found"))
}

fn machine() -> String {
    format!(
        "- machine: {}\n- {}\n- {}\n- {}\n",
        rewrite_tests::machine::describe(),
        first_line("iptables-nft", &["--version"]),
        first_line("iptables-legacy", &["--version"]),
        first_line("nft", &["--version"]),
    )
}

fn render(
    plan: &Plan,
    machine: &str,
    figures: &[&Figure],
    exhaustion: &Figure,
    profiles: &[(u32, Backend, profile::Breakdown)],
    took: Duration,
) -> String {
    let mut out = String::from("# Benchmarks: rewrite against iptables and nftables\n\n");
    out.push_str(PREAMBLE);
    out.push_str(&format!(
        "\n## This run\n\n{machine}- mode: {}; {} passes; {:.1} s of traffic per figure and measurement; took {:.0} s\n\n",
        if plan.quick { "--quick (tiny tables, only proves the harness works)" } else { "full" },
        plan.passes,
        plan.traffic.as_secs_f64(),
        took.as_secs_f64()
    ));
    for figure in figures {
        out.push_str(&figure.markdown());
        out.push_str(&format!("\n![{}]({}/{}.svg)\n\n", figure.title, relative_dir(plan), figure.id));
    }
    out.push_str(&format!(
        "### Conntrack exhaustion\n\n`nf_conntrack_max` = {} (set in the init namespace for this figure only), {} \
         concurrent connections held open, N = 1,000 (or less in --quick).\n\n",
        plan.conntrack_max, plan.held_connections
    ));
    out.push_str(&exhaustion.markdown());
    out.push('\n');
    out.push_str(&render_profiles(profiles));
    let prog_cost = plan.out_dir.join("prog_cost.md");
    match std::fs::read_to_string(&prog_cost) {
        Ok(text) => out.push_str(&format!("\n{text}\n")),
        Err(_) => {
            out.push_str("\n(prog_cost.md is missing: run `cargo xtask bench`, which runs that benchmark first.)\n")
        }
    }
    if let Some(figure) = prog_cost_figure(&plan.out_dir) {
        figure.write_files(&plan.out_dir);
        out.push_str(&format!("![{}]({}/{}.svg)\n", figure.title, relative_dir(plan), figure.id));
    }
    out
}

/// The lookup paths `prog_cost` measures with address mappings only.
const PROG_COST_PATHS: [&str; 5] =
    ["empty XDP", "XDP address hit", "XDP miss", "TC egress address hit", "TC egress miss"];

/// The per-packet cost with address mappings only, read back from `prog_cost.csv`, as a
/// figure to plot (one sample per N: the median `prog_cost` measured).
fn prog_cost_figure(dir: &Path) -> Option<Figure> {
    let csv = std::fs::read_to_string(dir.join("prog_cost.csv")).ok()?;
    let mut figure = Figure::new("prog_cost", "Per-packet program cost, address mappings only", "ns", false, false);
    for line in csv.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        if let [tables, entries, path, median, ..] = fields[..]
            && tables == "address"
            && let (Ok(entries), Ok(median), Some(path)) =
                (entries.parse::<u32>(), median.parse::<f64>(), PROG_COST_PATHS.iter().find(|known| **known == path))
        {
            figure.record(entries, path, 0, median);
        }
    }
    Some(figure)
}

fn relative_dir(plan: &Plan) -> &'static str {
    if plan.quick { "." } else { "benchmarks" }
}

const PREAMBLE: &str = "\
`cargo xtask bench` writes this file (`--quick` writes `target/bench-quick/benchmarks.md` instead).

## How the figures are taken

Three network namespaces, client → router → server, joined by veth pairs. The
router translates; the client talks to N VIRTUAL addresses (10.64.0.0 + i), which the
router sends to N REAL addresses (10.128.0.0 + i) that the server owns as a block.
Every measurement builds the topology afresh, installs one backend in the router and
tears it all down, so no backend inherits another's netfilter hooks or conntrack table:

- `none`: the client talks to REAL directly; the router only routes. The ceiling.
- `rewrite-xdp`, `rewrite-tc`: `rewrite attach --iface rs --ingress xdp|tc` on the
  router's server-side interface, N address mappings installed with the library's batch
  update (`MappingTable::insert_new_unchecked`).
- `iptables-nft`, `iptables-legacy`: one `DNAT` rule per mapping in `nat PREROUTING` and
  one `SNAT` rule per mapping in `nat POSTROUTING` (the reverse direction, for
  connections the servers open), loaded with `iptables-restore`, as the migration
  write-ups do it. A new flow walks about N/2 DNAT rules and all N SNAT rules.
- `nft-map`: `dnat to ip daddr map @forward` and `snat to ip saddr map @reverse`: one rule
  each, O(1) lookups. The strongest netfilter baseline.
- `empty-xdp`, `empty-tc`: plain routing as in `none`, with programs that only pass the
  packet on the hooks `rewrite-xdp` (XDP ingress in driver mode, TC ingress and egress
  through tcx links) or `rewrite-tc` (TC ingress and egress) uses. Measured at N = 1
  only (they hold no table): the floor any program on those hooks starts from, so that
  `rewrite-… ÷ empty-…` is what rewrite's own work costs.

Traffic always targets mappings spread over the whole table (a multiplicative hash of
the flow number), never only the first rules. The client sends from 32 source
addresses. Both veth ends the traffic leaves from have TX checksum offload off (as a
wire would deliver it), for every backend alike, since XDP cannot see a partial
checksum.

- **New TCP connections per second**: nonblocking connect, then close with a reset,
  128 in flight, for the traffic time. Each new flow pays netfilter's rule walk and a
  conntrack entry; the router's conntrack close timeout is lowered to 1 s so that reset
  flows do not fill it. Rewrite and `none` use no conntrack at all.
- **Small UDP packets per second**: 18-byte datagrams (64-byte frames) over 131,072
  distinct 5-tuples (32 sources × 4,096 destination ports, destinations over all N),
  counted on the server's interface; the server drops them in routing. The flood is one
  way: in both rewrite modes only the router's TC egress program sees it (the ingress
  programs are on the interface nothing comes back through).
- **Bulk TCP**: one stream of 256 KiB writes, as the server receives it.
- **Install** and **change one**: wall time of `iptables-restore`, `nft -f` or rewrite's
  batch update for N mappings; and of one CLI process that retargets one mapping
  (`iptables-restore --noflush` with `-R`, `nft` deleting and adding map elements,
  `rewrite map add`) with N installed.
- **Memory**: the `memlock` the kernel reports for rewrite's maps, divided by N. The
  hash maps allocate their bucket arrays for their whole capacity (1,048,576 mappings by
  default) when they are created, so that fixed part dominates at small N. And the peak
  RSS (`VmHWM`, sampled) of the CLI process that changes one mapping.
- **Conntrack exhaustion**: the init namespace's `nf_conntrack_max` (which bounds each
  namespace's own table) is lowered, more connections than it allows are opened at once
  and held, and those not established within 3 s are counted.
- **Where the CPU goes**: the UDP figure once more at the smallest and largest N under
  `perf record`, summed by kind of work (see that section).
- **Per-packet program cost**: BPF_PROG_TEST_RUN of rewrite's programs against an empty
  XDP program, per lookup path (the `prog_cost` benchmark).

Every figure is the median of the passes with its minimum and maximum. The machine is
shared and noisy; ratios between backends are computed within each pass (runs close in
time) and then summarised, which is fairer than dividing medians. All CPUs are shared by
client, router and server, so the figures measure the whole path's CPU cost per packet
or connection rather than any single stage's limit. No test asserts on speed.
";
