//! The gatekeeper at ingress (see `rewrite_common::gate`): a packet to a protected
//! TCP or UDP port passes only from a fleet member (a REAL address of the mapping
//! table, or inside a REAL prefix) or from an allow prefix. It runs before the rewrite,
//! on the addresses as they arrived, in XDP where the device has it and in TC
//! otherwise. Counted per reason in a per-CPU map; never logged per packet.
//!
//! The gate fails closed: it judges every frame the host's kernel could deliver to a
//! TCP or UDP port, not only those the rewrite's parser reads whole. When that parser
//! gives up (a TCP header cut by a fragment's end, a UDP length field of 0, an IPv6
//! routing or authentication header), the gate walks the frame itself ([`locate`]) and
//! takes the ports as soon as the frame carries them. A first fragment without its
//! ports (or, in IPv6, without its whole header chain) and an IPv6 header chain longer
//! than the walk cannot be judged: enforce mode drops them, monitor mode counts them,
//! each under a reason of its own.
//!
//! Packets without ports (ICMP, fragments after the first) are not the gate's business:
//! the kernel cannot reassemble a datagram whose first fragment the gate dropped, and
//! Linux drops overlapping fragments, so a later fragment cannot replace the ports of
//! an admitted one. Denied packets are sampled into a ring buffer while a `gate log`
//! reader is there.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};
use rewrite_common::{
    counters::INGRESS,
    filter::ADDRESS_KEYS,
    gate::{
        Decision, GATE_WOULD_DROP, GATE_WOULD_DROP_FRAGMENT, GATE_WOULD_DROP_HEADER_CHAIN, GateSample, GateSettings,
        MODE_OFF, PORT_OPEN, SAMPLE_INTERVAL_NS, Source, Unjudgeable, decide, decide_unjudgeable, effective_class,
        port_slot,
    },
    maps::{Addr, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, PrefixKey},
    trace::{GATE_JUDGED_BASE, GATE_NOT_JUDGED},
};

use crate::{
    copy::set,
    gate_maps::{GATE_ALLOW, GATE_LOG, GATE_LOG_LEASE, GATE_PORTS, GATE_SAMPLED_AT, GATE_SETTINGS, count_gate},
    maps::{AddressFilter, address_table, lpm_lookup, prefix_entry, tables_in_use},
    packet::Packet,
    parse::{
        IPV4_FRAGMENT_OFFSET, IPV6_AUTHENTICATION, IPV6_DESTINATION_OPTIONS, IPV6_FRAGMENT, IPV6_FRAGMENT_OFFSET,
        IPV6_HOP_BY_HOP, IPV6_ROUTING,
    },
    parsed::IpPacket,
    per_cpu,
};

/// What the gate did with a packet: judged it or not, under which counter, and whether
/// it dropped it.
#[derive(Clone, Copy)]
struct Verdict(u32);

impl Verdict {
    const NOT_JUDGED: Self = Self(GATE_NOT_JUDGED as u32);
    const DROP: u32 = 0x100;

    #[inline(always)]
    fn judged(counter: u32, dropped: bool) -> Self {
        Self((counter + GATE_JUDGED_BASE as u32) | if dropped { Self::DROP } else { 0 })
    }
}

/// Whether the gate drops the packet; what it did goes to `record.gate` (a
/// `rewrite_common::trace::TraceRecord::gate`), in map memory rather than in the
/// returned value, so that the verifier does not walk the rest of the program once
/// per counter. `record` holds the rewrite parser's result when
/// `parsed` (else [`locate`] writes the source address into it); `prefix_key` is working
/// memory for the source's prefix lookups.
#[inline(always)]
pub fn drops<P: Packet>(packet: &P, record: &mut IpPacket, parsed: bool, prefix_key: &mut PrefixKey) -> bool {
    let verdict = judge(packet, record, parsed, prefix_key);
    // The mask makes the conversion infallible; the compiler drops the check.
    set(&mut record.gate, u8::try_from(verdict.0 & 0xff).unwrap_or(GATE_NOT_JUDGED));
    verdict.0 & Verdict::DROP != 0
}

#[inline(always)]
fn judge<P: Packet>(packet: &P, record: &mut IpPacket, parsed: bool, prefix_key: &mut PrefixKey) -> Verdict {
    let settings: GateSettings = match GATE_SETTINGS.get(0) {
        Some(settings) if settings.mode != MODE_OFF => *settings,
        _ => return Verdict::NOT_JUDGED,
    };
    let (protocol, port) = if parsed {
        // Parsed whole: its ports, or none (ICMP, a later fragment).
        if !record.has_ports() {
            return Verdict::NOT_JUDGED;
        }
        (record.protocol, u16::from_be_bytes(record.dst_port))
    } else {
        match locate(packet, record) {
            Located::Ports { protocol, port } => (protocol, port),
            Located::NotPorts => return Verdict::NOT_JUDGED,
            Located::Unjudgeable(why) => return act(decide_unjudgeable(&settings, why), &record.src, 0, 0),
        }
    };
    let parsed = &*record;
    let Some(slot) = port_slot(protocol, port) else { return Verdict::NOT_JUDGED };
    let class = effective_class(&settings, protocol, port, GATE_PORTS.get(slot).copied().unwrap_or(PORT_OPEN));
    // Most packets go to open ports: they cost no source lookup.
    if class == PORT_OPEN {
        return Verdict::NOT_JUDGED;
    }
    act(decide(&settings, class, source(&parsed.src, prefix_key)), &parsed.src, port, protocol)
}

/// Counts a decision, samples what was (or would have been) denied, and says whether
/// the packet is dropped.
#[inline(always)]
fn act(decision: Decision, src: &Addr, port: u16, protocol: u8) -> Verdict {
    match decision {
        Decision::Ignore => Verdict::NOT_JUDGED,
        Decision::Pass(counter) => {
            count_gate(counter);
            if counter == GATE_WOULD_DROP
                || counter == GATE_WOULD_DROP_FRAGMENT
                || counter == GATE_WOULD_DROP_HEADER_CHAIN
            {
                sample(src, port, protocol, false);
            }
            Verdict::judged(counter, false)
        }
        Decision::Drop(counter) => {
            count_gate(counter);
            sample(src, port, protocol, true);
            Verdict::judged(counter, true)
        }
    }
}

/// What a frame is to the gate.
enum Located {
    /// For TCP or UDP port `port`.
    Ports { protocol: u8, port: u16 },
    /// Not for a TCP or UDP port (ICMP, another protocol, a later fragment), or a frame
    /// the kernel drops itself (a header that does not hold together or is cut short):
    /// not the gate's business.
    NotPorts,
    /// For a port the gate cannot know.
    Unjudgeable(Unjudgeable),
}

/// IPv6 extension headers the walk goes through before it calls a chain too long, and
/// how deep into the frame it looks (bounds for the verifier, beyond real traffic).
const MAX_EXTENSION_HEADERS: usize = 8;
const MAX_CHAIN_END: usize = 512;
/// The more-fragments flag of IPv4 (flags and offset) and of the IPv6 fragment header.
const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
const IPV6_MORE_FRAGMENTS: u16 = 0x0001;

/// Walks a frame the rewrite's parser could not read whole, as the host's kernel would
/// to deliver it, and says which port it is for. Writes its source into `record.src`.
#[inline(always)]
fn locate<P: Packet>(packet: &P, record: &mut IpPacket) -> Located {
    let Some(eth) = packet.read::<EthHdr>(0) else { return Located::NotPorts };
    let mut ether_type = u16::from_be(eth.ether_type);
    let mut l3 = EthHdr::LEN;
    if ether_type == ETH_P_8021Q {
        let Some(vlan) = packet.read::<VlanHdr>(l3) else { return Located::NotPorts };
        ether_type = u16::from_be(vlan.ether_type);
        l3 += VlanHdr::LEN;
    }
    match ether_type {
        ETH_P_IP => locate_ipv4(packet, l3, record),
        ETH_P_IPV6 => locate_ipv6(packet, l3, record),
        _ => Located::NotPorts,
    }
}

#[inline(always)]
fn locate_ipv4<P: Packet>(packet: &P, l3: usize, record: &mut IpPacket) -> Located {
    let Some(ip) = packet.read::<Ipv4Hdr>(l3) else { return Located::NotPorts };
    let header_len = usize::from(ip.vihl & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes(ip.tot_len));
    // ip_rcv drops these itself.
    if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || total_len < header_len || l3 + total_len > packet.len() {
        return Located::NotPorts;
    }
    let frags = u16::from_be_bytes(ip.frags);
    if frags & IPV4_FRAGMENT_OFFSET != 0 {
        return Located::NotPorts;
    }
    record.src = Addr::from_v4(ip.src_addr);
    ports_at(packet, ip.proto, l3 + header_len, l3 + total_len, frags & IPV4_MORE_FRAGMENTS != 0)
}

#[inline(always)]
fn locate_ipv6<P: Packet>(packet: &P, l3: usize, record: &mut IpPacket) -> Located {
    let Some(ip) = packet.read::<Ipv6Hdr>(l3) else { return Located::NotPorts };
    if ip.vcf[0] >> 4 != 6 {
        return Located::NotPorts;
    }
    // A payload length of 0 is a jumbogram's: the datagram ends with the frame.
    let payload_len = usize::from(u16::from_be_bytes(ip.payload_len));
    let end = if payload_len == 0 { packet.len() } else { l3 + Ipv6Hdr::LEN + payload_len };
    if end > packet.len() {
        return Located::NotPorts;
    }
    record.src = Addr { octets: ip.src_addr };
    let mut next_header = ip.next_hdr;
    let mut offset = l3 + Ipv6Hdr::LEN;
    let mut fragment = false;
    for _ in 0..MAX_EXTENSION_HEADERS {
        let Some(header) = packet.read::<[u8; 4]>(offset).filter(|_| offset + 4 <= end) else {
            // The chain is cut short: a first fragment without its whole chain, or a
            // datagram the kernel drops.
            return cut_short(fragment, next_header);
        };
        match next_header {
            IPV6_HOP_BY_HOP | IPV6_DESTINATION_OPTIONS | IPV6_ROUTING => {
                offset += (usize::from(header[1]) + 1) * 8;
            }
            IPV6_AUTHENTICATION => offset += (usize::from(header[1]) + 2) * 4,
            IPV6_FRAGMENT => {
                let offset_and_flags = u16::from_be_bytes([header[2], header[3]]);
                if offset_and_flags & IPV6_FRAGMENT_OFFSET != 0 {
                    return Located::NotPorts;
                }
                // Offset 0 without more fragments is an atomic fragment: a whole datagram.
                fragment |= offset_and_flags & IPV6_MORE_FRAGMENTS != 0;
                offset += 8;
            }
            _ => return ports_at(packet, next_header, offset, end, fragment),
        }
        next_header = header[0];
        if offset > MAX_CHAIN_END {
            return Located::Unjudgeable(Unjudgeable::HeaderChain);
        }
    }
    if is_extension_header(next_header) {
        return Located::Unjudgeable(Unjudgeable::HeaderChain);
    }
    ports_at(packet, next_header, offset, end, fragment)
}

#[inline(always)]
fn is_extension_header(next_header: u8) -> bool {
    matches!(
        next_header,
        IPV6_HOP_BY_HOP | IPV6_DESTINATION_OPTIONS | IPV6_ROUTING | IPV6_AUTHENTICATION | IPV6_FRAGMENT
    )
}

/// A header chain cut by the datagram's end before the transport ports.
#[inline(always)]
fn cut_short(fragment: bool, next_header: u8) -> Located {
    let may_carry_ports = is_extension_header(next_header) || next_header == IPPROTO_TCP || next_header == IPPROTO_UDP;
    if fragment && may_carry_ports { Located::Unjudgeable(Unjudgeable::Fragment) } else { Located::NotPorts }
}

/// The ports of a TCP or UDP header at `l4`, if the datagram (which ends at `end`)
/// holds them. Only the first four bytes count: the host's stack needs no more to find
/// the socket of a datagram it reassembles, and a UDP length field of 0 or a TCP data
/// offset past the fragment's end do not stop a reassembled datagram from arriving.
#[inline(always)]
fn ports_at<P: Packet>(packet: &P, protocol: u8, l4: usize, end: usize, fragment: bool) -> Located {
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return Located::NotPorts;
    }
    match packet.read::<[u8; 4]>(l4) {
        Some(ports) if l4 + 4 <= end => Located::Ports { protocol, port: u16::from_be_bytes([ports[2], ports[3]]) },
        _ => cut_short(fragment, protocol),
    }
}

/// Writes a sample of a denied packet, if a `gate log` reader is there and this CPU
/// wrote none in the last `SAMPLE_INTERVAL_NS`. A full ring loses the sample: the
/// counters have the packet already.
#[inline(always)]
fn sample(src: &Addr, port: u16, protocol: u8, dropped: bool) {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if GATE_LOG_LEASE.get(0).is_none_or(|until| now >= *until) {
        return;
    }
    let Some(last) = per_cpu::slot(&GATE_SAMPLED_AT, 0) else { return };
    if now.saturating_sub(*last) < SAMPLE_INTERVAL_NS {
        return;
    }
    *last = now;
    let Some(mut slot) = GATE_LOG.reserve::<GateSample>(0) else { return };
    let record = slot.as_mut_ptr();
    // SAFETY: the reserved slot is ours until submitted; every field is written first.
    unsafe {
        (*record).time_ns = now;
        (*record).src = *src;
        (*record).dst_port = port;
        (*record).protocol = protocol;
        (*record).dropped = u8::from(dropped);
        (*record).reserved = 0;
    }
    slot.submit(0);
}

/// Where `src` stands: the mapping table's REAL addresses and prefixes make the fleet.
#[inline(always)]
fn source(src: &Addr, prefix_key: &mut PrefixKey) -> Source {
    let filter = AddressFilter::read();
    if filter.may_be_mapped::<INGRESS, ADDRESS_KEYS>(src) && address_table::<INGRESS>().get_ptr(src).is_some() {
        return Source::Member;
    }
    *prefix_key = PrefixKey::host(*src);
    if tables_in_use().prefixes != 0
        && filter.may_match_prefix::<INGRESS>(src)
        && prefix_entry::<INGRESS>(prefix_key).is_some()
    {
        return Source::Member;
    }
    if lpm_lookup(&GATE_ALLOW, prefix_key).is_some() {
        return Source::AllowedPrefix;
    }
    Source::Unknown
}
