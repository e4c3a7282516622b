//! The fleet at Neti's scale: thousands of simulated nodes on one real etcd.
//!
//! Each simulated node runs the agent's own etcd code, `keep_registered` (claim a
//! VIRTUAL from the pool, write its mapping and record, renew its lease) and
//! `follow_table` (read the table, then watch it; every mapping decoded and checked),
//! with its own two connections to etcd, as a real agent has. What a simulated node
//! does not do is write BPF maps: 8,000 tables of 8,000 mappings would take this
//! machine's memory many times over. Instead it keeps the set of VIRTUALs it follows
//! (a bit per pool address), and one real agent (the release binary, real maps)
//! follows the same table beside them, so the map writes are measured too.
//!
//! Simulated nodes run in processes of [`NODES_PER_PROCESS`], each a single-threaded
//! tokio runtime (this bench's own binary, started with `--simulate`), inside the hub
//! namespace where etcd listens on loopback. They report on stdout, one line per event
//! (timestamps are CLOCK_MONOTONIC, which every process on the host shares):
//!
//! Started with `--simulate ENDPOINT WATCH_ENDPOINT FIRST COUNT EXPECTED FOLLOW`: nodes
//! FIRST.. register with etcd at ENDPOINT and (if FOLLOW is `follow`) follow the table
//! through WATCH_ENDPOINT (etcd itself, or a gRPC proxy, as `--etcd-watch` does).
//!
//! ```text
//! reg NODE NS            registered (claim, mapping and record committed)
//! conv NODE NS           follows every node's mapping (EXPECTED of them)
//! probe K NS NS ...      every node of the process saw probe mapping K, when each saw it
//! stats FAILED DISCONNECTED SNAPSHOTS     every second: counts so far
//! error NODE TEXT        the first few registration failures, for the record
//! ```

use std::{
    collections::{BTreeMap, HashSet},
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, Ipv4Addr},
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::time::{ClockId, clock_gettime};
use rewrite_tests::fleet::{ETCD_PORT, Fleet, PREFIX};
use rewrite_user::{
    dataplane::pins::PinLayout,
    fleet::{
        MappingExpiry, NodeOptions, StoreOptions,
        watch::{Update, follow_table, keep_registered},
    },
    table::live::MappingTable,
};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

/// Simulated nodes per process: a few hundred, as the issue asks, so that no single
/// runtime's queue holds thousands of watch streams.
pub const NODES_PER_PROCESS: usize = 250;
/// The pool the simulated nodes claim from, and its first address.
const POOL: &str = "scale";
const POOL_PREFIX: &str = "100.64.0.0/16";
const POOL_BASE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// Probe mappings (the single changes whose propagation is measured): 10.255.0.K.
const PROBE_BASE: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 0);
/// The lease of a simulated node: the agent's default.
const LEASE_TTL: Duration = Duration::from_secs(10);
/// How long etcd's load is measured while nothing changes.
const IDLE_WINDOW: Duration = Duration::from_secs(5);
/// The first etcd gRPC proxy's port (the others follow).
const PROXY_PORT: u16 = 23_800;
/// Registration failures each process reports in full.
const ERRORS_SHOWN: usize = 3;

/// Nanoseconds of CLOCK_MONOTONIC, shared by every process on the host.
pub fn monotonic_ns() -> u64 {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("read CLOCK_MONOTONIC");
    u64::try_from(now.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec()).unwrap_or(0)
}

/// The REAL address of simulated node `index`: 10.200.0.0/16 onwards (data only: no
/// interface has it).
fn sim_real(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 1)) + index as u32))
}

fn probe_key(probe: u16) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(PROBE_BASE) + u32::from(probe))
}

/// The probe number of a mapping key, if it is one.
fn probe_of(key: &str) -> Option<u16> {
    let addr: Ipv4Addr = key.parse().ok()?;
    let offset = u32::from(addr).checked_sub(u32::from(PROBE_BASE))?;
    u16::try_from(offset).ok()
}

// ---------------------------------------------------------------------------------
// The simulator: `--simulate ENDPOINT FIRST COUNT EXPECTED`.
// ---------------------------------------------------------------------------------

/// What a simulated node tells its process's reporter.
enum Event {
    Registered { node: usize, ns: u64 },
    Converged { node: usize, ns: u64 },
    Probe { probe: u16, ns: u64 },
    RegistrationFailed { node: usize, error: String },
    Disconnected,
    Snapshot,
}

/// The VIRTUALs of the pool a node follows: one bit per address of the /16.
struct PoolBits {
    words: Vec<u64>,
    count: usize,
}

impl PoolBits {
    fn new() -> Self {
        Self { words: vec![0; 1 << 10], count: 0 }
    }

    fn index(key: &str) -> Option<usize> {
        let addr: Ipv4Addr = key.parse().ok()?;
        let offset = u32::from(addr).checked_sub(u32::from(POOL_BASE))?;
        (offset < 1 << 16).then_some(offset as usize)
    }

    fn set(&mut self, key: &str, present: bool) {
        let Some(index) = Self::index(key) else { return };
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        let was = self.words[word] & bit != 0;
        if present && !was {
            self.words[word] |= bit;
            self.count += 1;
        } else if !present && was {
            self.words[word] &= !bit;
            self.count -= 1;
        }
    }

    fn clear(&mut self) {
        self.words.fill(0);
        self.count = 0;
    }
}

pub fn simulate(args: &[String]) {
    let [endpoint, watch_endpoint, first, count, expected, follow] = args else {
        panic!("--simulate ENDPOINT WATCH_ENDPOINT FIRST COUNT EXPECTED FOLLOW, not {args:?}");
    };
    let follow = follow == "follow";
    let number = |text: &str| text.parse::<usize>().unwrap_or_else(|_| panic!("not a number: {text}"));
    let (first, count, expected) = (number(first), number(count), number(expected));
    let mut options = StoreOptions::new(vec![endpoint.clone()], PREFIX.to_owned());
    options.keepalive = Duration::from_secs(10);
    let mut watch_options = options.clone();
    watch_options.endpoints = vec![watch_endpoint.clone()];
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async move {
        let (events, receiver) = unbounded_channel();
        for index in first..first + count {
            let node = NodeOptions {
                id: format!("sim{index}"),
                reals: vec![sim_real(index)],
                pool: POOL.to_owned(),
                lease_ttl: LEASE_TTL,
                expiry: MappingExpiry::WithLease,
                release_claim_after: None,
            };
            let watch = follow.then(|| watch_options.clone());
            tokio::spawn(run_node(options.clone(), watch, index, node, expected, events.clone()));
        }
        drop(events);
        report(receiver, count).await;
    });
}

/// One simulated node: the agent's registration and following tasks, and a follower
/// that keeps the set of VIRTUALs in the table.
async fn run_node(
    options: StoreOptions,
    watch_options: Option<StoreOptions>,
    index: usize,
    node: NodeOptions,
    expected: usize,
    events: UnboundedSender<Event>,
) {
    let (updates, mut received) = unbounded_channel();
    let retry_max = Duration::from_secs(2);
    tokio::spawn(keep_registered(options.clone(), node, retry_max, updates.clone()));
    if let Some(watch_options) = watch_options {
        tokio::spawn(follow_table(watch_options, retry_max, updates));
    }
    let mut table = PoolBits::new();
    let mut probes_seen = HashSet::new();
    let mut converged = false;
    let mut saw_probe = |probe: u16, events: &UnboundedSender<Event>| {
        if probes_seen.insert(probe) {
            let _ = events.send(Event::Probe { probe, ns: monotonic_ns() });
        }
    };
    while let Some(update) = received.recv().await {
        match update {
            Update::Snapshot { entries, .. } => {
                table.clear();
                for (key, entry) in &entries {
                    match probe_of(key) {
                        Some(probe) => saw_probe(probe, &events),
                        None => table.set(key, entry.is_ok()),
                    }
                }
                let _ = events.send(Event::Snapshot);
            }
            Update::Changes { changes, .. } => {
                for (key, entry) in &changes {
                    match (probe_of(key), entry) {
                        (Some(probe), Some(_)) => saw_probe(probe, &events),
                        (Some(_), None) => {}
                        (None, entry) => table.set(key, matches!(entry, Some(Ok(_)))),
                    }
                }
            }
            Update::Registered { .. } => {
                let _ = events.send(Event::Registered { node: index, ns: monotonic_ns() });
            }
            Update::RegistrationFailed { error } => {
                let _ = events.send(Event::RegistrationFailed { node: index, error });
            }
            Update::Disconnected { .. } => {
                let _ = events.send(Event::Disconnected);
            }
        }
        if !converged && table.count >= expected {
            converged = true;
            let _ = events.send(Event::Converged { node: index, ns: monotonic_ns() });
        }
    }
}

/// Writes the process's events to stdout (see the module documentation).
async fn report(mut events: tokio::sync::mpsc::UnboundedReceiver<Event>, count: usize) {
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut probes: BTreeMap<u16, Vec<u64>> = BTreeMap::new();
    let (mut failed, mut disconnected, mut snapshots, mut errors_shown) = (0u64, 0u64, 0u64, 0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = tick.tick() => {
                let _ = writeln!(out, "stats {failed} {disconnected} {snapshots}");
                let _ = out.flush();
                continue;
            }
        };
        let Some(event) = event else { break };
        let _ = match event {
            Event::Registered { node, ns } => writeln!(out, "reg {node} {ns}"),
            Event::Converged { node, ns } => writeln!(out, "conv {node} {ns}"),
            Event::Probe { probe, ns } => {
                let seen = probes.entry(probe).or_default();
                seen.push(ns);
                if seen.len() == count {
                    let times: Vec<String> = seen.iter().map(ToString::to_string).collect();
                    writeln!(out, "probe {probe} {}", times.join(" "))
                } else {
                    Ok(())
                }
            }
            Event::RegistrationFailed { node, error } => {
                failed += 1;
                errors_shown += 1;
                if errors_shown <= ERRORS_SHOWN {
                    writeln!(out, "error {node} {}", error.replace('\n', " "))
                } else {
                    Ok(())
                }
            }
            Event::Disconnected => {
                disconnected += 1;
                Ok(())
            }
            Event::Snapshot => {
                snapshots += 1;
                Ok(())
            }
        };
        if events.is_empty() {
            let _ = out.flush();
        }
    }
}

// ---------------------------------------------------------------------------------
// The coordinator.
// ---------------------------------------------------------------------------------

/// The simulator processes, killed on drop.
struct Simulators {
    children: Vec<Child>,
}

impl Drop for Simulators {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |index: usize| fields.get(index).and_then(|field| field.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// What the scale run measured.
pub struct ScaleFigures {
    pub scenario: Scenario,
    pub processes: usize,
    /// Registrations in all (more than nodes if leases lapsed and nodes registered again).
    pub registrations: usize,
    /// The probe that did not reach every node within a minute, if one did not.
    pub probe_limit: Option<u16>,
    /// etcd's CPU seconds per second while nothing changes.
    pub etcd_cpu_idle: f64,
    /// Seconds from the start of the first simulator to each node's registration, and
    /// to each node following every node's mapping.
    pub registered: Vec<f64>,
    pub converged: Vec<f64>,
    /// Nodes that had not converged when the run gave up waiting.
    pub unconverged: usize,
    pub waited: f64,
    /// Seconds until the real agent's maps held every node's mapping.
    pub agent_converged: Option<f64>,
    /// Each probe's latency at each simulated node, and the slowest node of each probe.
    pub probe_latencies: Vec<Duration>,
    pub probe_slowest: Vec<Duration>,
    /// Each probe's latency to the real agent's forward map (polled every 200 µs).
    pub agent_probe_latencies: Vec<Duration>,
    pub probes: usize,
    /// The size of the table the full sync under load read.
    pub bulk: usize,
    pub etcd_cpu_start: f64,
    pub etcd_cpu_probes: f64,
    pub etcd_rss: (f64, f64),
    pub simulators_cpu_start: f64,
    pub simulators_rss: f64,
    pub proxies_cpu_start: f64,
    pub proxies_rss: f64,
    pub agent_rss: (f64, f64),
    pub registration_failures: u64,
    pub disconnects: u64,
    pub snapshots: u64,
    pub errors: Vec<String>,
    pub sync_under_load: Option<super::SyncFigures>,
}

/// A simulator's stdout line, with the process it came from.
type Line = (usize, String);

/// What the simulators reported so far.
#[derive(Default)]
struct Collected {
    started_ns: u64,
    /// Each node's first registration; registrations counts them all (a node whose
    /// lease lapsed registers again).
    registered: BTreeMap<usize, f64>,
    registrations: usize,
    converged: Vec<f64>,
    /// Per process: registration failures, disconnects, snapshots read.
    stats: BTreeMap<usize, (u64, u64, u64)>,
    errors: Vec<String>,
    /// Per probe: when each node saw it, and how many processes reported it whole.
    probe_lines: BTreeMap<u16, Vec<u64>>,
    probe_processes: BTreeMap<u16, usize>,
}

impl Collected {
    fn since_start(&self, ns: u64) -> f64 {
        ns.saturating_sub(self.started_ns) as f64 / 1e9
    }

    fn handle(&mut self, (process, line): Line) {
        let mut words = line.split_whitespace();
        let number = |word: Option<&str>| word.and_then(|word| word.parse::<u64>().ok()).unwrap_or(0);
        match words.next() {
            Some("reg") => {
                let node = usize::try_from(number(words.next())).unwrap_or(usize::MAX);
                let at = self.since_start(number(words.next()));
                self.registered.entry(node).or_insert(at);
                self.registrations += 1;
            }
            Some("conv") => {
                let at = self.since_start(number(words.nth(1)));
                self.converged.push(at);
            }
            Some("probe") => {
                let probe = u16::try_from(number(words.next())).unwrap_or(u16::MAX);
                self.probe_lines.entry(probe).or_default().extend(words.filter_map(|word| word.parse::<u64>().ok()));
                *self.probe_processes.entry(probe).or_default() += 1;
            }
            Some("stats") => {
                let counts = (number(words.next()), number(words.next()), number(words.next()));
                self.stats.insert(process, counts);
            }
            Some("error") if self.errors.len() < 10 => self.errors.push(line.clone()),
            _ => {}
        }
    }
}

/// One run of the scale figure.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub nodes: usize,
    /// etcd gRPC proxies the nodes follow the table through (0: etcd itself).
    pub proxies: usize,
    /// Whether the nodes follow the table (or only register and renew their leases).
    pub follow: bool,
    /// How long to wait for every node to converge before recording the limit.
    pub limit: Duration,
    /// Whether to measure a full sync of the bulk table while this fleet is connected.
    pub sync_under_load: bool,
}

/// Runs a scenario's simulated nodes and one real agent against a fresh etcd; once they
/// converge, measures `probes` single changes, etcd's load while nothing changes and,
/// if asked, a full sync of `bulk` mappings into a second real agent.
pub fn run(scenario: Scenario, probes: usize, bulk: usize) -> ScaleFigures {
    let Scenario { nodes, proxies, follow, limit: converge_limit, .. } = scenario;
    eprintln!(
        "fleet at scale: {nodes} nodes, {}",
        match (follow, proxies) {
            (false, _) => "registering only".to_owned(),
            (true, 0) => "following etcd itself".to_owned(),
            (true, proxies) => format!("following through {proxies} gRPC proxies"),
        }
    );
    let fleet = Fleet::new(2);
    fleet.fleet_ok(&["pool", "add", POOL, POOL_PREFIX]);
    let etcd_pid = fleet.etcd.pid().expect("etcd runs");
    let observer = &fleet.nodes[0];
    let agent = observer.start_agent(&[]);
    agent.wait_for("connected", Duration::from_secs(20), |text| text.contains("rewrite_fleet_connected 1"));
    let table = MappingTable::open(&PinLayout::new(observer.pins.path())).expect("open the real agent's maps");

    let exe = std::env::current_exe().expect("the bench's own path");
    let mut proxy_processes = Simulators { children: Vec::new() };
    let direct = format!("http://127.0.0.1:{ETCD_PORT}");
    let endpoints: Vec<String> = if proxies == 0 {
        vec![direct.clone()]
    } else {
        (0..proxies)
            .map(|proxy| {
                let port = PROXY_PORT + proxy as u16;
                let child = fleet
                    .hub
                    .command("etcd")
                    .args([
                        "grpc-proxy",
                        "start",
                        &format!("--endpoints=127.0.0.1:{ETCD_PORT}"),
                        &format!("--listen-addr=127.0.0.1:{port}"),
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start an etcd gRPC proxy");
                proxy_processes.children.push(child);
                let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
                let deadline = Instant::now() + Duration::from_secs(20);
                while fleet.hub.run(|| std::net::TcpStream::connect(address).is_err()) {
                    assert!(Instant::now() < deadline, "the gRPC proxy on {address} does not listen");
                    std::thread::sleep(Duration::from_millis(20));
                }
                format!("http://{address}")
            })
            .collect()
    };
    let processes = nodes.div_ceil(NODES_PER_PROCESS);
    let (lines, received) = mpsc::channel::<Line>();
    let etcd_cpu_before = cpu_seconds(etcd_pid);
    let started_ns = monotonic_ns();
    let started = Instant::now();
    let mut simulators = Simulators { children: Vec::new() };
    for process in 0..processes {
        let first = process * NODES_PER_PROCESS;
        let count = NODES_PER_PROCESS.min(nodes - first);
        let mut child = fleet
            .hub
            .command(exe.to_str().expect("utf-8 path"))
            .args([
                "--simulate",
                &direct,
                &endpoints[process % endpoints.len()],
                &first.to_string(),
                &count.to_string(),
                &nodes.to_string(),
                if follow { "follow" } else { "register" },
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a simulator");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send((process, line)).is_err() {
                    break;
                }
            }
        });
        simulators.children.push(child);
    }
    drop(lines);

    let mut seen = Collected { started_ns, ..Collected::default() };
    // Convergence: every simulated node follows every node's mapping.
    let deadline = started + converge_limit;
    let mut last_progress = Instant::now();
    let mut agent_converged = None;
    let done = |seen: &Collected| if follow { seen.converged.len() } else { seen.registered.len() };
    while done(&seen) < nodes && Instant::now() < deadline {
        match received.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => seen.handle(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("every simulator exited before the fleet converged"),
        }
        if agent_converged.is_none() && table.list().map(|list| list.mappings.len()).unwrap_or(0) >= nodes {
            agent_converged = Some(started.elapsed().as_secs_f64());
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            eprintln!(
                "  {:>5.1} s: {} of {nodes} registered, {} converged; etcd {:.1} CPU s",
                started.elapsed().as_secs_f64(),
                seen.registered.len(),
                seen.converged.len(),
                cpu_seconds(etcd_pid) - etcd_cpu_before
            );
        }
    }
    let waited = started.elapsed().as_secs_f64();
    let etcd_cpu_start = cpu_seconds(etcd_pid) - etcd_cpu_before;
    let simulators_cpu_start =
        simulators.children.iter().map(|child| cpu_seconds(child.id())).fold(0.0, |sum, each| sum + each);
    let proxies_cpu_start =
        proxy_processes.children.iter().map(|child| cpu_seconds(child.id())).fold(0.0, |sum, each| sum + each);
    let unconverged = nodes - done(&seen);
    while follow
        && agent_converged.is_none()
        && unconverged == 0
        && started.elapsed() < converge_limit + Duration::from_secs(30)
    {
        if table.list().map(|list| list.mappings.len()).unwrap_or(0) >= nodes {
            agent_converged = Some(started.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    // Single changes, one at a time, once the fleet is quiet.
    let mut probe_latencies = Vec::new();
    let mut probe_slowest = Vec::new();
    let mut agent_probe_latencies = Vec::new();
    let mut etcd_cpu_probes = 0.0;
    let mut probe_limit = None;
    // etcd's load while nothing changes: the nodes' lease renewals (and watches).
    let mut etcd_cpu_idle = f64::NAN;
    if unconverged == 0 {
        std::thread::sleep(Duration::from_secs(2));
        let idle_from = (cpu_seconds(etcd_pid), Instant::now());
        std::thread::sleep(IDLE_WINDOW);
        etcd_cpu_idle = (cpu_seconds(etcd_pid) - idle_from.0) / idle_from.1.elapsed().as_secs_f64();
        while let Ok(line) = received.try_recv() {
            seen.handle(line);
        }
    }
    if unconverged == 0 && follow {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let mut client = fleet.hub.run(|| runtime.block_on(super::connect()));
        let layout = rewrite_user::fleet::Layout::new(PREFIX).expect("prefix");
        let cpu_before = cpu_seconds(etcd_pid);
        'probes: for probe in 0..u16::try_from(probes).expect("probes fit u16") {
            let virtual_addr = IpAddr::V4(probe_key(probe));
            // Each probe its own REAL: the table refuses a REAL mapped twice.
            let real_addr = IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 254, 0, 1)) + u32::from(probe)));
            let key = layout.mapping(&virtual_addr.to_string());
            let put_ns = monotonic_ns();
            let put_at = Instant::now();
            fleet.hub.run(|| {
                runtime
                    .block_on(client.put(key, super::mapping_json(virtual_addr, real_addr), None))
                    .expect("put a probe")
            });
            let deadline = put_at + Duration::from_secs(60);
            let mut agent_seen = None;
            while seen.probe_processes.get(&probe).copied().unwrap_or(0) < processes || agent_seen.is_none() {
                if Instant::now() >= deadline {
                    // A limit, not a failure: recorded in the report.
                    probe_limit = Some(probe);
                    break 'probes;
                }
                if agent_seen.is_none() && table.real_of(virtual_addr).expect("look up the probe").is_some() {
                    agent_seen = Some(put_at.elapsed());
                }
                match received.recv_timeout(Duration::from_micros(200)) {
                    Ok(line) => seen.handle(line),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the simulators exited during the probes"),
                }
            }
            agent_probe_latencies.extend(agent_seen);
            let latencies: Vec<Duration> =
                seen.probe_lines[&probe].iter().map(|ns| Duration::from_nanos(ns.saturating_sub(put_ns))).collect();
            probe_slowest.push(latencies.iter().copied().max().unwrap_or_default());
            probe_latencies.extend(latencies);
            // Let the fleet settle between probes, as single changes are apart in life.
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd_cpu_probes = (cpu_seconds(etcd_pid) - cpu_before) / probes.max(1) as f64;
    }
    let etcd_rss = super::memory(etcd_pid);
    let simulators_rss =
        simulators.children.iter().map(|child| super::memory(child.id()).0).fold(0.0, |sum, each| sum + each);
    let proxies_rss =
        proxy_processes.children.iter().map(|child| super::memory(child.id()).0).fold(0.0, |sum, each| sum + each);
    let agent_rss = super::memory(agent.pid());
    while let Ok(line) = received.try_recv() {
        seen.handle(line);
    }
    let totals = seen.stats.values().fold((0, 0, 0), |sum, each| (sum.0 + each.0, sum.1 + each.1, sum.2 + each.2));

    // A full sync of `bulk` mappings while the simulated fleet stays connected.
    let sync_under_load =
        (unconverged == 0 && scenario.sync_under_load).then(|| super::full_sync(&fleet, &fleet.nodes[1], bulk));
    drop(simulators);
    drop(proxy_processes);
    drop(agent);

    let Collected { registered, registrations, mut converged, errors, .. } = seen;
    let mut registered: Vec<f64> = registered.into_values().collect();
    registered.sort_by(f64::total_cmp);
    converged.sort_by(f64::total_cmp);
    ScaleFigures {
        scenario,
        processes,
        registrations,
        probe_limit,
        etcd_cpu_idle,
        registered,
        converged,
        unconverged,
        waited,
        agent_converged,
        probe_latencies,
        probe_slowest,
        agent_probe_latencies,
        probes,
        bulk,
        etcd_cpu_start,
        etcd_cpu_probes,
        etcd_rss,
        simulators_cpu_start,
        simulators_rss,
        proxies_cpu_start,
        proxies_rss,
        agent_rss,
        registration_failures: totals.0,
        disconnects: totals.1,
        snapshots: totals.2,
        errors,
        sync_under_load,
    }
}

fn seconds_at(sorted: &[f64], fraction: f64) -> Option<f64> {
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(index).copied()
}

fn following(scenario: &Scenario) -> String {
    match (scenario.follow, scenario.proxies) {
        (false, _) => "no (register only)".to_owned(),
        (true, 0) => "etcd itself".to_owned(),
        (true, proxies) => format!("{proxies} gRPC proxies"),
    }
}

/// "p50 / last" of seconds, or what is missing.
fn spread(sorted: &[f64], wanted: usize) -> String {
    match (seconds_at(sorted, 0.5), sorted.last()) {
        (Some(p50), Some(last)) if sorted.len() >= wanted => format!("{p50:.1} / {last:.1}"),
        _ => format!("{} of {wanted} in time", sorted.len()),
    }
}

fn latencies(samples: &[Duration]) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return "-".to_owned();
    }
    format!(
        "{} / {} / {}",
        super::ms(super::percentile(&sorted, 0.5)),
        super::ms(super::percentile(&sorted, 0.99)),
        super::ms(sorted.last().copied().unwrap_or_default())
    )
}

/// The report's section: one row per scenario.
pub fn render(runs: &[ScaleFigures]) -> String {
    let mut out = String::from("\n## The fleet at scale\n\n");
    out.push_str(&format!(
        "Simulated nodes, all started at once, in processes of up to {NODES_PER_PROCESS} (single-threaded tokio \
         runtimes) on the same 2 cores as etcd (and the gRPC proxies, when the nodes follow the table through \
         them). Each node runs the agent's own code for etcd: it registers (claims a VIRTUAL from a /16 pool, \
         writes its mapping and record, renews a {}-second lease) and follows the table (reads it, then watches \
         it; every mapping decoded and checked), over connections of its own, as `rewrite agent --node ... \
         [--etcd-watch PROXY]` does. It keeps the set of VIRTUALs it follows instead of writing BPF maps; one \
         real agent (release build, real maps) follows the same table beside them. Converged: a node follows \
         every node's mapping. A change: one mapping put, from the write issued to each node's follower holding \
         it, {} changes one at a time.\n\n",
        LEASE_TTL.as_secs(),
        runs.iter().map(|run| run.probes).max().unwrap_or(0)
    ));
    out.push_str(
        "| nodes | follow the table through | registered, s: p50 / last | converged, s: p50 / last | registrations \
         | a change, every node: p50 / p99 / max | the last node of each change: p50 / p99 / max | the real \
         agent's map: p50 / p99 / max |\n|---:|---|---|---|---:|---|---|---|\n",
    );
    for run in runs {
        let scenario = &run.scenario;
        let mut converged = if scenario.follow { spread(&run.converged, scenario.nodes) } else { "-".to_owned() };
        if let Some(seconds) = run.agent_converged {
            converged.push_str(&format!(" (real agent {seconds:.1})"));
        }
        out.push_str(&format!(
            "| {} (in {}) | {} | {} | {} | {} | {} | {} | {} |\n",
            scenario.nodes,
            if run.processes == 1 { "1 process".to_owned() } else { format!("{} processes", run.processes) },
            following(scenario),
            spread(&run.registered, scenario.nodes),
            converged,
            run.registrations,
            latencies(&run.probe_latencies),
            latencies(&run.probe_slowest),
            latencies(&run.agent_probe_latencies)
        ));
    }
    out.push_str(
        "\n| nodes | follow the table through | CPU s during the start: etcd / proxies / simulators | etcd CPU \
         while nothing changes | etcd CPU per change | etcd RSS, peak | proxies' RSS | simulators' RSS per node \
         | real agent RSS, peak |\n|---:|---|---|---|---|---|---|---|---|\n",
    );
    for run in runs {
        let scenario = &run.scenario;
        let idle = if run.etcd_cpu_idle.is_nan() {
            "-".to_owned()
        } else {
            format!("{:.0}% of a core", run.etcd_cpu_idle * 100.0)
        };
        let per_change = if run.probe_latencies.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.1} ms", run.etcd_cpu_probes * 1000.0)
        };
        out.push_str(&format!(
            "| {} | {} | {:.1} / {:.1} / {:.1} | {idle} | {per_change} | {:.0} MiB | {:.0} MiB | {:.0} KiB | {:.1} \
             MiB |\n",
            scenario.nodes,
            following(scenario),
            run.etcd_cpu_start,
            run.proxies_cpu_start,
            run.simulators_cpu_start,
            run.etcd_rss.1,
            run.proxies_rss,
            run.simulators_rss * 1024.0 / scenario.nodes.max(1) as f64,
            run.agent_rss.1
        ));
    }
    out.push('\n');
    for run in runs {
        let scenario = &run.scenario;
        if run.unconverged > 0 {
            out.push_str(&format!(
                "- {} nodes following {}: **not converged** after {:.0} s: {} of them did not yet {}; {} \
                 registration attempts had failed and been retried, {} watches lost, {} full reads of the table.\n",
                scenario.nodes,
                following(scenario),
                run.waited,
                run.unconverged,
                if scenario.follow { "follow every node's mapping" } else { "hold a registration" },
                run.registration_failures,
                run.disconnects,
                run.snapshots
            ));
        }
        if let Some(probe) = run.probe_limit {
            out.push_str(&format!(
                "- {} nodes following {}: change {probe} did not reach every node within a minute; the changes \
                 stopped there.\n",
                scenario.nodes,
                following(scenario)
            ));
        }
        if let Some(sync) = &run.sync_under_load {
            out.push_str(&format!(
                "- While the {} nodes stayed connected, a new agent with empty pins read a table of {} mappings \
                 (another prefix): {:.3} s from \"following the fleet table\" to the maps written ({:.3} s of it \
                 checking and writing), {:.3} s from its start; RSS {:.1} MiB.\n",
                scenario.nodes,
                run.bulk,
                sync.fleet_seconds,
                sync.agent_seconds,
                sync.total.as_secs_f64(),
                sync.rss
            ));
        }
    }
    if let Some(run) = runs.iter().rev().find(|run| !run.errors.is_empty()) {
        out.push_str(&format!(
            "\nThe first registration errors the simulators reported at {} nodes following {}:\n\n```text\n",
            run.scenario.nodes,
            following(&run.scenario)
        ));
        for error in &run.errors {
            out.push_str(error);
            out.push('\n');
        }
        out.push_str("```\n");
    }
    out
}
