//! Header parsing: Ethernet (with at most one 802.1Q tag), then IPv4 with its options
//! (IHL) or IPv6 with its extension headers, then just enough of the transport header
//! to find its checksum and ports. Anything that does not parse is reported as an
//! outcome and the packet passes unchanged.
//!
//! The result is written field by field into an [`IpPacket`] in per-CPU map memory,
//! never built on the stack and copied: a struct with `Option` or enum fields leaves
//! bytes unwritten, and copying it reads stack slots that are not written on every
//! path, which the 5.10 verifier refuses. Values read back from map memory are also
//! unknown to the verifier, so the paths through parsing converge again afterwards
//! instead of multiplying through the rest of the program.

use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};
use rewrite_common::{
    counters::{MALFORMED, UNSUPPORTED},
    maps::{ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
    trace::{
        REASON_BAD_IP_LENGTH, REASON_BAD_IP_VERSION, REASON_BAD_IPV4_HEADER_LENGTH, REASON_BAD_TCP_DATA_OFFSET,
        REASON_BAD_UDP_LENGTH, REASON_HEADERS_TOO_DEEP, REASON_IPV6_ROUTING_OR_AUTH, REASON_NEIGHBOUR_DISCOVERY,
        REASON_NOT_IP, REASON_OTHER_PROTOCOL, REASON_SHORT_ETHERNET, REASON_SHORT_EXTENSION_HEADER,
        REASON_SHORT_ICMP_HEADER, REASON_SHORT_IP_HEADER, REASON_SHORT_TCP_HEADER, REASON_SHORT_UDP_HEADER,
        REASON_TRANSPORT_TOO_DEEP,
    },
};

use crate::{copy::set, packet::Packet, parsed::IpPacket};

/// Offset of the ethertype in an Ethernet header.
const ETHER_TYPE: usize = 12;
/// Offsets inside an IPv4 header.
pub const IPV4_CHECK: usize = 10;
pub const IPV4_SRC: usize = 12;
pub const IPV4_DST: usize = 16;
/// Offsets inside an IPv6 header.
pub const IPV6_SRC: usize = 8;
pub const IPV6_DST: usize = 24;
/// Offset of the checksum inside a TCP, a UDP and an ICMP/ICMPv6 header.
const TCP_CHECK: usize = 16;
const UDP_CHECK: usize = 6;
pub const ICMP_CHECK: usize = 2;
/// Offset of the destination port from the source port in TCP and UDP headers.
pub const DST_PORT_AFTER_SRC: u16 = 2;
/// The smallest ICMP or ICMPv6 message: type, code, checksum and four more bytes; a
/// quoted packet starts after them.
pub const ICMP_HEADER: u16 = 8;
/// The fragment offset bits of the IPv4 flags-and-offset field, and of the IPv6
/// fragment header's offset-and-flags field.
pub const IPV4_FRAGMENT_OFFSET: u16 = 0x1fff;
pub const IPV6_FRAGMENT_OFFSET: u16 = 0xfff8;
/// IPv6 extension headers (RFC 8200).
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_AUTHENTICATION: u8 = 51;
pub const IPV6_DESTINATION_OPTIONS: u8 = 60;
/// How many IPv6 extension headers are walked before the packet counts as unsupported;
/// a bound the verifier needs, and more than real traffic carries.
const IPV6_MAX_EXTENSION_HEADERS: usize = 4;
/// Transport headers further in than this are not looked at (a bound for the verifier).
pub const MAX_L4_OFFSET: usize = 512;
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

/// Notes why the packet is refused (`rewrite_common::trace::REASON_*`) in `out`, and
/// returns the outcome to count. The reason goes to map memory, not into the returned
/// value: a different constant per refusal would walk the verifier through everything
/// after parsing once per reason.
#[inline(always)]
fn refuse(out: &mut IpPacket, outcome: u32, reason: u8) -> u32 {
    set(&mut out.reason, reason);
    outcome
}

/// Offsets are below `MAX_L4_OFFSET` plus a header (checked), or a datagram's end,
/// which is capped: they fit a u16.
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "offsets are bounded by the parser's checks or capped")]
pub fn short(offset: usize) -> u16 {
    if offset > usize::from(u16::MAX) { u16::MAX } else { offset as u16 }
}

/// Parses an Ethernet frame carrying IPv4 or IPv6 into `out`, or returns the outcome
/// counter that says why the packet is left alone (`MALFORMED` or `UNSUPPORTED`), with
/// the reason `trace` shows in `out.reason`.
#[inline(always)]
pub fn parse<P: Packet>(packet: &P, out: &mut IpPacket) -> Result<(), u32> {
    // Only the fields used are read: a header is copied byte by byte.
    let mut ether_type =
        u16::from_be_bytes(packet.read(ETHER_TYPE).ok_or_else(|| refuse(out, MALFORMED, REASON_SHORT_ETHERNET))?);
    let mut l3 = EthHdr::LEN;
    if ether_type == ETH_P_8021Q {
        let vlan: VlanHdr = packet.read(l3).ok_or_else(|| refuse(out, MALFORMED, REASON_SHORT_ETHERNET))?;
        ether_type = u16::from_be(vlan.ether_type);
        l3 += VlanHdr::LEN;
    }
    match ether_type {
        ETH_P_IP => parse_ipv4(packet, l3, out),
        ETH_P_IPV6 => parse_ipv6(packet, l3, out),
        _ => Err(refuse(out, UNSUPPORTED, REASON_NOT_IP)),
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
fn parse_ipv4<P: Packet>(packet: &P, l3: usize, out: &mut IpPacket) -> Result<(), u32> {
    // Up to the addresses, which are read a word at a time below.
    let ip: [u8; IPV4_SRC] = packet.read(l3).ok_or_else(|| refuse(out, MALFORMED, REASON_SHORT_IP_HEADER))?;
    let (version_ihl, protocol) = (ip[0], ip[9]);
    if version_ihl >> 4 != 4 {
        return Err(refuse(out, MALFORMED, REASON_BAD_IP_VERSION));
    }
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    // The IPv4 total length includes the header.
    let total_len = claimed_length(packet, l3, 0, usize::from(u16::from_be_bytes([ip[2], ip[3]])));
    // Trailing bytes beyond the datagram (Ethernet padding) are allowed; a length that
    // claims more than the frame holds, or less than the header, is not.
    if header_len < Ipv4Hdr::LEN {
        return Err(refuse(out, MALFORMED, REASON_BAD_IPV4_HEADER_LENGTH));
    }
    if total_len < header_len || l3 + total_len > packet.len() {
        return Err(refuse(out, MALFORMED, REASON_BAD_IP_LENGTH));
    }
    let first_fragment = u16::from_be_bytes([ip[6], ip[7]]) & IPV4_FRAGMENT_OFFSET == 0;
    out.src = packet.read_addr(l3 + IPV4_SRC, false).ok_or_else(|| refuse(out, MALFORMED, REASON_SHORT_IP_HEADER))?;
    out.dst = packet.read_addr(l3 + IPV4_DST, false).ok_or_else(|| refuse(out, MALFORMED, REASON_SHORT_IP_HEADER))?;
    out.src_offset = short(l3 + IPV4_SRC);
    out.dst_offset = short(l3 + IPV4_DST);
    out.ipv4_check = short(l3 + IPV4_CHECK);
    out.icmp_check = 0;
    out.datagram_end = short(l3 + total_len);
    transport(packet, protocol, l3 + header_len, l3 + total_len, first_fragment, false, out)
}

#[inline(always)]
fn parse_ipv6<P: Packet>(packet: &P, l3: usize, out: &mut IpPacket) -> Result<(), u32> {
    // Up to the addresses, which are read a word at a time below.
    let ip: [u8; IPV6_SRC] = packet.read(l3).ok_or_else(|| refuse(out, MALFORMED, REASON_SHORT_IP_HEADER))?;
    if ip[0] >> 4 != 6 {
        return Err(refuse(out, MALFORMED, REASON_BAD_IP_VERSION));
    }
    let end = l3 + claimed_length(packet, l3, Ipv6Hdr::LEN, usize::from(u16::from_be_bytes([ip[4], ip[5]])));
    if end > packet.len() {
        return Err(refuse(out, MALFORMED, REASON_BAD_IP_LENGTH));
    }
    let mut next_header = ip[6];
    let mut offset = l3 + Ipv6Hdr::LEN;
    let mut first_fragment = true;
    for _ in 0..IPV6_MAX_EXTENSION_HEADERS {
        match next_header {
            IPV6_HOP_BY_HOP | IPV6_DESTINATION_OPTIONS => {
                let header: [u8; 2] =
                    packet.read(offset).ok_or_else(|| refuse(out, MALFORMED, REASON_SHORT_EXTENSION_HEADER))?;
                next_header = header[0];
                offset += (usize::from(header[1]) + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let header: [u8; 8] =
                    packet.read(offset).ok_or_else(|| refuse(out, MALFORMED, REASON_SHORT_EXTENSION_HEADER))?;
                next_header = header[0];
                first_fragment = u16::from_be_bytes([header[2], header[3]]) & IPV6_FRAGMENT_OFFSET == 0;
                offset += 8;
            }
            // A routing header makes the destination an intermediate hop, and an
            // authentication header covers the addresses: rewriting either breaks it.
            IPV6_ROUTING | IPV6_AUTHENTICATION => return Err(refuse(out, UNSUPPORTED, REASON_IPV6_ROUTING_OR_AUTH)),
            _ => break,
        }
        if offset > MAX_L4_OFFSET || offset > end {
            return Err(if offset > end {
                refuse(out, MALFORMED, REASON_SHORT_EXTENSION_HEADER)
            } else {
                refuse(out, UNSUPPORTED, REASON_HEADERS_TOO_DEEP)
            });
        }
        // After the fragment header of a later fragment comes payload, not headers.
        if !first_fragment {
            break;
        }
    }
    out.src = packet.read_addr(l3 + IPV6_SRC, true).ok_or_else(|| refuse(out, MALFORMED, REASON_SHORT_IP_HEADER))?;
    out.dst = packet.read_addr(l3 + IPV6_DST, true).ok_or_else(|| refuse(out, MALFORMED, REASON_SHORT_IP_HEADER))?;
    out.src_offset = short(l3 + IPV6_SRC);
    out.dst_offset = short(l3 + IPV6_DST);
    out.ipv4_check = 0;
    out.icmp_check = 0;
    out.datagram_end = short(end);
    transport(packet, next_header, offset, end, first_fragment, true, out)
}

/// Writes the transport fields of `out`: the checksum that covers the addresses, the
/// ports, and where an ICMP error's quote starts, checking that the transport header
/// the rewrite relies on lies inside the datagram (`l4..end`).
#[inline(always)]
fn transport<P: Packet>(
    packet: &P,
    protocol: u8,
    l4: usize,
    end: usize,
    first_fragment: bool,
    ipv6: bool,
    out: &mut IpPacket,
) -> Result<(), u32> {
    // Written before any refusal: a trace shows the tuple of a packet refused from here
    // on, without stale ports.
    set(&mut out.l4_check, 0);
    set(&mut out.l4_udp, 0);
    set(&mut out.protocol, 0);
    set(&mut out.later_fragment, u8::from(!first_fragment));
    set(&mut out.reason, 0);
    set(&mut out.ports_offset, 0);
    set(&mut out.src_port, [0; 2]);
    set(&mut out.dst_port, [0; 2]);
    set(&mut out.quoted, 0);
    if l4 > MAX_L4_OFFSET {
        return Err(refuse(out, UNSUPPORTED, REASON_TRANSPORT_TOO_DEEP));
    }
    let payload_len = end - l4;
    match protocol {
        // A non-first fragment carries no transport header: its addresses are still
        // rewritten, and the first fragment's checksum update covers the datagram.
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP | IPPROTO_ICMPV6 if !first_fragment => {}
        // A later IPv6 fragment whose first fragment carried more options headers
        // before the transport: as above, addresses only.
        IPV6_HOP_BY_HOP | IPV6_DESTINATION_OPTIONS if ipv6 && !first_fragment => {}
        IPPROTO_TCP => {
            let tcp: TcpHdr = packet.read(l4).ok_or_else(|| refuse(out, MALFORMED, REASON_SHORT_TCP_HEADER))?;
            // The ports before the checks: a trace shows them for a malformed segment too.
            out.protocol = protocol;
            out.src_port = tcp.source;
            out.dst_port = tcp.dest;
            let data_offset = usize::from(tcp.doff()) * 4;
            if data_offset < TcpHdr::LEN || data_offset > payload_len {
                return Err(refuse(out, MALFORMED, REASON_BAD_TCP_DATA_OFFSET));
            }
            out.l4_check = short(l4 + TCP_CHECK);
            out.ports_offset = short(l4);
        }
        IPPROTO_UDP => {
            let udp: UdpHdr = packet.read(l4).ok_or_else(|| refuse(out, MALFORMED, REASON_SHORT_UDP_HEADER))?;
            out.protocol = protocol;
            out.src_port = udp.src;
            out.dst_port = udp.dst;
            if payload_len < UdpHdr::LEN {
                return Err(refuse(out, MALFORMED, REASON_SHORT_UDP_HEADER));
            }
            if usize::from(u16::from_be_bytes(udp.len)) < UdpHdr::LEN {
                return Err(refuse(out, MALFORMED, REASON_BAD_UDP_LENGTH));
            }
            out.l4_check = short(l4 + UDP_CHECK);
            out.l4_udp = 1;
            out.ports_offset = short(l4);
        }
        IPPROTO_ICMP if !ipv6 => {
            // Four bytes, not one: a one-byte read compiles to a bounds check the XDP
            // verifier does not accept.
            let header: [u8; 4] = packet.read(l4).ok_or_else(|| refuse(out, MALFORMED, REASON_SHORT_ICMP_HEADER))?;
            if payload_len < usize::from(ICMP_HEADER) {
                return Err(refuse(out, MALFORMED, REASON_SHORT_ICMP_HEADER));
            }
            // The ICMP checksum has no pseudo-header: address changes leave it alone.
            if ICMP_ERRORS.contains(&header[0]) {
                out.quoted = short(l4) + ICMP_HEADER;
            }
        }
        IPPROTO_ICMPV6 if ipv6 => {
            let header: [u8; 4] = packet.read(l4).ok_or_else(|| refuse(out, MALFORMED, REASON_SHORT_ICMP_HEADER))?;
            if payload_len < usize::from(ICMP_HEADER) {
                return Err(refuse(out, MALFORMED, REASON_SHORT_ICMP_HEADER));
            }
            if (ICMPV6_ND_FIRST..=ICMPV6_ND_LAST).contains(&header[0]) {
                return Err(refuse(out, UNSUPPORTED, REASON_NEIGHBOUR_DISCOVERY));
            }
            out.l4_check = short(l4 + ICMP_CHECK);
            if ICMPV6_ERRORS.contains(&header[0]) {
                out.quoted = short(l4) + ICMP_HEADER;
            }
        }
        // Other protocols may have pseudo-header checksums this program does not know
        // (UDP-Lite, DCCP, SCTP's CRC does not but tunnels may), so rewriting their
        // addresses could corrupt them.
        _ => return Err(refuse(out, UNSUPPORTED, REASON_OTHER_PROTOCOL)),
    }
    Ok(())
}
