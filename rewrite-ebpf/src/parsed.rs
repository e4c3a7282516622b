//! What parsing found in a packet: the offsets and values of the fields the rewrite
//! touches. Its own module because both sides need it: the parser fills it in, and the
//! packet accessors (XDP and TC) use it to fix the checksums that cover a field.

use rewrite_common::maps::Addr;

/// Where a parsed packet keeps the fields the rewrite touches. Addresses are in the
/// maps' 16-byte form; offsets are those of the fields from the frame's start, and 0
/// means "none" (no field of interest ever sits at offset 0, the Ethernet header's).
/// Every field is written for every packet that parses.
#[repr(C)]
pub struct IpPacket {
    pub src: Addr,
    pub dst: Addr,
    pub src_offset: u16,
    pub dst_offset: u16,
    /// The IPv4 header checksum's offset; 0 for IPv6, which has none.
    pub ipv4_check: u16,
    /// The transport checksum that covers the addresses through the pseudo-header
    /// (TCP, UDP, ICMPv6); 0 when none does (ICMP over IPv4, a later fragment).
    pub l4_check: u16,
    /// 1 when `l4_check` is a UDP checksum, whose zero means "none" and must stay zero.
    pub l4_udp: u8,
    /// `IPPROTO_TCP` or `IPPROTO_UDP` when the packet carries ports, else 0.
    pub protocol: u8,
    /// 1 for a fragment other than the first: no transport header, so no ports.
    pub later_fragment: u8,
    /// Why parsing refused the packet (`rewrite_common::trace::REASON_*`), for `trace`;
    /// 0 when it parsed.
    pub reason: u8,
    /// The source port's offset (the destination port follows it); 0 without ports.
    pub ports_offset: u16,
    /// The ports, big-endian as on the wire (zero without ports).
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    /// For a packet quoted inside an ICMP error: the offset of the ICMP checksum that
    /// covers its bytes as plain data; 0 for the outer packet.
    pub icmp_check: u16,
    /// For an ICMP error: where the quoted packet (its IP header) starts; 0 if none.
    pub quoted: u16,
    /// Where the datagram ends (at most 65,535; only ICMP errors, which are small, need
    /// it): a quote must lie inside it, since the ICMP checksum covers nothing beyond.
    pub datagram_end: u16,
    /// What the gate did with the packet, for `trace`: see `gate::drops`.
    pub gate: u8,
    pub reserved: u8,
}

impl IpPacket {
    #[inline(always)]
    pub fn is_ipv6(&self) -> bool {
        self.ipv4_check == 0
    }

    #[inline(always)]
    pub fn has_ports(&self) -> bool {
        self.ports_offset != 0
    }
}
