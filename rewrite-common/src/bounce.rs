//! Bounce mode: a full NAT that forwards what arrives at a LISTEN endpoint to a TARGET
//! endpoint, the in-kernel replacement for `socat TCP-LISTEN:P,fork TCP:NEW:P` and
//! Barefoot. Unlike the mappings, it keeps per-flow state:
//!
//! ```text
//!   client C:c  -> LISTEN L:l          becomes   SOURCE S:s -> TARGET T:t
//!   TARGET T:t  -> SOURCE S:s          becomes   LISTEN L:l -> client C:c
//! ```
//!
//! where S is the bouncer's own address towards T and s a port allocated per flow from
//! the service's range. Each flow is two entries of the flow table, one per direction,
//! keyed by the packet's 5-tuple as it arrives. An entry's value is the 5-tuple the
//! packet leaves with, so the *partner* entry's key is always the value with its sides
//! swapped ([`FlowTuple::reversed`]); the datapath checks the partner on every packet,
//! which detects a flow half lost to eviction.
//!
//! Byte order: addresses and ports as on the wire (big-endian), everything else native.
//! No bool, Option or enum fields; every padding byte is an explicit `reserved` field.

use crate::maps::{Addr, Endpoint};

/// LISTEN endpoint -> [`BounceService`].
pub const MAP_BOUNCE_SERVICES: &str = "BOUNCE_SERVICES";
/// Arriving 5-tuple -> [`FlowEntry`], an LRU hash: a full table evicts the least
/// recently used flow instead of refusing new ones.
pub const MAP_BOUNCE_FLOWS: &str = "BOUNCE_FLOWS";
/// One [`BounceSettings`].
pub const MAP_BOUNCE_SETTINGS: &str = "BOUNCE_SETTINGS";
/// Per-CPU `u64` counters, indexed by the constants below.
pub const MAP_BOUNCE_COUNTERS: &str = "BOUNCE_COUNTERS";
/// Ring buffer of [`BounceEvent`]s (connects and disconnects, never per packet).
pub const MAP_BOUNCE_EVENTS: &str = "BOUNCE_EVENTS";
/// One `u64`: the `bpf_ktime_get_ns` time until which a `bounce log` reader is
/// present (see [`LOG_LEASE_NS`](crate::maps::LOG_LEASE_NS)); events are only written
/// while it lies ahead.
pub const MAP_BOUNCE_LOG_LEASE: &str = "BOUNCE_LOG_LEASE";
/// The rewrite object's program array whose slot 0 holds bounce mode's XDP program:
/// the XDP ingress program tail-calls it (an interface runs one XDP program only).
pub const MAP_BOUNCE_XDP: &str = "BOUNCE_XDP";

/// Flows the table holds by default: each flow takes two entries.
pub const DEFAULT_MAX_FLOWS: u32 = 1_000_000;
/// Services (LISTEN endpoints) the bouncer can hold.
pub const MAX_SERVICES: u32 = 4096;
/// Size of the event ring buffer in bytes (a power of two, a multiple of the page).
pub const EVENTS_BYTES: u32 = 1 << 20;
/// The default port range for allocated source ports: above Linux's default
/// ip_local_port_range (32768-60999), so that the bouncer's own connections never
/// pick a port a bounced flow holds.
pub const DEFAULT_PORT_FIRST: u16 = 61000;
pub const DEFAULT_PORT_LAST: u16 = 65535;
/// [`DEFAULT_PORT_FIRST`]`..=`[`DEFAULT_PORT_LAST`].
pub const DEFAULT_PORTS: crate::ports::PortRange =
    match crate::ports::PortRange::new(DEFAULT_PORT_FIRST, DEFAULT_PORT_LAST) {
        Some(range) => range,
        None => panic!("the default source ports form a range"),
    };
/// How many ports a new flow tries before it counts as port exhaustion: a bound for
/// the verifier. Starting at a random port, 16 tries find a free one unless the range
/// is nearly full.
pub const PORT_PROBES: u32 = 16;
/// Idle timeouts by default: a UDP flow after a minute without packets (DNS, syslog,
/// and most request/response protocols are done by then), a TCP flow after two hours
/// (the keepalive interval of most stacks).
pub const DEFAULT_UDP_IDLE_SECONDS: u64 = 60;
pub const DEFAULT_TCP_IDLE_SECONDS: u64 = 7200;
/// How long a flow the target never answered lives without packets: a SYN nobody
/// answers, a UDP datagram without a reply. Short, so that a few packets cannot hold a
/// service's source ports for hours; a client still retrying keeps its flow alive.
pub const DEFAULT_UNREPLIED_SECONDS: u32 = 10;
/// How far a TCP RST's sequence number may lie from what its sender has sent so far
/// for the bouncer to believe it and close the flow (RFC 5961's concern): a blind RST
/// must guess the sequence number within this window.
pub const RST_WINDOW: u32 = 65_535;

/// A packet's addresses and ports as it arrives (the flow table's key) or as it
/// leaves (the entry's value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowTuple {
    pub src: Addr,
    pub dst: Addr,
    /// Big-endian, as on the wire.
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    /// `IPPROTO_TCP` or `IPPROTO_UDP` (in a `trace` record, 0 for a packet without
    /// ports, whose ports are then 0).
    pub protocol: u8,
    /// Always zero, so that equal tuples hash equally.
    pub reserved: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<FlowTuple>() == 40);
const _: () = assert!(core::mem::align_of::<FlowTuple>() == 4);

impl FlowTuple {
    /// The same flow seen from the other side: sources and destinations swapped.
    #[inline(always)]
    #[must_use]
    pub const fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            protocol: self.protocol,
            reserved: [0; 3],
        }
    }
}

/// Which way an entry's packets travel.
pub const FROM_CLIENT: u8 = 0;
pub const FROM_TARGET: u8 = 1;

/// `FlowEntry::fin`: this entry's side has sent a FIN.
pub const FIN_SENT: u8 = 1;

/// A flow table entry: what a packet of the flow becomes, and the flow's state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// The tuple the packet leaves with.
    pub out: FlowTuple,
    /// The service the flow belongs to (its LISTEN endpoint), for per-service counts.
    pub service: Endpoint,
    /// `FROM_CLIENT` or `FROM_TARGET`.
    pub side: u8,
    /// `FIN_SENT` once this side sent a FIN (TCP).
    pub fin: u8,
    /// Always zero.
    pub reserved: [u8; 2],
    /// TCP: the sequence number this side sends next, as far as its packets showed
    /// (host order): what an RST from it must be close to. Zero before its first.
    pub next_seq: u32,
    /// Always zero; places the u64 fields on an 8-byte boundary.
    pub reserved2: u32,
    /// `bpf_ktime_get_ns` of the last packet in this direction, or of the flow's
    /// creation.
    pub last_seen_ns: u64,
    /// Creation time of the flow (same clock), for the duration in disconnect events.
    pub created_ns: u64,
    /// Packets and bytes in this direction, updated atomically.
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<FlowEntry>() == 104);

/// A bounce service: where flows to its LISTEN endpoint go.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BounceService {
    pub target: Endpoint,
    /// The bouncer's own address the target sees (and replies to).
    pub source: Addr,
    /// The allocated source ports: `port_first ..= port_last`, native byte order.
    pub port_first: u16,
    pub port_last: u16,
}

const _: () = assert!(core::mem::size_of::<BounceService>() == 40);

/// Settings that apply to every service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BounceSettings {
    /// 1 when at least one service exists: the program returns at once otherwise.
    pub enabled: u32,
    /// Seconds a flow the target never answered lives without packets; 0 means
    /// [`DEFAULT_UNREPLIED_SECONDS`].
    pub unreplied_seconds: u32,
    pub udp_idle_ns: u64,
    pub tcp_idle_ns: u64,
}

impl BounceSettings {
    /// How long a flow lives without packets: the protocol's idle timeout once the
    /// target answered (its half has forwarded a packet), the unreplied timeout before.
    #[inline(always)]
    #[must_use]
    pub const fn timeout_ns(&self, tcp: bool, target_answered: bool) -> u64 {
        if !target_answered {
            let seconds = if self.unreplied_seconds == 0 { DEFAULT_UNREPLIED_SECONDS } else { self.unreplied_seconds };
            return seconds as u64 * 1_000_000_000;
        }
        if tcp { self.tcp_idle_ns } else { self.udp_idle_ns }
    }
}

const _: () = assert!(core::mem::size_of::<BounceSettings>() == 24);

impl Default for BounceSettings {
    fn default() -> Self {
        Self {
            enabled: 0,
            unreplied_seconds: DEFAULT_UNREPLIED_SECONDS,
            udp_idle_ns: DEFAULT_UDP_IDLE_SECONDS * 1_000_000_000,
            tcp_idle_ns: DEFAULT_TCP_IDLE_SECONDS * 1_000_000_000,
        }
    }
}

/// `BounceEvent::kind`.
pub const EVENT_CONNECT: u32 = 0;
pub const EVENT_DISCONNECT: u32 = 1;
/// `BounceEvent::reason` of a disconnect. A connect has `REASON_NONE`.
pub const REASON_NONE: u32 = 0;
/// Both sides sent FIN and the last ACK passed.
pub const REASON_FIN: u32 = 1;
pub const REASON_RST: u32 = 2;
/// Idle past the timeout, found when a packet of the flow's tuple came again.
pub const REASON_IDLE: u32 = 3;
/// One of the flow's two entries was evicted from a full table.
pub const REASON_EVICTED: u32 = 4;
pub const REASON_NAMES: [&str; 5] = ["none", "fin", "rst", "idle", "evicted"];

/// A connect or disconnect, as the ring buffer carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BounceEvent {
    /// `bpf_ktime_get_ns` when it happened (CLOCK_MONOTONIC).
    pub time_ns: u64,
    pub kind: u32,
    pub reason: u32,
    /// The client's side: client -> LISTEN.
    pub client: FlowTuple,
    /// The target's side: SOURCE -> TARGET.
    pub target: FlowTuple,
    /// For a disconnect: packets and bytes client -> target and target -> client.
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// For a disconnect: how long the flow lived.
    pub duration_ns: u64,
}

const _: () = assert!(core::mem::size_of::<BounceEvent>() == 136);

/// Counters of the bounce program (per CPU, one `u64` each).
/// A flow was created (a connect event).
pub const BOUNCE_CONNECTS: u32 = 0;
/// A packet of an existing flow was translated and forwarded.
pub const BOUNCE_FORWARDED: u32 = 1;
/// Flows closed by FIN, RST, idle timeout, or found half evicted.
pub const BOUNCE_CLOSED_FIN: u32 = 2;
pub const BOUNCE_CLOSED_RST: u32 = 3;
pub const BOUNCE_CLOSED_IDLE: u32 = 4;
pub const BOUNCE_CLOSED_EVICTED: u32 = 5;
/// No free source port among the probes: the new flow was not created.
pub const BOUNCE_PORT_EXHAUSTED: u32 = 6;
/// The route lookup (`bpf_fib_lookup`) towards the translated destination failed
/// (no route, forwarding disabled, or the packet is above the path's MTU).
pub const BOUNCE_UNROUTABLE: u32 = 7;
/// A TCP packet to a LISTEN endpoint that opens no flow (not a SYN) and has none.
pub const BOUNCE_NO_FLOW: u32 = 8;
/// An event the ring buffer had no room for.
pub const BOUNCE_EVENTS_LOST: u32 = 9;
/// A helper (checksum, store, map update, redirect) failed.
pub const BOUNCE_ERRORS: u32 = 10;
/// A TCP RST whose sequence number lies outside what its sender has sent: dropped, the
/// flow stays (a blind reset).
pub const BOUNCE_RST_IGNORED: u32 = 11;
/// A packet whose TTL (hop limit) would expire here: passed to the host's stack instead
/// of being forwarded.
pub const BOUNCE_TTL_EXPIRED: u32 = 12;
pub const BOUNCE_COUNTER_SLOTS: u32 = 13;
pub const BOUNCE_COUNTER_NAMES: [&str; BOUNCE_COUNTER_SLOTS as usize] = [
    "connects",
    "forwarded",
    "closed_fin",
    "closed_rst",
    "closed_idle",
    "closed_evicted",
    "port_exhausted",
    "unroutable",
    "no_flow",
    "events_lost",
    "errors",
    "rst_ignored",
    "ttl_expired",
];

/// The `probe`-th source port a new flow tries: consecutive ports from a random start,
/// wrapping inside `first ..= last`.
#[inline(always)]
#[must_use]
pub const fn candidate_port(first: u16, last: u16, start: u32, probe: u32) -> u16 {
    let count = (last as u32).saturating_sub(first as u32) + 1;
    // The remainder is below `count`, at most 65,535: it fits a u16.
    #[expect(clippy::cast_possible_truncation, reason = "the remainder is below count <= 65535")]
    let offset = (start.wrapping_add(probe) % count) as u16;
    first + offset
}

/// Whether an entry last seen at `last_seen_ns` is idle past `timeout_ns` at `now_ns`.
#[inline(always)]
#[must_use]
pub const fn is_idle(last_seen_ns: u64, now_ns: u64, timeout_ns: u64) -> bool {
    now_ns.saturating_sub(last_seen_ns) > timeout_ns
}

/// TCP flag bits (the 14th byte of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What a TCP packet of an existing flow does to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpStep {
    /// Forward; the flow stays.
    Keep,
    /// Forward, and mark this side as having sent a FIN.
    MarkFin,
    /// Forward, then remove the flow with this reason.
    Close(u32),
    /// Drop the packet, keep the flow: an RST that does not belong to it (see
    /// [`rst_acceptable`]). The datapath decides this; [`tcp_step`] never does.
    Reject,
}

/// The flow's lifecycle as TCP flags drive it: an RST ends it at once; a FIN marks its
/// side; once both sides have sent a FIN, the first packet without FIN (the last ACK)
/// ends it. `this_fin` and `other_fin` are the `FlowEntry::fin` of the packet's entry
/// and of its partner.
#[must_use]
pub const fn tcp_step(flags: u8, this_fin: u8, other_fin: u8) -> TcpStep {
    if flags & TCP_RST != 0 {
        return TcpStep::Close(REASON_RST);
    }
    if flags & TCP_FIN != 0 {
        return if this_fin & FIN_SENT != 0 { TcpStep::Keep } else { TcpStep::MarkFin };
    }
    if this_fin & FIN_SENT != 0 && other_fin & FIN_SENT != 0 && flags & TCP_ACK != 0 {
        return TcpStep::Close(REASON_FIN);
    }
    TcpStep::Keep
}

/// Whether an RST from one side of a flow belongs to it. From a side that has sent
/// packets, its sequence number must lie within [`RST_WINDOW`] of that side's next
/// sequence number. From a side that has sent nothing yet (a target refusing the
/// connection), it must acknowledge exactly what the other side sent (its SYN).
#[inline(always)]
#[must_use]
pub const fn rst_acceptable(flags: u8, seq: u32, ack: u32, sender: &FlowEntry, other: &FlowEntry) -> bool {
    if sender.packets > 0 {
        #[expect(clippy::cast_possible_wrap, reason = "sequence distances are signed, modulo 2^32")]
        let distance = seq.wrapping_sub(sender.next_seq) as i32;
        return distance.unsigned_abs() <= RST_WINDOW;
    }
    flags & TCP_ACK != 0 && other.packets > 0 && ack == other.next_seq
}

/// The sequence number after a TCP segment: its own, plus its payload, plus one for a
/// SYN or a FIN, which each take a number.
#[inline(always)]
#[must_use]
pub const fn sequence_after(seq: u32, flags: u8, payload_len: u32) -> u32 {
    let syn = if flags & TCP_SYN != 0 { 1 } else { 0 };
    let fin = if flags & TCP_FIN != 0 { 1 } else { 0 };
    seq.wrapping_add(payload_len).wrapping_add(syn).wrapping_add(fin)
}

/// Whether a side's next sequence number moves to `next` from `current` (sequence
/// numbers compared modulo 2^32: only forward), or is set by its first packet.
#[inline(always)]
#[must_use]
pub const fn advances(current: u32, next: u32, first_packet: bool) -> bool {
    #[expect(clippy::cast_possible_wrap, reason = "sequence distances are signed, modulo 2^32")]
    let forward = next.wrapping_sub(current) as i32 > 0;
    first_packet || forward
}

/// Whether a TCP packet with these flags may open a flow: a SYN without ACK.
#[inline(always)]
#[must_use]
pub const fn opens_flow(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
}

/// The two entries of a new flow, built in place (the BPF stack has no room for two
/// copies).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewFlow {
    /// The client's half is keyed by the arriving tuple; the target's by this.
    pub target_key: FlowTuple,
    pub from_client: FlowEntry,
    pub from_target: FlowEntry,
}

impl NewFlow {
    /// Fills in the flow of `arrived` (the client's packet, client -> LISTEN) to
    /// `service`'s target, from `source_port`.
    #[inline(always)]
    pub fn fill(&mut self, arrived: &FlowTuple, service: &BounceService, source_port: u16, now_ns: u64) {
        let to_target = &mut self.from_client.out;
        to_target.src = service.source;
        to_target.dst = service.target.addr;
        to_target.src_port = source_port.to_be_bytes();
        to_target.dst_port = service.target.port;
        to_target.protocol = arrived.protocol;
        to_target.reserved = [0; 3];
        self.target_key = self.from_client.out.reversed();
        self.from_target.out = arrived.reversed();
        for (entry, side) in [(&mut self.from_client, FROM_CLIENT), (&mut self.from_target, FROM_TARGET)] {
            entry.service = Endpoint::new(arrived.dst, arrived.dst_port, arrived.protocol);
            entry.side = side;
            entry.fin = 0;
            entry.reserved = [0; 2];
            entry.next_seq = 0;
            entry.reserved2 = 0;
            entry.last_seen_ns = now_ns;
            entry.created_ns = now_ns;
            entry.packets = 0;
            entry.bytes = 0;
        }
    }
}

// SAFETY: repr(C), byte arrays only, padding spelled out as `reserved` (size asserted).
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowTuple {}
// SAFETY: repr(C), a FlowTuple (40) and an Endpoint (20), four explicit bytes, two u32,
// then four u64 at offset 72: no implicit padding (size asserted).
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowEntry {}
// SAFETY: repr(C), an Endpoint and an Addr (36 bytes), then two u16: no padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for BounceService {}
// SAFETY: repr(C), two u32 then two u64 at offset 8: no padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for BounceSettings {}
// SAFETY: repr(C), a u64, two u32, two FlowTuples (to offset 96), then five u64: no
// padding (size asserted).
#[cfg(feature = "user")]
unsafe impl aya::Pod for BounceEvent {}

const _: () = assert!(core::mem::size_of::<NewFlow>() == 40 + 2 * 104);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::IPPROTO_TCP;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> Addr {
        Addr::from_v4([a, b, c, d])
    }

    fn service() -> BounceService {
        BounceService {
            target: Endpoint::new(v4(10, 2, 0, 2), 80u16.to_be_bytes(), IPPROTO_TCP),
            source: v4(10, 2, 0, 1),
            port_first: 61000,
            port_last: 61003,
        }
    }

    #[test]
    fn a_new_flow_translates_both_ways_and_each_entry_names_its_partner() {
        let arrived = FlowTuple {
            src: v4(10, 1, 0, 2),
            dst: v4(10, 1, 0, 1),
            src_port: 40000u16.to_be_bytes(),
            dst_port: 8080u16.to_be_bytes(),
            protocol: IPPROTO_TCP,
            reserved: [0; 3],
        };
        let mut flow = NewFlow::default();
        flow.fill(&arrived, &service(), 61002, 7);
        let (client_key, client_entry, target_key, target_entry) =
            (arrived, flow.from_client, flow.target_key, flow.from_target);
        assert_eq!(client_entry.out.src, v4(10, 2, 0, 1), "SNAT to the bouncer's source address");
        assert_eq!(client_entry.out.dst, v4(10, 2, 0, 2), "DNAT to the target");
        assert_eq!(client_entry.out.src_port, 61002u16.to_be_bytes());
        assert_eq!(client_entry.out.dst_port, 80u16.to_be_bytes());
        // The target's reply arrives as the reverse of what left, and leaves as the
        // reverse of what arrived: the client sees LISTEN answer.
        assert_eq!(target_key, client_entry.out.reversed());
        assert_eq!(target_entry.out, arrived.reversed());
        assert_eq!(client_entry.out.reversed(), target_key, "partner of the client entry");
        assert_eq!(target_entry.out.reversed(), client_key, "partner of the target entry");
        assert_eq!((client_entry.side, target_entry.side), (FROM_CLIENT, FROM_TARGET));
        assert_eq!(client_entry.service, Endpoint::new(arrived.dst, arrived.dst_port, IPPROTO_TCP));
        assert_eq!(target_entry.service, client_entry.service, "both halves name the service");
        assert_eq!((client_entry.created_ns, target_entry.last_seen_ns), (7, 7));
    }

    #[test]
    fn candidate_ports_stay_in_the_range_and_cover_it() {
        let mut seen = [false; 4];
        for probe in 0..4 {
            let port = candidate_port(61000, 61003, u32::MAX - 1, probe);
            assert!((61000..=61003).contains(&port), "{port} outside the range");
            seen[usize::from(port - 61000)] = true;
        }
        assert_eq!(seen, [true; 4], "four probes from any start cover a range of four");
        assert_eq!(candidate_port(65535, 65535, 12345, 3), 65535, "a range of one port");
        assert_eq!(candidate_port(1, 65535, 65534, 0), 65535);
        assert_eq!(candidate_port(1, 65535, 65535, 0), 1, "wraps to the first port");
    }

    #[test]
    fn rst_closes_at_once_and_fin_closes_after_both_sides_and_the_last_ack() {
        assert_eq!(tcp_step(TCP_RST | TCP_ACK, 0, 0), TcpStep::Close(REASON_RST));
        assert_eq!(tcp_step(TCP_ACK, 0, 0), TcpStep::Keep);
        assert_eq!(tcp_step(TCP_FIN | TCP_ACK, 0, 0), TcpStep::MarkFin);
        // The other side's ACK of the first FIN, before its own FIN: the flow stays.
        assert_eq!(tcp_step(TCP_ACK, 0, FIN_SENT), TcpStep::Keep);
        assert_eq!(tcp_step(TCP_FIN | TCP_ACK, 0, FIN_SENT), TcpStep::MarkFin);
        // A retransmitted FIN changes nothing.
        assert_eq!(tcp_step(TCP_FIN | TCP_ACK, FIN_SENT, 0), TcpStep::Keep);
        // The last ACK, from either side once both sent FIN.
        assert_eq!(tcp_step(TCP_ACK, FIN_SENT, FIN_SENT), TcpStep::Close(REASON_FIN));
        assert!(opens_flow(TCP_SYN));
        assert!(!opens_flow(TCP_SYN | TCP_ACK), "a SYN-ACK answers, it does not open");
        assert!(!opens_flow(TCP_ACK));
        assert!(!opens_flow(TCP_SYN | TCP_RST));
    }

    #[test]
    fn a_reset_counts_only_within_the_senders_window_or_as_the_answer_to_a_syn() {
        let sent = |next_seq: u32| FlowEntry { next_seq, packets: 3, ..FlowEntry::default() };
        let silent = FlowEntry::default();
        assert!(rst_acceptable(TCP_RST, 1000, 0, &sent(1000), &silent), "exactly the next sequence number");
        assert!(rst_acceptable(TCP_RST, 1000 + RST_WINDOW, 0, &sent(1000), &silent));
        assert!(rst_acceptable(TCP_RST, 5, 0, &sent(u32::MAX - 10), &silent), "across the wrap");
        assert!(!rst_acceptable(TCP_RST, 1000 + RST_WINDOW + 1, 0, &sent(1000), &silent), "a blind guess");
        assert!(!rst_acceptable(TCP_RST, 0x8000_0000, 0, &sent(1000), &silent));
        // A target refusing the connection: RST|ACK acknowledging the client's SYN.
        let client = sent(7001);
        assert!(rst_acceptable(TCP_RST | TCP_ACK, 0, 7001, &silent, &client));
        assert!(!rst_acceptable(TCP_RST | TCP_ACK, 0, 7002, &silent, &client), "acknowledges something else");
        assert!(!rst_acceptable(TCP_RST, 0, 7001, &silent, &client), "no ACK");
        assert_eq!(sequence_after(7000, TCP_SYN, 0), 7001);
        assert_eq!(sequence_after(u32::MAX, TCP_FIN | TCP_ACK, 10), 10);
        assert!(advances(10, 11, false) && !advances(11, 10, false) && advances(11, 10, true));
        assert!(advances(u32::MAX, 3, false), "forward across the wrap");
    }

    #[test]
    fn flows_nobody_answered_expire_fast_and_answered_ones_by_protocol() {
        let settings = BounceSettings::default();
        assert_eq!(settings.timeout_ns(true, false), u64::from(DEFAULT_UNREPLIED_SECONDS) * 1_000_000_000);
        assert_eq!(settings.timeout_ns(false, false), u64::from(DEFAULT_UNREPLIED_SECONDS) * 1_000_000_000);
        assert_eq!(settings.timeout_ns(true, true), DEFAULT_TCP_IDLE_SECONDS * 1_000_000_000);
        assert_eq!(settings.timeout_ns(false, true), DEFAULT_UDP_IDLE_SECONDS * 1_000_000_000);
        let unset = BounceSettings { unreplied_seconds: 0, ..settings };
        assert_eq!(unset.timeout_ns(true, false), settings.timeout_ns(true, false), "0 means the default");
    }

    #[test]
    fn idleness_is_strictly_past_the_timeout_and_survives_clock_skew() {
        assert!(!is_idle(100, 150, 50));
        assert!(is_idle(100, 151, 50));
        assert!(!is_idle(200, 100, 50), "an entry stamped after now (another CPU) is not idle");
    }
}
