//! Bounce mode's maps (see `rewrite_common::bounce`), pinned by name beside the
//! mapping maps. They belong to the bounce object alone, which `rewrite bounce add`
//! loads the first time: the flow table preallocates every entry (LRU maps must), so
//! hosts that never bounce never pay for it.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use rewrite_common::{
    bounce::{
        BOUNCE_COUNTER_SLOTS, BounceService, BounceSettings, DEFAULT_MAX_FLOWS, EVENTS_BYTES, FlowEntry, FlowTuple,
        MAX_SERVICES, NewFlow,
    },
    maps::{BPF_F_NO_PREALLOC, Endpoint},
};

use crate::{parsed::IpPacket, per_cpu};

/// LISTEN endpoint -> service.
#[map(name = "BOUNCE_SERVICES")]
pub static SERVICES: HashMap<Endpoint, BounceService> = HashMap::pinned(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// Two entries per flow. `rewrite bounce add --max-flows` sets the size when it
/// creates the table. Preallocated, as LRU maps must be: evicting needs the free lists.
#[map(name = "BOUNCE_FLOWS")]
pub static FLOWS: LruHashMap<FlowTuple, FlowEntry> = LruHashMap::pinned(DEFAULT_MAX_FLOWS * 2, 0);

#[map(name = "BOUNCE_SETTINGS")]
pub static SETTINGS: Array<BounceSettings> = Array::pinned(1, 0);

#[map(name = "BOUNCE_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(BOUNCE_COUNTER_SLOTS, 0);

#[map(name = "BOUNCE_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

/// Until when a `bounce log` reader is present (see `MAP_BOUNCE_LOG_LEASE`).
#[map(name = "BOUNCE_LOG_LEASE")]
static LOG_LEASE: Array<u64> = Array::pinned(1, 0);

/// Whether a reader wants events at `now`.
#[inline(always)]
pub fn log_reader_present(now: u64) -> bool {
    LOG_LEASE.get(0).is_some_and(|until| now < *until)
}

/// Counts one occurrence of `counter` (a `rewrite_common::bounce::BOUNCE_*` index).
#[inline(always)]
pub fn count(counter: u32) {
    per_cpu::increment(&COUNTERS, counter);
}

/// Working memory of the bounce program, per CPU: two flow keys, a new flow's two
/// entries and the route lookup's parameters do not fit the 512-byte
/// stack. A program runs to completion on its CPU, so no other packet touches the
/// slot meanwhile.
#[repr(C)]
pub struct BounceScratch {
    pub key: FlowTuple,
    /// The TCP fields of the packet (all zero for UDP).
    pub segment: TcpSegment,
    pub partner: FlowTuple,
    pub service_key: Endpoint,
    pub service: BounceService,
    /// Copies of a closing flow's entries (the map's are gone after the delete).
    pub entries: [FlowEntry; 2],
    pub new_flow: NewFlow,
    pub fib: aya_ebpf::bindings::bpf_fib_lookup,
}

/// What the bouncer reads of a TCP header, beyond the ports.
#[repr(C)]
pub struct TcpSegment {
    pub flags: u8,
    pub reserved: [u8; 3],
    pub seq: u32,
    pub ack: u32,
    /// Bytes after the TCP header, within the datagram.
    pub payload_len: u32,
}

#[map(name = "BOUNCE_SCRATCH")]
static SCRATCH: PerCpuArray<BounceScratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's bounce scratch area.
#[inline(always)]
pub fn scratch() -> Option<&'static mut BounceScratch> {
    per_cpu::slot(&SCRATCH, 0)
}

/// The parsed headers of the packet, per CPU, apart from [`BounceScratch`] so that
/// references into the two never alias.
#[map(name = "BOUNCE_PARSED")]
static PARSED: PerCpuArray<IpPacket> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's header area.
#[inline(always)]
pub fn parsed() -> Option<&'static mut IpPacket> {
    per_cpu::slot(&PARSED, 0)
}
