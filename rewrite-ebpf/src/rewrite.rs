//! The rewrite itself: parse, look each side of the packet up in the direction's
//! tables (port-scoped first, then address, then prefix:
//! `rewrite_common::mapping::plan_rewrite` states the same order for the reference
//! model), and patch it at once.

use aya_ebpf::maps::lpm_trie::Key;
use rewrite_common::{
    counters::{FRAGMENT_UNMATCHED, HELPER_ERROR, NO_MATCH, REWRITTEN},
    maps::{Addr, Endpoint, TablesInUse},
};

use crate::{
    maps::{Headers, address_table, count, headers, port_table, prefix_table, scratch, tables_in_use},
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
        let rewritten = rewrite_sides::<P, DIRECTION>(packet, outer, &in_use)?;
        return Ok(outcome(rewritten, outer));
    };
    let outer_rewritten = rewrite_sides::<P, DIRECTION>(packet, outer, &in_use)?;
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

#[inline(always)]
fn rewrite_sides<P: Packet, const DIRECTION: u32>(
    packet: &mut P,
    parsed: &IpPacket,
    in_use: &TablesInUse,
) -> Result<bool, u32> {
    let src_rewritten = rewrite_side::<P, DIRECTION>(packet, parsed, in_use, false)?;
    let dst_rewritten = rewrite_side::<P, DIRECTION>(packet, parsed, in_use, true)?;
    Ok(src_rewritten || dst_rewritten)
}

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

/// Looks one side (source or destination address, with its port) up and rewrites it.
/// Returns whether it matched. Lookup keys and the translated address are built in a
/// per-CPU scratch area rather than on the stack: inlined twice, they would not fit in
/// the 512-byte BPF stack.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the keys live in the scratch area; passed by value they would be copied onto the stack"
)]
fn rewrite_side<P: Packet, const DIRECTION: u32>(
    packet: &mut P,
    parsed: &IpPacket,
    in_use: &TablesInUse,
    destination: bool,
) -> Result<bool, u32> {
    let (addr, address_offset) =
        if destination { (&parsed.dst, parsed.dst_offset) } else { (&parsed.src, parsed.src_offset) };
    // The scratch slot always exists (a one-entry array); without it there is nothing
    // safe to do but leave the packet alone.
    let scratch = scratch().ok_or(NO_MATCH)?;
    if let Some((ports, source_port_offset)) = parsed.ports
        && in_use.ports != 0
    {
        let (port, port_offset) = if destination {
            (ports.dst, source_port_offset + DST_PORT_AFTER_SRC)
        } else {
            (ports.src, source_port_offset)
        };
        scratch.endpoint = Endpoint::new(*addr, port, ports.protocol);
        // SAFETY: the value is copied out at once, before anything can delete it.
        if let Some(target) = unsafe { port_table::<DIRECTION>().get(&scratch.endpoint) } {
            scratch.target = *target;
            replace_address(packet, parsed, address_offset, addr, &scratch.target.addr)?;
            if scratch.target.port != port {
                packet
                    .replace_port(port_offset, parsed.l4, icmp_check(parsed), port, scratch.target.port)
                    .map_err(|()| HELPER_ERROR)?;
            }
            return Ok(true);
        }
    }
    // SAFETY: as above.
    if let Some(target) = unsafe { address_table::<DIRECTION>().get(addr) } {
        scratch.address = *target;
        replace_address(packet, parsed, address_offset, addr, &scratch.address)?;
        return Ok(true);
    }
    if in_use.prefixes == 0 {
        return Ok(false);
    }
    // All 128 bits of the 16-byte form take part; an IPv4 prefix is stored as 96 + N.
    scratch.prefix_key = Key::new(128, *addr);
    if let Some(target) = prefix_table::<DIRECTION>().get(&scratch.prefix_key) {
        scratch.address = target.translate(addr);
        replace_address(packet, parsed, address_offset, addr, &scratch.address)?;
        return Ok(true);
    }
    Ok(false)
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
