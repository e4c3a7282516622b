//! The rewrite itself: parse, look each side of the packet up in the direction's
//! tables (port-scoped first, then address: `rewrite_common::mapping::plan_rewrite`
//! states the same order for the reference model), and patch it at once.

use rewrite_common::{
    counters::{FRAGMENT_UNMATCHED, HELPER_ERROR, NO_MATCH, REWRITTEN},
    maps::{Addr, Endpoint},
};

use crate::{
    maps::{address_table, count, port_table},
    packet::Packet,
    parse::{IpPacket, parse},
};

/// Offset of the destination port from the source port in TCP and UDP headers.
const DST_PORT_AFTER_SRC: usize = 2;

/// Rewrites `packet` for `DIRECTION` and counts the outcome. The direction is a
/// constant so that each program refers to its own maps directly: choosing a map
/// pointer at run time makes the compiler shuffle it in ways the verifier rejects.
/// Never drops: every outcome, including errors, lets the packet pass. Returns `Err`
/// only when a helper failed (already counted), so the caller can fall back to its
/// default action.
#[inline(always)]
pub fn rewrite_and_count<P: Packet, const DIRECTION: u32>(packet: &mut P) -> Result<(), ()> {
    let outcome = match rewrite::<P, DIRECTION>(packet) {
        Ok(outcome) | Err(outcome) => outcome,
    };
    count(DIRECTION, outcome);
    if outcome == HELPER_ERROR { Err(()) } else { Ok(()) }
}

#[inline(always)]
fn rewrite<P: Packet, const DIRECTION: u32>(packet: &mut P) -> Result<u32, u32> {
    let parsed = parse(packet)?;
    let src_rewritten = rewrite_side::<P, DIRECTION>(packet, &parsed, false)?;
    let dst_rewritten = rewrite_side::<P, DIRECTION>(packet, &parsed, true)?;
    Ok(match (src_rewritten || dst_rewritten, parsed.later_fragment) {
        (true, _) => REWRITTEN,
        // Without ports a later fragment cannot match a port-scoped mapping; count it
        // apart, since it may belong to such a flow.
        (false, true) => FRAGMENT_UNMATCHED,
        (false, false) => NO_MATCH,
    })
}

/// Looks one side (source or destination address, with its port) up and rewrites it.
/// Returns whether it matched.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "passed by value, the keys are copied onto the stack again, past the 512-byte BPF stack limit"
)]
fn rewrite_side<P: Packet, const DIRECTION: u32>(
    packet: &mut P,
    parsed: &IpPacket,
    destination: bool,
) -> Result<bool, u32> {
    let (addr, address_offset) =
        if destination { (parsed.dst, parsed.dst_offset) } else { (parsed.src, parsed.src_offset) };
    if let Some((ports, source_port_offset)) = parsed.ports {
        let (port, port_offset) = if destination {
            (ports.dst, source_port_offset + DST_PORT_AFTER_SRC)
        } else {
            (ports.src, source_port_offset)
        };
        let key = Endpoint::new(addr, port, ports.protocol);
        // SAFETY: the value is copied out at once, before anything can delete it.
        if let Some(target) = unsafe { port_table::<DIRECTION>().get(&key) }.copied() {
            replace_address(packet, parsed, address_offset, &addr, &target.addr)?;
            if target.port != port {
                packet.replace_port(port_offset, parsed.l4, port, target.port).map_err(|()| HELPER_ERROR)?;
            }
            return Ok(true);
        }
    }
    // SAFETY: as above.
    if let Some(target) = unsafe { address_table::<DIRECTION>().get(&addr) }.copied() {
        replace_address(packet, parsed, address_offset, &addr, &target)?;
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
    packet.replace_address(offset, parsed.ipv4_check, parsed.l4, old, new).map_err(|()| HELPER_ERROR)
}
