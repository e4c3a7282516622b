//! The gatekeeper at ingress (see `rewrite_common::gate`): a packet to a protected
//! TCP or UDP port passes only from a fleet member (a REAL address of the mapping
//! table, or inside a REAL prefix) or from an allow prefix. It runs before the rewrite,
//! on the addresses as they arrived, in XDP where the device has it and in TC
//! otherwise. Counted per reason in a per-CPU map; never logged per packet.
//!
//! Packets without ports (ICMP, fragments after the first) are not the gate's
//! business: a datagram whose first fragment was dropped cannot be reassembled anyway.
//! Denied packets are sampled into a ring buffer while a `gate log` reader is there.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key};
use rewrite_common::{
    counters::INGRESS,
    gate::{
        Decision, GATE_DROPPED, GateSample, GateSettings, MODE_OFF, PORT_OPEN, SAMPLE_INTERVAL_NS, Source, decide,
        effective_class, port_slot,
    },
    maps::Addr,
};

use crate::{
    maps::{
        GATE_ALLOW, GATE_LOG, GATE_LOG_LEASE, GATE_PORTS, GATE_SAMPLED_AT, GATE_SETTINGS, address_table, count_gate,
        prefix_entry, tables_in_use,
    },
    parse::IpPacket,
};

/// Whether the gate drops the parsed packet. `prefix_key` is working memory for the
/// source's prefix lookups.
#[inline(always)]
pub fn drops(parsed: &IpPacket, prefix_key: &mut Key<Addr>) -> bool {
    let settings: GateSettings = match GATE_SETTINGS.get(0) {
        Some(settings) if settings.mode != MODE_OFF => *settings,
        _ => return false,
    };
    if !parsed.has_ports() {
        return false;
    }
    let protocol = parsed.protocol;
    let port = u16::from_be_bytes(parsed.dst_port);
    let Some(slot) = port_slot(protocol, port) else { return false };
    let class = effective_class(&settings, protocol, port, GATE_PORTS.get(slot).copied().unwrap_or(PORT_OPEN));
    // Most packets go to open ports: they cost no source lookup.
    if class == PORT_OPEN {
        return false;
    }
    match decide(&settings, class, source(&parsed.src, prefix_key)) {
        Decision::Ignore => false,
        Decision::Pass(counter) => {
            count_gate(counter);
            if counter == rewrite_common::gate::GATE_WOULD_DROP {
                sample(&parsed.src, port, protocol, false);
            }
            false
        }
        Decision::Drop(counter) => {
            count_gate(counter);
            sample(&parsed.src, port, protocol, counter == GATE_DROPPED);
            true
        }
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
    let Some(last) = GATE_SAMPLED_AT.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot; nothing else runs on this CPU meanwhile.
    unsafe {
        if now.saturating_sub(*last) < SAMPLE_INTERVAL_NS {
            return;
        }
        *last = now;
    }
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
fn source(src: &Addr, prefix_key: &mut Key<Addr>) -> Source {
    if address_table::<INGRESS>().get_ptr(src).is_some() {
        return Source::Member;
    }
    *prefix_key = Key::new(128, *src);
    if tables_in_use().prefixes != 0 && prefix_entry::<INGRESS>(prefix_key).is_some() {
        return Source::Member;
    }
    if GATE_ALLOW.get(prefix_key).is_some() {
        return Source::AllowedPrefix;
    }
    Source::Unknown
}
