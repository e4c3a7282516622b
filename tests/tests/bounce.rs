//! Bounce mode end to end: a client, the bouncer (rewrite attached, forwarding on) and
//! a target in three namespaces, with real TCP and UDP sockets. Neither end has a
//! route to the other's subnet, so every flow that works went through the full NAT.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    time::{Duration, Instant},
};

use rewrite_tests::{
    agent::ConfigFile,
    bounce::{
        Bounce, CLIENT, CLIENT_MAC, LISTEN, LISTEN_V6, SOURCE, SOURCE_V6, TARGET, TARGET_MAC, TARGET_V6, addr,
        log_events, nic_stat,
    },
    traffic::{
        IO_TIMEOUT, assert_no_checksum_errors_since, assert_receiver_verifies_checksums, checksum_errors, tcp_exchange,
        udp_echo,
    },
    wait::wait_until,
};

const ALLOCATED_PORTS: std::ops::RangeInclusive<u16> = 61000..=65535;

#[test]
fn a_tcp_transfer_arrives_intact_with_checksums_the_receivers_verify() {
    let bounce = Bounce::set_up();
    bounce.rewrite(&["bounce", "add", &format!("{LISTEN}:8080/tcp"), &format!("{TARGET}:80")]);
    // Both ends verify checksums in software (proved by a deliberately bad one), so a
    // wrong checksum from the bouncer would show in their error counters.
    let ip = |text: &str| text.parse::<IpAddr>().expect("address");
    assert_receiver_verifies_checksums(bounce.bouncer, "vbt", TARGET_MAC, ip(SOURCE), ip(TARGET), bounce.target);
    assert_receiver_verifies_checksums(bounce.bouncer, "vbc", CLIENT_MAC, ip(LISTEN), ip(CLIENT), bounce.client);
    let (target_errors, client_errors) = (checksum_errors(bounce.target), checksum_errors(bounce.client));

    let report = tcp_exchange(bounce.target, addr("0.0.0.0", 80), bounce.client, addr(LISTEN, 8080), 4 << 20);
    assert_eq!(report.client_seen_by_server.ip(), ip(SOURCE), "the target sees the bouncer's address");
    assert!(
        ALLOCATED_PORTS.contains(&report.client_seen_by_server.port()),
        "the target sees a port of the bouncer's range, not {}",
        report.client_seen_by_server
    );
    assert_eq!(report.server_seen_by_client, addr(LISTEN, 8080), "the client talks to LISTEN throughout");
    assert_no_checksum_errors_since(bounce.target, target_errors);
    assert_no_checksum_errors_since(bounce.client, client_errors);

    // Both sides closed: the FIN exchange ends the flow and frees its entries.
    wait_until("the flow to close by FIN", Duration::from_secs(5), || bounce.counter("closed_fin") == 1);
    assert_eq!(bounce.counter("connects"), 1);
    let stats = bounce.stats();
    assert_eq!(stats["table_entries"], 0, "a closed flow leaves no entry: {stats}");
    assert_eq!(stats["counters"]["errors"], 0, "{stats}");

    // Whoever can write these maps can redirect the host's traffic: root only.
    use std::os::unix::fs::PermissionsExt as _;
    for pin in [
        "maps/BOUNCE_SERVICES",
        "maps/BOUNCE_FLOWS",
        "maps/BOUNCE_SETTINGS",
        "maps/BOUNCE_COUNTERS",
        "maps/BOUNCE_EVENTS",
        "maps/BOUNCE_LOG_LEASE",
        "maps/BOUNCE_XDP",
        "ifaces/vbc/ingress_tc_bounce_prog",
        "ifaces/vbt/ingress_tc_bounce_link",
    ] {
        let path = bounce.pin_dir().join(pin);
        let mode =
            std::fs::metadata(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display())).permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} must be root-only, is {:o}", path.display(), mode & 0o777);
    }
}

#[test]
fn with_xdp_ingress_flows_are_bounced_in_xdp_before_any_skb_exists() {
    let bounce = Bounce::set_up_with("xdp");
    bounce.rewrite(&["bounce", "add", &format!("{LISTEN}:8080/tcp"), &format!("{TARGET}:80")]);
    bounce.rewrite(&["bounce", "add", &format!("[{LISTEN_V6}]:5353/udp"), &format!("[{TARGET_V6}]:53")]);
    // The first packets resolve the neighbours: XDP cannot, and leaves them to TC.
    // Everything after is redirected in XDP, which the veths count per direction.
    let redirected = |iface: &str| nic_stat(bounce.bouncer, iface, "rx_queue_0_xdp_redirect");
    let lost = |iface: &str| nic_stat(bounce.bouncer, iface, "tx_queue_0_xdp_xmit_errors");
    let (target_errors, client_errors) = (checksum_errors(bounce.target), checksum_errors(bounce.client));

    let report = tcp_exchange(bounce.target, addr("0.0.0.0", 80), bounce.client, addr(LISTEN, 8080), 4 << 20);
    assert_eq!(report.client_seen_by_server.ip(), SOURCE.parse::<IpAddr>().expect("address"));
    assert_eq!(report.server_seen_by_client, addr(LISTEN, 8080), "the client talks to LISTEN throughout");
    let udp = udp_echo(bounce.target, addr("::", 53), bounce.client, addr(LISTEN_V6, 5353), 20, Duration::from_secs(2));
    assert_eq!(udp.echoed, 20, "every IPv6 request is answered: {udp:?}");
    assert_no_checksum_errors_since(bounce.target, target_errors);
    assert_no_checksum_errors_since(bounce.client, client_errors);

    // 4 MiB is some 2,900 full-size segments towards the target, and their ACKs back.
    let (to_target, to_client) = (redirected("vbc"), redirected("vbt"));
    assert!(to_target > 2000, "the client's segments were redirected in XDP: {to_target}");
    assert!(to_client > 500, "the target's answers were redirected in XDP: {to_client}");
    assert_eq!((lost("vbc"), lost("vbt")), (0, 0), "no redirected frame was refused by a veth");
    let stats = bounce.stats();
    assert_eq!(stats["counters"]["errors"], 0, "{stats}");
    assert_eq!(stats["counters"]["connects"], 2, "one TCP and one UDP flow: {stats}");
}

#[test]
fn after_an_upgrade_the_new_xdp_program_still_hands_packets_to_bounce_mode() {
    let object = std::env::var("REWRITE_UPGRADE_OBJECT").unwrap_or_else(|_| {
        panic!("REWRITE_UPGRADE_OBJECT is not set: run the tests with `cargo xtask test`, which builds a second object")
    });
    let bounce = Bounce::set_up_with("xdp");
    bounce.rewrite(&["bounce", "add", &format!("{LISTEN}:5353/udp"), &format!("{TARGET}:53")]);
    let redirected = || nic_stat(bounce.bouncer, "vbc", "rx_queue_0_xdp_redirect");
    let exchange = || {
        let report =
            udp_echo(bounce.target, addr("0.0.0.0", 53), bounce.client, addr(LISTEN, 5353), 20, Duration::from_secs(2));
        assert_eq!(report.echoed, 20, "every request is answered: {report:?}");
    };
    exchange();
    let before = redirected();
    let upgraded = bounce.rewrite(&["upgrade", "--object", &object]);
    assert!(upgraded.contains("vbc: rewrite_xdp_ingress id "), "upgrade output:\n{upgraded}");
    exchange();
    assert!(
        redirected() >= before + 20,
        "the requests after the upgrade were bounced in XDP ({before} redirects before, {} after)",
        redirected()
    );
}

#[test]
fn udp_requests_are_answered_over_ipv4_and_ipv6() {
    let bounce = Bounce::set_up();
    bounce.rewrite(&["bounce", "add", &format!("{LISTEN}:5353/udp"), &format!("{TARGET}:53")]);
    bounce.rewrite(&["bounce", "add", &format!("[{LISTEN_V6}]:5353/udp"), &format!("[{TARGET_V6}]:53")]);
    let ip = |text: &str| text.parse::<IpAddr>().expect("address");
    for (any, listen, source, target) in [("0.0.0.0", LISTEN, SOURCE, TARGET), ("::", LISTEN_V6, SOURCE_V6, TARGET_V6)]
    {
        let errors = checksum_errors(bounce.target);
        let report =
            udp_echo(bounce.target, addr(any, 53), bounce.client, addr(listen, 5353), 20, Duration::from_secs(2));
        assert_eq!(report.echoed, 20, "every request to {listen} is answered: {report:?}");
        assert!(
            report.server_sources.iter().all(|seen| seen.ip() == ip(source) && ALLOCATED_PORTS.contains(&seen.port())),
            "the target {target} sees only the bouncer's {source} and its ports: {:?}",
            report.server_sources
        );
        assert!(
            report.echo_sources.iter().all(|seen| *seen == addr(listen, 5353)),
            "answers come from LISTEN: {:?}",
            report.echo_sources
        );
        assert_no_checksum_errors_since(bounce.target, errors);
    }
    let rows: serde_json::Value =
        serde_json::from_str(&bounce.rewrite(&["bounce", "list", "--json"])).expect("list JSON");
    assert_eq!(rows.as_array().map(Vec::len), Some(2), "{rows}");
    for row in rows.as_array().expect("rows") {
        assert_eq!(row["live_flows"], 1, "one client socket, one live flow per service: {row}");
    }
}

/// Raises the open file limit to its hard limit: a thousand connections need two
/// thousand descriptors in this process.
fn raise_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit), 0, "getrlimit");
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit), 0, "setrlimit");
    }
    assert!(limit.rlim_cur >= 2200, "the open file limit ({}) is below the 2,200 this test needs", limit.rlim_cur);
}

#[test]
fn a_thousand_concurrent_connections_each_get_their_own_flow() {
    const CONNECTIONS: u32 = 1000;
    raise_file_limit();
    let bounce = Bounce::set_up();
    bounce.rewrite(&["bounce", "add", &format!("{LISTEN}:8080/tcp"), &format!("{TARGET}:80")]);
    let (ready_tx, ready_rx) = mpsc::channel();
    let (held_tx, held_rx) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            // Moved in: a receiver is not shared between threads.
            let held_rx = held_rx;
            bounce.target.enter();
            let listener = TcpListener::bind(addr("0.0.0.0", 80)).expect("bind the target");
            ready_tx.send(()).expect("client waits");
            listener.set_nonblocking(true).expect("nonblocking");
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut streams = Vec::new();
            let mut peers = std::collections::HashSet::new();
            while streams.len() < CONNECTIONS as usize {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        peers.insert(peer);
                        streams.push(stream);
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        assert!(Instant::now() < deadline, "only {} of {CONNECTIONS} accepted", streams.len());
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(error) => panic!("accept: {error}"),
                }
            }
            assert_eq!(peers.len(), CONNECTIONS as usize, "every connection comes from its own source port");
            // Echo each connection's number back, all while every connection is open.
            for stream in &mut streams {
                stream.set_nonblocking(false).expect("blocking");
                stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                let mut number = [0u8; 4];
                stream.read_exact(&mut number).expect("read a connection's number");
                stream.write_all(&number).expect("echo it");
            }
            held_rx.recv_timeout(IO_TIMEOUT).expect("the client holds the connections");
        });
        ready_rx.recv_timeout(IO_TIMEOUT).expect("target listening");
        bounce.client.enter();
        let mut streams: Vec<(u32, TcpStream)> = (0..CONNECTIONS)
            .map(|index| {
                let mut stream = TcpStream::connect_timeout(&addr(LISTEN, 8080), IO_TIMEOUT)
                    .unwrap_or_else(|error| panic!("connection {index}: {error}"));
                stream.write_all(&index.to_be_bytes()).expect("send the number");
                (index, stream)
            })
            .collect();
        for (index, stream) in &mut streams {
            stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            let mut echoed = [0u8; 4];
            stream.read_exact(&mut echoed).unwrap_or_else(|error| panic!("echo on connection {index}: {error}"));
            assert_eq!(u32::from_be_bytes(echoed), *index, "connection {index} got another one's answer");
        }
        let rows: serde_json::Value =
            serde_json::from_str(&bounce.rewrite(&["bounce", "list", "--json"])).expect("list JSON");
        assert_eq!(rows[0]["live_flows"], u64::from(CONNECTIONS), "{rows}");
        held_tx.send(()).expect("server waits");
        server.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        drop(streams);
    });
    assert_eq!(bounce.counter("connects"), u64::from(CONNECTIONS));
    assert_eq!(bounce.counter("port_exhausted"), 0);
}

/// Sends one datagram from a fresh socket and returns whether it was answered.
/// One UDP request from `source_port` (0: any free port) and whether it was answered.
fn udp_request_from(socket_ns: &rewrite_tests::netns::Netns, source_port: u16, to: SocketAddr) -> bool {
    socket_ns.run(|| {
        let socket = UdpSocket::bind(addr("0.0.0.0", source_port)).expect("bind");
        socket.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        socket.send_to(b"ping", to).expect("send");
        let mut buffer = [0u8; 16];
        matches!(socket.recv_from(&mut buffer), Ok((4, _)))
    })
}

fn udp_request(socket_ns: &rewrite_tests::netns::Netns, to: SocketAddr) -> bool {
    udp_request_from(socket_ns, 0, to)
}

/// A UDP echo server on the target for the life of `work`.
fn with_udp_echo<T>(bounce: &Bounce, port: u16, work: impl FnOnce() -> T) -> T {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let stop_rx = stop_rx;
            bounce.target.enter();
            let socket = UdpSocket::bind(addr("0.0.0.0", port)).expect("bind the echo server");
            socket.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
            ready_tx.send(()).expect("test waits");
            let mut buffer = [0u8; 2048];
            while stop_rx.try_recv().is_err() {
                if let Ok((len, peer)) = socket.recv_from(&mut buffer) {
                    let _ = socket.send_to(&buffer[..len], peer);
                }
            }
        });
        ready_rx.recv_timeout(IO_TIMEOUT).expect("echo server started");
        let result = work();
        stop_tx.send(()).expect("server stops");
        result
    })
}

#[test]
fn a_small_table_evicts_the_oldest_flows_and_counts_them() {
    const FLOWS: usize = 100;
    let bounce = Bounce::set_up();
    bounce.rewrite(&["bounce", "add", &format!("{LISTEN}:5353/udp"), &format!("{TARGET}:53"), "--max-flows", "16"]);
    // Each request from its own source port: a port the kernel picked twice would be one
    // flow, not two (CI once saw 99 connects for 100 requests that way).
    let answered = with_udp_echo(&bounce, 53, || {
        (20_000..).take(FLOWS).filter(|&port| udp_request_from(bounce.client, port, addr(LISTEN, 5353))).count()
    });
    assert_eq!(answered, FLOWS, "a full table makes room for every new flow instead of refusing it");
    let stats = bounce.stats();
    assert_eq!(stats["table_capacity_flows"], 16, "{stats}");
    assert!(stats["table_entries"].as_u64().is_some_and(|entries| entries <= 32), "{stats}");
    let evicted = stats["evicted_flows"].as_u64().expect("evicted_flows");
    assert!(
        evicted >= (FLOWS - 16) as u64 && evicted <= FLOWS as u64,
        "{FLOWS} flows through a table of 16 evict at least {}: {stats}",
        FLOWS - 16
    );
    assert_eq!(stats["counters"]["connects"], FLOWS as u64, "{stats}");
}

#[test]
fn an_idle_udp_flow_expires_and_the_next_datagram_opens_a_new_one() {
    let bounce = Bounce::set_up();
    bounce.rewrite(&["bounce", "add", &format!("{LISTEN}:5353/udp"), &format!("{TARGET}:53")]);
    bounce.rewrite(&["bounce", "timeouts", "--udp", "0.5"]);
    with_udp_echo(&bounce, 53, || {
        bounce.client.run(|| {
            let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
            socket.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
            let mut buffer = [0u8; 16];
            for round in 0..2 {
                socket.send_to(b"ping", addr(LISTEN, 5353)).expect("send");
                assert!(socket.recv_from(&mut buffer).is_ok(), "round {round} answered");
                if round == 0 {
                    std::thread::sleep(Duration::from_millis(800));
                }
            }
        });
    });
    assert_eq!(bounce.counter("closed_idle"), 1, "the first flow expired");
    assert_eq!(bounce.counter("connects"), 2, "the same client socket opened a second flow");
}

#[test]
fn port_exhaustion_is_counted_and_the_client_is_refused_at_once() {
    let bounce = Bounce::set_up();
    bounce.rewrite(&[
        "bounce",
        "add",
        &format!("{LISTEN}:8080/tcp"),
        &format!("{TARGET}:80"),
        "--ports",
        "61000-61001",
    ]);
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let done_rx = done_rx;
            bounce.target.enter();
            let listener = TcpListener::bind(addr("0.0.0.0", 80)).expect("bind");
            ready_tx.send(()).expect("test waits");
            // The backlog holds the connections; nothing needs accepting.
            done_rx.recv_timeout(Duration::from_secs(30)).expect("test ends");
            drop(listener);
        });
        ready_rx.recv_timeout(IO_TIMEOUT).expect("listening");
        bounce.client.run(|| {
            let held: Vec<TcpStream> = (0..2)
                .map(|index| {
                    TcpStream::connect_timeout(&addr(LISTEN, 8080), IO_TIMEOUT)
                        .unwrap_or_else(|error| panic!("connection {index} within the range: {error}"))
                })
                .collect();
            let started = Instant::now();
            let third = TcpStream::connect_timeout(&addr(LISTEN, 8080), IO_TIMEOUT);
            assert!(third.is_err(), "a third flow cannot have a port of a two-port range");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "the client learns at once (the bouncer's stack resets it), not after a timeout"
            );
            drop(held);
        });
        done_tx.send(()).expect("server waits");
    });
    let exhausted = bounce.counter("port_exhausted");
    assert!(exhausted >= 1, "port exhaustion is counted");
    // And shown in the metrics the agent serves.
    let metrics = rewrite_user::agent::metrics::render(
        &rewrite_user::dataplane::pins::PinLayout::new(bounce.pin_dir()),
        &rewrite_user::agent::metrics::ApplyStatus::default(),
        rewrite_user::agent::metrics::MappingSeries::DEFAULT,
    )
    .expect("render the metrics");
    assert!(metrics.contains(&format!("rewrite_bounce_total{{counter=\"port_exhausted\"}} {exhausted}")), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "rewrite_bounce_service_live_flows{{listen=\"{LISTEN}:8080/tcp\",target=\"{TARGET}:80\"}}"
        )),
        "{metrics}"
    );
}

#[test]
fn connects_and_disconnects_reach_bounce_log_and_a_reset_ends_a_flow() {
    let bounce = Bounce::set_up();
    bounce.rewrite(&["bounce", "add", &format!("{LISTEN}:8080/tcp"), &format!("{TARGET}:80")]);
    assert_eq!(bounce.stats()["log_reader"], false, "no reader yet");
    // Nobody reads: no event is written, so none is lost either.
    with_udp_echo(&bounce, 53, || {
        bounce.rewrite(&["bounce", "add", &format!("{LISTEN}:5353/udp"), &format!("{TARGET}:53")]);
        assert!(udp_request(bounce.client, addr(LISTEN, 5353)), "the unlogged flow works");
    });
    let log = bounce.start_log(&["--count", "4", "--timeout", "20"]);
    wait_until("the log reader to be present", Duration::from_secs(5), || bounce.stats()["log_reader"] == true);
    tcp_exchange(bounce.target, addr("0.0.0.0", 80), bounce.client, addr(LISTEN, 8080), 64 << 10);

    // A second connection, reset by the client (SO_LINGER 0).
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            bounce.target.enter();
            let listener = TcpListener::bind(addr("0.0.0.0", 81)).expect("bind");
            ready_tx.send(()).expect("test waits");
            let (mut stream, _) = listener.accept().expect("accept");
            stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            let mut sink = Vec::new();
            // The reset ends the read with an error or an end of stream.
            let _ = stream.read_to_end(&mut sink);
        });
        ready_rx.recv_timeout(IO_TIMEOUT).expect("listening");
        bounce.rewrite(&["bounce", "add", &format!("{LISTEN}:8081/tcp"), &format!("{TARGET}:81")]);
        bounce.client.run(|| {
            let stream = TcpStream::connect_timeout(&addr(LISTEN, 8081), IO_TIMEOUT).expect("connect");
            socket2_linger_zero(&stream);
            drop(stream);
        });
        server.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    });

    let events = log_events(&log.wait_with_output().expect("bounce log ends"));
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|event| {
            (event["event"].as_str().unwrap_or("?").to_owned(), event["reason"].as_str().unwrap_or("-").to_owned())
        })
        .collect();
    let pairs =
        |list: &[(&str, &str)]| list.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect::<Vec<_>>();
    assert_eq!(
        summary,
        pairs(&[("connect", "-"), ("disconnect", "fin"), ("connect", "-"), ("disconnect", "rst")]),
        "{events:#?}"
    );
    let first = &events[1];
    assert_eq!(first["protocol"], "tcp");
    assert_eq!(first["listen"], format!("{LISTEN}:8080"));
    assert_eq!(first["target"], format!("{TARGET}:80"));
    assert!(first["client"].as_str().is_some_and(|client| client.starts_with(&format!("{CLIENT}:"))), "{first}");
    assert!(first["source"].as_str().is_some_and(|source| source.starts_with(&format!("{SOURCE}:"))), "{first}");
    let bytes = first["bytes"].as_array().expect("bytes");
    assert!(
        bytes.iter().all(|count| count.as_u64().is_some_and(|count| count > 64 << 10)),
        "64 KiB each way, with headers: {first}"
    );
    assert_eq!(bounce.counter("closed_rst"), 1);
    assert_eq!(bounce.counter("events_lost"), 0, "events nobody would read are not written, nor lost");
    assert_eq!(bounce.stats()["log_reader"], false, "the reader gave its lease up when it stopped");
}

/// Makes closing `stream` send an RST instead of a FIN.
fn socket2_linger_zero(stream: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid descriptor and a correctly sized option value.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            u32::try_from(size_of::<libc::linger>()).expect("small"),
        )
    };
    assert_eq!(result, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

#[test]
fn bad_services_are_refused_with_what_is_wrong() {
    let bounce = Bounce::set_up();
    let error = bounce.rewrite_fails(&["bounce", "add", &format!("{LISTEN}:8080"), &format!("{TARGET}:80")]);
    assert!(error.contains("is not ADDR:PORT/tcp or ADDR:PORT/udp"), "{error}");
    let error = bounce.rewrite_fails(&["bounce", "add", &format!("{LISTEN}:8080/tcp"), &format!("[{TARGET_V6}]:80")]);
    assert!(error.contains("does not translate between IPv4 and IPv6"), "{error}");
    let error = bounce.rewrite_fails(&["bounce", "add", &format!("{LISTEN}:8080/tcp"), "192.0.2.1:80"]);
    assert!(error.contains("no route to the target 192.0.2.1"), "{error}");
    bounce.bouncer.sysctl("net.ipv4.ip_forward", "0");
    let error = bounce.rewrite_fails(&["bounce", "add", &format!("{LISTEN}:8080/tcp"), &format!("{TARGET}:80")]);
    assert!(error.contains("forwarding is off"), "{error}");
    let error = bounce.rewrite_fails(&["bounce", "list"]);
    assert!(error.contains("bounce mode is not in use"), "a refused service starts nothing: {error}");
    bounce.bouncer.sysctl("net.ipv4.ip_forward", "1");
    bounce.rewrite(&["bounce", "add", &format!("{LISTEN}:8080/tcp"), &format!("{TARGET}:80")]);
    let error = bounce.rewrite_fails(&[
        "bounce",
        "add",
        &format!("{LISTEN}:8081/tcp"),
        &format!("{TARGET}:81"),
        "--max-flows",
        "5",
    ]);
    assert!(error.contains("only applies when the first bounce add creates it"), "{error}");
    let error = bounce.rewrite_fails(&["bounce", "del", &format!("{LISTEN}:9999/tcp")]);
    assert!(error.contains("no bounce service listens on 10.230.1.1:9999/tcp"), "{error}");
    // Source ports the host's own connections could take are refused, with the range.
    bounce.bouncer.sysctl("net.ipv4.ip_local_port_range", "32768 60999");
    let error = bounce.rewrite_fails(&[
        "bounce",
        "add",
        &format!("{LISTEN}:8082/tcp"),
        &format!("{TARGET}:82"),
        "--ports",
        "40000-40100",
    ]);
    assert!(error.contains("overlap this host's ephemeral port range 32768-60999"), "{error}");
    // So are source ports the gate protects: the target's replies arrive there.
    bounce.rewrite(&["gate", "protect", "tcp/20000"]);
    let error = bounce.rewrite_fails(&[
        "bounce",
        "add",
        &format!("{LISTEN}:8083/tcp"),
        &format!("{TARGET}:83"),
        "--ports",
        "19500-20500",
    ]);
    assert!(error.contains("tcp/20000, in the source port range 19500-20500, is protected by the gate"), "{error}");
    let list = bounce.rewrite(&["bounce", "list"]);
    assert!(!list.contains(":8082") && !list.contains(":8083"), "a refused service is not added: {list}");
}

#[test]
fn a_config_with_a_bounce_section_is_applied_exported_and_refused_whole() {
    let bounce = Bounce::set_up();
    let config = format!(
        "[bounce]\nmax_flows = 1000\nudp_idle_seconds = 30\n\n[[bounce.service]]\nlisten = \"{LISTEN}:5353/udp\"\ntarget \
         = \"{TARGET}:53\"\n"
    );
    let file = ConfigFile::new("bounce-apply", &config);
    let applied = bounce.rewrite(&["apply", file.as_arg()]);
    assert!(applied.contains(&format!("added bounce {LISTEN}:5353/udp -> {TARGET}:53")), "{applied}");
    let answered = with_udp_echo(&bounce, 53, || udp_request(bounce.client, addr(LISTEN, 5353)));
    assert!(answered, "the service from the config bounces");
    let exported = bounce.rewrite(&["export"]);
    for line in ["[bounce]", "max_flows = 1000", "udp_idle_seconds = 30", &format!("source = \"{SOURCE}\"")] {
        assert!(exported.contains(line), "export shows {line:?}:\n{exported}");
    }
    assert!(bounce.rewrite(&["apply", file.as_arg()]).contains("applied: 0 added"), "applying again changes nothing");

    // One service that cannot be bounced (no route) refuses the whole file: the other
    // change in it (a second service) is not applied either.
    let refused = ConfigFile::new(
        "bounce-refused",
        &format!(
            "{config}\n[[bounce.service]]\nlisten = \"{LISTEN}:8080/tcp\"\ntarget = \"{TARGET}:80\"\n\n[[bounce.service]]\nlisten = \
             \"{LISTEN}:9090/tcp\"\ntarget = \"192.0.2.1:80\"\n"
        ),
    );
    let error = bounce.rewrite_fails(&["apply", refused.as_arg()]);
    assert!(error.contains("cannot bounce") && error.contains("no route to the target 192.0.2.1"), "{error}");
    let rows: serde_json::Value =
        serde_json::from_str(&bounce.rewrite(&["bounce", "list", "--json"])).expect("list JSON");
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "nothing of the refused file was applied: {rows}");

    // An empty [bounce] section removes the services; no section leaves them alone.
    let empty = ConfigFile::new("bounce-empty", "[bounce]\n");
    let removed = bounce.rewrite(&["apply", empty.as_arg()]);
    assert!(removed.contains(&format!("removed bounce {LISTEN}:5353/udp")), "{removed}");
    bounce.rewrite(&["apply", file.as_arg()]);
    let without = ConfigFile::new("bounce-without", "");
    let untouched = bounce.rewrite(&["apply", without.as_arg()]);
    assert!(!untouched.contains("bounce"), "{untouched}");
    assert!(bounce.rewrite(&["bounce", "list"]).contains(&format!("{LISTEN}:5353/udp")));
}
