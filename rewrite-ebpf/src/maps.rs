//! The maps, pinned by name so that every program instance on the host (one per
//! attached interface) and every later CLI process share one table.

use core::intrinsics::AtomicOrdering;

use crate::parse::IpPacket;
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
};
use rewrite_common::{
    counters,
    maps::{
        Addr, BPF_F_NO_PREALLOC, DEFAULT_MAX_MAPPINGS, Endpoint, MAX_PREFIX_MAPPINGS, MappingId, MappingStats,
        PrefixTarget, TablesInUse,
    },
};

/// VIRTUAL -> REAL, looked up on egress. `rewrite attach --max-mappings` sets the
/// capacity when it creates the table.
#[map(name = "ADDR_FORWARD")]
pub static ADDR_FORWARD: HashMap<Addr, Addr> = HashMap::pinned(DEFAULT_MAX_MAPPINGS, BPF_F_NO_PREALLOC);

/// REAL -> VIRTUAL, looked up on ingress.
#[map(name = "ADDR_REVERSE")]
pub static ADDR_REVERSE: HashMap<Addr, Addr> = HashMap::pinned(DEFAULT_MAX_MAPPINGS, BPF_F_NO_PREALLOC);

/// VIRTUAL:PORT/PROTO -> REAL:PORT/PROTO, one entry per port, looked up on egress.
#[map(name = "PORT_FORWARD")]
pub static PORT_FORWARD: HashMap<Endpoint, Endpoint> = HashMap::pinned(DEFAULT_MAX_MAPPINGS, BPF_F_NO_PREALLOC);

/// REAL:PORT/PROTO -> VIRTUAL:PORT/PROTO, looked up on ingress.
#[map(name = "PORT_REVERSE")]
pub static PORT_REVERSE: HashMap<Endpoint, Endpoint> = HashMap::pinned(DEFAULT_MAX_MAPPINGS, BPF_F_NO_PREALLOC);

/// VIRTUAL/N -> REAL/N, looked up (longest prefix) on egress when no port-scoped or
/// address mapping matched. LPM tries are always created without preallocation.
#[map(name = "PREFIX_FORWARD")]
pub static PREFIX_FORWARD: LpmTrie<Addr, PrefixTarget> = LpmTrie::pinned(MAX_PREFIX_MAPPINGS, 0);

/// REAL/N -> VIRTUAL/N, looked up on ingress.
#[map(name = "PREFIX_REVERSE")]
pub static PREFIX_REVERSE: LpmTrie<Addr, PrefixTarget> = LpmTrie::pinned(MAX_PREFIX_MAPPINGS, 0);

/// Packets and bytes per mapping and direction. The programs create a mapping's entry
/// with its first packet and add to it with atomic instructions; userspace removes it
/// with the mapping. Not per CPU, on purpose: a per-CPU entry costs the kernel about
/// 20 µs to allocate, which halved the new-connection rate when a migration's first
/// packets touched 100,000 mappings, and its memory grows with the number of CPUs. An
/// uncontended atomic add costs a few nanoseconds; only many CPUs hammering one mapping
/// would share its cache line. Sized for every entry the address, port and prefix tables
/// can hold, so it cannot fill before they do; the loader resizes it with them.
#[map(name = "MAPPING_STATS")]
static MAPPING_STATS: HashMap<MappingId, MappingStats> =
    HashMap::pinned(2 * DEFAULT_MAX_MAPPINGS + MAX_PREFIX_MAPPINGS, BPF_F_NO_PREALLOC);

/// Adds `value` to `*counter` with one BPF atomic add instruction (`lock ... +=`).
/// `AtomicU64::fetch_add` is not available: the BPF target has no compare-and-swap, so
/// core offers atomic loads and stores only. The result is unused, so LLVM emits the
/// plain atomic add every BPF CPU version has.
///
/// # Safety
/// `counter` must point to a live, aligned u64 that is only ever updated atomically.
#[inline(always)]
unsafe fn atomic_add(counter: *mut u64, value: u64) {
    // SAFETY: as the caller guarantees.
    unsafe { core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}

/// `BPF_NOEXIST`: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

/// Counts one packet of `bytes` for the mapping `id` in `DIRECTION`. `first` is working
/// memory for the first packet's value (not the stack, which is full).
#[inline(always)]
pub fn count_mapping<const DIRECTION: u32>(id: &MappingId, bytes: u64, first: &mut MappingStats) {
    let direction = if DIRECTION == counters::EGRESS { 1 } else { 0 };
    if let Some(stats) = MAPPING_STATS.get_ptr_mut(id) {
        // SAFETY: the pointer is to a live map value, which the kernel keeps for the
        // program's run (RCU); the counters are aligned u64s, updated only atomically.
        unsafe {
            atomic_add(&raw mut (*stats).packets[direction], 1);
            atomic_add(&raw mut (*stats).bytes[direction], bytes);
        }
        return;
    }
    // The mapping's first packet: create its entry with this packet counted. Should
    // another CPU create it meanwhile, this packet is one count short: a race of one
    // packet per mapping, once.
    *first = MappingStats::default();
    first.packets[direction] = 1;
    first.bytes[direction] = bytes;
    let _ = MAPPING_STATS.insert(id, first, BPF_NOEXIST);
}

/// Which optional tables hold entries, see `TablesInUse`.
#[map(name = "TABLES_IN_USE")]
static TABLES_IN_USE: Array<TablesInUse> = Array::pinned(1, 0);

/// The flags, or "everything in use" if the slot cannot be read (it always can).
#[inline(always)]
pub fn tables_in_use() -> TablesInUse {
    TABLES_IN_USE.get(0).copied().unwrap_or(TablesInUse { ports: 1, prefixes: 1 })
}

/// Working memory for lookup keys and results, per CPU: the BPF stack (512 bytes)
/// cannot hold them for both sides of a packet. A program runs to completion on its
/// CPU, so no other packet touches the slot meanwhile.
#[repr(C)]
pub struct Scratch {
    /// What each side (source, destination) of the packet being rewritten becomes.
    pub plans: [SidePlan; 2],
    /// The value a mapping's counters start with (see `count_mapping`).
    pub first_count: MappingStats,
    pub endpoint: Endpoint,
    pub target: Endpoint,
    pub prefix_key: Key<Addr>,
    pub address: Addr,
}

/// The rewrite of one side of a packet, decided by the lookup before any byte changes.
/// `mapping.kind` is 0 when no mapping matched.
#[repr(C)]
pub struct SidePlan {
    pub mapping: MappingId,
    pub address: Addr,
    /// The new port, for a port-scoped mapping (big-endian).
    pub port: [u8; 2],
}

#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The parsed headers of the packet in TC, per CPU, kept apart from [`Scratch`] so
/// that references into the two never alias.
#[repr(C)]
pub struct Headers {
    pub outer: IpPacket,
    /// The packet an ICMP error quotes.
    pub quoted: IpPacket,
}

#[map(name = "HEADERS")]
static HEADERS: PerCpuArray<Headers> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's header area.
#[inline(always)]
pub fn headers() -> Option<&'static mut Headers> {
    // SAFETY: the slot belongs to this CPU for the program's run (see `Scratch`).
    HEADERS.get_ptr_mut(0).map(|slot| unsafe { &mut *slot })
}

/// This CPU's scratch area.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: the slot belongs to this CPU for the program's run (see `Scratch`).
    SCRATCH.get_ptr_mut(0).map(|slot| unsafe { &mut *slot })
}

/// Outcome counters, see `rewrite_common::counters`. Per CPU so that counting costs no
/// atomic operation and no cache line bouncing.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counters::SLOTS, 0);

/// The address table a direction looks addresses up in.
#[inline(always)]
pub fn address_table<const DIRECTION: u32>() -> &'static HashMap<Addr, Addr> {
    if DIRECTION == counters::EGRESS { &ADDR_FORWARD } else { &ADDR_REVERSE }
}

/// The prefix table a direction looks addresses up in.
#[inline(always)]
pub fn prefix_table<const DIRECTION: u32>() -> &'static LpmTrie<Addr, PrefixTarget> {
    if DIRECTION == counters::EGRESS { &PREFIX_FORWARD } else { &PREFIX_REVERSE }
}

/// The port-scoped table a direction looks endpoints up in.
#[inline(always)]
pub fn port_table<const DIRECTION: u32>() -> &'static HashMap<Endpoint, Endpoint> {
    if DIRECTION == counters::EGRESS { &PORT_FORWARD } else { &PORT_REVERSE }
}

#[inline(always)]
pub fn count(direction: u32, outcome: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counters::slot(direction, outcome)) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array; nothing else runs
        // on this CPU while the program does, so the increment cannot race.
        unsafe { *slot += 1 };
    }
}
