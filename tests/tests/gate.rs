//! The gatekeeper end to end: host A runs rewrite (the protected host), host B is
//! the client. B's own address 10.100.0.2 is a fleet member once A maps a VIRTUAL to
//! it; B's second address 10.100.0.66 is an unknown source until a mapping or an
//! allow prefix names it. Real TCP and UDP sockets; every refusal is a timeout of
//! a second at most.

use std::{
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use rewrite_tests::{
    agent::ConfigFile,
    cli::{RewriteCli, rewrite_binary},
    hosts::{A_REAL, B_REAL, B_VIRTUAL, TwoHosts, two_hosts},
    traffic::{tcp_connects, udp_echo},
    wait::wait_until,
};

const UNKNOWN: &str = "10.100.0.66";
const PROTECTED_TCP: u16 = 9200;
const PROTECTED_UDP: u16 = 5000;
const OPEN_TCP: u16 = 9300;
const SSH: u16 = 22;
const REFUSED_WITHIN: Duration = Duration::from_millis(700);

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("test address"), port)
}

/// Two hosts, rewrite attached to A with `ingress`, B a member (A maps B_VIRTUAL to
/// B_REAL), listeners on A's protected, open and ssh ports, and the gate protecting
/// tcp/9200 and udp/5000 in `mode`.
struct Gate {
    hosts: &'static TwoHosts,
    cli: RewriteCli<'static>,
    _listeners: Vec<TcpListener>,
}

impl Gate {
    fn set_up(ingress: &str, mode: &str) -> Self {
        // Leaked so that the CLI guard can borrow it; the namespaces go with the guard
        // below.
        let hosts: &'static TwoHosts = Box::leak(Box::new(two_hosts()));
        hosts.b.ip(&["addr", "add", &format!("{UNKNOWN}/24"), "dev", "vb"]);
        let cli = RewriteCli::new(&hosts.a);
        cli.ok(&["attach", "--iface", "va", "--ingress", ingress]);
        cli.ok(&["map", "add", B_VIRTUAL, B_REAL]);
        let listeners = [PROTECTED_TCP, OPEN_TCP, SSH]
            .into_iter()
            .map(|port| hosts.a.run(|| TcpListener::bind(addr("0.0.0.0", port)).expect("listen on A")))
            .collect();
        cli.ok(&["gate", "protect", &format!("tcp/{PROTECTED_TCP}"), &format!("udp/{PROTECTED_UDP}")]);
        cli.ok(&["gate", "mode", mode]);
        Self { hosts, cli, _listeners: listeners }
    }

    /// B's connections to A leave from its member address from now on.
    fn client_is_member(&self) {
        self.client_source(B_REAL);
    }

    /// B's connections to A leave from the address no mapping names.
    fn client_is_unknown(&self) {
        self.client_source(UNKNOWN);
    }

    fn client_source(&self, source: &str) {
        self.hosts.b.ip(&["route", "replace", &format!("{A_REAL}/32"), "dev", "vb", "src", source]);
    }

    fn connects(&self, port: u16) -> bool {
        tcp_connects(&self.hosts.b, addr(A_REAL, port), REFUSED_WITHIN)
    }

    fn udp_answered(&self) -> u32 {
        udp_echo(
            &self.hosts.a,
            addr("0.0.0.0", PROTECTED_UDP),
            &self.hosts.b,
            addr(A_REAL, PROTECTED_UDP),
            5,
            REFUSED_WITHIN,
        )
        .echoed
    }

    fn counter(&self, name: &str) -> u64 {
        let stats: serde_json::Value =
            serde_json::from_str(&self.cli.ok(&["gate", "stats", "--json"])).expect("gate stats prints JSON");
        stats[name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {stats}"))
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // The pins go with `cli` after this body; the namespaces were leaked for the
        // borrow and are deleted here.
        for netns in [&self.hosts.a, &self.hosts.b] {
            let _ = std::process::Command::new("ip").args(["netns", "del", netns.name()]).status();
        }
    }
}

fn members_pass_and_unknown_sources_are_dropped(ingress: &str) {
    let gate = Gate::set_up(ingress, "enforce");
    gate.client_is_member();
    assert!(gate.connects(PROTECTED_TCP), "{ingress}: a member reaches the protected TCP service");
    assert_eq!(gate.udp_answered(), 5, "{ingress}: a member reaches the protected UDP service");
    assert!(gate.counter("passed_member") >= 2, "{ingress}: member packets counted");

    gate.client_is_unknown();
    assert!(!gate.connects(PROTECTED_TCP), "{ingress}: an unknown source must not reach the protected TCP service");
    assert_eq!(gate.udp_answered(), 0, "{ingress}: nor the protected UDP service");
    assert!(gate.counter("dropped") >= 2, "{ingress}: the drops are counted");
    assert!(gate.connects(OPEN_TCP), "{ingress}: an unprotected port stays open to everyone");
    assert!(gate.connects(SSH), "{ingress}: ssh stays open (the fail-safe)");
}

#[test]
fn with_tc_ingress_members_pass_and_unknown_sources_are_dropped() {
    members_pass_and_unknown_sources_are_dropped("tc");
}

#[test]
fn with_xdp_ingress_members_pass_and_unknown_sources_are_dropped() {
    members_pass_and_unknown_sources_are_dropped("xdp");
}

#[test]
fn monitor_mode_drops_nothing_but_counts_the_unknown_source() {
    let gate = Gate::set_up("tc", "monitor");
    gate.client_is_unknown();
    assert!(gate.connects(PROTECTED_TCP), "monitor mode drops nothing");
    assert_eq!(gate.udp_answered(), 5, "monitor mode drops nothing");
    let would_drop = gate.counter("would_drop");
    assert!(would_drop >= 2, "what enforce would drop is counted");
    assert_eq!(gate.counter("dropped"), 0);
    // Operators switch to enforce once these are clean: the metrics show them.
    let metrics = rewrite_user::agent::metrics::render(
        &rewrite_user::dataplane::pins::PinLayout::new(gate.cli.pins().path()),
        &rewrite_user::agent::metrics::ApplyStatus::default(),
        rewrite_user::agent::metrics::MappingSeries::DEFAULT,
    )
    .expect("render the metrics");
    assert!(metrics.contains(&format!("rewrite_gate_total{{reason=\"would_drop\"}} {would_drop}")), "{metrics}");
    assert!(metrics.contains("rewrite_gate_mode{mode=\"monitor\"} 1"), "{metrics}");
}

#[test]
fn gate_log_shows_samples_of_denied_sources_while_it_runs() {
    let gate = Gate::set_up("tc", "enforce");
    let layout = rewrite_user::dataplane::pins::PinLayout::new(gate.cli.pins().path());
    assert!(!rewrite_user::gate::log_reader_present(&layout).expect("lease"), "no reader yet");
    let log = gate
        .hosts
        .a
        .command(rewrite_binary().to_str().expect("utf-8 path"))
        .arg("--pin-dir")
        .arg(gate.cli.pins().path())
        .args(["gate", "log", "--json", "--count", "1", "--timeout", "20"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start rewrite gate log");
    wait_until("the gate log reader", Duration::from_secs(5), || {
        rewrite_user::gate::log_reader_present(&layout).expect("lease")
    });
    gate.client_is_unknown();
    assert_eq!(gate.udp_answered(), 0, "the unknown source is dropped");
    let output = log.wait_with_output().expect("gate log ends");
    assert!(output.status.success(), "gate log: {}", String::from_utf8_lossy(&output.stderr));
    let sample: serde_json::Value =
        serde_json::from_slice(output.stdout.split(|byte| *byte == b'\n').next().expect("a line")).expect("JSON");
    assert_eq!(sample["verdict"], "dropped", "{sample}");
    assert_eq!(sample["source"], UNKNOWN, "{sample}");
    assert_eq!(sample["protocol"], "udp", "{sample}");
    assert_eq!(sample["port"], PROTECTED_UDP, "{sample}");
    assert!(!rewrite_user::gate::log_reader_present(&layout).expect("lease"), "the reader gave its lease up");
}

#[test]
fn a_mapping_added_or_removed_opens_or_closes_the_gate_live() {
    let gate = Gate::set_up("tc", "enforce");
    gate.client_is_unknown();
    assert!(!gate.connects(PROTECTED_TCP), "unknown at first");
    // A's replies to the new member's VIRTUAL route towards B, as B_VIRTUAL's do.
    gate.cli.ok(&["map", "add", "10.200.0.66", UNKNOWN]);
    assert!(gate.connects(PROTECTED_TCP), "a fleet member as soon as the table maps it");
    gate.cli.ok(&["map", "del", "10.200.0.66"]);
    assert!(!gate.connects(PROTECTED_TCP), "unknown again once the mapping is gone");
}

#[test]
fn allow_prefixes_admit_sources_and_disallow_takes_them_back() {
    let gate = Gate::set_up("tc", "enforce");
    gate.client_is_unknown();
    gate.cli.ok(&["gate", "allow", "10.100.0.64/28"]);
    assert!(gate.connects(PROTECTED_TCP), "inside an allow prefix");
    assert!(gate.counter("passed_allowed_prefix") >= 1);
    gate.cli.ok(&["gate", "disallow", "10.100.0.64/28"]);
    assert!(!gate.connects(PROTECTED_TCP), "the prefix is gone");
}

#[test]
fn the_ssh_fail_safe_holds_until_it_is_taken_away_explicitly() {
    let gate = Gate::set_up("tc", "enforce");
    gate.client_is_unknown();
    gate.cli.ok(&["gate", "protect", "tcp/all"]);
    assert!(gate.connects(SSH), "protect all leaves ssh open");
    assert!(!gate.connects(OPEN_TCP), "protect all closes the other ports");
    assert!(gate.counter("passed_management") >= 1);
    gate.cli.ok(&["gate", "management", "--none"]);
    assert!(!gate.connects(SSH), "without management ports, ssh is protected like the rest");
    gate.cli.ok(&["gate", "management", "tcp/22"]);
    assert!(gate.connects(SSH), "ssh is a management port again");
    let shown = gate.cli.ok(&["gate", "show"]);
    assert!(shown.contains("management  tcp/22"), "{shown}");
}

#[test]
fn a_config_with_a_gate_section_is_applied_exported_and_refused_whole() {
    let gate = Gate::set_up("tc", "off");
    gate.client_is_unknown();
    let mapping = format!("[[mapping]]\nvirtual = \"{B_VIRTUAL}\"\nreal = \"{B_REAL}\"\n");
    let config = format!(
        "[gate]\nmode = \"enforce\"\nprotect = [\"tcp/{PROTECTED_TCP}\", \"udp/{PROTECTED_UDP}\"]\nallow =          [\"192.0.2.0/24\"]\n\n{mapping}"
    );
    let file = ConfigFile::new("gate-apply", &config);
    let applied = gate.cli.ok(&["apply", file.as_arg()]);
    assert!(applied.contains("gate mode off -> enforce") && applied.contains("gate allow 192.0.2.0/24"), "{applied}");
    assert!(!gate.connects(PROTECTED_TCP), "the gate from the config is enforced");
    let exported = gate.cli.ok(&["export"]);
    for line in ["[gate]", "mode = \"enforce\"", "protect = [\"tcp/9200\", \"udp/5000\"]", "allow = [\"192.0.2.0/24\"]"]
    {
        assert!(exported.contains(line), "export shows {line:?}:\n{exported}");
    }
    let again = gate.cli.ok(&["apply", file.as_arg()]);
    assert!(!again.contains("gate"), "applying again changes nothing in the gate: {again}");

    // A port in the host's ephemeral range refuses the whole file: the allow prefix
    // beside it is not added either.
    let refused = ConfigFile::new(
        "gate-refused",
        &format!("[gate]\nmode = \"enforce\"\nprotect = [\"udp/40000\"]\nallow = [\"{UNKNOWN}\"]\n\n{mapping}"),
    );
    let error = gate.cli.fails(&["apply", refused.as_arg()]);
    assert!(error.contains("udp/40000") && error.contains("ephemeral port range"), "{error}");
    assert!(!gate.connects(PROTECTED_TCP), "still enforced, and the unknown source still not allowed");
}

#[test]
fn replies_to_connections_the_host_opened_are_never_dropped() {
    let gate = Gate::set_up("xdp", "enforce");
    gate.cli.ok(&["gate", "protect", "all"]);
    // A (the protected host) opens connections to B's address that no mapping names:
    // the replies come from an unknown source, to A's ephemeral ports.
    let listener = gate.hosts.b.run(|| TcpListener::bind(addr(UNKNOWN, 7000)).expect("listen on B"));
    assert!(tcp_connects(&gate.hosts.a, addr(UNKNOWN, 7000), Duration::from_secs(2)), "TCP replies pass");
    drop(listener);
    let report = udp_echo(&gate.hosts.b, addr(UNKNOWN, 7001), &gate.hosts.a, addr(UNKNOWN, 7001), 5, REFUSED_WITHIN);
    assert_eq!(report.echoed, 5, "UDP replies pass");
    assert!(gate.counter("dropped") == 0, "nothing was dropped");
}

#[test]
fn bad_gate_input_is_refused_with_what_is_wrong() {
    let gate = Gate::set_up("tc", "off");
    let before = gate.cli.ok(&["gate", "show", "--json"]);
    for (args, expected) in [
        (&["gate", "protect", "tcp/9201", "udp/40000"][..], "ephemeral port range"),
        (&["gate", "protect", "tcp/x"][..], "is not PROTO/PORT"),
        (&["gate", "protect", "icmp/1"][..], "is not PROTO/PORT"),
        (&["gate", "mode", "strict"][..], "[possible values: off, monitor, enforce]"),
        (&["gate", "allow", "10.0.0.0/40"][..], "not an address prefix"),
    ] {
        let error = gate.cli.fails(args);
        assert!(error.contains(expected), "{args:?}: {error}");
    }
    assert_eq!(gate.cli.ok(&["gate", "show", "--json"]), before, "a refused command changes nothing");
}

/// The walks around the gate found in the field, as real frames from B's unknown
/// addresses: an IPv6 UDP datagram with a UDP length of 0, one behind a routing header
/// with no segments left, and a TCP SYN whose first IPv4 fragment carries 8 bytes of
/// its header. The control: with the gate in monitor mode, A's kernel delivers each
/// (the datagrams reach A's socket, the SYN is answered). In enforce mode none is,
/// and each is counted as dropped.
fn crafted_frames_reach_the_host_only_while_the_gate_lets_them(ingress: &str) {
    use rewrite_tests::{
        crafted::{
            TcpSniffer, addressed, ipv4_syn_in_two_fragments, ipv6_udp_behind_routing_header, ipv6_udp_length_zero,
        },
        hosts::{A_MAC, B_MAC, V6},
        traffic::send_raw_frame,
    };
    let gate = Gate::set_up(ingress, "monitor");
    let hosts = gate.hosts;
    let (unknown6, a6): (std::net::IpAddr, std::net::IpAddr) =
        ("2001:db8:100::66".parse().expect("address"), V6.a_real.parse().expect("address"));
    let socket = hosts.a.run(|| std::net::UdpSocket::bind(addr("::", PROTECTED_UDP)).expect("bind on A"));
    socket.set_read_timeout(Some(REFUSED_WITHIN)).expect("set a timeout");
    let datagrams = [
        ("an IPv6 UDP datagram with length 0", b"length 0".as_slice()),
        ("an IPv6 UDP datagram behind a routing header", b"routing header".as_slice()),
    ];
    let frame = |index: usize, payload: &[u8]| {
        let frame = if index == 0 {
            ipv6_udp_length_zero(unknown6, a6, 40000, PROTECTED_UDP, payload)
        } else {
            ipv6_udp_behind_routing_header(unknown6, a6, 40000, PROTECTED_UDP, payload)
        };
        addressed(frame, A_MAC, B_MAC)
    };
    let arrives = |index: usize, payload: &[u8]| {
        send_raw_frame(&hosts.b, "vb", &frame(index, payload));
        let mut buffer = [0u8; 64];
        socket.recv_from(&mut buffer).is_ok_and(|(length, _)| &buffer[..length] == payload)
    };
    let sniffer = TcpSniffer::open(&hosts.b);
    let syn_answered = |src_port: u16| {
        let unknown: std::net::Ipv4Addr = UNKNOWN.parse().expect("address");
        for fragment in ipv4_syn_in_two_fragments(unknown, A_REAL.parse().expect("address"), src_port, PROTECTED_TCP, 7)
        {
            send_raw_frame(&hosts.b, "vb", &addressed(fragment, A_MAC, B_MAC));
        }
        sniffer.sees_syn_ack(PROTECTED_TCP, src_port, REFUSED_WITHIN)
    };

    for (index, (what, payload)) in datagrams.iter().enumerate() {
        assert!(
            arrives(index, payload),
            "{ingress}: control: A's kernel delivers {what} with the gate in monitor mode"
        );
    }
    assert!(syn_answered(41000), "{ingress}: control: A answers a SYN in two fragments with the gate in monitor mode");
    assert!(gate.counter("would_drop") >= 3, "{ingress}: monitor counts all three as unknown sources");

    gate.cli.ok(&["gate", "mode", "enforce"]);
    for (index, (what, payload)) in datagrams.iter().enumerate() {
        assert!(!arrives(index, payload), "{ingress}: {what} from an unknown source must not reach A");
    }
    assert!(!syn_answered(41001), "{ingress}: a SYN in two fragments from an unknown source must not be answered");
    assert!(gate.counter("dropped") >= 3, "{ingress}: the drops are counted");
}

#[test]
fn with_tc_ingress_crafted_frames_do_not_walk_around_the_gate() {
    crafted_frames_reach_the_host_only_while_the_gate_lets_them("tc");
}

#[test]
fn with_xdp_ingress_crafted_frames_do_not_walk_around_the_gate() {
    crafted_frames_reach_the_host_only_while_the_gate_lets_them("xdp");
}
