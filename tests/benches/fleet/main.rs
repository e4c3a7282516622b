//! `cargo xtask bench` (fleet): how fast the fleet control plane moves a change, on a
//! real etcd and real agents (the release `rewrite` binary) in namespaces.
//!
//! - Propagation: from the moment an etcd write is issued until the forward map of
//!   every one of three agents has changed, over 1,000 changes (alternately a new
//!   mapping and the removal of the previous one), one at a time. The maps are polled
//!   directly through their pins every 100 µs.
//! - Full sync: 100,000 mappings in etcd, a new agent with empty pins: from its start
//!   until it logs the sync done, with the part the agent itself measures (read,
//!   check, write).
//! - The agent's resident memory with those 100,000 mappings.
//!
//! `--quick` runs 100 changes and 10,000 mappings, to prove the harness works.

#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "counts and durations of a benchmark, shown as f64"
)]

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use etcd_client::{Client, Txn, TxnOp};
use rewrite_tests::{
    fleet::{ETCD_PORT, Fleet, PREFIX},
    machine,
};
use rewrite_user::{dataplane::pins::PinLayout, fleet::Layout, table::live::MappingTable};

/// etcd's default limit of operations per transaction.
const TXN_OPS: usize = 128;
/// The prefix of the full-sync table, apart from the propagation one.
const BULK_PREFIX: &str = "/rewrite/bulk";

mod scale;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|arg| arg == "--simulate") {
        scale::simulate(&args[at + 1..(at + 7).min(args.len())]);
        return;
    }
    // Room for every connection of thousands of simulated nodes, in etcd and in the
    // simulators, which inherit the limit: the soft limit up to the hard one.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).expect("read the open files limit");
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
        .expect("raise the open files limit");
    let quick = args.iter().any(|arg| arg == "--quick");
    let (changes, bulk) = if quick { (100, 10_000) } else { (1_000, 100_000) };
    let probes = if quick { 10 } else { 50 };
    let scenarios = scale_scenarios(quick, &args);
    // `--scale-only` runs the scale figure alone and prints it (to explore its limits).
    if args.iter().any(|arg| arg == "--scale-only") {
        let runs: Vec<_> = scenarios.iter().map(|scenario| scale::run(*scenario, probes, bulk)).collect();
        print!("{}", scale::render(&runs));
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf();
    // The full run's report is kept with the other benchmarks; a quick run proves the
    // harness and writes under target/.
    let report_path = root.join(if quick { "target/bench-quick/fleet.md" } else { "docs/fleet-benchmarks.md" });
    if let Some(dir) = report_path.parent() {
        std::fs::create_dir_all(dir).expect("create the report directory");
    }

    let fleet = Fleet::new(4);
    let agents: Vec<_> = fleet.nodes[..3].iter().map(|node| node.start_agent(&[])).collect();
    for agent in &agents {
        agent.wait_for("connected", Duration::from_secs(20), |text| text.contains("rewrite_fleet_connected 1"));
    }
    let tables: Vec<MappingTable> = fleet.nodes[..3]
        .iter()
        .map(|node| MappingTable::open(&PinLayout::new(node.pins.path())).expect("open a node's maps"))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");

    // Propagation.
    let latencies = fleet.hub.run(|| {
        runtime.block_on(async {
            let mut client = connect().await;
            let layout = Layout::new(PREFIX).expect("prefix");
            let mut latencies = Vec::with_capacity(changes);
            for change in 0..changes {
                let index = change / 2;
                let virtual_addr = overlay(index);
                let key = layout.mapping(&virtual_addr.to_string());
                let adding = change % 2 == 0;
                let started = Instant::now();
                if adding {
                    client.put(key, mapping_json(virtual_addr, real(index)), None).await.expect("put a mapping");
                } else {
                    client.delete(key, None).await.expect("delete a mapping");
                }
                let wanted = adding.then(|| real(index));
                let deadline = started + Duration::from_secs(10);
                while !tables.iter().all(|table| table.real_of(virtual_addr).expect("lookup") == wanted) {
                    assert!(Instant::now() < deadline, "change {change} did not reach every node within 10 s");
                    std::thread::sleep(Duration::from_micros(100));
                }
                latencies.push(started.elapsed());
            }
            latencies
        })
    });
    drop(agents);

    // Full sync into an empty agent.
    let sync = full_sync(&fleet, &fleet.nodes[3], bulk);
    drop(fleet);

    // The fleet at scale.
    let scale: Vec<_> = scenarios.iter().map(|scenario| scale::run(*scenario, probes, bulk)).collect();
    let mut report = render(&machine::describe(), &latencies, bulk, &sync);
    report.push_str(&scale::render(&scale));
    print!("{report}");
    std::fs::write(&report_path, &report).unwrap_or_else(|error| panic!("write {}: {error}", report_path.display()));
    println!("report: {}", report_path.display());
}

/// A full sync of `bulk` mappings (written first, under [`BULK_PREFIX`]) into a new agent
/// with empty pins on `node`.
fn full_sync(fleet: &Fleet, node: &rewrite_tests::fleet::Node, bulk: usize) -> SyncFigures {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let write_started = Instant::now();
    fleet.hub.run(|| runtime.block_on(write_bulk(bulk)));
    let write_seconds = write_started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut agent = node.spawn_agent_on(BULK_PREFIX, &[]);
    let deadline = started + Duration::from_secs(120);
    let synced = loop {
        let log = agent.log();
        if let Some(line) = log
            .lines()
            .find(|line| line.contains("\"source\":\"fleet table\"") && line.contains("\"reason\":\"start\""))
        {
            break (started.elapsed(), line.to_owned());
        }
        assert!(Instant::now() < deadline, "the agent did not sync {bulk} mappings within 120 s:\n{log}");
        std::thread::sleep(Duration::from_millis(2));
    };
    // Memory before anything scrapes the metrics (a scrape of 100,000 mappings' counters
    // is a large reply of its own).
    std::thread::sleep(Duration::from_millis(200));
    let (rss, peak) = memory(agent.pid());
    agent.wait_serving();
    let agent_seconds = json_number(&synced.1, "seconds");
    let log = agent.log();
    let following = log
        .lines()
        .find(|line| line.contains("following the fleet table"))
        .expect("the agent logs when it starts following");
    let fleet_seconds = log_time(&synced.1) - log_time(following);
    let attach_line =
        log.lines().find(|line| line.contains("\"message\":\"applied\"")).expect("the config apply is logged");
    let attach_seconds = json_number(attach_line, "seconds");
    let table = MappingTable::open(&PinLayout::new(node.pins.path())).expect("open the maps");
    let listed = table.list().expect("list the maps").mappings.len();
    assert_eq!(listed, bulk, "every mapping must be in the maps after the sync");

    SyncFigures { total: synced.0, attach_seconds, fleet_seconds, agent_seconds, rss, peak, write_seconds }
}

/// The scale figure's runs: growing fleets, following etcd itself and then through gRPC
/// proxies (one per 500 nodes), up to 8,000 nodes. `--nodes N [--proxies K] [--register-only]`
/// runs one scenario instead.
fn scale_scenarios(quick: bool, args: &[String]) -> Vec<scale::Scenario> {
    let value = |flag: &str| {
        args.iter()
            .position(|arg| arg == flag)
            .and_then(|at| args.get(at + 1))
            .map(|text| text.parse::<usize>().unwrap_or_else(|_| panic!("{flag} takes a number, not {text:?}")))
    };
    let scenario = |nodes: usize, proxies: usize, follow: bool, seconds: u64| scale::Scenario {
        nodes,
        proxies,
        follow,
        limit: Duration::from_secs(seconds),
        sync_under_load: false,
    };
    if let Some(nodes) = value("--nodes") {
        let follow = !args.iter().any(|arg| arg == "--register-only");
        return vec![scale::Scenario {
            sync_under_load: true,
            ..scenario(nodes, value("--proxies").unwrap_or(0), follow, 600)
        }];
    }
    if quick {
        return vec![
            scenario(200, 0, true, 60),
            scale::Scenario { sync_under_load: true, ..scenario(200, 1, true, 60) },
        ];
    }
    vec![
        scenario(1_000, 0, true, 120),
        scenario(2_000, 0, true, 120),
        scenario(2_000, 4, true, 180),
        scale::Scenario { sync_under_load: true, ..scenario(4_000, 8, true, 240) },
        scenario(8_000, 0, false, 180),
        scenario(8_000, 16, true, 300),
    ]
}

async fn connect() -> Client {
    Client::connect([format!("http://127.0.0.1:{ETCD_PORT}")], None).await.expect("connect to the bench etcd")
}

/// VIRTUAL addresses of the changes: 100.66.0.1 onwards.
fn overlay(index: usize) -> IpAddr {
    let value = u32::from(std::net::Ipv4Addr::new(100, 66, 0, 1)) + index as u32;
    IpAddr::V4(value.into())
}

/// Their REALs: 10.230.0.1 onwards, none of them a node's own address.
fn real(index: usize) -> IpAddr {
    let value = u32::from(std::net::Ipv4Addr::new(10, 230, 0, 1)) + index as u32;
    IpAddr::V4(value.into())
}

fn mapping_json(virtual_addr: IpAddr, real_addr: IpAddr) -> String {
    format!(r#"{{"virtual":"{virtual_addr}","real":"{real_addr}"}}"#)
}

/// `count` mappings under [`BULK_PREFIX`], written in transactions of [`TXN_OPS`].
async fn write_bulk(count: usize) {
    let mut client = connect().await;
    let layout = Layout::new(BULK_PREFIX).expect("prefix");
    let keys: Vec<(String, String)> = (0..count)
        .map(|index| {
            let virtual_addr = overlay(index);
            (layout.mapping(&virtual_addr.to_string()), mapping_json(virtual_addr, real(index)))
        })
        .collect();
    for chunk in keys.chunks(TXN_OPS) {
        let operations: Vec<TxnOp> =
            chunk.iter().map(|(key, value)| TxnOp::put(key.as_str(), value.as_str(), None)).collect();
        client.txn(Txn::new().and_then(operations)).await.expect("write a batch of mappings");
    }
}

/// Seconds since midnight (UTC) of a JSON log line's timestamp.
fn log_time(line: &str) -> f64 {
    let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"));
    let stamp = value["timestamp"].as_str().unwrap_or_else(|| panic!("no timestamp in {line}"));
    let time = stamp.split_once('T').map(|(_, time)| time.trim_end_matches('Z')).unwrap_or_default();
    let mut parts = time.split(':').map(|part| part.parse::<f64>().unwrap_or_else(|_| panic!("bad timestamp {stamp}")));
    let (hours, minutes, seconds) =
        (parts.next().unwrap_or(0.0), parts.next().unwrap_or(0.0), parts.next().unwrap_or(0.0));
    hours * 3600.0 + minutes * 60.0 + seconds
}

/// A number field of a JSON log line (`"fields":{..., "seconds":0.12}`).
fn json_number(line: &str, field: &str) -> f64 {
    let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"));
    value["fields"][field].as_f64().unwrap_or_else(|| panic!("no {field} in {line}"))
}

/// (VmRSS, VmHWM) of a process, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(PathBuf::from("/proc").join(pid.to_string()).join("status"))
        .expect("read /proc/PID/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

/// The full sync's figures.
struct SyncFigures {
    /// From the agent's start until its log says the maps are written.
    total: Duration,
    /// Loading and attaching the programs on the config's interface, before the fleet.
    attach_seconds: f64,
    /// From "following the fleet table" to the maps written: connect, read, check, write.
    fleet_seconds: f64,
    /// The part the agent measures: check and write.
    agent_seconds: f64,
    rss: f64,
    peak: f64,
    /// Writing the mappings into etcd first.
    write_seconds: f64,
}

fn render(machine: &str, latencies: &[Duration], bulk: usize, sync: &SyncFigures) -> String {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let mean = sorted.iter().sum::<Duration>() / u32::try_from(sorted.len()).unwrap_or(1);
    let mut out = String::from("# Fleet control plane\n\n");
    out.push_str(&format!(
        "Machine: {machine}. etcd {} on tmpfs, in a namespace; three agents (release build) in three more.\n\n",
        etcd_version()
    ));
    out.push_str(&format!(
        "## Propagation: etcd write issued -> forward map changed on all 3 nodes ({} changes)\n\n",
        sorted.len()
    ));
    out.push_str("| p50 | p90 | p99 | max | mean |\n|---|---|---|---|---|\n");
    out.push_str(&format!(
        "| {} | {} | {} | {} | {} |\n\n",
        ms(percentile(&sorted, 0.5)),
        ms(percentile(&sorted, 0.9)),
        ms(percentile(&sorted, 0.99)),
        ms(sorted.last().copied().unwrap_or_default()),
        ms(mean)
    ));
    out.push_str(&format!("## Full sync of {bulk} mappings into an agent with empty pins\n\n"));
    out.push_str(
        "| agent start to maps written | of which: attach programs (config) | fleet: connect, read, check, write | of which check and write | agent RSS after | agent peak RSS |\n|---|---|---|---|---|---|\n",
    );
    out.push_str(&format!(
        "| {:.3} s | {:.3} s | {:.3} s | {:.3} s | {:.1} MiB | {:.1} MiB |\n\n",
        sync.total.as_secs_f64(),
        sync.attach_seconds,
        sync.fleet_seconds,
        sync.agent_seconds,
        sync.rss,
        sync.peak
    ));
    out.push_str(&format!(
        "(Writing the {bulk} mappings into etcd, {TXN_OPS} per transaction, took {:.2} s.)\n",
        sync.write_seconds
    ));
    out
}

fn etcd_version() -> String {
    std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout).lines().next().map(|line| line.replace("etcd Version: ", ""))
        })
        .unwrap_or_else(|| "unknown".into())
}
