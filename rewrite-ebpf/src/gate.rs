//! The gatekeeper at ingress (see `rewrite_common::gate`): a packet to a protected
//! TCP or UDP port passes only from a fleet member (a REAL address of the mapping
//! table, or inside a REAL prefix) or from an allow prefix. It runs before the rewrite,
//! on the addresses as they arrived, in XDP where the device has it and in TC
//! otherwise. Counted per reason in a per-CPU map; never logged per packet.
//!
//! Packets without ports (ICMP, fragments after the first) are not the gate's
//! business: a datagram whose first fragment was dropped cannot be reassembled anyway.

use rewrite_common::{
    counters::INGRESS,
    gate::{Decision, GateSettings, MODE_OFF, PORT_OPEN, Source, decide, effective_class, port_slot},
};

use crate::{
    maps::{
        GATE_ALLOW, GATE_PORTS, GATE_SETTINGS, address_table, count_gate, headers, prefix_entry, scratch, tables_in_use,
    },
    packet::Packet,
    parse::parse,
};

/// Whether the gate drops the packet.
#[inline(always)]
pub fn drops<P: Packet>(packet: &P) -> bool {
    let settings: GateSettings = match GATE_SETTINGS.get(0) {
        Some(settings) if settings.mode != MODE_OFF => *settings,
        _ => return false,
    };
    let Some(headers) = headers() else { return false };
    let Ok(parsed) = parse(packet) else { return false };
    headers.outer = parsed;
    let parsed = &headers.outer;
    let Some((ports, _)) = parsed.ports else { return false };
    let port = u16::from_be_bytes(ports.dst);
    let Some(slot) = port_slot(ports.protocol, port) else { return false };
    let class = effective_class(&settings, ports.protocol, port, GATE_PORTS.get(slot).copied().unwrap_or(PORT_OPEN));
    // Most packets go to open ports: they cost no source lookup.
    if class == PORT_OPEN {
        return false;
    }
    match decide(&settings, class, source(&parsed.src)) {
        Decision::Ignore => false,
        Decision::Pass(counter) => {
            count_gate(counter);
            false
        }
        Decision::Drop(counter) => {
            count_gate(counter);
            true
        }
    }
}

/// Where `src` stands: the mapping table's REAL addresses and prefixes make the fleet.
#[inline(always)]
fn source(src: &rewrite_common::maps::Addr) -> Source {
    if address_table::<INGRESS>().get_ptr(src).is_some() {
        return Source::Member;
    }
    let Some(scratch) = scratch() else { return Source::Unknown };
    scratch.prefix_key = aya_ebpf::maps::lpm_trie::Key::new(128, *src);
    if tables_in_use().prefixes != 0 && prefix_entry::<INGRESS>(&scratch.prefix_key).is_some() {
        return Source::Member;
    }
    if GATE_ALLOW.get(&scratch.prefix_key).is_some() {
        return Source::AllowedPrefix;
    }
    Source::Unknown
}
