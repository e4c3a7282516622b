//! The rewrite itself: parse, look each side of the packet up in the direction's
//! tables (port-scoped first, then address, then prefix:
//! `rewrite_common::mapping::plan_rewrite` states the same order for the reference
//! model), and patch it at once.

use aya_ebpf::maps::lpm_trie::Key;
use rewrite_common::{
    counters::{EGRESS, FRAGMENT_UNMATCHED, HELPER_ERROR, NO_MATCH, REWRITTEN},
    maps::{Addr, Endpoint, KIND_PORT, MappingId, PrefixTarget, TablesInUse},
};

use crate::{
    maps::{
        Headers, Scratch, SidePlan, address_table, count, count_mapping, headers, port_table, prefix_table, scratch,
        tables_in_use,
    },
    packet::Packet,
    parse::{IpPacket, parse, parse_quoted},
};

/// Offset of the destination port from the source port in TCP and UDP headers.
const DST_PORT_AFTER_SRC: usize = 2;
/// Offset of the checksum in an ICMP header, and the header's length before a quote.
const ICMP_CHECK: usize = 2;
const ICMP_HEADER: usize = 8;

/// What a program does with ICMP errors, whose quoted packet needs rewriting too.
/// XDP leaves them alone: the quote's offsets would have to travel through memory,
/// where the verifier loses their bounds for direct packet access, and its stack
/// would not hold a second header. A small TC program beside it rewrites them.
pub const ALL_PACKETS: u32 = 0;
pub const ALL_BUT_ICMP_ERRORS: u32 = 1;
pub const ONLY_ICMP_ERRORS: u32 = 2;

/// An outcome that means "another program handles this packet": not counted here.
const DEFERRED: u32 = u32::MAX;

/// Rewrites `packet` for `DIRECTION` and counts the outcome. The direction is a
/// constant so that each program refers to its own maps directly: choosing a map
/// pointer at run time makes the compiler shuffle it in ways the verifier rejects.
/// Never drops: every outcome, including errors, lets the packet pass. Returns `Err`
/// only when a helper failed (already counted), so the caller can fall back to its
/// default action.
#[inline(always)]
pub fn rewrite_and_count<P: Packet, const DIRECTION: u32, const PACKETS: u32>(packet: &mut P) -> Result<(), ()> {
    let outcome = match rewrite::<P, DIRECTION, PACKETS>(packet) {
        Ok(outcome) | Err(outcome) => outcome,
    };
    if outcome == DEFERRED {
        return Ok(());
    }
    count(DIRECTION, outcome);
    if outcome == HELPER_ERROR { Err(()) } else { Ok(()) }
}

#[inline(always)]
fn rewrite<P: Packet, const DIRECTION: u32, const PACKETS: u32>(packet: &mut P) -> Result<u32, u32> {
    let in_use = tables_in_use();
    // The parsed headers live in the per-CPU area: two of them do not fit the stack.
    let Headers { outer, quoted } = headers().ok_or(NO_MATCH)?;
    *outer = parse(packet).map_err(|outcome| if PACKETS == ONLY_ICMP_ERRORS { DEFERRED } else { outcome })?;
    if PACKETS == ALL_BUT_ICMP_ERRORS && outer.quoted != 0 {
        return Ok(DEFERRED);
    }
    let Some(quoted_l3) = (outer.quoted != 0).then_some(usize::from(outer.quoted)) else {
        if PACKETS == ONLY_ICMP_ERRORS {
            return Ok(DEFERRED);
        }
        let rewritten = rewrite_outer::<P, DIRECTION>(packet, outer, &in_use)?;
        return Ok(outcome(rewritten, outer));
    };
    let outer_rewritten = rewrite_outer::<P, DIRECTION>(packet, outer, &in_use)?;
    // The packet an ICMP error quotes (destination unreachable, fragmentation needed,
    // packet too big, time exceeded) travelled the other way, as the reply to this one:
    // the same table applies to it, side by side, so that the sender's stack matches
    // the error to its socket. Path MTU discovery depends on it.
    let icmp_check = quoted_l3 - ICMP_HEADER + ICMP_CHECK;
    *quoted = match parse_quoted(packet, quoted_l3, outer.ipv4_check.is_none(), icmp_check) {
        Some(parsed) => parsed,
        None => return Ok(outcome(outer_rewritten, outer)),
    };
    let quoted_rewritten = rewrite_sides::<P, DIRECTION>(packet, quoted, &in_use)?;
    Ok(outcome(outer_rewritten || quoted_rewritten, outer))
}

/// Rewrites the packet's own two sides and counts the packet against the mappings they
/// matched. (The sides of a quoted packet are not counted: the ICMP error is not the
/// mapping's traffic.)
#[inline(always)]
fn rewrite_outer<P: Packet, const DIRECTION: u32>(
    packet: &mut P,
    parsed: &IpPacket,
    in_use: &TablesInUse,
) -> Result<bool, u32> {
    let rewritten = rewrite_sides::<P, DIRECTION>(packet, parsed, in_use)?;
    if rewritten {
        let bytes = packet.len() as u64;
        let scratch = scratch().ok_or(NO_MATCH)?;
        let Scratch { plans, first_count, .. } = scratch;
        for plan in plans.iter() {
            if plan.mapping.kind != 0 {
                count_mapping::<DIRECTION>(&plan.mapping, bytes, first_count);
            }
        }
    }
    Ok(rewritten)
}

/// Looks both sides up, then rewrites them. Deciding first and patching after keeps one
/// patch site per side, rather than one per table, which the 512-byte stack needs.
#[inline(always)]
fn rewrite_sides<P: Packet, const DIRECTION: u32>(
    packet: &mut P,
    parsed: &IpPacket,
    in_use: &TablesInUse,
) -> Result<bool, u32> {
    let scratch = scratch().ok_or(NO_MATCH)?;
    let src_matched = look_up_side::<DIRECTION>(scratch, parsed, in_use, SOURCE);
    let dst_matched = look_up_side::<DIRECTION>(scratch, parsed, in_use, DESTINATION);
    if src_matched {
        apply_side(packet, parsed, &scratch.plans[SOURCE], SOURCE)?;
    }
    if dst_matched {
        apply_side(packet, parsed, &scratch.plans[DESTINATION], DESTINATION)?;
    }
    Ok(src_matched || dst_matched)
}

/// Indices of [`Scratch::plans`].
const SOURCE: usize = 0;
const DESTINATION: usize = 1;

#[inline(always)]
fn outcome(rewritten: bool, parsed: &IpPacket) -> u32 {
    match (rewritten, parsed.later_fragment) {
        (true, _) => REWRITTEN,
        // Without ports a later fragment cannot match a port-scoped mapping; count it
        // apart, since it may belong to such a flow.
        (false, true) => FRAGMENT_UNMATCHED,
        (false, false) => NO_MATCH,
    }
}

/// Looks one side (source or destination address, with its port) up and writes what it
/// becomes, and which mapping says so, to `scratch.plans[side]`. Returns whether it
/// matched. Keys and results live in the per-CPU scratch area rather than on the
/// stack: for both sides they would not fit in the 512-byte BPF stack.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the keys live in the scratch area; passed by value they would be copied onto the stack"
)]
fn look_up_side<const DIRECTION: u32>(
    scratch: &mut Scratch,
    parsed: &IpPacket,
    in_use: &TablesInUse,
    side: usize,
) -> bool {
    let addr = if side == DESTINATION { &parsed.dst } else { &parsed.src };
    let plan = &mut scratch.plans[side];
    plan.mapping.kind = 0;
    if let Some((ports, _)) = parsed.ports
        && in_use.ports != 0
    {
        let port = if side == DESTINATION { ports.dst } else { ports.src };
        scratch.endpoint = Endpoint::new(*addr, port, ports.protocol);
        // SAFETY: the value is copied out at once, before anything can delete it.
        if let Some(target) = unsafe { port_table::<DIRECTION>().get(&scratch.endpoint) } {
            plan.address = target.addr;
            plan.port = target.port;
            // A mapping is named by its VIRTUAL side: the key on egress, the target on
            // ingress.
            plan.mapping = MappingId::port(if DIRECTION == EGRESS { scratch.endpoint } else { *target });
            return true;
        }
    }
    // SAFETY: as above.
    if let Some(target) = unsafe { address_table::<DIRECTION>().get(addr) } {
        plan.address = *target;
        plan.mapping = MappingId::address(if DIRECTION == EGRESS { *addr } else { *target });
        return true;
    }
    if in_use.prefixes == 0 {
        return false;
    }
    // All 128 bits of the 16-byte form take part; an IPv4 prefix is stored as 96 + N.
    scratch.prefix_key = Key::new(128, *addr);
    if let Some(target) = prefix_table::<DIRECTION>().get(&scratch.prefix_key) {
        plan.address = target.translate(addr);
        let virtual_network =
            if DIRECTION == EGRESS { PrefixTarget::network_of(addr, target.prefix_len) } else { target.network };
        plan.mapping = MappingId::prefix(virtual_network, target.prefix_len);
        return true;
    }
    false
}

/// Patches one side of the packet as its plan says.
#[inline(always)]
fn apply_side<P: Packet>(packet: &mut P, parsed: &IpPacket, plan: &SidePlan, side: usize) -> Result<(), u32> {
    let (old, address_offset) =
        if side == DESTINATION { (&parsed.dst, parsed.dst_offset) } else { (&parsed.src, parsed.src_offset) };
    replace_address(packet, parsed, address_offset, old, &plan.address)?;
    if plan.mapping.kind != KIND_PORT {
        return Ok(());
    }
    let Some((ports, source_port_offset)) = parsed.ports else {
        return Ok(());
    };
    let (old_port, port_offset) = if side == DESTINATION {
        (ports.dst, source_port_offset + DST_PORT_AFTER_SRC)
    } else {
        (ports.src, source_port_offset)
    };
    if plan.port == old_port {
        return Ok(());
    }
    packet.replace_port(port_offset, parsed.l4, icmp_check(parsed), old_port, plan.port).map_err(|()| HELPER_ERROR)
}

#[inline(always)]
fn replace_address<P: Packet>(
    packet: &mut P,
    parsed: &IpPacket,
    offset: usize,
    old: &Addr,
    new: &Addr,
) -> Result<(), u32> {
    if old == new {
        return Ok(());
    }
    packet
        .replace_address(offset, parsed.ipv4_check, parsed.l4, icmp_check(parsed), old, new)
        .map_err(|()| HELPER_ERROR)
}

/// The ICMP checksum covering a quoted packet, if `parsed` is one.
#[inline(always)]
fn icmp_check(parsed: &IpPacket) -> Option<usize> {
    (parsed.icmp_check != 0).then_some(usize::from(parsed.icmp_check))
}
