//! End-to-end tests in network namespaces: the `rewrite` CLI attaches the real
//! programs to veth devices, and real TCP and UDP sockets talk through them. The
//! receivers verify checksums in software (checked by a probe with a bad checksum),
//! and their /proc/net/snmp checksum error counters must not move.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use rewrite_tests::{
    agent::ConfigFile,
    cli::RewriteCli,
    hosts::{A_MAC, A_REAL, B_MAC, B_REAL, B_VIRTUAL, Family, V4, V6, two_hosts},
    netns::{Netns, VethEnd, veth},
    traffic::{
        assert_no_checksum_errors_since, assert_receiver_verifies_checksums, checksum_errors, tcp_connects,
        tcp_exchange, udp_echo, udp_echo_sized,
    },
};

const MIB: usize = 1 << 20;
const C_MAC: [u8; 6] = [0x02, 0xcc, 0, 0, 0, 0x03];
const MC_MAC: [u8; 6] = [0x02, 0xdd, 0, 0, 0, 0x04];
const MB_MAC: [u8; 6] = [0x02, 0xdd, 0, 0, 0, 0x05];

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address parses")
}

fn sock(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(addr), port)
}

fn stats_json(rewrite: &RewriteCli<'_>) -> String {
    rewrite.ok(&["stats", "--json"])
}

/// Reads one counter out of `rewrite stats --json`.
fn stat(rewrite: &RewriteCli<'_>, direction: &str, outcome: &str) -> u64 {
    let json = stats_json(rewrite);
    let value: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|error| panic!("stats --json printed {json}: {error}"));
    value[direction][outcome].as_u64().unwrap_or_else(|| panic!("{direction}.{outcome} missing in {json}"))
}

fn two_hosts_carry_tcp_and_udp_both_ways(ingress: &str, family: &Family) {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    let attached = rewrite.ok(&["attach", "--iface", "va", "--ingress", ingress]);
    assert!(attached.contains(&format!("(ingress: {ingress}, ")), "attach reported {attached:?}");
    rewrite.ok(&["map", "add", family.b_virtual, family.b_real]);

    // Both receivers must really check checksums, or "no errors" proves nothing.
    assert_receiver_verifies_checksums(&hosts.a, "va", B_MAC, ip(family.a_real), ip(family.b_real), &hosts.b);
    assert_receiver_verifies_checksums(&hosts.b, "vb", A_MAC, ip(family.b_real), ip(family.a_real), &hosts.a);
    let (errors_a, errors_b) = (checksum_errors(&hosts.a), checksum_errors(&hosts.b));

    // A connects to B's VIRTUAL address; B sees A's real address.
    let report = tcp_exchange(&hosts.b, sock(family.any, 7000), &hosts.a, sock(family.b_virtual, 7000), MIB);
    assert_eq!(report.client_seen_by_server.ip(), ip(family.a_real), "B must see A's own address");
    // B connects to A, which sees B under its VIRTUAL address.
    let report = tcp_exchange(&hosts.a, sock(family.any, 7001), &hosts.b, sock(family.a_real, 7001), MIB);
    assert_eq!(report.client_seen_by_server.ip(), ip(family.b_virtual), "A must see B as VIRTUAL");

    let wait = Duration::from_secs(2);
    let udp = udp_echo(&hosts.b, sock(family.any, 7002), &hosts.a, sock(family.b_virtual, 7002), 100, wait);
    assert_eq!(udp.echoed, 100, "every UDP datagram must come back: {udp:?}");
    let (a_real, b_virtual) = (ip(family.a_real), ip(family.b_virtual));
    assert!(udp.server_sources.iter().all(|source| source.ip() == a_real), "B saw sources {:?}", udp.server_sources);
    assert!(udp.echo_sources.iter().all(|source| source.ip() == b_virtual), "A saw echoes from {:?}", udp.echo_sources);

    assert_no_checksum_errors_since(&hosts.a, errors_a);
    assert_no_checksum_errors_since(&hosts.b, errors_b);
    // At least the 100 datagrams each way, plus the TCP segments.
    assert!(stat(&rewrite, "ingress", "rewritten") > 100, "ingress counters: {}", stats_json(&rewrite));
    assert!(stat(&rewrite, "egress", "rewritten") > 100, "egress counters: {}", stats_json(&rewrite));
    assert_eq!(stat(&rewrite, "ingress", "helper_error") + stat(&rewrite, "egress", "helper_error"), 0);
    // The mapping's own counters: both TCP exchanges carried a MiB each way through it.
    let written = format!("{} -> {}", ip(family.b_virtual), ip(family.b_real));
    let json = stats_json(&rewrite);
    let value: serde_json::Value = serde_json::from_str(&json).expect("stats --json is JSON");
    let mapping = value["mappings"]
        .as_array()
        .and_then(|mappings| mappings.iter().find(|mapping| mapping["mapping"] == written.as_str()))
        .unwrap_or_else(|| panic!("no counters for {written} in {json}"));
    for direction in ["ingress", "egress"] {
        let packets = mapping[direction]["packets"].as_u64().expect("packets");
        let bytes = mapping[direction]["bytes"].as_u64().expect("bytes");
        assert!(packets > 100, "{written}: {direction} packets {packets}: {json}");
        assert!(bytes >= 2 * MIB as u64, "{written}: {direction} bytes {bytes} < 2 MiB: {json}");
    }
    let table = rewrite.ok(&["stats"]);
    assert!(table.lines().any(|line| line.starts_with(&written)), "stats shows no row for {written}:\n{table}");

    // `stats --watch` prints the requested number of readings, the later ones with rates
    // per second; three pings go out between the first and the second reading.
    let watched = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| rewrite.ok(&["stats", "--json", "--watch", "--interval", "1.5", "--count", "2"]));
        std::thread::sleep(Duration::from_millis(100));
        hosts.a.must("ping", &["-c", "3", "-i", "0.2", "-W", "1", family.b_virtual]);
        watcher.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    let readings: Vec<serde_json::Value> =
        watched.lines().map(|line| serde_json::from_str(line).expect("each reading is one JSON line")).collect();
    assert_eq!(readings.len(), 2, "--count 2 must print two readings: {watched}");
    assert!(readings[0].get("per_second").is_none(), "the first reading has no rate: {watched}");
    let rate = readings[1]["per_second"]["egress"]["rewritten"].as_f64().expect("a rate");
    assert!(rate >= 1.0, "3 pings in 1.5 s must show as an egress rate of 2/s: {watched}");
    let mapping_rate = readings[1]["mappings"][0]["per_second"]["egress"]["packets"].as_f64().expect("a mapping rate");
    assert!(mapping_rate >= 1.0, "the pings went through the one mapping: {watched}");
    let error = rewrite.fails(&["stats", "--watch", "--interval", "0"]);
    assert!(error.contains("interval from 0.1 to 3600 seconds"), "{error}");
}

#[test]
fn two_hosts_with_xdp_ingress() {
    two_hosts_carry_tcp_and_udp_both_ways("xdp", &V4);
}

#[test]
fn two_hosts_with_tc_ingress() {
    two_hosts_carry_tcp_and_udp_both_ways("tc", &V4);
}

#[test]
fn two_hosts_with_generic_xdp_ingress() {
    two_hosts_carry_tcp_and_udp_both_ways("xdp-skb", &V4);
}

#[test]
fn two_ipv6_hosts_with_xdp_ingress() {
    two_hosts_carry_tcp_and_udp_both_ways("xdp", &V6);
}

#[test]
fn two_ipv6_hosts_with_tc_ingress() {
    two_hosts_carry_tcp_and_udp_both_ways("tc", &V6);
}

/// C (10.1.0.2) -- M (router, rewrite on its B-facing `mb`) -- B (10.2.0.2). C knows B
/// as 10.3.0.2. The end hosts keep tx checksum offload on, so their packets reach M
/// with CHECKSUM_PARTIAL; M's devices have tx offload off, so M completes checksums in
/// software and the end hosts (rx offload off) verify them.
#[test]
fn router_rewrites_forwarded_partial_checksum_packets() {
    let c = Netns::new("c");
    let m = Netns::new("m");
    let b = Netns::new("b");
    veth(
        VethEnd { netns: &c, name: "vc", mac: C_MAC },
        "10.1.0.2/24",
        VethEnd { netns: &m, name: "mc", mac: MC_MAC },
        "10.1.0.1/24",
    );
    veth(
        VethEnd { netns: &m, name: "mb", mac: MB_MAC },
        "10.2.0.1/24",
        VethEnd { netns: &b, name: "vb", mac: B_MAC },
        "10.2.0.2/24",
    );
    c.ip(&["route", "add", "default", "via", "10.1.0.1"]);
    b.ip(&["route", "add", "default", "via", "10.2.0.1"]);
    m.sysctl("net.ipv4.ip_forward", "1");
    m.ip(&["route", "add", "10.3.0.0/24", "via", "10.2.0.2", "dev", "mb"]);
    c.offload("vc", true, false);
    b.offload("vb", true, false);
    m.offload("mc", false, true);
    m.offload("mb", false, true);

    let rewrite = RewriteCli::new(&m);
    let attached = rewrite.ok(&["attach", "--iface", "mb", "--ingress", "auto"]);
    assert!(attached.contains("ingress: tc"), "auto must choose TC on a veth: {attached}");
    rewrite.ok(&["map", "add", "10.3.0.2", "10.2.0.2"]);

    assert_receiver_verifies_checksums(&m, "mb", B_MAC, ip("10.2.0.1"), ip("10.2.0.2"), &b);
    assert_receiver_verifies_checksums(&m, "mc", C_MAC, ip("10.1.0.1"), ip("10.1.0.2"), &c);
    let (errors_b, errors_c) = (checksum_errors(&b), checksum_errors(&c));

    let report = tcp_exchange(&b, sock("0.0.0.0", 8000), &c, sock("10.3.0.2", 8000), MIB);
    assert_eq!(report.client_seen_by_server.ip(), ip("10.1.0.2"));
    let report = tcp_exchange(&c, sock("0.0.0.0", 8001), &b, sock("10.1.0.2", 8001), MIB);
    assert_eq!(report.client_seen_by_server.ip(), ip("10.3.0.2"), "C must see B as VIRTUAL");
    let udp = udp_echo(&b, sock("0.0.0.0", 8002), &c, sock("10.3.0.2", 8002), 100, Duration::from_secs(2));
    assert_eq!(udp.echoed, 100, "every UDP datagram must come back: {udp:?}");
    assert!(
        udp.server_sources.iter().all(|source| source.ip() == ip("10.1.0.2")),
        "B saw sources {:?}",
        udp.server_sources
    );
    assert!(
        udp.echo_sources.iter().all(|source| source.ip() == ip("10.3.0.2")),
        "C saw echoes from {:?}",
        udp.echo_sources
    );

    assert_no_checksum_errors_since(&b, errors_b);
    assert_no_checksum_errors_since(&c, errors_c);
    assert!(stat(&rewrite, "egress", "rewritten") > 100, "egress counters: {}", stats_json(&rewrite));
    assert!(stat(&rewrite, "ingress", "rewritten") > 100, "ingress counters: {}", stats_json(&rewrite));
    assert_eq!(stat(&rewrite, "ingress", "helper_error") + stat(&rewrite, "egress", "helper_error"), 0);
}

/// Whether a datagram sent from `sender` to `target` reaches `receiver` within `wait`.
fn udp_arrives(sender: &UdpSocket, target: SocketAddr, receiver: &UdpSocket, wait: Duration) -> bool {
    // Drain anything late from an earlier step, so only this datagram counts.
    receiver.set_nonblocking(true).expect("nonblocking");
    let mut buffer = [0; 64];
    while receiver.recv_from(&mut buffer).is_ok() {}
    receiver.set_nonblocking(false).expect("blocking");
    receiver.set_read_timeout(Some(wait)).expect("timeout");
    sender.send_to(b"probe", target).expect("send");
    matches!(receiver.recv_from(&mut buffer), Ok((5, _)))
}

#[test]
fn mappings_change_live_from_the_cli() {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    rewrite.ok(&["attach", "--iface", "va"]);
    // Sockets keep the namespace they were created in.
    let _listener = hosts.b.run(|| TcpListener::bind("0.0.0.0:7100").expect("listen on B"));
    let receiver = hosts.b.run(|| UdpSocket::bind("0.0.0.0:7101").expect("bind on B"));
    let sender = hosts.a.run(|| UdpSocket::bind("0.0.0.0:0").expect("bind on A"));
    let (tcp_target, udp_target) = (sock(B_VIRTUAL, 7100), sock(B_VIRTUAL, 7101));
    let short = Duration::from_millis(700);

    assert!(!tcp_connects(&hosts.a, tcp_target, short), "without a mapping, VIRTUAL must not be reachable");
    assert!(!udp_arrives(&sender, udp_target, &receiver, short), "without a mapping, UDP to VIRTUAL must not arrive");

    rewrite.ok(&["map", "add", B_VIRTUAL, B_REAL]);
    assert!(tcp_connects(&hosts.a, tcp_target, Duration::from_secs(5)), "after map add, TCP to VIRTUAL must connect");
    assert!(udp_arrives(&sender, udp_target, &receiver, Duration::from_secs(5)), "after map add, UDP must arrive");

    rewrite.ok(&["map", "del", B_VIRTUAL]);
    assert_eq!(rewrite.ok(&["map", "list"]), "", "the table must be empty after del");
    assert!(!tcp_connects(&hosts.a, tcp_target, short), "after map del, VIRTUAL must be unreachable again");
    assert!(!udp_arrives(&sender, udp_target, &receiver, short), "after map del, UDP must not arrive");

    // Detach removes the dataplane: even with the mapping back, nothing is rewritten.
    rewrite.ok(&["map", "add", B_VIRTUAL, B_REAL]);
    rewrite.ok(&["detach", "--iface", "va"]);
    assert!(!tcp_connects(&hosts.a, tcp_target, short), "after detach, no packet may be rewritten");
    assert!(!rewrite.pins().path().join("ifaces/va").exists(), "detach must remove the interface's pins");
    assert_eq!(rewrite.ok(&["map", "list"]), "10.200.0.2 -> 10.100.0.2\n", "detach must keep the table");
    assert!(rewrite.ok(&["status"]).starts_with("no interface attached"), "status after detach");
}

#[test]
fn dataplane_outlives_the_cli_and_later_processes_see_the_same_table() {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    rewrite.ok(&["attach", "--iface", "va", "--ingress", "xdp"]);
    rewrite.ok(&["map", "add", B_VIRTUAL, B_REAL]);
    rewrite.ok(&["map", "add", "10.200.0.3", "10.100.0.3"]);
    let expected: serde_json::Value = serde_json::json!([
        { "virtual": "10.200.0.2", "real": "10.100.0.2", "kind": "address" },
        { "virtual": "10.200.0.3", "real": "10.100.0.3", "kind": "address" },
    ]);

    // A numbered UDP stream, from A to VIRTUAL, while new CLI processes come and go.
    let receiver = hosts.b.run(|| UdpSocket::bind("0.0.0.0:7200").expect("bind on B"));
    receiver.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    // Room for the whole stream in the socket buffer, so that a collector thread that a
    // busy machine schedules late loses nothing: only the dataplane may lose datagrams.
    nix::sys::socket::setsockopt(&receiver, nix::sys::socket::sockopt::RcvBufForce, &(8 << 20))
        .expect("enlarge the receive buffer");
    let sender = hosts.a.run(|| UdpSocket::bind("0.0.0.0:0").expect("bind on A"));
    const DATAGRAMS: u32 = 1500;
    let received = std::thread::scope(|scope| {
        let collector = scope.spawn(|| {
            let mut received = Vec::new();
            let mut buffer = [0; 16];
            while let Ok((4, _)) = receiver.recv_from(&mut buffer) {
                received.push(u32::from_be_bytes(buffer[..4].try_into().expect("4 bytes")));
                if received.len() == DATAGRAMS as usize {
                    break;
                }
            }
            received
        });
        let stream = scope.spawn(|| {
            for seq in 0..DATAGRAMS {
                sender.send_to(&seq.to_be_bytes(), sock(B_VIRTUAL, 7200)).expect("send");
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let started = Instant::now();
        let mut listings = 0;
        while !stream.is_finished() {
            let listed: serde_json::Value =
                serde_json::from_str(&rewrite.ok(&["map", "list", "--json"])).expect("map list --json prints JSON");
            assert_eq!(listed, expected, "a new process must list the same table");
            let status = rewrite.ok(&["status"]);
            assert!(status.contains("va\tingress: xdp\t"), "a new process must see the attachment: {status}");
            listings += 1;
        }
        stream.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        assert!(listings >= 3, "only {listings} CLI runs overlapped the stream in {:?}", started.elapsed());
        collector.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    let buffer_drops = rewrite_tests::traffic::snmp(&hosts.b)["Udp.RcvbufErrors"];
    assert_eq!(buffer_drops, 0, "the test's own receive buffer overflowed; this says nothing of the dataplane");
    assert_eq!(
        received,
        (0..DATAGRAMS).collect::<Vec<_>>(),
        "every datagram must arrive, in order, while the CLI runs"
    );
}

#[test]
fn cli_rejects_bad_input_with_clear_errors_and_changes_nothing() {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);

    let error = rewrite.fails(&["map", "list"]);
    assert!(error.contains("not loaded") && error.contains("rewrite attach"), "{error}");
    let error = rewrite.fails(&["attach", "--iface", "nosuch0"]);
    assert!(error.contains("\"nosuch0\" does not exist"), "{error}");
    let error = rewrite.fails(&["attach", "--iface", "lo"]);
    assert!(error.contains("not an Ethernet device"), "{error}");
    let error = rewrite.fails_with_pin_dir(Path::new("/tmp"), &["attach", "--iface", "va"]);
    assert!(error.contains("not on a BPF filesystem"), "{error}");

    rewrite.ok(&["attach", "--iface", "va", "--ingress", "xdp"]);
    let error = rewrite.fails(&["attach", "--iface", "va"]);
    assert!(error.contains("already attached by rewrite"), "{error}");

    // Another XDP user on the same device: a second rewrite with its own pins stands in
    // for any foreign program.
    let other = RewriteCli::new(&hosts.b);
    let error = other.fails(&["detach", "--iface", "vb"]);
    assert!(error.contains("not attached"), "{error}");
    hosts.b.ip(&["link", "add", "vx", "type", "veth", "peer", "name", "vy"]);
    other.ok(&["attach", "--iface", "vx", "--ingress", "xdp"]);
    let again = RewriteCli::new(&hosts.b);
    for ingress in ["xdp", "tc", "auto"] {
        let error = again.fails(&["attach", "--iface", "vx", "--ingress", ingress]);
        assert!(
            error.contains("already has an XDP program (id ") && error.contains("that rewrite did not attach"),
            "{error}"
        );
    }
    assert!(!again.pins().path().join("ifaces/vx").exists(), "a failed attach must leave no pins");
    assert!(!again.pins().path().join("maps").exists(), "a failed first attach must not leave an empty table");

    // Names that would point outside the interface's pin directory.
    for name in ["", ".", "..", "../..", "a/b", "name-longer-than-15"] {
        for command in ["attach", "detach"] {
            let error = rewrite.fails(&[command, "--iface", name]);
            assert!(error.contains("is not a valid interface name"), "{command} --iface {name:?}: {error}");
        }
    }
    assert!(rewrite.pins().path().join("maps/ADDR_FORWARD").exists(), "a bad detach must not touch the table");

    // Only root may touch the dataplane, and it is told so.
    let as_nobody = hosts
        .a
        .command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(rewrite_tests::cli::rewrite_binary())
        .args(["--pin-dir", rewrite.pins().path().to_str().expect("utf-8"), "map", "list"])
        .output()
        .expect("run setpriv");
    let error = String::from_utf8_lossy(&as_nobody.stderr);
    assert!(!as_nobody.status.success() && error.contains("must run as root"), "as nobody: {error}");

    let error = rewrite.fails(&["map", "add", "10.200.0.300", B_REAL]);
    assert!(error.contains("\"10.200.0.300\" is not an address"), "{error}");
    let error = rewrite.fails(&["map", "add", B_REAL, B_REAL]);
    assert!(error.contains("same address"), "{error}");
    rewrite.ok(&["map", "add", B_VIRTUAL, B_REAL]);
    let error = rewrite.fails(&["map", "add", "10.200.0.7", B_REAL]);
    assert!(error.contains("already the target of 10.200.0.2 -> 10.100.0.2"), "{error}");
    let error = rewrite.fails(&["map", "add", B_REAL, "10.100.0.8"]);
    assert!(error.contains("is the REAL address of mapping"), "{error}");
    let error = rewrite.fails(&["map", "del", "10.200.0.99"]);
    assert!(error.contains("no mapping for VIRTUAL 10.200.0.99"), "{error}");
    assert_eq!(rewrite.ok(&["map", "list"]), "10.200.0.2 -> 10.100.0.2\n", "rejected commands must change nothing");

    // REAL is this host, but its VIRTUAL is not configured here: warn, but do it.
    let out = rewrite.run(&["map", "add", "10.200.0.1", A_REAL]);
    assert!(out.status.success(), "map add with a local REAL must succeed: {}", String::from_utf8_lossy(&out.stderr));
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(warning.contains("warning") && warning.contains("ip addr add 10.200.0.1/32 dev lo"), "{warning}");
    hosts.a.ip(&["addr", "add", "10.200.0.1/32", "dev", "lo"]);
    rewrite.ok(&["map", "del", "10.200.0.1"]);
    let out = rewrite.run(&["map", "add", "10.200.0.1", A_REAL]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "no warning once VIRTUAL is local: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pins_are_root_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    rewrite.ok(&["attach", "--iface", "va", "--max-mappings", "1000"]);
    let root = rewrite.pins().path();
    for dir in [root.to_path_buf(), root.join("maps"), root.join("ifaces"), root.join("ifaces/va")] {
        let mode =
            std::fs::metadata(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display())).permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{} must be root-only, is {:o}", dir.display(), mode & 0o777);
    }
    for pin in [
        "maps/ADDR_FORWARD",
        "maps/ADDR_REVERSE",
        "maps/COUNTERS",
        "ifaces/va/egress_tc_link",
        "ifaces/va/ingress_tc_prog",
    ] {
        let path = root.join(pin);
        let mode =
            std::fs::metadata(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display())).permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "{} must not be readable or writable by others, is {:o}",
            path.display(),
            mode & 0o777
        );
    }
    // The capacity is fixed by the attach that created the table.
    let error = rewrite.fails(&["attach", "--iface", "lo", "--max-mappings", "5"]);
    assert!(error.contains("not an Ethernet device"), "{error}");
    hosts.a.ip(&["link", "add", "vz", "type", "veth", "peer", "name", "vw"]);
    let error = rewrite.fails(&["attach", "--iface", "vz", "--max-mappings", "5"]);
    assert!(error.contains("room for 1000 mappings"), "{error}");
    rewrite.ok(&["attach", "--iface", "vz", "--max-mappings", "1000"]);
}

/// `status` reports the kernel memory of the maps, and `attach --max-mappings` is what
/// sizes it: a table for 1,000 mappings takes a small part of a default one.
#[test]
fn status_reports_the_maps_kernel_memory() {
    let hosts = two_hosts();
    let memory = |rewrite: &RewriteCli| -> u64 {
        let status: serde_json::Value =
            serde_json::from_str(&rewrite.ok(&["status", "--json"])).expect("status --json is JSON");
        status["table"]["kernel_memory_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("status --json has no table.kernel_memory_bytes: {status}"))
    };
    let small = RewriteCli::new(&hosts.a);
    small.ok(&["attach", "--iface", "va", "--max-mappings", "1000"]);
    small.ok(&["map", "add", B_VIRTUAL, B_REAL]);
    let default = RewriteCli::new(&hosts.b);
    default.ok(&["attach", "--iface", "vb"]);
    let (small_bytes, default_bytes) = (memory(&small), memory(&default));
    assert!(small_bytes > 0, "a table's maps take some kernel memory");
    assert!(
        default_bytes > 10 * small_bytes,
        "a default table (1,048,576 mappings) must take far more than one for 1,000: {default_bytes} vs {small_bytes} bytes"
    );
    let text = small.ok(&["status"]);
    assert!(text.contains("kernel memory"), "status names the maps' kernel memory: {text}");
}

#[test]
fn port_scoped_mapping_moves_one_service_and_leaves_the_others() {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    rewrite.ok(&["attach", "--iface", "va", "--ingress", "xdp"]);
    // Only TCP 7400 and UDP 7410-7411 of 10.200.0.2 move, to other ports of B.
    rewrite.ok(&["map", "add", "10.200.0.2:7400/tcp", "10.100.0.2:7500/tcp"]);
    rewrite.ok(&["map", "add", "10.200.0.2:7410-7411/udp", "10.100.0.2:7510-7511/udp"]);
    let listed = rewrite.ok(&["map", "list"]);
    assert_eq!(
        listed, "10.200.0.2:7400/tcp -> 10.100.0.2:7500/tcp\n10.200.0.2:7410-7411/udp -> 10.100.0.2:7510-7511/udp\n",
        "ranges are listed as written"
    );

    let report = tcp_exchange(&hosts.b, sock("0.0.0.0", 7500), &hosts.a, sock(B_VIRTUAL, 7400), MIB);
    assert_eq!(report.client_seen_by_server.ip(), ip(A_REAL));
    for (virtual_port, real_port) in [(7410, 7510), (7411, 7511)] {
        let wait = Duration::from_secs(2);
        let udp = udp_echo(&hosts.b, sock("0.0.0.0", real_port), &hosts.a, sock(B_VIRTUAL, virtual_port), 20, wait);
        assert_eq!(udp.echoed, 20, "UDP {virtual_port} -> {real_port}: {udp:?}");
        let expected_source = sock(B_VIRTUAL, virtual_port);
        assert!(udp.echo_sources.iter().all(|source| *source == expected_source), "{:?}", udp.echo_sources);
    }
    // A second service on the same host, reached at its real address, is untouched
    // both ways (its replies come from REAL:7401, which no mapping names).
    let report = tcp_exchange(&hosts.b, sock("0.0.0.0", 7401), &hosts.a, sock(B_REAL, 7401), MIB);
    assert_eq!(report.client_seen_by_server.ip(), ip(A_REAL));
    // And the VIRTUAL address has no other port.
    let _listener = hosts.b.run(|| TcpListener::bind("0.0.0.0:7402").expect("listen on B"));
    let other_port = tcp_connects(&hosts.a, sock(B_VIRTUAL, 7402), Duration::from_millis(700));
    assert!(!other_port, "only mapped ports of VIRTUAL may reach B");

    rewrite.ok(&["map", "del", "10.200.0.2:7410-7411/udp"]);
    // The TCP service, still mapped, keeps working after the other port mapping went.
    let report = tcp_exchange(&hosts.b, sock("0.0.0.0", 7500), &hosts.a, sock(B_VIRTUAL, 7400), MIB / 8);
    assert_eq!(report.client_seen_by_server.ip(), ip(A_REAL));
    rewrite.ok(&["map", "del", "10.200.0.2:7400/tcp"]);
    assert_eq!(rewrite.ok(&["map", "list"]), "", "deleting the ranges empties the table");
    let error = rewrite.fails(&["map", "del", "10.200.0.2:7400/tcp"]);
    assert!(error.contains("no mapping for VIRTUAL 10.200.0.2:7400/tcp"), "{error}");
    let error = rewrite.fails(&["map", "add", "10.200.0.2:7400-7401/tcp", "10.100.0.2:7500/tcp"]);
    assert!(error.contains("ranges must have the same width"), "{error}");
}

/// A prefix mapping moves a whole subnet: A reaches two hosts behind a router at the
/// same host bits of the new subnet.
#[test]
fn prefix_mapping_reaches_two_hosts_of_a_subnet() {
    let a = Netns::new("a");
    let r = Netns::new("r");
    let b1 = Netns::new("b1");
    let b2 = Netns::new("b2");
    veth(
        VethEnd { netns: &a, name: "va", mac: A_MAC },
        "10.100.0.1/24",
        VethEnd { netns: &r, name: "ra", mac: B_MAC },
        "10.100.0.2/24",
    );
    let r1_mac = [0x02, 0xee, 0, 0, 0, 1];
    let r2_mac = [0x02, 0xee, 0, 0, 0, 2];
    veth(
        VethEnd { netns: &r, name: "r1", mac: r1_mac },
        "172.20.0.1/24",
        VethEnd { netns: &b1, name: "v1", mac: C_MAC },
        "172.20.0.2/24",
    );
    veth(
        VethEnd { netns: &r, name: "r2", mac: r2_mac },
        "172.20.1.1/24",
        VethEnd { netns: &b2, name: "v2", mac: MC_MAC },
        "172.20.1.2/24",
    );
    r.sysctl("net.ipv4.ip_forward", "1");
    a.ip(&["route", "add", "default", "via", "10.100.0.2"]);
    b1.ip(&["route", "add", "default", "via", "172.20.0.1"]);
    b2.ip(&["route", "add", "default", "via", "172.20.1.1"]);

    let rewrite = RewriteCli::new(&a);
    rewrite.ok(&["attach", "--iface", "va"]);
    rewrite.ok(&["map", "add", "10.201.0.0/16", "172.20.0.0/16"]);
    assert_eq!(rewrite.ok(&["map", "list"]), "10.201.0.0/16 -> 172.20.0.0/16\n");
    for (host, virtual_addr, real_addr) in [(&b1, "10.201.0.2", "172.20.0.2"), (&b2, "10.201.1.2", "172.20.1.2")] {
        let report = tcp_exchange(host, sock("0.0.0.0", 7600), &a, sock(virtual_addr, 7600), MIB / 4);
        assert_eq!(report.client_seen_by_server.ip(), ip(A_REAL), "{real_addr} must see A's own address");
        let udp = udp_echo(host, sock("0.0.0.0", 7601), &a, sock(virtual_addr, 7601), 20, Duration::from_secs(2));
        assert_eq!(udp.echoed, 20, "{virtual_addr}: {udp:?}");
        assert!(udp.echo_sources.iter().all(|source| source.ip() == ip(virtual_addr)), "{:?}", udp.echo_sources);
    }
    let error = rewrite.fails(&["map", "add", "10.202.0.0/17", "172.20.128.0/17"]);
    assert!(error.contains("overlaps REAL prefix 172.20.0.0/16"), "{error}");
    rewrite.ok(&["map", "del", "10.201.0.0/16"]);
    assert_eq!(rewrite.ok(&["map", "list"]), "");
}

/// Datagrams larger than the MTU travel as IP fragments; every fragment's addresses
/// are rewritten and the first one's UDP checksum covers the whole datagram, so they
/// reassemble intact (the receivers verify the checksums in software).
fn fragmented_udp_arrives_intact(family: &Family) {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    rewrite.ok(&["attach", "--iface", "va", "--ingress", "xdp"]);
    rewrite.ok(&["map", "add", family.b_virtual, family.b_real]);
    let (errors_a, errors_b) = (checksum_errors(&hosts.a), checksum_errors(&hosts.b));
    let wait = Duration::from_secs(2);
    let udp = udp_echo_sized(&hosts.b, sock(family.any, 7700), &hosts.a, sock(family.b_virtual, 7700), 10, wait, 4000);
    assert_eq!(udp.echoed, 10, "every 4000-byte datagram must be reassembled and echoed: {udp:?}");
    assert_no_checksum_errors_since(&hosts.a, errors_a);
    assert_no_checksum_errors_since(&hosts.b, errors_b);
    // 10 datagrams of 3 fragments each way, and each fragment counted as rewritten.
    assert!(stat(&rewrite, "egress", "rewritten") >= 30, "egress: {}", stats_json(&rewrite));
    assert!(stat(&rewrite, "ingress", "rewritten") >= 30, "ingress: {}", stats_json(&rewrite));
}

#[test]
fn fragmented_ipv4_udp_arrives_intact() {
    fragmented_udp_arrives_intact(&V4);
}

#[test]
fn fragmented_ipv6_udp_arrives_intact() {
    fragmented_udp_arrives_intact(&V6);
}

/// ICMP echo through address mappings, both ways, in both families.
#[test]
fn ping_works_through_address_mappings_both_ways() {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    rewrite.ok(&["attach", "--iface", "va"]);
    for family in [&V4, &V6] {
        rewrite.ok(&["map", "add", family.b_virtual, family.b_real]);
        // A pings B under its VIRTUAL address; B pings A, whose replies it gets.
        hosts.a.must("ping", &["-c", "3", "-i", "0.2", "-W", "2", family.b_virtual]);
        hosts.b.must("ping", &["-c", "3", "-i", "0.2", "-W", "2", family.a_real]);
    }
    // Without the mapping, VIRTUAL does not answer.
    rewrite.ok(&["map", "del", V4.b_virtual]);
    let out = hosts.a.command("ping").args(["-c", "1", "-W", "1", V4.b_virtual]).output().expect("run ping");
    assert!(!out.status.success(), "ping to an unmapped VIRTUAL must fail");
}

/// Path MTU discovery through the rewrite: A (rewrite on `va`) -- R1 -- R2 -- B, with
/// an MTU of 1200 (IPv6: 1280) between the routers and 1500 elsewhere. A talks to B's VIRTUAL with
/// full-size segments (DF set); R1 answers "fragmentation needed" quoting the packet as
/// it left A, to REAL. Only if the quote is rewritten back to VIRTUAL does A's socket
/// learn the smaller MTU; otherwise the transfer stalls.
fn path_mtu_discovery_works_through_the_rewrite(ingress: &str, family: &Family) {
    let a = Netns::new("a");
    let r1 = Netns::new("r1");
    let r2 = Netns::new("r2");
    let b = Netns::new("b");
    let macs = |last: u8| [0x02, 0x77, 0, 0, 0, last];
    let v4 = family.any == "0.0.0.0";

    let (a_addr, r1a, r1r2, r2r1, r2b, b_addr) = if v4 {
        ("10.100.0.1/24", "10.100.0.2/24", "10.4.0.1/24", "10.4.0.2/24", "10.5.0.1/24", "10.5.0.2/24")
    } else {
        (
            "2001:db8:100::1/64",
            "2001:db8:100::2/64",
            "2001:db8:4::1/64",
            "2001:db8:4::2/64",
            "2001:db8:5::1/64",
            "2001:db8:5::2/64",
        )
    };
    veth(
        VethEnd { netns: &a, name: "va", mac: macs(1) },
        a_addr,
        VethEnd { netns: &r1, name: "ra", mac: macs(2) },
        r1a,
    );
    veth(
        VethEnd { netns: &r1, name: "rr", mac: macs(3) },
        r1r2,
        VethEnd { netns: &r2, name: "rl", mac: macs(4) },
        r2r1,
    );
    veth(
        VethEnd { netns: &r2, name: "rb", mac: macs(5) },
        r2b,
        VethEnd { netns: &b, name: "vb", mac: macs(6) },
        b_addr,
    );
    // IPv6 needs at least 1280 on a link, so that is its bottleneck.
    let bottleneck = if v4 { "1200" } else { "1280" };
    for (netns, dev) in [(&r1, "rr"), (&r2, "rl")] {
        netns.ip(&["link", "set", "dev", dev, "mtu", bottleneck]);
    }
    let gateway = |cidr: &str| cidr.split('/').next().expect("address").to_owned();
    if v4 {
        r1.sysctl("net.ipv4.ip_forward", "1");
        r2.sysctl("net.ipv4.ip_forward", "1");
    } else {
        r1.sysctl("net.ipv6.conf.all.forwarding", "1");
        r2.sysctl("net.ipv6.conf.all.forwarding", "1");
    }
    a.ip(&["route", "add", "default", "via", &gateway(r1a)]);
    r1.ip(&["route", "add", "default", "via", &gateway(r2r1)]);
    r2.ip(&["route", "add", "default", "via", &gateway(r1r2)]);
    r2.ip(&["route", "replace", &gateway(b_addr), "dev", "rb"]);
    b.ip(&["route", "add", "default", "via", &gateway(r2b)]);
    let (b_real, b_virtual) = (gateway(b_addr), if v4 { "10.200.0.2".to_owned() } else { "fd00:200::2".to_owned() });

    let rewrite = RewriteCli::new(&a);
    rewrite.ok(&["attach", "--iface", "va", "--ingress", ingress]);
    rewrite.ok(&["map", "add", &b_virtual, &b_real]);
    let report = tcp_exchange(&b, sock(family.any, 7800), &a, sock(&b_virtual, 7800), MIB);
    assert_eq!(report.client_seen_by_server.ip(), ip(&gateway(a_addr)));
    let counters = stats_json(&rewrite);
    assert!(stat(&rewrite, "ingress", "rewritten") > 0, "{counters}");
}

#[test]
fn path_mtu_discovery_with_tc_ingress() {
    path_mtu_discovery_works_through_the_rewrite("tc", &V4);
}

#[test]
fn path_mtu_discovery_with_xdp_ingress() {
    path_mtu_discovery_works_through_the_rewrite("xdp", &V4);
}

#[test]
fn path_mtu_discovery_over_ipv6() {
    path_mtu_discovery_works_through_the_rewrite("tc", &V6);
}

/// `rewrite upgrade` refuses a pinned map whose layout its programs do not share, and
/// leaves the running programs as they were; `rewrite down` then removes everything
/// this dataplane created, and nothing of another.
#[test]
fn upgrade_refuses_a_foreign_map_layout_and_down_removes_everything() {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    rewrite.ok(&["attach", "--iface", "va", "--ingress", "tc"]);
    rewrite.ok(&["map", "add", B_VIRTUAL, B_REAL]);
    let ids = || {
        let status: serde_json::Value =
            serde_json::from_str(&rewrite.ok(&["status", "--json"])).expect("status --json");
        status["interfaces"][0]["programs"]
            .as_array()
            .expect("programs")
            .iter()
            .map(|program| program["id"].clone())
            .collect::<Vec<_>>()
    };
    let before = ids();
    // Another dataplane's pins in the same namespace: `down` must leave them.
    let other = rewrite_tests::netns::PinDir::new("down-other");
    let other_config = ConfigFile::new("down-other", "[[mapping]]\nvirtual = \"10.9.0.1\"\nreal = \"10.8.0.1\"\n");
    let applied = rewrite.run_with_pin_dir_ok(other.path(), &["apply", other_config.as_arg()]);
    assert!(applied.contains("added 10.9.0.1 -> 10.8.0.1"), "{applied}");

    // A map of another layout pinned where ADDR_FORWARD was: the running programs keep
    // the old map (they hold it), a new load would reuse the foreign one.
    let forward = rewrite.pins().path().join("maps/ADDR_FORWARD");
    std::fs::remove_file(&forward).expect("unpin ADDR_FORWARD");
    rewrite_tests::programs::pin_foreign_hash_map(&forward, 16, 8);
    let refused = rewrite.fails(&["upgrade"]);
    assert!(refused.contains("upgrade refused") && refused.contains("value size 8"), "a clear refusal: {refused}");
    assert_eq!(ids(), before, "the running programs stay");
    let echo = udp_echo(&hosts.b, sock("0.0.0.0", 7300), &hosts.a, sock(B_VIRTUAL, 7300), 10, Duration::from_secs(2));
    assert_eq!(echo.echoed, 10, "and still rewrite: {echo:?}");

    let down = rewrite.ok(&["down"]);
    assert!(down.contains("detached from va"), "{down}");
    assert!(!rewrite.pins().path().exists(), "the pin directory is gone");
    assert!(rewrite.ok(&["status"]).starts_with("no interface attached"));
    let echo =
        udp_echo(&hosts.b, sock("0.0.0.0", 7301), &hosts.a, sock(B_VIRTUAL, 7301), 3, Duration::from_millis(300));
    assert_eq!(echo.echoed, 0, "nothing rewrites any more: {echo:?}");
    let listed = rewrite.run_with_pin_dir_ok(other.path(), &["map", "list"]);
    assert!(listed.contains("10.9.0.1 -> 10.8.0.1"), "the other dataplane is untouched: {listed}");
}
