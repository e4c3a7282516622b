//! The rewrite itself: parse, look both addresses up in the direction's table, patch.

use rewrite_common::{
    counters::{HELPER_ERROR, NO_MATCH, REWRITTEN},
    mapping::plan_rewrite,
};

use crate::{
    maps::{count, table},
    packet::Packet,
    parse::parse,
};

/// Rewrites `packet` for `direction` and counts the outcome. Never drops: every
/// outcome, including errors, lets the packet pass. Returns `Err` only when a helper
/// failed (already counted), so the caller can fall back to its default action.
#[inline(always)]
pub fn rewrite_and_count<P: Packet>(packet: &mut P, direction: u32) -> Result<(), ()> {
    let outcome = match rewrite(packet, direction) {
        Ok(outcome) | Err(outcome) => outcome,
    };
    count(direction, outcome);
    if outcome == HELPER_ERROR { Err(()) } else { Ok(()) }
}

#[inline(always)]
fn rewrite<P: Packet>(packet: &mut P, direction: u32) -> Result<u32, u32> {
    let parsed = parse(packet)?;
    let map = table(direction);
    // SAFETY: the value is copied out at once, before anything can delete the entry.
    let plan = plan_rewrite(&parsed.src, &parsed.dst, |key| unsafe { map.get(key) }.copied());
    if plan.is_empty() {
        return Ok(NO_MATCH);
    }
    if let Some(new_src) = plan.new_src {
        packet
            .replace_address(parsed.src_offset, parsed.ipv4_check, parsed.l4, &parsed.src, &new_src)
            .map_err(|()| HELPER_ERROR)?;
    }
    if let Some(new_dst) = plan.new_dst {
        packet
            .replace_address(parsed.dst_offset, parsed.ipv4_check, parsed.l4, &parsed.dst, &new_dst)
            .map_err(|()| HELPER_ERROR)?;
    }
    Ok(REWRITTEN)
}
