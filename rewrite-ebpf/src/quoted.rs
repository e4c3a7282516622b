//! The packet an ICMP error quotes, read so that its addresses and ports can be
//! rewritten with the error's (only the rewrite object handles ICMP errors).

use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use rewrite_common::maps::{Addr, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    packet::Packet,
    parse::{
        ICMP_CHECK, ICMP_HEADER, IPV4_CHECK, IPV4_DST, IPV4_FRAGMENT_OFFSET, IPV4_SRC, IPV6_DST, IPV6_SRC,
        MAX_L4_OFFSET, short,
    },
    parsed::IpPacket,
};

/// Parses the packet that the ICMP error `outer` quotes (same family as the error) into
/// `out`. The quote is cut short by design, so only the fields the rewrite touches must
/// be there, inside the error's datagram (before any Ethernet padding): the IP header,
/// and the ports when the quoted packet is a first (or only) fragment of TCP or UDP.
/// Its transport checksum is left alone (nobody verifies a quote's), and every change
/// is folded into the error's own checksum. Returns whether there is a quote to rewrite.
#[inline(always)]
pub fn parse_quoted<P: Packet>(packet: &P, outer: &IpPacket, out: &mut IpPacket) -> bool {
    let l3 = usize::from(outer.quoted);
    let end = usize::from(outer.datagram_end);
    let (protocol, l4, first_fragment) = if outer.is_ipv6() {
        let Some(ip) = packet.read::<Ipv6Hdr>(l3) else { return false };
        if l3 + Ipv6Hdr::LEN > end || ip.vcf[0] >> 4 != 6 {
            return false;
        }
        out.src = Addr { octets: ip.src_addr };
        out.dst = Addr { octets: ip.dst_addr };
        out.src_offset = short(l3 + IPV6_SRC);
        out.dst_offset = short(l3 + IPV6_DST);
        out.ipv4_check = 0;
        (ip.next_hdr, l3 + Ipv6Hdr::LEN, true)
    } else {
        let Some(ip) = packet.read::<Ipv4Hdr>(l3) else { return false };
        let header_len = usize::from(ip.vihl & 0x0f) * 4;
        if l3 + Ipv4Hdr::LEN > end || ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
            return false;
        }
        out.src = Addr::from_v4(ip.src_addr);
        out.dst = Addr::from_v4(ip.dst_addr);
        out.src_offset = short(l3 + IPV4_SRC);
        out.dst_offset = short(l3 + IPV4_DST);
        out.ipv4_check = short(l3 + IPV4_CHECK);
        (ip.proto, l3 + header_len, u16::from_be_bytes(ip.frags) & IPV4_FRAGMENT_OFFSET == 0)
    };
    if l4 > MAX_L4_OFFSET {
        return false;
    }
    out.l4_check = 0;
    out.l4_udp = 0;
    out.later_fragment = 0;
    out.reserved = 0;
    out.icmp_check = outer.quoted - ICMP_HEADER + short(ICMP_CHECK);
    out.quoted = 0;
    out.datagram_end = 0;
    out.protocol = 0;
    out.ports_offset = 0;
    out.src_port = [0; 2];
    out.dst_port = [0; 2];
    if (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP)
        && first_fragment
        && l4 + 4 <= end
        && let Some(ports) = packet.read::<[u8; 4]>(l4)
    {
        out.protocol = protocol;
        out.ports_offset = short(l4);
        out.src_port = [ports[0], ports[1]];
        out.dst_port = [ports[2], ports[3]];
    }
    true
}
