//! Hostile frames that the host's kernel still delivers, for the gatekeeper's tests:
//! built by the packet builder, addressed to a real host's MAC, and the raw sockets that
//! see what the host answers.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use rewrite_common::checksum::full;

use crate::{
    netns::Netns,
    packet::{IPV6_ROUTING, IpSpec, Transport},
};

/// `frame` sent from the host with MAC `src_mac` to the one with `dst_mac`.
pub fn addressed(mut frame: Vec<u8>, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    frame[..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    frame
}

/// An IPv6 UDP datagram whose UDP length field is 0, as jumbograms carry it: the
/// kernel takes the length from the IP header (and the checksum's pseudo-header from
/// the real length).
pub fn ipv6_udp_length_zero(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let spec = IpSpec::new(src, dst, Transport::Raw { protocol: 17, bytes: Vec::new() });
    let (IpAddr::V6(src6), IpAddr::V6(dst6)) = (src, dst) else { panic!("an IPv6 datagram needs IPv6 addresses") };
    let mut udp = src_port.to_be_bytes().to_vec();
    udp.extend_from_slice(&dst_port.to_be_bytes());
    udp.extend_from_slice(&[0, 0, 0, 0]);
    udp.extend_from_slice(payload);
    let check = full::ipv6_l4(src6.octets(), dst6.octets(), 17, &udp, 6);
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    IpSpec { transport: Transport::Raw { protocol: 17, bytes: udp }, ..spec }.frame()
}

/// An IPv6 UDP datagram behind a routing header (type 0) with 0 segments left, which
/// the kernel skips (RFC 8200 4.4).
pub fn ipv6_udp_behind_routing_header(
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut spec =
        IpSpec::new(src, dst, Transport::Udp { src_port, dst_port, payload: payload.to_vec(), zero_checksum: false });
    spec.extension_headers.push((IPV6_ROUTING, vec![0, 0, 0, 0, 0, 0]));
    spec.frame()
}

/// A TCP SYN from `src:src_port` to `dst:dst_port` (sequence `seq`), cut into two IPv4
/// fragments: the first carries only 8 bytes of the TCP header (ports and sequence),
/// the second the rest. The host reassembles them.
pub fn ipv4_syn_in_two_fragments(src: Ipv4Addr, dst: Ipv4Addr, src_port: u16, dst_port: u16, seq: u32) -> [Vec<u8>; 2] {
    let mut tcp = src_port.to_be_bytes().to_vec();
    tcp.extend_from_slice(&dst_port.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]); // acknowledgement
    tcp.push(5 << 4); // data offset: 5 words
    tcp.push(0x02); // SYN
    tcp.extend_from_slice(&64240u16.to_be_bytes()); // window
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    let check = full::ipv4_l4(src.octets(), dst.octets(), 6, &tcp, 16);
    tcp[16..18].copy_from_slice(&check.to_be_bytes());
    let mut first = IpSpec::new(src, dst, Transport::Raw { protocol: 6, bytes: tcp[..8].to_vec() });
    first.more_fragments = true;
    let mut second = IpSpec::new(src, dst, Transport::Raw { protocol: 6, bytes: tcp[8..].to_vec() });
    second.fragment_offset = 1;
    [first.frame(), second.frame()]
}

/// A raw IPv4 socket in `netns` that sees every TCP segment the host receives.
#[derive(Debug)]
pub struct TcpSniffer {
    socket: std::os::fd::OwnedFd,
}

impl TcpSniffer {
    pub fn open(netns: &Netns) -> Self {
        let socket = netns.run(|| {
            nix::sys::socket::socket(
                nix::sys::socket::AddressFamily::Inet,
                nix::sys::socket::SockType::Raw,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                nix::sys::socket::SockProtocol::Tcp,
            )
            .expect("a raw TCP socket")
        });
        Self { socket }
    }

    /// Whether a SYN-ACK from `from_port` to `to_port` arrives within `wait`.
    pub fn sees_syn_ack(&self, from_port: u16, to_port: u16, wait: Duration) -> bool {
        use std::os::fd::AsRawFd as _;
        let deadline = Instant::now() + wait;
        let mut buffer = [0u8; 2048];
        while Instant::now() < deadline {
            let timeout = nix::sys::time::TimeVal::new(0, 50_000);
            nix::sys::socket::setsockopt(&self.socket, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
                .expect("set a receive timeout");
            // SAFETY: the buffer is valid for writes of its length during the call.
            let received = unsafe { libc::recv(self.socket.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
            let Ok(length) = usize::try_from(received) else { continue };
            let packet = &buffer[..length];
            let header_len = usize::from(packet.first().copied().unwrap_or(0) & 0x0f) * 4;
            let Some(tcp) = packet.get(header_len..header_len + 14) else { continue };
            let (source, destination) = (u16::from_be_bytes([tcp[0], tcp[1]]), u16::from_be_bytes([tcp[2], tcp[3]]));
            if source == from_port && destination == to_port && tcp[13] & 0x12 == 0x12 {
                return true;
            }
        }
        false
    }
}
