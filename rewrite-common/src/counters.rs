//! Outcome counters. Every packet a program sees increments exactly one outcome of its
//! direction, so the counters of a direction add up to the packets it saw. They live
//! in a per-CPU array: index `direction * OUTCOMES + outcome`, value a `u64`.

/// Direction index of the ingress programs (XDP or TC ingress).
pub const INGRESS: u32 = 0;
/// Direction index of the TC egress program.
pub const EGRESS: u32 = 1;
pub const DIRECTIONS: u32 = 2;

/// At least one address was rewritten.
pub const REWRITTEN: u32 = 0;
/// A well-formed packet whose addresses match no mapping.
pub const NO_MATCH: u32 = 1;
/// Truncated or inconsistent headers (bad IHL, total length, short L4 header).
pub const MALFORMED: u32 = 2;
/// Not IPv4, or an IPv4 protocol the rewrite does not handle (it passes unchanged).
pub const UNSUPPORTED: u32 = 3;
/// A checksum or store helper failed; the packet passed, possibly half rewritten.
/// Nonzero means a bug or an exotic skb, and is worth a report.
pub const HELPER_ERROR: u32 = 4;
/// A non-first fragment that matched no address or prefix mapping. It carries no
/// ports, so it could belong to a flow of a port-scoped mapping, which cannot match it.
pub const FRAGMENT_UNMATCHED: u32 = 5;
pub const OUTCOMES: u32 = 6;

/// Total number of slots in the counters map.
pub const SLOTS: u32 = DIRECTIONS * OUTCOMES;

/// Names in index order, as shown by `rewrite stats`.
pub const OUTCOME_NAMES: [&str; OUTCOMES as usize] =
    ["rewritten", "no_match", "malformed", "unsupported", "helper_error", "fragment_unmatched"];
pub const DIRECTION_NAMES: [&str; DIRECTIONS as usize] = ["ingress", "egress"];

/// The counters-map slot of an outcome in a direction.
#[inline(always)]
pub const fn slot(direction: u32, outcome: u32) -> u32 {
    direction * OUTCOMES + outcome
}
