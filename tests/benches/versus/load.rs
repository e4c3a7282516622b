//! The traffic: new TCP connections, a small-packet UDP flood over many flows, one bulk
//! TCP stream, and many concurrent connections held open. Each runs in the client's
//! namespace against a server in the server's, bounded in time.

use std::{
    io::{Read as _, Write as _},
    mem::size_of,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, RawFd},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::topology::{CLIENT_SOURCES, Topology, client_source};

const SERVICE_PORT: u16 = 8080;
const BULK_PORT: u16 = 8081;
/// Connections in flight at once in the connection-rate test.
const IN_FLIGHT: usize = 128;
/// A connection attempt that has not completed by then has lost its SYN (the first
/// retransmission comes after 1 s).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(900);

/// The `k`th destination index, spread over `0..n` so that consecutive flows land far
/// apart in the table (a multiplicative hash), never only on its first entries.
pub fn spread(k: u64, n: u32) -> u32 {
    ((k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) % u64::from(n)) as u32
}

/// Result of a connection test.
#[derive(Clone, Copy, Debug, Default)]
pub struct Connections {
    pub completed: u64,
    pub failed: u64,
}

/// New TCP connections (connect, then close with a reset) for `duration`, with
/// `IN_FLIGHT` in flight, to `target(k)` for the `k`th. Returns those that completed
/// within `duration`.
pub fn connection_rate(
    topology: &Topology,
    target: &(dyn Fn(u64) -> Ipv4Addr + Sync),
    duration: Duration,
) -> Connections {
    with_server(topology, false, || topology.client.run(|| connect_loop(target, duration)))
}

/// Opens `count` connections at once and holds them; returns how many were
/// established within `wait` and how many were not.
pub fn hold_connections(
    topology: &Topology,
    target: &(dyn Fn(u64) -> Ipv4Addr + Sync),
    count: usize,
    wait: Duration,
) -> Connections {
    with_server(topology, true, || topology.client.run(|| open_and_hold(target, count, wait)))
}

/// Runs `client` while a server in the server namespace accepts on `SERVICE_PORT`, and
/// closes (or with `hold`, keeps) what it accepts until the client is done.
fn with_server<T: Send>(topology: &Topology, hold: bool, client: impl FnOnce() -> T + Send) -> T {
    let listener = topology.server.run(|| {
        let listener = TcpListener::bind(("0.0.0.0", SERVICE_PORT)).expect("listen on the server");
        listener.set_nonblocking(true).expect("nonblocking listener");
        listener
    });
    raise_backlog(&listener);
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            let mut held = Vec::new();
            while !done.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) if hold => held.push(stream),
                    Ok(_) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(_) => {}
                }
            }
            held.len()
        });
        let result = {
            // Stops the server also when the client panics, so the scope can end.
            let _stop = rewrite_tests::wait::SetOnDrop(&done);
            client()
        };
        server.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        result
    })
}

/// std listens with a backlog of 128; the connection tests need the namespace's
/// maximum (`somaxconn`, raised by the topology).
fn raise_backlog(listener: &TcpListener) {
    // SAFETY: listen on a valid listening socket only changes its backlog.
    let result = unsafe { libc::listen(listener.as_raw_fd(), 65_535) };
    assert_eq!(result, 0, "listen: {}", std::io::Error::last_os_error());
}

/// A nonblocking TCP socket from client source `k`, connecting to `destination`.
/// Closing it sends a reset (linger 0), so neither side keeps TIME_WAIT state.
fn start_connect(k: u64, destination: Ipv4Addr) -> Result<RawFd, std::io::Error> {
    // SAFETY: plain socket calls on a descriptor this function owns; every pointer
    // passed is to a live local of the size given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        let int_len = size_of::<libc::c_int>() as libc::socklen_t;
        // The port is chosen at connect time, for the 4-tuple, not at bind for the address.
        libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, (&raw const one).cast(), int_len);
        let linger_len = size_of::<libc::linger>() as libc::socklen_t;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, (&raw const linger).cast(), linger_len);
        let source = sockaddr(SocketAddrV4::new(client_source(k as u32), 0));
        let destination = sockaddr(SocketAddrV4::new(destination, SERVICE_PORT));
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&raw const source).cast(), len) != 0
            || (libc::connect(fd, (&raw const destination).cast(), len) != 0
                && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS))
        {
            let error = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(error);
        }
        Ok(fd)
    }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

/// The socket's pending error: 0 once a nonblocking connect has succeeded.
fn socket_error(fd: RawFd) -> i32 {
    let mut error: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: reads an int option into a live local.
    unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&raw mut error).cast(), &raw mut len) };
    error
}

struct Epoll(RawFd);

impl Epoll {
    fn new() -> Self {
        // SAFETY: creates a descriptor owned by the returned guard.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(fd >= 0, "epoll_create1: {}", std::io::Error::last_os_error());
        Self(fd)
    }

    fn watch_writable(&self, fd: RawFd, token: u64) {
        let mut event = libc::epoll_event { events: libc::EPOLLOUT as u32, u64: token };
        // SAFETY: registers a live descriptor; the event is copied by the kernel.
        let result = unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &raw mut event) };
        assert_eq!(result, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
    }

    /// Tokens of ready descriptors, waiting at most `timeout`.
    fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> Vec<u64> {
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the kernel writes at most `events.len()` entries into the slice.
        let ready = unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), events.len() as i32, millis) };
        events[..usize::try_from(ready).unwrap_or(0)].iter().map(|event| event.u64).collect()
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor this guard owns.
        unsafe { libc::close(self.0) };
    }
}

fn close(fd: RawFd) {
    // SAFETY: closes a descriptor the caller owns and forgets.
    unsafe { libc::close(fd) };
}

fn connect_loop(target: &dyn Fn(u64) -> Ipv4Addr, duration: Duration) -> Connections {
    let epoll = Epoll::new();
    let mut slots: Vec<Option<(RawFd, Instant)>> = vec![None; IN_FLIGHT];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; IN_FLIGHT];
    let mut result = Connections::default();
    let mut next = 0u64;
    let started = Instant::now();
    while started.elapsed() < duration {
        for (slot, entry) in slots.iter_mut().enumerate() {
            if entry.is_none() {
                match start_connect(next, target(next)) {
                    Ok(fd) => {
                        epoll.watch_writable(fd, slot as u64);
                        *entry = Some((fd, Instant::now()));
                    }
                    Err(_) => result.failed += 1,
                }
                next += 1;
            }
        }
        for token in epoll.wait(&mut events, Duration::from_millis(5)) {
            if let Some((fd, _)) = slots[token as usize].take() {
                if socket_error(fd) == 0 {
                    result.completed += 1
                } else {
                    result.failed += 1
                }
                close(fd);
            }
        }
        for entry in &mut slots {
            if entry.is_some_and(|(_, since)| since.elapsed() > CONNECT_TIMEOUT) {
                let (fd, _) = entry.take().expect("checked");
                result.failed += 1;
                close(fd);
            }
        }
    }
    for (fd, _) in slots.into_iter().flatten() {
        close(fd);
    }
    result
}

fn open_and_hold(target: &dyn Fn(u64) -> Ipv4Addr, count: usize, wait: Duration) -> Connections {
    let epoll = Epoll::new();
    let mut pending: Vec<Option<RawFd>> = Vec::with_capacity(count);
    let mut established = Vec::new();
    let mut result = Connections::default();
    for k in 0..count as u64 {
        match start_connect(k, target(k)) {
            Ok(fd) => {
                epoll.watch_writable(fd, pending.len() as u64);
                pending.push(Some(fd));
            }
            Err(_) => result.failed += 1,
        }
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let deadline = Instant::now() + wait;
    let mut open = pending.len();
    while open > 0 && Instant::now() < deadline {
        for token in epoll.wait(&mut events, Duration::from_millis(20)) {
            if let Some(fd) = pending[token as usize].take() {
                open -= 1;
                if socket_error(fd) == 0 {
                    result.completed += 1;
                    established.push(fd);
                } else {
                    result.failed += 1;
                    close(fd);
                }
            }
        }
    }
    for fd in pending.into_iter().flatten() {
        result.failed += 1;
        close(fd);
    }
    for fd in established {
        close(fd);
    }
    result
}

/// Sends 18-byte UDP datagrams (minimum-size frames) over `UDP_FLOWS` distinct 5-tuples
/// to `target(k)` for `duration`, and returns how many the server's interface received.
pub fn udp_flood(topology: &Topology, target: &(dyn Fn(u64) -> Ipv4Addr + Sync), duration: Duration) -> u64 {
    topology.sink_reals();
    let before = topology.server_rx_packets();
    topology.client.run(|| {
        let sockets: Vec<std::net::UdpSocket> = (0..CLIENT_SOURCES)
            .map(|index| std::net::UdpSocket::bind((client_source(index), 0)).expect("bind a UDP source"))
            .collect();
        // One flow per (source, destination port, destination): 32 x 4096 tuples.
        let destinations: Vec<Vec<libc::sockaddr_in>> = (0..CLIENT_SOURCES as u64)
            .map(|source| {
                (0..4096u64)
                    .map(|port| {
                        let k = port * u64::from(CLIENT_SOURCES) + source;
                        sockaddr(SocketAddrV4::new(target(k), 1024 + port as u16))
                    })
                    .collect()
            })
            .collect();
        const BATCH: usize = 64;
        let payload = [0u8; 18];
        let started = Instant::now();
        let mut round = 0usize;
        while started.elapsed() < duration {
            for (socket, addresses) in sockets.iter().zip(&destinations) {
                let first = (round * BATCH) % addresses.len();
                let mut iovecs = [libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() }; BATCH];
                let mut messages: Vec<libc::mmsghdr> = (0..BATCH)
                    .map(|index| libc::mmsghdr {
                        msg_hdr: libc::msghdr {
                            msg_name: (&raw const addresses[first + index]) as *mut _,
                            msg_namelen: size_of::<libc::sockaddr_in>() as libc::socklen_t,
                            msg_iov: &raw mut iovecs[index],
                            msg_iovlen: 1,
                            msg_control: std::ptr::null_mut(),
                            msg_controllen: 0,
                            msg_flags: 0,
                        },
                        msg_len: 0,
                    })
                    .collect();
                // SAFETY: every header points at live locals for the duration of the call.
                unsafe { libc::sendmmsg(socket.as_raw_fd(), messages.as_mut_ptr(), BATCH as u32, 0) };
            }
            round += 1;
        }
    });
    // Let the last packets drain through the router.
    std::thread::sleep(Duration::from_millis(100));
    topology.server_rx_packets() - before
}

/// One TCP stream from the client to `destination` for `duration`; returns Gbit/s as
/// the server received it.
pub fn bulk_tcp(topology: &Topology, destination: Ipv4Addr, duration: Duration) -> f64 {
    let listener = topology.server.run(|| TcpListener::bind(("0.0.0.0", BULK_PORT)).expect("listen for bulk"));
    listener.set_nonblocking(true).expect("nonblocking listener");
    std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            let deadline = Instant::now() + duration + Duration::from_secs(5);
            let mut stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(error) => panic!("no bulk connection arrived: {error}"),
                }
            };
            stream.set_nonblocking(false).expect("blocking stream");
            stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
            let started = Instant::now();
            let mut buffer = vec![0u8; 1 << 18];
            let mut received = 0u64;
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(bytes) => received += bytes as u64,
                    Err(error) => panic!("bulk receive failed: {error}"),
                }
            }
            received as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e9
        });
        topology.client.run(|| {
            let mut stream =
                TcpStream::connect_timeout(&SocketAddrV4::new(destination, BULK_PORT).into(), Duration::from_secs(3))
                    .expect("connect the bulk stream");
            stream.set_write_timeout(Some(Duration::from_secs(3))).expect("write timeout");
            let chunk = vec![0x5au8; 1 << 18];
            let started = Instant::now();
            while started.elapsed() < duration {
                stream.write_all(&chunk).expect("bulk send");
            }
            stream.shutdown(std::net::Shutdown::Write).expect("shutdown");
        });
        server.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
