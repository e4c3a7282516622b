//! Header parsing: Ethernet, then IPv4 with its options (IHL), then just enough of the
//! transport header to find its checksum. Anything that does not parse is reported as
//! an outcome and the packet passes unchanged.

use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};
use rewrite_common::{
    counters::{MALFORMED, UNSUPPORTED},
    maps::{ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::packet::{L4Checksum, Packet};

/// Offsets of the IPv4 source, destination and checksum fields inside an IPv4 header.
const IPV4_SRC: usize = 12;
const IPV4_DST: usize = 16;
const IPV4_CHECK: usize = 10;
/// Offset of the checksum inside a TCP and a UDP header.
const TCP_CHECK: usize = 16;
const UDP_CHECK: usize = 6;
/// The smallest ICMP message: type, code, checksum and four bytes of rest-of-header.
const ICMP_MIN_LEN: usize = 8;
/// The fragment offset bits of the IPv4 flags-and-offset field.
const FRAGMENT_OFFSET_MASK: u16 = 0x1fff;

/// Where a parsed IPv4 packet keeps the fields the rewrite touches.
pub struct Ipv4Packet {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub src_offset: usize,
    pub dst_offset: usize,
    pub check_offset: usize,
    pub l4: L4Checksum,
}

/// Parses an Ethernet frame carrying IPv4, or returns the outcome counter that says
/// why the packet is left alone (`MALFORMED` or `UNSUPPORTED`).
#[inline(always)]
pub fn parse_ipv4<P: Packet>(packet: &P) -> Result<Ipv4Packet, u32> {
    let eth: EthHdr = packet.read(0).ok_or(MALFORMED)?;
    if u16::from_be(eth.ether_type) != ETH_P_IP {
        return Err(UNSUPPORTED);
    }
    let l3 = EthHdr::LEN;
    let ip: Ipv4Hdr = packet.read(l3).ok_or(MALFORMED)?;
    if ip.vihl >> 4 != 4 {
        return Err(MALFORMED);
    }
    let header_len = usize::from(ip.vihl & 0x0f) * 4;
    let mut total_len = usize::from(u16::from_be_bytes(ip.tot_len));
    // BIG TCP: a GSO packet over 64 KiB carries total length 0 and its real length in
    // the skb (only TC sees such packets; an XDP frame is never that large).
    if total_len == 0 && packet.len() - l3 > usize::from(u16::MAX) {
        total_len = packet.len() - l3;
    }
    // Trailing bytes beyond total_len (Ethernet padding) are allowed; a total length
    // that claims more than the frame holds, or less than the header, is not.
    if header_len < Ipv4Hdr::LEN || total_len < header_len || l3 + total_len > packet.len() {
        return Err(MALFORMED);
    }
    let l4 = l3 + header_len;
    let payload_len = total_len - header_len;
    let first_fragment = u16::from_be_bytes(ip.frags) & FRAGMENT_OFFSET_MASK == 0;
    let l4_checksum = match ip.proto {
        // A non-first fragment carries no transport header: its addresses are still
        // rewritten, and the first fragment's checksum update covers the datagram.
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP if !first_fragment => L4Checksum::NotCovered,
        IPPROTO_TCP => {
            let tcp: TcpHdr = packet.read(l4).ok_or(MALFORMED)?;
            let data_offset = usize::from(tcp.doff()) * 4;
            if data_offset < TcpHdr::LEN || data_offset > payload_len {
                return Err(MALFORMED);
            }
            L4Checksum::Tcp(l4 + TCP_CHECK)
        }
        IPPROTO_UDP => {
            let udp: UdpHdr = packet.read(l4).ok_or(MALFORMED)?;
            if payload_len < UdpHdr::LEN || usize::from(u16::from_be_bytes(udp.len)) < UdpHdr::LEN {
                return Err(MALFORMED);
            }
            L4Checksum::Udp(l4 + UDP_CHECK)
        }
        IPPROTO_ICMP => {
            if payload_len < ICMP_MIN_LEN {
                return Err(MALFORMED);
            }
            L4Checksum::NotCovered
        }
        // Other protocols may have pseudo-header checksums this program does not know
        // (UDP-Lite, DCCP), so rewriting their addresses could corrupt them.
        _ => return Err(UNSUPPORTED),
    };
    Ok(Ipv4Packet {
        src: ip.src_addr,
        dst: ip.dst_addr,
        src_offset: l3 + IPV4_SRC,
        dst_offset: l3 + IPV4_DST,
        check_offset: l3 + IPV4_CHECK,
        l4: l4_checksum,
    })
}
