//! Header parsing: Ethernet (with at most one 802.1Q tag), then IPv4 with its options
//! (IHL) or IPv6 with its extension headers, then just enough of the transport header
//! to find its checksum. Anything that does not parse is reported as an outcome and
//! the packet passes unchanged.

use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};
use rewrite_common::{
    counters::{MALFORMED, UNSUPPORTED},
    maps::{Addr, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
};

use rewrite_common::mapping::PacketPorts;

use crate::packet::{L4Checksum, Packet};

/// Offsets inside an IPv4 header.
const IPV4_CHECK: usize = 10;
const IPV4_SRC: usize = 12;
const IPV4_DST: usize = 16;
/// Offsets inside an IPv6 header.
const IPV6_SRC: usize = 8;
const IPV6_DST: usize = 24;
/// Offset of the checksum inside a TCP, a UDP and an ICMP/ICMPv6 header.
const TCP_CHECK: usize = 16;
const UDP_CHECK: usize = 6;
const ICMP_CHECK: usize = 2;
/// The smallest ICMP or ICMPv6 message: type, code, checksum and four more bytes.
const ICMP_MIN_LEN: usize = 8;
/// The fragment offset bits of the IPv4 flags-and-offset field, and of the IPv6
/// fragment header's offset-and-flags field.
const IPV4_FRAGMENT_OFFSET: u16 = 0x1fff;
const IPV6_FRAGMENT_OFFSET: u16 = 0xfff8;
/// IPv6 extension headers (RFC 8200).
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTHENTICATION: u8 = 51;
const IPV6_DESTINATION_OPTIONS: u8 = 60;
/// How many IPv6 extension headers are walked before the packet counts as unsupported;
/// a bound the verifier needs, and more than real traffic carries.
const IPV6_MAX_EXTENSION_HEADERS: usize = 4;
/// Transport headers further in than this are not looked at (a bound for the verifier).
const MAX_L4_OFFSET: usize = 512;
/// ICMPv6 types 133 to 137 are neighbour discovery (RFC 4861): link-local business
/// whose addresses also sit inside the message, so it is never rewritten.
const ICMPV6_ND_FIRST: u8 = 133;
const ICMPV6_ND_LAST: u8 = 137;

/// ICMP types whose message quotes the packet that caused it (after 8 bytes of ICMP
/// header): destination unreachable (with fragmentation needed), time exceeded,
/// parameter problem.
const ICMP_ERRORS: [u8; 3] = [3, 11, 12];
/// ICMPv6: destination unreachable, packet too big, time exceeded, parameter problem.
const ICMPV6_ERRORS: [u8; 4] = [1, 2, 3, 4];

/// Where a parsed packet keeps the fields the rewrite touches. Addresses are in the
/// maps' 16-byte form; the offsets are those of the fields in the packet.
pub struct IpPacket {
    pub src: Addr,
    pub dst: Addr,
    pub src_offset: usize,
    pub dst_offset: usize,
    /// The IPv4 header checksum's offset; `None` for IPv6, which has none.
    pub ipv4_check: Option<usize>,
    pub l4: L4Checksum,
    /// The ports of a TCP or UDP packet that carries its header: the values, and the
    /// offset of the source port (the destination port follows it).
    pub ports: Option<(PacketPorts, usize)>,
    /// A fragment other than the first: no transport header, so no ports.
    pub later_fragment: bool,
    /// For a packet quoted inside an ICMP error: the offset of the ICMP checksum that
    /// covers its bytes as plain data; 0 for the outer packet. (Offsets are small, and
    /// a `u16` rather than an `Option<usize>` keeps XDP within its 512-byte stack.)
    pub icmp_check: u16,
    /// For an ICMP error: where the quoted packet (its IP header) starts; 0 if none.
    pub quoted: u16,
    /// Where the datagram ends (at most 65,535; only ICMP errors, which are small, need
    /// it): a quote must lie inside it, since the ICMP checksum covers nothing beyond.
    pub datagram_end: u16,
}

/// Parses an Ethernet frame carrying IPv4 or IPv6, or returns the outcome counter that
/// says why the packet is left alone (`MALFORMED` or `UNSUPPORTED`).
#[inline(always)]
pub fn parse<P: Packet>(packet: &P) -> Result<IpPacket, u32> {
    let eth: EthHdr = packet.read(0).ok_or(MALFORMED)?;
    let mut ether_type = u16::from_be(eth.ether_type);
    let mut l3 = EthHdr::LEN;
    if ether_type == ETH_P_8021Q {
        let vlan: VlanHdr = packet.read(l3).ok_or(MALFORMED)?;
        ether_type = u16::from_be(vlan.ether_type);
        l3 += VlanHdr::LEN;
    }
    match ether_type {
        ETH_P_IP => parse_ipv4(packet, l3),
        ETH_P_IPV6 => parse_ipv6(packet, l3),
        _ => Err(UNSUPPORTED),
    }
}

/// The length an IP header claims for its datagram, or the skb's when a BIG TCP
/// super-packet (over 64 KiB, seen only by TC) claims 0.
#[inline(always)]
fn claimed_length<P: Packet>(packet: &P, l3: usize, header_len: usize, claimed: usize) -> usize {
    let available = packet.len().saturating_sub(l3);
    if claimed == 0 && available > usize::from(u16::MAX) { available } else { claimed + header_len }
}

#[inline(always)]
fn parse_ipv4<P: Packet>(packet: &P, l3: usize) -> Result<IpPacket, u32> {
    let ip: Ipv4Hdr = packet.read(l3).ok_or(MALFORMED)?;
    if ip.vihl >> 4 != 4 {
        return Err(MALFORMED);
    }
    let header_len = usize::from(ip.vihl & 0x0f) * 4;
    // The IPv4 total length includes the header.
    let total_len = claimed_length(packet, l3, 0, usize::from(u16::from_be_bytes(ip.tot_len)));
    // Trailing bytes beyond the datagram (Ethernet padding) are allowed; a length that
    // claims more than the frame holds, or less than the header, is not.
    if header_len < Ipv4Hdr::LEN || total_len < header_len || l3 + total_len > packet.len() {
        return Err(MALFORMED);
    }
    let first_fragment = u16::from_be_bytes(ip.frags) & IPV4_FRAGMENT_OFFSET == 0;
    let (l4, ports, quoted) = transport(packet, ip.proto, l3 + header_len, l3 + total_len, first_fragment, false)?;
    Ok(IpPacket {
        src: Addr::from_v4(ip.src_addr),
        dst: Addr::from_v4(ip.dst_addr),
        src_offset: l3 + IPV4_SRC,
        dst_offset: l3 + IPV4_DST,
        ipv4_check: Some(l3 + IPV4_CHECK),
        l4,
        ports,
        later_fragment: !first_fragment,
        icmp_check: 0,
        quoted: quoted.and_then(|offset| u16::try_from(offset).ok()).unwrap_or(0),
        datagram_end: u16::try_from(l3 + total_len).unwrap_or(u16::MAX),
    })
}

#[inline(always)]
fn parse_ipv6<P: Packet>(packet: &P, l3: usize) -> Result<IpPacket, u32> {
    let ip: Ipv6Hdr = packet.read(l3).ok_or(MALFORMED)?;
    if ip.vcf[0] >> 4 != 6 {
        return Err(MALFORMED);
    }
    let end = l3 + claimed_length(packet, l3, Ipv6Hdr::LEN, usize::from(u16::from_be_bytes(ip.payload_len)));
    if end > packet.len() {
        return Err(MALFORMED);
    }
    let mut next_header = ip.next_hdr;
    let mut offset = l3 + Ipv6Hdr::LEN;
    let mut first_fragment = true;
    for _ in 0..IPV6_MAX_EXTENSION_HEADERS {
        match next_header {
            IPV6_HOP_BY_HOP | IPV6_DESTINATION_OPTIONS => {
                let header: [u8; 2] = packet.read(offset).ok_or(MALFORMED)?;
                next_header = header[0];
                offset += (usize::from(header[1]) + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let header: [u8; 8] = packet.read(offset).ok_or(MALFORMED)?;
                next_header = header[0];
                first_fragment = u16::from_be_bytes([header[2], header[3]]) & IPV6_FRAGMENT_OFFSET == 0;
                offset += 8;
            }
            // A routing header makes the destination an intermediate hop, and an
            // authentication header covers the addresses: rewriting either breaks it.
            IPV6_ROUTING | IPV6_AUTHENTICATION => return Err(UNSUPPORTED),
            _ => break,
        }
        if offset > MAX_L4_OFFSET || offset > end {
            return Err(if offset > end { MALFORMED } else { UNSUPPORTED });
        }
        // After the fragment header of a later fragment comes payload, not headers.
        if !first_fragment {
            break;
        }
    }
    let (l4, ports, quoted) = transport(packet, next_header, offset, end, first_fragment, true)?;
    Ok(IpPacket {
        src: Addr { octets: ip.src_addr },
        dst: Addr { octets: ip.dst_addr },
        src_offset: l3 + IPV6_SRC,
        dst_offset: l3 + IPV6_DST,
        ipv4_check: None,
        l4,
        ports,
        later_fragment: !first_fragment,
        icmp_check: 0,
        quoted: quoted.and_then(|offset| u16::try_from(offset).ok()).unwrap_or(0),
        datagram_end: u16::try_from(end).unwrap_or(u16::MAX),
    })
}

/// What [`transport`] finds: the checksum covering the addresses, the ports with the
/// offset of the source port, and where an ICMP error's quote starts.
type Transport = (L4Checksum, Option<(PacketPorts, usize)>, Option<usize>);

/// Finds the transport checksum that covers the addresses, and the ports, checking
/// that the transport header the rewrite relies on lies inside the datagram
/// (`l4..end`).
#[inline(always)]
fn transport<P: Packet>(
    packet: &P,
    protocol: u8,
    l4: usize,
    end: usize,
    first_fragment: bool,
    ipv6: bool,
) -> Result<Transport, u32> {
    if l4 > MAX_L4_OFFSET {
        return Err(UNSUPPORTED);
    }
    let payload_len = end - l4;
    Ok(match protocol {
        // A non-first fragment carries no transport header: its addresses are still
        // rewritten, and the first fragment's checksum update covers the datagram.
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP | IPPROTO_ICMPV6 if !first_fragment => {
            (L4Checksum::NotCovered, None, None)
        }
        // A later IPv6 fragment whose first fragment carried more options headers
        // before the transport: as above, addresses only.
        IPV6_HOP_BY_HOP | IPV6_DESTINATION_OPTIONS if ipv6 && !first_fragment => (L4Checksum::NotCovered, None, None),
        IPPROTO_TCP => {
            let tcp: TcpHdr = packet.read(l4).ok_or(MALFORMED)?;
            let data_offset = usize::from(tcp.doff()) * 4;
            if data_offset < TcpHdr::LEN || data_offset > payload_len {
                return Err(MALFORMED);
            }
            let ports = PacketPorts { protocol, src: tcp.source, dst: tcp.dest };
            (L4Checksum::Covered(l4 + TCP_CHECK), Some((ports, l4)), None)
        }
        IPPROTO_UDP => {
            let udp: UdpHdr = packet.read(l4).ok_or(MALFORMED)?;
            if payload_len < UdpHdr::LEN || usize::from(u16::from_be_bytes(udp.len)) < UdpHdr::LEN {
                return Err(MALFORMED);
            }
            let ports = PacketPorts { protocol, src: udp.src, dst: udp.dst };
            (L4Checksum::CoveredUdp(l4 + UDP_CHECK), Some((ports, l4)), None)
        }
        IPPROTO_ICMP if !ipv6 => {
            // Four bytes, not one: a one-byte read compiles to a bounds check the XDP
            // verifier does not accept.
            let header: [u8; 4] = packet.read(l4).ok_or(MALFORMED)?;
            if payload_len < ICMP_MIN_LEN {
                return Err(MALFORMED);
            }
            let quoted = ICMP_ERRORS.contains(&header[0]).then_some(l4 + ICMP_MIN_LEN);
            // The ICMP checksum has no pseudo-header: address changes leave it alone.
            (L4Checksum::NotCovered, None, quoted)
        }
        IPPROTO_ICMPV6 if ipv6 => {
            let header: [u8; 4] = packet.read(l4).ok_or(MALFORMED)?;
            if payload_len < ICMP_MIN_LEN {
                return Err(MALFORMED);
            }
            if (ICMPV6_ND_FIRST..=ICMPV6_ND_LAST).contains(&header[0]) {
                return Err(UNSUPPORTED);
            }
            let quoted = ICMPV6_ERRORS.contains(&header[0]).then_some(l4 + ICMP_MIN_LEN);
            (L4Checksum::Covered(l4 + ICMP_CHECK), None, quoted)
        }
        // Other protocols may have pseudo-header checksums this program does not know
        // (UDP-Lite, DCCP, SCTP's CRC does not but tunnels may), so rewriting their
        // addresses could corrupt them.
        _ => return Err(UNSUPPORTED),
    })
}

/// Parses the packet quoted by an ICMP error at `l3` (same family as the error). The
/// quote is cut short by design, so only the fields the rewrite touches must be there,
/// inside the error's datagram (which ends at `end`, before any Ethernet padding):
/// the IP header, and the ports when the quoted packet is a first (or only) fragment of
/// TCP or UDP. Its transport checksum is left alone (nobody verifies a quote's), and
/// every change is folded into the error's own checksum at `icmp_check`.
#[inline(always)]
pub fn parse_quoted<P: Packet>(packet: &P, l3: usize, ipv6: bool, icmp_check: usize, end: usize) -> Option<IpPacket> {
    let (src, dst, src_offset, dst_offset, ipv4_check, protocol, l4, first_fragment) = if ipv6 {
        let ip: Ipv6Hdr = packet.read(l3)?;
        if l3 + Ipv6Hdr::LEN > end || ip.vcf[0] >> 4 != 6 {
            return None;
        }
        let addresses = (Addr { octets: ip.src_addr }, Addr { octets: ip.dst_addr });
        (addresses.0, addresses.1, l3 + IPV6_SRC, l3 + IPV6_DST, None, ip.next_hdr, l3 + Ipv6Hdr::LEN, true)
    } else {
        let ip: Ipv4Hdr = packet.read(l3)?;
        let header_len = usize::from(ip.vihl & 0x0f) * 4;
        if l3 + Ipv4Hdr::LEN > end || ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
            return None;
        }
        let first_fragment = u16::from_be_bytes(ip.frags) & IPV4_FRAGMENT_OFFSET == 0;
        let addresses = (Addr::from_v4(ip.src_addr), Addr::from_v4(ip.dst_addr));
        let check = Some(l3 + IPV4_CHECK);
        (addresses.0, addresses.1, l3 + IPV4_SRC, l3 + IPV4_DST, check, ip.proto, l3 + header_len, first_fragment)
    };
    if l4 > MAX_L4_OFFSET {
        return None;
    }
    let ports = match protocol {
        IPPROTO_TCP | IPPROTO_UDP if first_fragment && l4 + 4 <= end => packet
            .read::<[u8; 4]>(l4)
            .map(|ports| (PacketPorts { protocol, src: [ports[0], ports[1]], dst: [ports[2], ports[3]] }, l4)),
        _ => None,
    };
    Some(IpPacket {
        src,
        dst,
        src_offset,
        dst_offset,
        ipv4_check,
        l4: L4Checksum::NotCovered,
        ports,
        later_fragment: false,
        icmp_check: u16::try_from(icmp_check).ok()?,
        quoted: 0,
        datagram_end: 0,
    })
}
