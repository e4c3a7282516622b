//! The rewrite itself: parse, look each side of the packet up in the direction's
//! tables (port-scoped first, then address, then prefix:
//! `rewrite_common::mapping::plan_rewrite` states the same order for the reference
//! model), and patch it at once.

use aya_ebpf::maps::lpm_trie::Key;
use rewrite_common::{
    counters::{FRAGMENT_UNMATCHED, HELPER_ERROR, NO_MATCH, REWRITTEN},
    maps::{Addr, Counts, Endpoint, TablesInUse},
};

use crate::{
    maps::{
        Headers, MATCHED_ADDRESS, MATCHED_NONE, MATCHED_PORT, MATCHED_PREFIX, Scratch, SidePlan, address_table,
        count as count_outcome, count_in_entry, headers, port_table, prefix_entry, scratch, tables_in_use,
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
    count_outcome(DIRECTION, outcome);
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
        let rewritten = rewrite_sides::<P, DIRECTION>(packet, outer, &in_use, COUNT)?;
        return Ok(outcome(rewritten, outer));
    };
    let outer_rewritten = rewrite_sides::<P, DIRECTION>(packet, outer, &in_use, COUNT)?;
    // The packet an ICMP error quotes (destination unreachable, fragmentation needed,
    // packet too big, time exceeded) travelled the other way, as the reply to this one:
    // the same table applies to it, side by side, so that the sender's stack matches
    // the error to its socket. Path MTU discovery depends on it.
    let icmp_check = quoted_l3 - ICMP_HEADER + ICMP_CHECK;
    *quoted = match parse_quoted(
        packet,
        quoted_l3,
        outer.ipv4_check.is_none(),
        icmp_check,
        usize::from(outer.datagram_end),
    ) {
        Some(parsed) => parsed,
        None => return Ok(outcome(outer_rewritten, outer)),
    };
    // Not counted against the mappings: the ICMP error is not their traffic.
    let quoted_rewritten = rewrite_sides::<P, DIRECTION>(packet, quoted, &in_use, DO_NOT_COUNT)?;
    Ok(outcome(outer_rewritten || quoted_rewritten, outer))
}

/// Whether a lookup counts the packet in the entry it matches: only the packet's own
/// headers do, not the packet quoted inside an ICMP error.
const COUNT: bool = true;
const DO_NOT_COUNT: bool = false;

/// Looks both sides up, then rewrites them. Deciding first and patching after keeps one
/// patch site per side, rather than one per table, which the 512-byte stack needs.
#[inline(always)]
fn rewrite_sides<P: Packet, const DIRECTION: u32>(
    packet: &mut P,
    parsed: &IpPacket,
    in_use: &TablesInUse,
    count: bool,
) -> Result<bool, u32> {
    let scratch = scratch().ok_or(NO_MATCH)?;
    // Counted as the program saw it: the whole frame.
    let bytes = if count { packet.len() as u64 } else { 0 };
    let src_matched = look_up_side::<DIRECTION>(scratch, parsed, in_use, SOURCE, bytes);
    let dst_matched = look_up_side::<DIRECTION>(scratch, parsed, in_use, DESTINATION, bytes);
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
/// becomes to `scratch.plans[side]`. Returns whether it matched. When `bytes` is not
/// zero, counts the packet (of that many bytes) in the entry that matched. Keys live in
/// the per-CPU scratch area rather than on the stack: for both sides they would not fit
/// in the 512-byte BPF stack.
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
    bytes: u64,
) -> bool {
    let addr = if side == DESTINATION { &parsed.dst } else { &parsed.src };
    let plan = &mut scratch.plans[side];
    plan.matched = MATCHED_NONE;
    let counts: *mut Counts;
    if let Some((ports, _)) = parsed.ports
        && in_use.ports != 0
    {
        let port = if side == DESTINATION { ports.dst } else { ports.src };
        scratch.endpoint = Endpoint::new(*addr, port, ports.protocol);
        if let Some(entry) = port_table::<DIRECTION>().get_ptr_mut(&scratch.endpoint) {
            // SAFETY: a pointer to a live map value, read at once.
            unsafe {
                plan.address = (*entry).endpoint.addr;
                plan.port = (*entry).endpoint.port;
                counts = &raw mut (*entry).counts;
            }
            plan.matched = MATCHED_PORT;
            count(counts, bytes);
            return true;
        }
    }
    if let Some(entry) = address_table::<DIRECTION>().get_ptr_mut(addr) {
        // SAFETY: as above.
        unsafe {
            plan.address = (*entry).addr;
            counts = &raw mut (*entry).counts;
        }
        plan.matched = MATCHED_ADDRESS;
        count(counts, bytes);
        return true;
    }
    if in_use.prefixes == 0 {
        return false;
    }
    // All 128 bits of the 16-byte form take part; an IPv4 prefix is stored as 96 + N.
    scratch.prefix_key = Key::new(128, *addr);
    if let Some(entry) = prefix_entry::<DIRECTION>(&scratch.prefix_key) {
        // SAFETY: as above.
        unsafe {
            plan.address = (*entry).target.translate(addr);
            counts = &raw mut (*entry).counts;
        }
        plan.matched = MATCHED_PREFIX;
        count(counts, bytes);
        return true;
    }
    false
}

/// Counts a packet of `bytes` in an entry's counters, unless `bytes` is zero (a packet
/// that is not counted).
#[inline(always)]
fn count(counts: *mut Counts, bytes: u64) {
    if bytes != 0 {
        // SAFETY: `counts` points into the map value the lookup just returned, which the
        // kernel keeps for the program's run.
        unsafe { count_in_entry(counts, bytes) };
    }
}

/// Patches one side of the packet as its plan says.
#[inline(always)]
fn apply_side<P: Packet>(packet: &mut P, parsed: &IpPacket, plan: &SidePlan, side: usize) -> Result<(), u32> {
    let (old, address_offset) =
        if side == DESTINATION { (&parsed.dst, parsed.dst_offset) } else { (&parsed.src, parsed.src_offset) };
    replace_address(packet, parsed, address_offset, old, &plan.address)?;
    if plan.matched != MATCHED_PORT {
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
