//! `cargo xtask bench` (bounce): bounce mode against the userspace bouncer it replaces
//! (`socat TCP-LISTEN:P,fork TCP:TARGET:P`), against iptables DNAT plus MASQUERADE on
//! the same router, and against plain routing to the target (the ceiling), on the
//! client/router/server topology of the `versus` benchmark:
//!
//! - connection rate: 16 client threads, each connecting to the LISTEN address,
//!   sending one byte, reading the server's one-byte answer and closing with a reset;
//!   a connection counts only once the server has answered through the bouncer;
//! - bulk throughput of one TCP stream, and the CPU time of the whole machine per Gbit
//!   moved (every namespace shares the two cores, so this includes the client, the
//!   server and socat's processes);
//! - latency: one-byte request/response round trips on one connection (TCP_NODELAY).
//!
//! Each measurement builds a fresh topology; backends take turns within each pass,
//! rotating the order, and ratios are taken within a pass. `--quick` runs one short
//! pass to prove the harness works.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
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
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    path::Path,
    process::{Child, Stdio},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use report::{Summary, summarise};
use rewrite_tests::{cli::RewriteCli, machine};
use topology::Topology;

/// The router's address on the client's side: LISTEN for every bouncer.
const LISTEN: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
/// The server: TARGET, and the destination of plain routing.
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
const RATE_PORT: u16 = 8080;
/// `load::bulk_tcp`'s port.
const BULK_PORT: u16 = 8081;
const LATENCY_PORT: u16 = 8082;
const PORTS: [u16; 3] = [RATE_PORT, BULK_PORT, LATENCY_PORT];
const CLIENT_THREADS: usize = 16;
const SERVER_THREADS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Backend {
    Routing,
    RewriteBounce,
    RewriteBounceXdp,
    IptablesNat,
    Socat,
}

impl Backend {
    const ALL: [Self; 5] = [Self::Routing, Self::RewriteBounce, Self::RewriteBounceXdp, Self::IptablesNat, Self::Socat];

    const fn name(self) -> &'static str {
        match self {
            Self::Routing => "routing (ceiling)",
            Self::RewriteBounce => "rewrite bounce (TC)",
            Self::RewriteBounceXdp => "rewrite bounce (XDP)",
            Self::IptablesNat => "iptables DNAT+MASQUERADE",
            Self::Socat => "socat",
        }
    }

    /// Where the client connects.
    const fn destination(self) -> Ipv4Addr {
        match self {
            Self::Routing => SERVER,
            _ => LISTEN,
        }
    }
}

/// What a backend installed in the router; removed on drop with the topology.
enum Installed<'a> {
    Nothing,
    /// Its pin directory is removed when the backend's turn ends.
    Rewrite(RewriteCli<'a>),
    Socat(Vec<Child>),
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        if let Self::Socat(children) = self {
            for child in children {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn install(backend: Backend, topology: &Topology) -> Installed<'_> {
    let router = &topology.router;
    match backend {
        Backend::Routing => Installed::Nothing,
        Backend::RewriteBounce | Backend::RewriteBounceXdp => {
            let ingress = if backend == Backend::RewriteBounce { "tc" } else { "xdp" };
            let cli = RewriteCli::new(router);
            for iface in ["rc", topology::ROUTER_TO_SERVER] {
                cli.ok(&["attach", "--iface", iface, "--ingress", ingress]);
            }
            for port in PORTS {
                cli.ok(&["bounce", "add", &format!("{LISTEN}:{port}/tcp"), &format!("{SERVER}:{port}")]);
            }
            Installed::Rewrite(cli)
        }
        Backend::IptablesNat => {
            let ports = format!("{}:{}", PORTS[0], PORTS[2]);
            let dnat = ["-t", "nat", "-A", "PREROUTING", "-d", "10.1.0.1", "-p", "tcp", "-m", "multiport"];
            let target = ["--dports", &ports, "-j", "DNAT", "--to-destination", "10.2.0.2"];
            router.must("iptables", &[&dnat[..], &target[..]].concat());
            router.must(
                "iptables",
                &["-t", "nat", "-A", "POSTROUTING", "-o", topology::ROUTER_TO_SERVER, "-j", "MASQUERADE"],
            );
            // Reset connections stay in conntrack for this long (10 s by default) and
            // would exhaust MASQUERADE's ports at these rates (see bench-notes).
            router.sysctl("net.netfilter.nf_conntrack_tcp_timeout_close", "1");
            Installed::Nothing
        }
        Backend::Socat => {
            // socat closes its side to the server first, so its sockets wait in
            // TIME_WAIT; reusing them is what an operator would configure.
            router.sysctl("net.ipv4.tcp_tw_reuse", "1");
            let children = PORTS
                .iter()
                .map(|port| {
                    router
                        .command("socat")
                        .args([
                            &format!("TCP-LISTEN:{port},bind={LISTEN},fork,reuseaddr,backlog=4096"),
                            &format!("TCP:{SERVER}:{port}"),
                        ])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("start socat (cargo xtask setup installs it)")
                })
                .collect();
            let installed = Installed::Socat(children);
            let deadline = Instant::now() + Duration::from_secs(5);
            for port in PORTS {
                while !router.run(|| TcpStream::connect((LISTEN, port)).is_ok()) {
                    assert!(Instant::now() < deadline, "socat does not listen on {port}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            installed
        }
    }
}

/// One pass of one backend.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    connections_per_second: f64,
    failed_connections: u64,
    gbit_per_second: f64,
    cpu_seconds_per_gbit: f64,
    p50_us: f64,
    p99_us: f64,
}

fn measure(backend: Backend, durations: Durations) -> Sample {
    let topology = Topology::new();
    // A veth takes frames redirected to it in XDP only when its peer polls with NAPI,
    // which GRO turns on. Every backend gets it, so the ends receive alike.
    topology.client.must("ethtool", &["-K", "c0", "gro", "on"]);
    topology.server.must("ethtool", &["-K", topology::SERVER_IFACE, "gro", "on"]);
    let installed = install(backend, &topology);
    let destination = backend.destination();
    let (connections, failed) = connection_rate(&topology, destination, durations.traffic);
    if let Installed::Rewrite(cli) = &installed {
        // What the bouncer saw, to explain any failed connection.
        let stats: serde_json::Value =
            serde_json::from_str(&cli.ok(&["bounce", "stats", "--json"])).expect("bounce stats prints JSON");
        eprintln!("  bounce stats after the connection rate: {stats}");
    }
    let cpu_before = busy_cpu_seconds();
    let started = Instant::now();
    let gbit_per_second = load::bulk_tcp(&topology, destination, durations.traffic);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = busy_cpu_seconds() - cpu_before;
    let (p50_us, p99_us) = latency(&topology, destination, durations.round_trips);
    drop(installed);
    Sample {
        connections_per_second: connections as f64 / durations.traffic.as_secs_f64(),
        failed_connections: failed,
        gbit_per_second,
        cpu_seconds_per_gbit: cpu / (gbit_per_second * elapsed).max(f64::MIN_POSITIVE),
        p50_us,
        p99_us,
    }
}

/// CPU time of the whole machine spent outside idle (user, system, interrupts), from
/// /proc/stat, in seconds.
fn busy_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .expect("the cpu line")
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: steal is not this machine's.
    let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6];
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    busy / ticks
}

/// Runs server threads that answer each connection's byte, and client threads that
/// open connections through `destination` for `duration`. Returns (answered, failed).
fn connection_rate(topology: &Topology, destination: Ipv4Addr, duration: Duration) -> (u64, u64) {
    let listener = topology.server.run(|| TcpListener::bind(("0.0.0.0", RATE_PORT)).expect("listen on the server"));
    // std listens with a backlog of 128.
    // SAFETY: listen on a listening socket only changes its backlog.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) };
    let stop = AtomicBool::new(false);
    let (answered, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|scope| {
        for _ in 0..SERVER_THREADS {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut stream, _)) = listener.accept() else { continue };
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut byte = [0u8; 1];
                    if stream.read_exact(&mut byte).is_ok() && stream.write_all(&byte).is_ok() {
                        // Wait for the client's reset, so that the server keeps no
                        // TIME_WAIT state.
                        let _ = stream.read(&mut byte);
                    }
                }
            });
        }
        let deadline = Instant::now() + duration;
        topology.client.run(|| {
            std::thread::scope(|clients| {
                for _ in 0..CLIENT_THREADS {
                    clients.spawn(|| {
                        while Instant::now() < deadline {
                            if transact(destination) {
                                answered.fetch_add(1, Ordering::Relaxed);
                            } else {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
        });
        stop.store(true, Ordering::Relaxed);
        // Wake the server threads blocked in accept.
        topology.server.run(|| {
            for _ in 0..SERVER_THREADS {
                let _ = TcpStream::connect(("127.0.0.1", RATE_PORT));
            }
        });
    });
    (answered.into_inner(), failed.into_inner())
}

/// One connection: connect, one byte each way, close with a reset.
fn transact(destination: Ipv4Addr) -> bool {
    let address = SocketAddr::V4(SocketAddrV4::new(destination, RATE_PORT));
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut byte = [7u8; 1];
    let answered = stream.write_all(&byte).is_ok() && stream.read_exact(&mut byte).is_ok();
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid descriptor and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    answered
}

/// Round trips of one byte on one connection; returns (p50, p99) in microseconds.
fn latency(topology: &Topology, destination: Ipv4Addr, round_trips: usize) -> (f64, f64) {
    let listener = topology.server.run(|| TcpListener::bind(("0.0.0.0", LATENCY_PORT)).expect("listen"));
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // Bounded: a client that never connects fails the benchmark, not hangs it.
            listener.set_nonblocking(true).expect("nonblocking listener");
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                    Err(error) => panic!("no latency connection arrived: {error}"),
                }
            };
            stream.set_nonblocking(false).expect("blocking stream");
            stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            stream.set_nodelay(true).expect("nodelay");
            let mut byte = [0u8; 1];
            while stream.read_exact(&mut byte).is_ok() && stream.write_all(&byte).is_ok() {}
        });
        topology.client.run(|| {
            let mut stream = TcpStream::connect_timeout(
                &SocketAddr::V4(SocketAddrV4::new(destination, LATENCY_PORT)),
                Duration::from_secs(3),
            )
            .expect("connect for latency");
            stream.set_nodelay(true).expect("nodelay");
            stream.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
            let mut byte = [1u8; 1];
            let mut samples: Vec<f64> = (0..round_trips)
                .map(|_| {
                    let started = Instant::now();
                    stream.write_all(&byte).expect("latency write");
                    stream.read_exact(&mut byte).expect("latency read");
                    started.elapsed().as_secs_f64() * 1e6
                })
                .collect();
            samples.sort_by(f64::total_cmp);
            let at = |quantile: f64| samples[((samples.len() - 1) as f64 * quantile).round() as usize];
            (at(0.5), at(0.99))
        })
    })
}

#[derive(Clone, Copy)]
struct Durations {
    traffic: Duration,
    round_trips: usize,
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let (passes, durations) = if quick {
        (1, Durations { traffic: Duration::from_millis(500), round_trips: 200 })
    } else {
        (3, Durations { traffic: Duration::from_secs(3), round_trips: 5000 })
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf();
    let report_path = root.join(if quick { "target/bench-quick/bounce.md" } else { "docs/bounce-benchmarks.md" });
    if let Some(dir) = report_path.parent() {
        std::fs::create_dir_all(dir).expect("create the report directory");
    }
    let mut samples: BTreeMap<Backend, Vec<Sample>> = BTreeMap::new();
    for pass in 0..passes {
        for turn in 0..Backend::ALL.len() {
            let backend = Backend::ALL[(turn + pass) % Backend::ALL.len()];
            // For profiling one backend by hand; the report is then partial.
            if let Ok(only) = std::env::var("REWRITE_BENCH_ONLY")
                && !backend.name().contains(only.as_str())
            {
                continue;
            }
            let sample = measure(backend, durations);
            eprintln!("pass {pass}: {}: {sample:?}", backend.name());
            samples.entry(backend).or_default().push(sample);
        }
    }
    let report = render(&samples, passes, durations);
    print!("{report}");
    std::fs::write(&report_path, &report).expect("write the report");
    println!("report: {}", report_path.display());
}

fn render(samples: &BTreeMap<Backend, Vec<Sample>>, passes: usize, durations: Durations) -> String {
    let mut out = String::from("# Bounce mode against socat and iptables\n\n");
    let _ = writeln!(
        out,
        "Machine: {}. One client, router and server namespace per measurement (veth); {passes} passes, \
         backends interleaved; median [min–max]. Connection rate: {CLIENT_THREADS} client threads for {} s, \
         each connection answered by the server through the bouncer, closed with a reset. Bulk: one TCP stream \
         for {} s; CPU is the whole machine's busy time (client, router, server and socat share two cores). \
         Checksum offload is off and GRO on at the client's and the server's ends, for every backend (XDP \
         redirects into a veth need its peer to poll with NAPI). Latency: {} one-byte round trips on one connection.\n",
        machine::describe(),
        durations.traffic.as_secs_f64(),
        durations.traffic.as_secs_f64(),
        durations.round_trips
    );
    out.push_str(
        "| backend | connections/s | failed | bulk Gbit/s | CPU s per Gbit | latency p50 µs | latency p99 µs |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    let show = |summary: Option<Summary>, digits: usize| {
        summary.map_or_else(
            || "–".to_owned(),
            |s| format!("{:.digits$} [{:.digits$}–{:.digits$}]", s.median, s.min, s.max),
        )
    };
    for (backend, runs) in samples {
        let column = |pick: fn(&Sample) -> f64| summarise(&runs.iter().map(pick).collect::<Vec<_>>());
        let failed: u64 = runs.iter().map(|sample| sample.failed_connections).sum();
        let _ = writeln!(
            out,
            "| {} | {} | {failed} | {} | {} | {} | {} |",
            backend.name(),
            show(column(|sample| sample.connections_per_second), 0),
            show(column(|sample| sample.gbit_per_second), 2),
            show(column(|sample| sample.cpu_seconds_per_gbit), 3),
            show(column(|sample| sample.p50_us), 1),
            show(column(|sample| sample.p99_us), 1),
        );
    }
    out.push_str("\nRatios, taken pass by pass (rewrite bounce ÷ the other):\n\n");
    out.push_str(
        "| rewrite bounce | against | connections/s | bulk Gbit/s | CPU s per Gbit | latency p50 |\n\
         |---|---|---:|---:|---:|---:|\n",
    );
    let ratio = |ours: Backend, other: Backend, pick: fn(&Sample) -> f64| {
        let (Some(ours), Some(theirs)) = (samples.get(&ours), samples.get(&other)) else {
            return None;
        };
        let ratios: Vec<f64> =
            ours.iter().zip(theirs).filter(|(_, b)| pick(b) > 0.0).map(|(a, b)| pick(a) / pick(b)).collect();
        summarise(&ratios)
    };
    for (ours, other) in [Backend::RewriteBounceXdp, Backend::RewriteBounce]
        .into_iter()
        .flat_map(|ours| [Backend::Socat, Backend::IptablesNat, Backend::Routing].map(|other| (ours, other)))
    {
        let cell = |pick: fn(&Sample) -> f64| {
            ratio(ours, other, pick)
                .map_or_else(|| "–".to_owned(), |s| format!("{:.2}× [{:.2}–{:.2}]", s.median, s.min, s.max))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            ours.name().trim_start_matches("rewrite bounce "),
            other.name(),
            cell(|sample| sample.connections_per_second),
            cell(|sample| sample.gbit_per_second),
            cell(|sample| sample.cpu_seconds_per_gbit),
            cell(|sample| sample.p50_us),
        );
    }
    out
}
