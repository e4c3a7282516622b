//! `rewrite trace`: a record per selected packet, on demand. While a trace reader holds
//! the lease (`TRACE_LEASE`, the `bpf_ktime_get_ns` time until which it is there, as
//! for the gate's and bounce mode's logs), the rewrite programs test each packet
//! against the reader's [`TraceControl`] (hook, interface and a [`TraceFilter`]) and
//! write a [`TraceRecord`] of each selected packet into the `TRACE_RING` ring buffer, at
//! most [`TraceControl::per_cpu_per_second`] a second on each CPU, counting the rest in
//! `TRACE_BUDGET`. With no reader the cost is one read of the lease.
//!
//! Why a ring buffer of fixed records rather than aya-log: aya-log formats text for a
//! logger attached to the process that loaded the programs (here the agent, which must
//! not change for a trace), and its level is fixed at load; a reader needs the fields
//! (`--json`, and matching the exact tuple), and the programs must choose by a filter
//! before spending anything. The records carry numbers, and the reader names them.
//!
//! All multi-byte fields are in host byte order except addresses and ports, which are as
//! on the wire (network order); addresses are [`Addr`]s (IPv4 mapped into IPv6).

use crate::{bounce::FlowTuple, maps::Addr};

/// Array of one `u64`: the reader's lease (see `maps::LOG_LEASE_NS`). Zero: no reader.
pub const MAP_TRACE_LEASE: &str = "TRACE_LEASE";
/// Array of one [`TraceControl`]: what the reader wants to see.
pub const MAP_TRACE_CONTROL: &str = "TRACE_CONTROL";
/// Ring buffer of [`TraceRecord`]s.
pub const MAP_TRACE_RING: &str = "TRACE_RING";
/// Per-CPU array of one [`TraceBudget`]: the rate limit's window and what it dropped.
pub const MAP_TRACE_BUDGET: &str = "TRACE_BUDGET";
/// The ring's size in bytes: about 8,000 records between two reads.
pub const TRACE_RING_BYTES: u32 = 1024 * 1024;
/// The rate limit's window.
pub const TRACE_WINDOW_NS: u64 = 1_000_000_000;

/// Hooks, as bits of [`TraceControl::hooks`] and values of [`TraceRecord::hook`].
pub const HOOK_XDP: u8 = 1;
pub const HOOK_TC_INGRESS: u8 = 2;
pub const HOOK_TC_EGRESS: u8 = 4;
pub const ALL_HOOKS: u32 = (HOOK_XDP | HOOK_TC_INGRESS | HOOK_TC_EGRESS) as u32;

/// Outcomes a record may carry beyond the counters' (`counters::REWRITTEN` ...
/// `counters::FRAGMENT_UNMATCHED`).
///
/// The gate dropped the packet before the rewrite looked at it.
pub const OUTCOME_GATE_DROPPED: u8 = 64;
/// An ICMP error at XDP, left to the TC program beside it (which traces it too).
pub const OUTCOME_LEFT_TO_TC: u8 = 65;

/// [`TraceRecord::gate`]: the gate did not judge the packet (off, an open port, no ports).
pub const GATE_NOT_JUDGED: u8 = 0;
/// Otherwise the gate's counter slot (`gate::GATE_*`) plus one.
pub const GATE_JUDGED_BASE: u8 = 1;

/// Why a packet is malformed or unsupported ([`TraceRecord::reason`]; 0: it parsed).
/// Reasons below [`REASONS_WITH_ADDRESSES`] stop the parser before the addresses, so
/// the record has no tuple; from it on, the addresses (not the ports) are known.
pub const REASON_NONE: u8 = 0;
pub const REASON_SHORT_ETHERNET: u8 = 1;
pub const REASON_NOT_IP: u8 = 2;
pub const REASON_SHORT_IP_HEADER: u8 = 3;
pub const REASON_BAD_IP_VERSION: u8 = 4;
pub const REASON_BAD_IPV4_HEADER_LENGTH: u8 = 5;
pub const REASON_BAD_IP_LENGTH: u8 = 6;
pub const REASON_SHORT_EXTENSION_HEADER: u8 = 7;
pub const REASON_IPV6_ROUTING_OR_AUTH: u8 = 8;
pub const REASON_HEADERS_TOO_DEEP: u8 = 9;
pub const REASONS_WITH_ADDRESSES: u8 = 32;
pub const REASON_SHORT_TCP_HEADER: u8 = 32;
pub const REASON_BAD_TCP_DATA_OFFSET: u8 = 33;
pub const REASON_SHORT_UDP_HEADER: u8 = 34;
pub const REASON_BAD_UDP_LENGTH: u8 = 35;
pub const REASON_SHORT_ICMP_HEADER: u8 = 36;
pub const REASON_NEIGHBOUR_DISCOVERY: u8 = 37;
pub const REASON_OTHER_PROTOCOL: u8 = 38;
pub const REASON_TRANSPORT_TOO_DEEP: u8 = 39;

/// One side of an address term: which of a tuple's addresses (or ports) a term tests.
pub const SIDE_UNUSED: u8 = 0;
pub const SIDE_SOURCE: u8 = 1;
pub const SIDE_DESTINATION: u8 = 2;
pub const SIDE_EITHER: u8 = SIDE_SOURCE | SIDE_DESTINATION;

/// `host ADDR` or `net PREFIX`, on the source, the destination or either: an address
/// matches when `address & mask == value` (the mask of the prefix in the 16-byte form).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddressTerm {
    pub value: Addr,
    pub mask: Addr,
    /// `SIDE_*`; [`SIDE_UNUSED`]: the term is not there.
    pub side: u8,
    pub reserved: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<AddressTerm>() == 36);

/// `port N` or `port A-B`, on the source, the destination or either.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortTerm {
    /// Host order, inclusive.
    pub first: u16,
    pub last: u16,
    pub side: u8,
    pub reserved: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<PortTerm>() == 8);

/// What a trace selects: every term that is there must hold, on the packet as it
/// arrived or as it left (so `host VIRTUAL` sees the replies that leave as VIRTUAL).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceFilter {
    pub addresses: [AddressTerm; 2],
    pub port: PortTerm,
    /// 6 or 17; 0: any.
    pub protocol: u8,
    pub reserved: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<TraceFilter>() == 84);

impl TraceFilter {
    /// Whether the filter has a term about the tuple: a packet without one (it did not
    /// parse as far as its addresses) is then not selected.
    #[inline(always)]
    pub const fn tests_the_tuple(&self) -> bool {
        self.addresses[0].side != SIDE_UNUSED
            || self.addresses[1].side != SIDE_UNUSED
            || self.port.side != SIDE_UNUSED
            || self.protocol != 0
    }

    /// Whether a packet with these addresses, ports (as on the wire) and protocol (6,
    /// 17, or 0 without ports) satisfies every term. Fields rather than a [`FlowTuple`], so
    /// that the programs test the packet where it lies before building a record.
    #[inline(always)]
    pub fn selects(&self, src: &Addr, dst: &Addr, ports: [[u8; 2]; 2], protocol: u8) -> bool {
        if self.protocol != 0 && protocol != self.protocol {
            return false;
        }
        self.addresses[0].selects(src, dst) && self.addresses[1].selects(src, dst) && self.port.selects(ports, protocol)
    }

    /// [`TraceFilter::selects`] for a whole tuple.
    pub fn selects_tuple(&self, tuple: &FlowTuple) -> bool {
        self.selects(&tuple.src, &tuple.dst, [tuple.src_port, tuple.dst_port], tuple.protocol)
    }
}

impl AddressTerm {
    #[inline(always)]
    fn selects(&self, src: &Addr, dst: &Addr) -> bool {
        (self.side == SIDE_UNUSED)
            || (self.side & SIDE_SOURCE != 0 && self.covers(src))
            || (self.side & SIDE_DESTINATION != 0 && self.covers(dst))
    }

    /// Word by word: four loads and compares in the programs, no loop over octets.
    #[inline(always)]
    fn covers(&self, addr: &Addr) -> bool {
        let (addr, mask, value) = (addr.as_words(), self.mask.as_words(), self.value.as_words());
        addr[0] & mask[0] == value[0]
            && addr[1] & mask[1] == value[1]
            && addr[2] & mask[2] == value[2]
            && addr[3] & mask[3] == value[3]
    }
}

impl PortTerm {
    #[inline(always)]
    fn selects(&self, [src, dst]: [[u8; 2]; 2], protocol: u8) -> bool {
        if self.side == SIDE_UNUSED {
            return true;
        }
        if protocol == 0 {
            return false;
        }
        let within = |port: [u8; 2]| {
            let port = u16::from_be_bytes(port);
            self.first <= port && port <= self.last
        };
        (self.side & SIDE_SOURCE != 0 && within(src)) || (self.side & SIDE_DESTINATION != 0 && within(dst))
    }
}

/// What the reader asks for. Written by the reader before it takes the lease.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceControl {
    pub filter: TraceFilter,
    /// `HOOK_*` bits.
    pub hooks: u32,
    /// The interface (its index); 0: every interface.
    pub ifindex: u32,
    /// Records each CPU writes at most per [`TRACE_WINDOW_NS`].
    pub per_cpu_per_second: u32,
}

const _: () = assert!(core::mem::size_of::<TraceControl>() == 96);

/// A CPU's rate limit and its count of what it left out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceBudget {
    /// When this CPU's current window started.
    pub window_start_ns: u64,
    /// Records written in it.
    pub in_window: u64,
    /// Selected packets not written since the map was created: over the rate, or the
    /// ring was full.
    pub dropped: u64,
}

const _: () = assert!(core::mem::size_of::<TraceBudget>() == 24);

/// Which table matched a side ([`TraceRecord::matched`]).
pub const MATCHED_NONE: u8 = 0;
pub const MATCHED_PORT: u8 = 1;
pub const MATCHED_ADDRESS: u8 = 2;
pub const MATCHED_PREFIX: u8 = 3;

/// One traced packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceRecord {
    /// `bpf_ktime_get_ns` when the program saw it.
    pub time_ns: u64,
    pub ifindex: u32,
    /// The frame's length.
    pub len: u32,
    /// As it arrived at the hook, and as it left (equal when nothing changed); `protocol`
    /// 0 (and the ports 0) for a packet without ports. Zero when
    /// [`TraceRecord::has_tuple`] is 0.
    pub before: FlowTuple,
    pub after: FlowTuple,
    /// One `HOOK_*`.
    pub hook: u8,
    /// `counters::REWRITTEN` ... `counters::FRAGMENT_UNMATCHED`, or `OUTCOME_*`.
    pub outcome: u8,
    /// `REASON_*` for a malformed or unsupported packet.
    pub reason: u8,
    /// 1 when the tuples are known (the packet parsed as far as its addresses).
    pub has_tuple: u8,
    /// `MATCHED_*` of the source side, then the destination side.
    pub matched: [u8; 2],
    /// `GATE_NOT_JUDGED`, or the gate's counter slot plus `GATE_JUDGED_BASE`.
    pub gate: u8,
    /// 1 for an ICMP error (its quoted packet is rewritten with it).
    pub icmp_error: u8,
}

const _: () = assert!(core::mem::size_of::<TraceRecord>() == 104);

#[cfg(feature = "user")]
// SAFETY: plain integers and byte arrays, no padding (asserted sizes).
unsafe impl aya::Pod for TraceControl {}

#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for TraceBudget {}

#[cfg(any(test, feature = "user"))]
mod names {
    use super::*;

    /// A reason's text, as `trace` shows it.
    pub fn reason_name(reason: u8) -> &'static str {
        match reason {
            REASON_NONE => "",
            REASON_SHORT_ETHERNET => "ethernet header cut short",
            REASON_NOT_IP => "not IPv4 or IPv6",
            REASON_SHORT_IP_HEADER => "IP header cut short",
            REASON_BAD_IP_VERSION => "IP version does not match the ethertype",
            REASON_BAD_IPV4_HEADER_LENGTH => "IPv4 header length below 20",
            REASON_BAD_IP_LENGTH => "IP length beyond the frame or below the header",
            REASON_SHORT_EXTENSION_HEADER => "IPv6 extension header cut short",
            REASON_IPV6_ROUTING_OR_AUTH => "IPv6 routing or authentication header",
            REASON_HEADERS_TOO_DEEP => "headers deeper than 512 bytes",
            REASON_SHORT_TCP_HEADER => "TCP header cut short",
            REASON_BAD_TCP_DATA_OFFSET => "TCP data offset outside the datagram",
            REASON_SHORT_UDP_HEADER => "UDP header cut short",
            REASON_BAD_UDP_LENGTH => "UDP length below 8",
            REASON_SHORT_ICMP_HEADER => "ICMP header cut short",
            REASON_NEIGHBOUR_DISCOVERY => "IPv6 neighbour discovery",
            REASON_OTHER_PROTOCOL => "transport protocol not rewritten",
            REASON_TRANSPORT_TOO_DEEP => "transport header deeper than 512 bytes",
            _ => "unknown reason",
        }
    }

    /// A hook's name, as `--hook` takes it.
    pub fn hook_name(hook: u8) -> &'static str {
        match hook {
            HOOK_XDP => "xdp",
            HOOK_TC_INGRESS => "tc-ingress",
            HOOK_TC_EGRESS => "tc-egress",
            _ => "unknown",
        }
    }

    /// The table a `MATCHED_*` names.
    pub fn matched_name(matched: u8) -> Option<&'static str> {
        match matched {
            MATCHED_PORT => Some("port"),
            MATCHED_ADDRESS => Some("address"),
            MATCHED_PREFIX => Some("prefix"),
            _ => None,
        }
    }
}

#[cfg(any(test, feature = "user"))]
pub use names::{hook_name, matched_name, reason_name};

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(octets: [u8; 4]) -> Addr {
        Addr::from_v4(octets)
    }

    fn tuple(src: [u8; 4], dst: [u8; 4], ports: (u16, u16), protocol: u8) -> FlowTuple {
        FlowTuple {
            src: v4(src),
            dst: v4(dst),
            src_port: ports.0.to_be_bytes(),
            dst_port: ports.1.to_be_bytes(),
            protocol,
            reserved: [0; 3],
        }
    }

    fn host(addr: [u8; 4], side: u8) -> AddressTerm {
        AddressTerm { value: v4(addr), mask: Addr { octets: [0xff; 16] }, side, reserved: [0; 3] }
    }

    #[test]
    fn an_empty_filter_selects_everything() {
        let filter = TraceFilter::default();
        assert!(!filter.tests_the_tuple());
        assert!(filter.selects_tuple(&tuple([10, 0, 0, 1], [10, 0, 0, 2], (1, 2), 6)));
    }

    #[test]
    fn every_term_must_hold() {
        let mut filter = TraceFilter::default();
        filter.addresses[0] = host([10, 0, 0, 5], SIDE_EITHER);
        filter.port = PortTerm { first: 9300, last: 9300, side: SIDE_EITHER, reserved: [0; 3] };
        filter.protocol = 6;
        assert!(filter.tests_the_tuple());
        assert!(filter.selects_tuple(&tuple([10, 0, 0, 5], [10, 0, 0, 9], (40000, 9300), 6)));
        assert!(filter.selects_tuple(&tuple([10, 0, 0, 9], [10, 0, 0, 5], (9300, 40000), 6)), "either side");
        assert!(!filter.selects_tuple(&tuple([10, 0, 0, 5], [10, 0, 0, 9], (40000, 9300), 17)), "protocol");
        assert!(!filter.selects_tuple(&tuple([10, 0, 0, 5], [10, 0, 0, 9], (40000, 9301), 6)), "port");
        assert!(!filter.selects_tuple(&tuple([10, 0, 0, 6], [10, 0, 0, 9], (40000, 9300), 6)), "address");
        assert!(!filter.selects_tuple(&tuple([10, 0, 0, 5], [10, 0, 0, 9], (0, 0), 0)), "a port term needs ports");
    }

    #[test]
    fn sides_and_prefixes() {
        let mut filter = TraceFilter::default();
        filter.addresses[0] = host([10, 0, 0, 5], SIDE_SOURCE);
        let mut net = host([192, 168, 0, 0], SIDE_DESTINATION);
        net.mask = Addr::from_words([u32::MAX, u32::MAX, u32::MAX, u32::from_ne_bytes([255, 255, 0, 0])]);
        filter.addresses[1] = net;
        assert!(filter.selects_tuple(&tuple([10, 0, 0, 5], [192, 168, 7, 1], (1, 2), 17)));
        assert!(!filter.selects_tuple(&tuple([192, 168, 7, 1], [10, 0, 0, 5], (1, 2), 17)), "sides swapped");
        assert!(!filter.selects_tuple(&tuple([10, 0, 0, 5], [192, 169, 7, 1], (1, 2), 17)), "outside the prefix");
    }
}
