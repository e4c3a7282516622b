//! `rewrite trace` end to end: a reader in the namespace of host A follows what the
//! programs on `va` do to real traffic, and each record's flow before and after, its
//! outcome and the table that matched are exactly what the packet went through.

use std::{
    net::{IpAddr, SocketAddr},
    process::{Child, Stdio},
    time::Duration,
};

use rewrite_tests::{
    agent::{AgentProcess, ConfigFile},
    cli::{RewriteCli, rewrite_binary},
    crafted::addressed,
    hosts::{A_MAC, A_REAL, B_MAC, B_REAL, B_VIRTUAL, two_hosts},
    netns::Netns,
    packet::IpSpec,
    traffic::{send_raw_frame, tcp_exchange, udp_echo},
    wait::wait_until,
};
use rewrite_user::dataplane::pins::PinLayout;
use serde_json::{Value, json};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address parses")
}

/// A running `rewrite trace --json`, killed on drop if it still runs.
struct Trace {
    child: Option<Child>,
}

impl Trace {
    /// Starts `rewrite trace --json ARGS` in `netns` and waits until it holds the lease.
    fn start(netns: &Netns, cli: &RewriteCli<'_>, args: &[&str]) -> Self {
        let layout = PinLayout::new(cli.pins().path());
        assert!(!rewrite_user::trace::reader_present(&layout).expect("the lease reads"), "no reader before the test's");
        let child = netns
            .command(rewrite_binary().to_str().expect("utf-8 path"))
            .arg("--pin-dir")
            .arg(cli.pins().path())
            .args(["trace", "--json", "--timeout", "30"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rewrite trace");
        let mut trace = Self { child: Some(child) };
        wait_until("the trace reader takes the lease", Duration::from_secs(5), || {
            trace.assert_running();
            rewrite_user::trace::reader_present(&layout).expect("the lease reads")
        });
        trace
    }

    fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("a child");
        if let Some(status) = child.try_wait().expect("poll the trace") {
            let output = self.child.take().expect("a child").wait_with_output().expect("its output");
            panic!("rewrite trace ended early ({status}): {}", String::from_utf8_lossy(&output.stderr));
        }
    }

    /// Stops the trace as an operator's Ctrl-C does (or waits for it to end by itself
    /// with `stop` false) and returns its records and its stderr.
    fn finish(mut self, stop: bool) -> (Vec<Value>, String) {
        let child = self.child.take().expect("a child");
        if stop {
            // Records already in the ring reach the reader within its next look.
            std::thread::sleep(Duration::from_millis(300));
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid")),
                nix::sys::signal::Signal::SIGINT,
            )
            .expect("signal the trace");
        }
        let output = child.wait_with_output().expect("the trace ends");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "rewrite trace failed ({}): {stderr}", output.status);
        let records = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}")))
            .collect();
        (records, stderr)
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn flow(src: &str, src_port: u16, dst: &str, dst_port: u16) -> Value {
    json!({ "protocol": "tcp", "src": src, "src_port": src_port, "dst": dst, "dst_port": dst_port })
}

fn a_tcp_exchange_is_traced_on_each_hook(ingress: &str, ingress_hook: &str) {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    rewrite.ok(&["attach", "--iface", "va", "--ingress", ingress]);
    rewrite.ok(&["map", "add", B_VIRTUAL, B_REAL]);

    let trace = Trace::start(&hosts.a, &rewrite, &["host", B_VIRTUAL, "and", "tcp", "port", "7000"]);
    // Through the same mapping, but UDP: the filter leaves it out.
    let wait = Duration::from_secs(2);
    let udp = udp_echo(
        &hosts.b,
        SocketAddr::new(ip("0.0.0.0"), 7000),
        &hosts.a,
        SocketAddr::new(ip(B_VIRTUAL), 7000),
        5,
        wait,
    );
    assert_eq!(udp.echoed, 5, "the filtered-out flow still works: {udp:?}");
    let report = tcp_exchange(
        &hosts.b,
        SocketAddr::new(ip("0.0.0.0"), 7000),
        &hosts.a,
        SocketAddr::new(ip(B_VIRTUAL), 7000),
        4096,
    );
    let client_port = report.client_seen_by_server.port();
    let (records, stderr) = trace.finish(true);

    let outgoing_before = flow(A_REAL, client_port, B_VIRTUAL, 7000);
    let outgoing_after = flow(A_REAL, client_port, B_REAL, 7000);
    let incoming_before = flow(B_REAL, 7000, A_REAL, client_port);
    let incoming_after = flow(B_VIRTUAL, 7000, A_REAL, client_port);
    let (mut egress, mut ingress_records) = (0, 0);
    for record in &records {
        let context = format!("{record}\nall records: {records:#?}");
        assert_eq!(record["iface"], "va", "{context}");
        assert_eq!(record["outcome"], "rewritten", "{context}");
        assert_eq!(record["icmp_error"], false, "{context}");
        assert!(record.get("reason").is_none() && record.get("gate").is_none(), "{context}");
        match record["hook"].as_str() {
            Some("tc-egress") => {
                egress += 1;
                assert_eq!(record["direction"], "egress", "{context}");
                assert_eq!(record["before"], outgoing_before, "{context}");
                assert_eq!(record["after"], outgoing_after, "{context}");
                assert_eq!(record["matched"], json!({ "destination": "address" }), "{context}");
            }
            Some(hook) if hook == ingress_hook => {
                ingress_records += 1;
                assert_eq!(record["direction"], "ingress", "{context}");
                assert_eq!(record["before"], incoming_before, "{context}");
                assert_eq!(record["after"], incoming_after, "{context}");
                assert_eq!(record["matched"], json!({ "source": "address" }), "{context}");
            }
            _ => panic!("a record from an unexpected hook: {context}"),
        }
    }
    // SYN, ACK, data and FIN out; SYN-ACK, data and FIN back: never fewer.
    assert!(egress >= 4 && ingress_records >= 3, "{egress} egress and {ingress_records} ingress records: {records:#?}");
    let summary: Value = serde_json::from_str(stderr.lines().last().expect("a summary line")).expect("JSON summary");
    assert_eq!(summary["records"], records.len(), "{stderr}");
    assert_eq!(summary["dropped"], 0, "{stderr}");
    let layout = PinLayout::new(rewrite.pins().path());
    assert!(!rewrite_user::trace::reader_present(&layout).expect("lease"), "the reader gave its lease up on SIGINT");

    // A malformed segment (TCP data offset 3: shorter than the header itself), traced
    // with its reason and its flow, which the parser read before it refused.
    let trace = Trace::start(&hosts.a, &rewrite, &["--count", "1", "--hook", ingress_hook, "tcp", "port", "7999"]);
    let frame = IpSpec::tcp(ip(B_REAL), ip(A_REAL)).with_ports(40001, 7999);
    let l4 = frame.l4_offset();
    let mut bytes = addressed(frame.frame(), A_MAC, B_MAC);
    bytes[l4 + 12] = 0x30;
    send_raw_frame(&hosts.b, "vb", &bytes);
    let (records, _) = trace.finish(false);
    assert_eq!(records.len(), 1, "{records:#?}");
    let record = &records[0];
    assert_eq!(record["hook"], ingress_hook, "{record}");
    assert_eq!(record["outcome"], "malformed", "{record}");
    assert_eq!(record["reason"], "TCP data offset outside the datagram", "{record}");
    assert_eq!(record["before"], flow(B_REAL, 40001, A_REAL, 7999), "{record}");
    assert_eq!(record["after"], record["before"], "nothing changed: {record}");
    assert_eq!(record["matched"], json!({}), "{record}");
}

#[test]
fn a_tcp_exchange_is_traced_at_xdp_and_tc_egress() {
    a_tcp_exchange_is_traced_on_each_hook("xdp", "xdp");
}

#[test]
fn a_tcp_exchange_is_traced_at_tc_ingress_and_egress() {
    a_tcp_exchange_is_traced_on_each_hook("tc", "tc-ingress");
}

#[test]
fn the_rate_limit_keeps_a_trace_bounded_and_counts_the_rest() {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    rewrite.ok(&["attach", "--iface", "va", "--ingress", "tc"]);
    rewrite.ok(&["map", "add", B_VIRTUAL, B_REAL]);
    let trace = Trace::start(&hosts.a, &rewrite, &["--rate", "2", "--hook", "tc-egress", "udp", "dst", "port", "7100"]);
    // Exactly 40 datagrams, through the mapping (B answers each with a port unreachable,
    // which arrives at ingress, outside the trace's hook).
    hosts.a.run(|| {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind a UDP socket");
        for index in 0..40u8 {
            socket.send_to(&[index; 32], SocketAddr::new(ip(B_VIRTUAL), 7100)).expect("send a datagram");
        }
    });
    let (records, stderr) = trace.finish(true);
    // 40 datagrams leave within well under a second: at most 2 per CPU per window, and
    // a window may turn over once while they leave.
    let cpus = std::thread::available_parallelism().map_or(2, usize::from);
    assert!(!records.is_empty() && records.len() <= 4 * cpus, "{} records: {records:#?}", records.len());
    let summary: Value = serde_json::from_str(stderr.lines().last().expect("a summary line")).expect("JSON summary");
    assert_eq!(summary["records"], records.len(), "{stderr}");
    assert_eq!(
        summary["dropped"].as_u64(),
        Some(40 - records.len() as u64),
        "every datagram not recorded is counted: {stderr}"
    );
    assert!(
        stderr.lines().any(|line| line.starts_with("{\"dropped\"")),
        "the reader reports drops as they grow: {stderr}"
    );
}

#[test]
fn trace_refuses_bad_filters_and_a_second_reader() {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    rewrite.ok(&["attach", "--iface", "va", "--ingress", "tc"]);
    let error = rewrite.fails(&["trace", "host", "10.0.0.5", "or", "port", "80"]);
    assert!(error.contains("column 15") && error.contains("only `and`"), "{error}");
    let error = rewrite.fails(&["trace", "--iface", "nosuch0", "--timeout", "1"]);
    assert!(error.contains("nosuch0"), "{error}");
    let first = Trace::start(&hosts.a, &rewrite, &[]);
    let error = rewrite.fails(&["trace", "--timeout", "1"]);
    assert!(error.contains("another `rewrite trace` is running") && error.contains("pid"), "{error}");
    drop(first);
}

#[test]
fn the_gates_verdict_is_traced_with_its_reason() {
    const UNKNOWN: &str = "10.100.0.66";
    let hosts = two_hosts();
    hosts.b.ip(&["addr", "add", &format!("{UNKNOWN}/24"), "dev", "vb"]);
    let rewrite = RewriteCli::new(&hosts.a);
    rewrite.ok(&["attach", "--iface", "va", "--ingress", "tc"]);
    rewrite.ok(&["map", "add", B_VIRTUAL, B_REAL]);
    rewrite.ok(&["gate", "protect", "udp/5000"]);
    rewrite.ok(&["gate", "mode", "enforce"]);
    let trace = Trace::start(&hosts.a, &rewrite, &["--hook", "tc-ingress", "udp", "dst", "port", "5000"]);
    // One datagram from a stranger, then one from the member B.
    for source in [UNKNOWN, B_REAL] {
        hosts.b.run(|| {
            let socket = std::net::UdpSocket::bind(SocketAddr::new(ip(source), 41000)).expect("bind on B");
            socket.send_to(b"hello", SocketAddr::new(ip(A_REAL), 5000)).expect("send");
        });
        std::thread::sleep(Duration::from_millis(100));
    }
    // From the stranger again, with a UDP length of 0: the parser refuses it, and the
    // gate, which reads the ports itself, drops it.
    let frame = IpSpec::udp(ip(UNKNOWN), ip(A_REAL)).with_ports(41000, 5000);
    let l4 = frame.l4_offset();
    let mut bytes = addressed(frame.frame(), A_MAC, B_MAC);
    bytes[l4 + 4..l4 + 6].copy_from_slice(&[0, 0]);
    send_raw_frame(&hosts.b, "vb", &bytes);
    let (records, _) = trace.finish(true);
    let udp = |src: &str, dst: &str| json!({ "protocol": "udp", "src": src, "src_port": 41000, "dst": dst, "dst_port": 5000 });
    assert_eq!(records.len(), 3, "{records:#?}");
    let refused = &records[2];
    assert_eq!(refused["outcome"], "gate_dropped", "{refused}");
    assert_eq!(refused["gate"], "dropped", "{refused}");
    assert_eq!(refused["reason"], "UDP length below 8", "{refused}");
    assert_eq!(refused["before"], udp(UNKNOWN, A_REAL), "{refused}");
    let (stranger, member) = (&records[0], &records[1]);
    assert_eq!(stranger["outcome"], "gate_dropped", "{stranger}");
    assert_eq!(stranger["gate"], "dropped", "{stranger}");
    assert_eq!(stranger["before"], udp(UNKNOWN, A_REAL), "{stranger}");
    assert_eq!(stranger["after"], stranger["before"], "{stranger}");
    assert_eq!(member["outcome"], "rewritten", "{member}");
    assert_eq!(member["gate"], "passed_member", "{member}");
    assert_eq!(member["before"], udp(B_REAL, A_REAL), "{member}");
    assert_eq!(member["after"], udp(B_VIRTUAL, A_REAL), "{member}");
}

#[test]
fn a_trace_beside_a_running_agent_needs_no_change_to_it() {
    let hosts = two_hosts();
    let rewrite = RewriteCli::new(&hosts.a);
    let config = ConfigFile::new(
        "trace-agent",
        "[[interface]]\nname = \"va\"\ningress = \"tc\"\n\n[[mapping]]\nvirtual = \"10.200.0.2\"\nreal = \"10.100.0.2\"\n",
    );
    let agent = AgentProcess::start(&hosts.a, rewrite.pins().path(), &config, 9480);
    let dataplane =
        || rewrite.ok(&["status"]).lines().filter(|line| !line.starts_with("agent:")).collect::<Vec<_>>().join("\n");
    let before = dataplane();
    let trace =
        Trace::start(&hosts.a, &rewrite, &["--count", "1", "--hook", "tc-egress", "host", B_VIRTUAL, "and", "udp"]);
    let udp = udp_echo(
        &hosts.b,
        SocketAddr::new(ip("0.0.0.0"), 7200),
        &hosts.a,
        SocketAddr::new(ip(B_VIRTUAL), 7200),
        3,
        Duration::from_secs(2),
    );
    assert_eq!(udp.echoed, 3, "{udp:?}");
    let (records, _) = trace.finish(false);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["outcome"], "rewritten", "{}", records[0]);
    assert_eq!(records[0]["after"]["dst"], B_REAL, "{}", records[0]);
    assert_eq!(dataplane(), before, "the trace changed nothing the agent keeps");
    assert!(agent.scrape().is_some(), "the agent still serves:\n{}", agent.log());
    assert!(!agent.log().contains("\"level\":\"ERROR\""), "the agent logged an error:\n{}", agent.log());
}
