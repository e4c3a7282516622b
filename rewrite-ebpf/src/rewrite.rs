//! The rewrite itself: look each side of a parsed packet up in the direction's tables
//! (port-scoped first, then address, then prefix: `rewrite_common::mapping::plan_rewrite`
//! states the same order for the reference model), then patch it.
//!
//! Two stages, each run from its own programs so that no single program is more than
//! an old verifier will walk:
//! * [`rewrite_packet`], in the XDP, TC ingress and TC egress programs, for every packet
//!   but ICMP errors, which TC hands to the ICMP-error programs with a tail call and
//!   XDP leaves to the TC program beside it;
//! * [`rewrite_icmp_error`], in those programs, for an ICMP error and the packet it quotes.

use rewrite_common::{
    counters::{FRAGMENT_UNMATCHED, HELPER_ERROR, NO_MATCH, REWRITTEN},
    filter::{ADDRESS_KEYS, PORT_KEYS},
    maps::{Counts, Endpoint, PrefixKey, TablesInUse},
};

use crate::{
    copy::copy_addr,
    maps::{
        AddressFilter, Lookup, MATCHED_ADDRESS, MATCHED_NONE, MATCHED_PORT, MATCHED_PREFIX, Scratch, SidePlan,
        address_table, count_in_entry, port_table, prefix_entry,
    },
    packet::Packet,
    parse::{DST_PORT_AFTER_SRC, parse},
    parsed::IpPacket,
    quoted::parse_quoted,
};

/// Rewrites the parsed packet `scratch.outer` for `DIRECTION` and returns the outcome
/// to count. The direction is a constant so that each program refers to its own maps
/// directly: choosing a map pointer at run time makes the compiler shuffle it in ways
/// the verifier rejects. The caller has handed ICMP errors elsewhere.
#[inline(always)]
pub fn rewrite_packet<P: Packet, const DIRECTION: u32>(
    packet: &mut P,
    scratch: &mut Scratch,
    in_use: &TablesInUse,
) -> u32 {
    let Scratch { outer, lookup, .. } = scratch;
    match rewrite_sides::<P, DIRECTION>(packet, outer, lookup, in_use, COUNT) {
        Ok(rewritten) => outcome(rewritten, outer),
        Err(outcome) => outcome,
    }
}

/// Parses the packet and, if it is an ICMP error, rewrites it and the packet it quotes
/// for `DIRECTION`. Returns the outcome to count, or `None` for a packet that is not an
/// ICMP error (another program counts it).
///
/// The packet an ICMP error quotes (destination unreachable, fragmentation needed,
/// packet too big, time exceeded) travelled the other way, as the reply to this one:
/// the same table applies to it, side by side, so that the sender's stack matches the
/// error to its socket. Path MTU discovery depends on it.
#[inline(always)]
pub fn rewrite_icmp_error<P: Packet, const DIRECTION: u32>(
    packet: &mut P,
    scratch: &mut Scratch,
    in_use: &TablesInUse,
) -> Option<u32> {
    let Scratch { outer, quoted, lookup, quoted_lookup, .. } = scratch;
    if parse(packet, outer).is_err() || outer.quoted == 0 {
        return None;
    }
    let outer_rewritten = match rewrite_sides::<P, DIRECTION>(packet, outer, lookup, in_use, COUNT) {
        Ok(rewritten) => rewritten,
        Err(outcome) => return Some(outcome),
    };
    if !parse_quoted(packet, outer, quoted) {
        return Some(outcome(outer_rewritten, outer));
    }
    // Not counted against the mappings: the ICMP error is not their traffic.
    Some(match rewrite_sides::<P, DIRECTION>(packet, quoted, quoted_lookup, in_use, DO_NOT_COUNT) {
        Ok(quoted_rewritten) => outcome(outer_rewritten || quoted_rewritten, outer),
        Err(outcome) => outcome,
    })
}

/// Whether a lookup counts the packet in the entry it matches: only the packet's own
/// headers do, not the packet quoted inside an ICMP error.
const COUNT: bool = true;
const DO_NOT_COUNT: bool = false;

/// Looks both sides up, then rewrites them. Deciding first and patching after keeps one
/// patch site per side, rather than one per table. Returns whether a side changed, or
/// the `HELPER_ERROR` outcome.
#[inline(always)]
fn rewrite_sides<P: Packet, const DIRECTION: u32>(
    packet: &mut P,
    parsed: &IpPacket,
    lookup: &mut Lookup,
    in_use: &TablesInUse,
    count: bool,
) -> Result<bool, u32> {
    // Counted as the program saw it: the whole frame.
    let bytes = if count { packet.len() as u64 } else { 0 };
    let filter = AddressFilter::read();
    let src_matched = look_up_side::<DIRECTION>(lookup, parsed, in_use, filter, SOURCE, bytes);
    let dst_matched = look_up_side::<DIRECTION>(lookup, parsed, in_use, filter, DESTINATION, bytes);
    if src_matched {
        apply_side(packet, parsed, &lookup.plans[SOURCE], SOURCE).map_err(|()| HELPER_ERROR)?;
    }
    if dst_matched {
        apply_side(packet, parsed, &lookup.plans[DESTINATION], DESTINATION).map_err(|()| HELPER_ERROR)?;
    }
    Ok(src_matched || dst_matched)
}

/// Indices of [`Lookup::plans`].
const SOURCE: usize = 0;
const DESTINATION: usize = 1;

#[inline(always)]
fn outcome(rewritten: bool, parsed: &IpPacket) -> u32 {
    match (rewritten, parsed.later_fragment != 0) {
        (true, _) => REWRITTEN,
        // Without ports a later fragment cannot match a port-scoped mapping; count it
        // apart, since it may belong to such a flow.
        (false, true) => FRAGMENT_UNMATCHED,
        (false, false) => NO_MATCH,
    }
}

/// Looks one side (source or destination address, with its port) up and writes what it
/// becomes to `lookup.plans[side]`. Returns whether it matched. When `bytes` is not
/// zero, counts the packet (of that many bytes) in the entry that matched. The keys are
/// the parsed addresses in map memory, or built in the lookup area: on the stack they
/// would not fit beside everything else.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the keys live in the scratch area; passed by value they would be copied onto the stack"
)]
fn look_up_side<const DIRECTION: u32>(
    lookup: &mut Lookup,
    parsed: &IpPacket,
    in_use: &TablesInUse,
    filter: AddressFilter,
    side: usize,
    bytes: u64,
) -> bool {
    let addr = if side == DESTINATION { &parsed.dst } else { &parsed.src };
    let plan = &mut lookup.plans[side];
    plan.matched = MATCHED_NONE;
    let counts: *mut Counts;
    // The filter rules out most addresses that a map does not hold, without a lookup.
    if parsed.has_ports() && in_use.ports != 0 && filter.may_be_mapped::<DIRECTION, PORT_KEYS>(addr) {
        let port = if side == DESTINATION { parsed.dst_port } else { parsed.src_port };
        lookup.endpoint = Endpoint::new(*addr, port, parsed.protocol);
        if let Some(entry) = port_table::<DIRECTION>().get_ptr_mut(&lookup.endpoint) {
            // SAFETY: a pointer to a live map value, read at once.
            unsafe {
                copy_addr(&mut plan.address, &raw const (*entry).endpoint.addr);
                plan.port = (*entry).endpoint.port;
                counts = &raw mut (*entry).counts;
            }
            plan.matched = MATCHED_PORT;
            count(counts, bytes);
            return true;
        }
    }
    if filter.may_be_mapped::<DIRECTION, ADDRESS_KEYS>(addr)
        && let Some(entry) = address_table::<DIRECTION>().get_ptr_mut(addr)
    {
        // SAFETY: as above.
        unsafe {
            copy_addr(&mut plan.address, &raw const (*entry).addr);
            counts = &raw mut (*entry).counts;
        }
        plan.matched = MATCHED_ADDRESS;
        count(counts, bytes);
        return true;
    }
    if in_use.prefixes == 0 || !filter.may_match_prefix::<DIRECTION>(addr) {
        return false;
    }
    // All 128 bits of the 16-byte form take part; an IPv4 prefix is stored as 96 + N.
    lookup.prefix_key = PrefixKey::host(*addr);
    if let Some(entry) = prefix_entry::<DIRECTION>(&lookup.prefix_key) {
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
fn apply_side<P: Packet>(packet: &mut P, parsed: &IpPacket, plan: &SidePlan, side: usize) -> Result<(), ()> {
    let (old, offset) =
        if side == DESTINATION { (&parsed.dst, parsed.dst_offset) } else { (&parsed.src, parsed.src_offset) };
    if *old != plan.address {
        packet.replace_address(parsed, offset, old, &plan.address)?;
    }
    if plan.matched != MATCHED_PORT || !parsed.has_ports() {
        return Ok(());
    }
    let (old_port, port_offset) = if side == DESTINATION {
        (parsed.dst_port, parsed.ports_offset + DST_PORT_AFTER_SRC)
    } else {
        (parsed.src_port, parsed.ports_offset)
    };
    if plan.port == old_port {
        return Ok(());
    }
    packet.replace_port(parsed, port_offset, old_port, plan.port)
}
