//! Real TCP and UDP traffic between namespaces, bounded in size and time, and the
//! kernel counters that tell whether the receiver found bad checksums.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    time::Duration,
};

use sha2::{Digest as _, Sha256};

use crate::netns::Netns;

/// How long any single socket operation may block before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Deterministic bytes that differ per `seed`, so a misrouted stream is noticed.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// What both ends of a TCP exchange saw.
#[derive(Debug)]
pub struct TcpReport {
    /// The client's address as the server saw it.
    pub client_seen_by_server: SocketAddr,
    /// The server's address as the client saw it (the address it connected to).
    pub server_seen_by_client: SocketAddr,
}

/// Listens on `server_ns` at `listen`, connects from `client_ns` to `connect_to`, sends
/// `len` bytes each way and checks both by SHA-256. Panics on any failure.
pub fn tcp_exchange(
    server_ns: &Netns,
    listen: SocketAddr,
    client_ns: &Netns,
    connect_to: SocketAddr,
    len: usize,
) -> TcpReport {
    let upload = pattern(1, len);
    let download = pattern(2, len);
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            server_ns.enter();
            let listener = TcpListener::bind(listen).unwrap_or_else(|error| panic!("server bind {listen}: {error}"));
            ready_tx.send(()).expect("client waits");
            let (mut stream, peer) = accept_with_timeout(&listener);
            stream.set_read_timeout(Some(IO_TIMEOUT)).expect("set timeout");
            stream.set_write_timeout(Some(IO_TIMEOUT)).expect("set timeout");
            let mut received = vec![0; len];
            stream.read_exact(&mut received).unwrap_or_else(|error| panic!("server read from {peer}: {error}"));
            assert_eq!(sha256(&received), sha256(&upload), "upload from {peer} arrived corrupted");
            stream.write_all(&download).unwrap_or_else(|error| panic!("server write to {peer}: {error}"));
            peer
        });
        ready_rx.recv_timeout(IO_TIMEOUT).expect("server did not start listening");
        let client = scope.spawn(|| {
            client_ns.enter();
            let mut stream = TcpStream::connect_timeout(&connect_to, IO_TIMEOUT)
                .unwrap_or_else(|error| panic!("connect to {connect_to}: {error}"));
            stream.set_read_timeout(Some(IO_TIMEOUT)).expect("set timeout");
            // A stalled transfer must fail the test, not hang it.
            stream.set_write_timeout(Some(IO_TIMEOUT)).expect("set timeout");
            stream.write_all(&upload).unwrap_or_else(|error| panic!("client write to {connect_to}: {error}"));
            let mut received = vec![0; len];
            stream.read_exact(&mut received).unwrap_or_else(|error| panic!("client read from {connect_to}: {error}"));
            assert_eq!(sha256(&received), sha256(&download), "download from {connect_to} arrived corrupted");
            stream.peer_addr().expect("connected stream has a peer")
        });
        let server_seen_by_client = client.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let client_seen_by_server = server.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        TcpReport { client_seen_by_server, server_seen_by_client }
    })
}

fn accept_with_timeout(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    listener.set_nonblocking(true).expect("nonblocking listener");
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                stream.set_nonblocking(false).expect("blocking stream");
                return (stream, peer);
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => panic!("accept on {:?}: {error}", listener.local_addr()),
        }
    }
}

/// Sends `count` numbered datagrams of about 1 KB from `client_ns` to `send_to`; a
/// server on `server_ns` at `listen` echoes each. Returns how many echoes came back,
/// and the source addresses the server and the client saw.
pub fn udp_echo(
    server_ns: &Netns,
    listen: SocketAddr,
    client_ns: &Netns,
    send_to: SocketAddr,
    count: u32,
    wait: Duration,
) -> UdpReport {
    udp_echo_sized(server_ns, listen, client_ns, send_to, count, wait, 1000)
}

/// [`udp_echo`] with datagrams of `size` payload bytes (above the MTU, the stack
/// fragments them).
pub fn udp_echo_sized(
    server_ns: &Netns,
    listen: SocketAddr,
    client_ns: &Netns,
    send_to: SocketAddr,
    count: u32,
    wait: Duration,
    size: usize,
) -> UdpReport {
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            server_ns.enter();
            let socket = UdpSocket::bind(listen).unwrap_or_else(|error| panic!("bind {listen}: {error}"));
            socket.set_read_timeout(Some(wait)).expect("set timeout");
            ready_tx.send(()).expect("client waits");
            let mut sources = Vec::new();
            let mut buffer = vec![0; 65536];
            while let Ok((len, peer)) = socket.recv_from(&mut buffer) {
                if &buffer[..4] == b"STOP" {
                    break;
                }
                sources.push(peer);
                socket.send_to(&buffer[..len], peer).expect("echo");
            }
            sources
        });
        ready_rx.recv_timeout(IO_TIMEOUT).expect("server did not start");
        let client = scope.spawn(|| {
            client_ns.enter();
            let socket = unspecified_udp_socket(send_to);
            socket.set_read_timeout(Some(wait)).expect("set timeout");
            let mut echoed = 0;
            let mut echo_sources = Vec::new();
            for seq in 0..count {
                let mut datagram = seq.to_be_bytes().to_vec();
                datagram.extend(pattern(seq.to_le_bytes()[0], size));
                socket.send_to(&datagram, send_to).unwrap_or_else(|error| panic!("send to {send_to}: {error}"));
                let mut buffer = vec![0; 65536];
                if let Ok((len, peer)) = socket.recv_from(&mut buffer) {
                    assert_eq!(&buffer[..len], &datagram[..], "echo {seq} from {peer} differs from what was sent");
                    echoed += 1;
                    echo_sources.push(peer);
                }
            }
            // Tell the server to stop; it also stops on its own after `wait`.
            let _ = socket.send_to(b"STOP", send_to);
            (echoed, echo_sources)
        });
        let (echoed, echo_sources) = client.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let server_sources = server.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        UdpReport { echoed, server_sources, echo_sources }
    })
}

#[derive(Debug)]
pub struct UdpReport {
    pub echoed: u32,
    /// Source addresses of the datagrams the server received.
    pub server_sources: Vec<SocketAddr>,
    /// Source addresses of the echoes the client received.
    pub echo_sources: Vec<SocketAddr>,
}

/// Whether a TCP connection from `client_ns` to `target` is established within
/// `timeout`.
pub fn tcp_connects(client_ns: &Netns, target: SocketAddr, timeout: Duration) -> bool {
    client_ns.run(|| TcpStream::connect_timeout(&target, timeout).is_ok())
}

/// The counters of /proc/net/snmp and /proc/net/snmp6 in `netns`, as
/// "Tcp.InCsumErrors" -> value and "Udp6InCsumErrors" -> value.
pub fn snmp(netns: &Netns) -> HashMap<String, u64> {
    let (text, text6) = netns.run(|| {
        // thread-self: /proc/self/net would show the namespace of the process's main
        // thread, not of this one.
        let read = |path| std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {path}: {error}"));
        (read("/proc/thread-self/net/snmp"), read("/proc/thread-self/net/snmp6"))
    });
    let lines: Vec<&str> = text.lines().collect();
    let mut counters = HashMap::new();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((proto, names)), Some((_, values))) = (names.split_once(':'), values.split_once(':')) else {
            continue;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(value) = value.parse() {
                counters.insert(format!("{proto}.{name}"), value);
            }
        }
    }
    for line in text6.lines() {
        if let Some((name, value)) = line.split_once(char::is_whitespace)
            && let Ok(value) = value.trim().parse()
        {
            counters.insert(name.to_owned(), value);
        }
    }
    counters
}

/// The counters that count packets dropped for a bad checksum (TCP counts both
/// families in one counter; UDP and ICMP have IPv6 counters of their own).
pub const CHECKSUM_ERROR_COUNTERS: [&str; 6] = [
    "Ip.InHdrErrors",
    "Tcp.InCsumErrors",
    "Udp.InCsumErrors",
    "Icmp.InCsumErrors",
    "Udp6InCsumErrors",
    "Icmp6InCsumErrors",
];

/// The checksum error counters of `netns`, in [`CHECKSUM_ERROR_COUNTERS`] order.
pub fn checksum_errors(netns: &Netns) -> [u64; 6] {
    let counters = snmp(netns);
    CHECKSUM_ERROR_COUNTERS
        .map(|name| *counters.get(name).unwrap_or_else(|| panic!("{name} missing from /proc/net/snmp")))
}

/// Panics if a checksum error counter of `netns` rose above `baseline`.
pub fn assert_no_checksum_errors_since(netns: &Netns, baseline: [u64; 6]) {
    let now = checksum_errors(netns);
    for ((name, before), after) in CHECKSUM_ERROR_COUNTERS.iter().zip(baseline).zip(now) {
        assert_eq!(
            after,
            before,
            "{name} rose from {before} to {after} in {}: a rewritten packet arrived with a bad checksum",
            netns.name()
        );
    }
}

/// Sends one raw Ethernet frame out of `iface` in `netns` (through TC egress, like any
/// other packet).
pub fn send_raw_frame(netns: &Netns, iface: &str, frame: &[u8]) {
    netns.run(|| {
        let index =
            nix::net::if_::if_nametoindex(iface).unwrap_or_else(|error| panic!("no interface {iface}: {error}"));
        // SAFETY: plain socket(2) call; the descriptor is closed below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        // SAFETY: sockaddr_ll is plain old data; zero is a valid starting value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = u16::try_from(libc::AF_PACKET).expect("AF_PACKET fits u16");
        address.sll_ifindex = i32::try_from(index).expect("ifindex fits i32");
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `address` outlive the call; the lengths match them.
        let sent = unsafe {
            libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const address).cast(),
                u32::try_from(size_of::<libc::sockaddr_ll>()).expect("small"),
            )
        };
        let error = std::io::Error::last_os_error();
        // SAFETY: fd is a descriptor this closure opened.
        unsafe { libc::close(fd) };
        assert_eq!(usize::try_from(sent).ok(), Some(frame.len()), "sending a raw frame on {iface}: {error}");
    });
}

/// Proves that `receiver` verifies UDP checksums in software on this path: a datagram
/// with a deliberately wrong checksum, sent from `sender`'s `iface`, must raise the
/// receiver's UDP checksum error counter. Without this, "no checksum errors" could mean
/// "no checksums checked". Take the baseline for [`assert_no_checksum_errors_since`]
/// after it.
pub fn assert_receiver_verifies_checksums(
    sender: &Netns,
    iface: &str,
    dst_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    receiver: &Netns,
) {
    use crate::packet::{IpSpec, Transport};
    let payload = b"bad checksum probe".to_vec();
    let spec = IpSpec::new(src, dst, Transport::Udp { src_port: 9, dst_port: 9, payload, zero_checksum: false });
    let mut frame = spec.frame();
    frame[..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0xee, 0xee]);
    let ip_header = if src.is_ipv4() { 20 } else { 40 };
    let udp_check = spec.l3_offset() + ip_header + 6;
    frame[udp_check] ^= 0x5a; // break the UDP checksum, keep the IP header valid
    let counter = if src.is_ipv4() { "Udp.InCsumErrors" } else { "Udp6InCsumErrors" };
    let before = snmp(receiver)[counter];
    send_raw_frame(sender, iface, &frame);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while snmp(receiver)[counter] == before {
        assert!(
            std::time::Instant::now() < deadline,
            "{} did not count a datagram with a bad UDP checksum ({counter}): it does not verify checksums \
             in software, so this test could not see corruption",
            receiver.name()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A UDP socket on an ephemeral port of the unspecified address of `peer`'s family.
fn unspecified_udp_socket(peer: SocketAddr) -> UdpSocket {
    let any: SocketAddr = if peer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("address");
    UdpSocket::bind(any).unwrap_or_else(|error| panic!("bind {any}: {error}"))
}

/// What [`udp_stream_during`] saw.
#[derive(Debug)]
pub struct StreamReport {
    pub sent: u64,
    pub received: u64,
    /// Sequence numbers sent but never received (at most the first 20).
    pub missing: Vec<u64>,
    pub duplicates: u64,
    /// When each datagram was sent, by sequence number.
    pub sent_at: Vec<std::time::Instant>,
    /// The sequence numbers received, sorted, each once.
    pub received_sequences: Vec<u64>,
}

/// Streams numbered UDP datagrams from `client_ns` to `send_to` (one every
/// `interval`) while `during` runs, received on `server_ns` at `listen`; then stops,
/// lets the last datagrams arrive, and reports which sequence numbers never came.
pub fn udp_stream_during(
    server_ns: &Netns,
    listen: SocketAddr,
    client_ns: &Netns,
    send_to: SocketAddr,
    interval: Duration,
    during: impl FnOnce(),
) -> StreamReport {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::scope(|scope| {
        let receiver = scope.spawn(|| {
            server_ns.enter();
            let socket = UdpSocket::bind(listen).unwrap_or_else(|error| panic!("bind {listen}: {error}"));
            // A deep buffer: a datagram lost to a full socket would not be the network's.
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBuf, &(8 << 20))
                .expect("set SO_RCVBUF");
            socket.set_read_timeout(Some(Duration::from_millis(500))).expect("set timeout");
            ready_tx.send(()).expect("the sender waits");
            let mut seen = Vec::new();
            let mut buffer = [0u8; 64];
            loop {
                match socket.recv(&mut buffer) {
                    Ok(len) if len >= 8 => {
                        seen.push(u64::from_be_bytes(buffer[..8].try_into().expect("8 bytes")));
                    }
                    Ok(_) => {}
                    // Quiet for 500 ms after the sender stopped: everything is in.
                    Err(_) if stop.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
            seen
        });
        ready_rx.recv_timeout(IO_TIMEOUT).expect("the receiver did not start");
        let sender = scope.spawn(|| {
            client_ns.enter();
            let socket = unspecified_udp_socket(send_to);
            let mut sent_at = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sequence = sent_at.len() as u64;
                sent_at.push(std::time::Instant::now());
                let mut datagram = sequence.to_be_bytes().to_vec();
                datagram.extend_from_slice(b"rewrite-seq");
                socket.send_to(&datagram, send_to).unwrap_or_else(|error| panic!("send to {send_to}: {error}"));
                std::thread::sleep(interval);
            }
            sent_at
        });
        // Stops the stream however `during` ends: a panic in it must fail the test, not
        // leave the sender and receiver running while the scope waits for them.
        let stopper = crate::wait::SetOnDrop(&stop);
        during();
        drop(stopper);
        let sent_at = sender.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let sent = sent_at.len() as u64;
        let mut seen = receiver.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let received = seen.len() as u64;
        seen.sort_unstable();
        let before = seen.len();
        seen.dedup();
        let duplicates = (before - seen.len()) as u64;
        let missing = (0..sent).filter(|sequence| seen.binary_search(sequence).is_err()).take(20).collect();
        StreamReport { sent, received, missing, duplicates, sent_at, received_sequences: seen }
    })
}
