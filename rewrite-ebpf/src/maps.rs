//! The mapping table's maps, pinned by name so that every program instance on the host
//! (one per attached interface) and every later CLI process share one table; the
//! outcome counters; the program arrays the programs tail-call through; and the per-CPU
//! scratch area. The gate's maps are in `gate_maps`.

use core::ptr;

use aya_ebpf::{
    helpers::bpf_map_lookup_elem,
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, ProgramArray},
};
use rewrite_common::{
    bounce::FlowTuple,
    counters,
    filter::{BPF_F_MMAPABLE, FILTER_BUILT, FILTER_SLOTS, filter_bit, prefix_filter_bit},
    maps::{
        Addr, AddressEntry, BPF_F_NO_PREALLOC, Counts, DEFAULT_MAX_MAPPINGS, Endpoint, EndpointEntry,
        MAX_PREFIX_MAPPINGS, PrefixEntry, PrefixKey, TablesInUse,
    },
};

use crate::{atomic::atomic_add, parsed::IpPacket, per_cpu};

/// Bounce mode's XDP program (in the bounce object, loaded by the first `bounce add`)
/// at index 0, which the XDP ingress program hands each packet to after its rewrite.
/// Empty while bounce mode is not in use: the tail call then fails and the packet
/// passes.
#[map(name = "BOUNCE_XDP")]
static BOUNCE_XDP: ProgramArray = ProgramArray::pinned(1, 0);

/// Hands the packet to bounce mode's XDP program, if there is one; returns only if not.
#[inline(always)]
pub fn tail_call_bounce(ctx: &aya_ebpf::programs::XdpContext) {
    // SAFETY: the tail call replaces this program's run with the bounce program's, on
    // the same context; if the slot is empty it returns and this program goes on.
    unsafe { BOUNCE_XDP.tail_call(ctx, 0) };
}

/// VIRTUAL -> REAL, looked up on egress. `rewrite attach --max-mappings` sets the
/// capacity when it creates the table.
#[map(name = "ADDR_FORWARD")]
pub static ADDR_FORWARD: HashMap<Addr, AddressEntry> = HashMap::pinned(DEFAULT_MAX_MAPPINGS, BPF_F_NO_PREALLOC);

/// REAL -> VIRTUAL, looked up on ingress.
#[map(name = "ADDR_REVERSE")]
pub static ADDR_REVERSE: HashMap<Addr, AddressEntry> = HashMap::pinned(DEFAULT_MAX_MAPPINGS, BPF_F_NO_PREALLOC);

/// VIRTUAL:PORT/PROTO -> REAL:PORT/PROTO, one entry per port, looked up on egress.
#[map(name = "PORT_FORWARD")]
pub static PORT_FORWARD: HashMap<Endpoint, EndpointEntry> = HashMap::pinned(DEFAULT_MAX_MAPPINGS, BPF_F_NO_PREALLOC);

/// REAL:PORT/PROTO -> VIRTUAL:PORT/PROTO, looked up on ingress.
#[map(name = "PORT_REVERSE")]
pub static PORT_REVERSE: HashMap<Endpoint, EndpointEntry> = HashMap::pinned(DEFAULT_MAX_MAPPINGS, BPF_F_NO_PREALLOC);

/// VIRTUAL/N -> REAL/N, looked up (longest prefix) on egress when no port-scoped or
/// address mapping matched. LPM tries are always created without preallocation. Keyed
/// by octets for aya's packed key type; looked up with a [`PrefixKey`], the same bytes.
#[map(name = "PREFIX_FORWARD")]
pub static PREFIX_FORWARD: LpmTrie<[u8; 16], PrefixEntry> = LpmTrie::pinned(MAX_PREFIX_MAPPINGS, 0);

/// REAL/N -> VIRTUAL/N, looked up on ingress.
#[map(name = "PREFIX_REVERSE")]
pub static PREFIX_REVERSE: LpmTrie<[u8; 16], PrefixEntry> = LpmTrie::pinned(MAX_PREFIX_MAPPINGS, 0);

/// Counts one packet of `bytes` in the entry it matched (a forward entry on egress, a
/// reverse entry on ingress).
///
/// # Safety
/// `counts` must point into a live map value, which the kernel keeps for the program's
/// run; its counters are only ever updated atomically.
#[inline(always)]
pub unsafe fn count_in_entry(counts: *mut Counts, bytes: u64) {
    // SAFETY: as the caller guarantees.
    unsafe {
        atomic_add(&raw mut (*counts).packets, 1);
        atomic_add(&raw mut (*counts).bytes, bytes);
    }
}

/// The address filter, see `rewrite_common::filter`: a clear bit lets a side skip its
/// port and address lookups. Userspace maps it into memory to set bits.
#[map(name = "ADDR_FILTER")]
static ADDR_FILTER: Array<u64> = Array::pinned(FILTER_SLOTS, BPF_F_MMAPABLE);

/// The address filter as one packet's lookups see it. Whether the filter is built is
/// read once per packet, not before every bit: a packet checks up to six bits.
#[derive(Clone, Copy)]
pub struct AddressFilter {
    built: bool,
}

impl AddressFilter {
    /// Reads the filter's header.
    #[inline(always)]
    pub fn read() -> Self {
        Self { built: ADDR_FILTER.get(0).copied() == Some(FILTER_BUILT) }
    }

    /// Whether the direction's maps of `KIND` (`ADDRESS_KEYS`, `PORT_KEYS`) may hold
    /// `addr` in a key: false only when the filter is built and the address's bit is
    /// clear.
    #[inline(always)]
    pub fn may_be_mapped<const DIRECTION: u32, const KIND: u32>(self, addr: &Addr) -> bool {
        self.admits(filter_bit(DIRECTION, KIND, addr))
    }

    /// Whether a prefix of the direction's trie may cover `addr`: false only when the
    /// filter is built and the bit of the address's leading 16 bits is clear.
    #[inline(always)]
    pub fn may_match_prefix<const DIRECTION: u32>(self, addr: &Addr) -> bool {
        self.admits(prefix_filter_bit(DIRECTION, addr))
    }

    /// Whether the filter's bit at `(index, mask)` is set, or the filter is not built
    /// yet. An array lookup, which the kernel inlines (no helper call).
    #[inline(always)]
    fn admits(self, (index, mask): (u32, u64)) -> bool {
        !self.built || ADDR_FILTER.get(index).is_none_or(|word| word & mask != 0)
    }
}

/// Which optional tables hold entries, see `TablesInUse`.
#[map(name = "TABLES_IN_USE")]
static TABLES_IN_USE: Array<TablesInUse> = Array::pinned(1, 0);

/// The flags, or "everything in use" if the slot cannot be read (it always can).
#[inline(always)]
pub fn tables_in_use() -> TablesInUse {
    TABLES_IN_USE.get(0).copied().unwrap_or(TablesInUse { ports: 1, prefixes: 1 })
}

/// Working memory of a program run, per CPU: the parsed headers (of the packet, and of
/// the packet an ICMP error quotes), the lookup keys and what each side becomes. The
/// BPF stack (512 bytes) cannot hold them, and values the verifier reads back from map
/// memory are unknown to it, which keeps the paths it walks from multiplying. A program
/// runs to completion on its CPU (tail calls included), so no other packet touches the
/// slot meanwhile. One map, looked up once per packet.
#[repr(C)]
pub struct Scratch {
    pub outer: IpPacket,
    /// The packet an ICMP error quotes.
    pub quoted: IpPacket,
    /// The packet's lookups, and those of the packet an ICMP error quotes: apart, so
    /// that a trace record shows what the error itself became.
    pub lookup: Lookup,
    pub quoted_lookup: Lookup,
    /// The packet as it leaves, and what the program made of it (`trace::Seen`), for a
    /// trace record (written only while tracing).
    pub after: FlowTuple,
    pub seen: u32,
}

/// The lookup keys of one packet (or quote) and what each of its sides becomes.
#[repr(C)]
pub struct Lookup {
    /// What each side (source, destination) of the packet being rewritten becomes.
    pub plans: [SidePlan; 2],
    pub endpoint: Endpoint,
    pub prefix_key: PrefixKey,
}

/// The rewrite of one side of a packet, decided by the lookup before any byte changes.
#[repr(C)]
pub struct SidePlan {
    /// Which table matched: `MATCHED_NONE`, `MATCHED_PORT`, `MATCHED_ADDRESS` or
    /// `MATCHED_PREFIX`.
    pub matched: u32,
    pub address: Addr,
    /// The new port, for a port-scoped mapping (big-endian).
    pub port: [u8; 2],
}

pub const MATCHED_NONE: u32 = 0;
pub const MATCHED_PORT: u32 = 1;
pub const MATCHED_ADDRESS: u32 = 2;
pub const MATCHED_PREFIX: u32 = 3;

#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch area.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    per_cpu::slot(&SCRATCH, 0)
}

/// The TC programs that rewrite ICMP errors (and the packet each quotes), indexed by
/// direction (`counters::INGRESS`, `counters::EGRESS`). The TC ingress and egress
/// programs hand ICMP errors to them with a tail call: a quoted packet doubles the
/// work, and in one program it took older verifiers (6.1) past their million
/// instructions. Pinned, so that the slots outlive the process that filled them (the
/// kernel empties a program array when its last user reference goes).
#[map(name = "ICMP_ERRORS")]
static ICMP_ERRORS: ProgramArray = ProgramArray::pinned(counters::DIRECTIONS, 0);

/// Hands an ICMP error to the direction's ICMP-error program; returns only if the slot
/// is empty.
#[inline(always)]
pub fn tail_call_icmp_errors(ctx: &aya_ebpf::programs::TcContext, direction: u32) {
    // SAFETY: the tail call replaces this program's run with the other program's, on
    // the same context; if the slot is empty it returns and this program goes on.
    unsafe { ICMP_ERRORS.tail_call(ctx, direction) };
}

/// Outcome counters, see `rewrite_common::counters`. Per CPU so that counting costs no
/// atomic operation and no cache line bouncing.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counters::SLOTS, 0);

/// The address table a direction looks addresses up in.
#[inline(always)]
pub fn address_table<const DIRECTION: u32>() -> &'static HashMap<Addr, AddressEntry> {
    if DIRECTION == counters::EGRESS { &ADDR_FORWARD } else { &ADDR_REVERSE }
}

/// Looks `key` up (longest prefix) in the prefix trie of a direction. Returns a pointer,
/// as the hash maps' `get_ptr_mut` does, so that the entry's counters can be updated:
/// aya-ebpf's `LpmTrie::get` gives only a shared reference.
#[inline(always)]
pub fn prefix_entry<const DIRECTION: u32>(key: &PrefixKey) -> Option<*mut PrefixEntry> {
    let trie = if DIRECTION == counters::EGRESS { &PREFIX_FORWARD } else { &PREFIX_REVERSE };
    lpm_lookup(trie, key)
}

/// Looks `key` up (longest prefix) in a trie keyed by 16 octets. aya-ebpf's
/// `LpmTrie::get` takes its own packed key type, which cannot hold the aligned `Addr`;
/// this takes the [`PrefixKey`] of the same bytes, and returns a mutable pointer.
#[inline(always)]
pub fn lpm_lookup<V>(trie: &LpmTrie<[u8; 16], V>, key: &PrefixKey) -> Option<*mut V> {
    // SAFETY: `LpmTrie` is `repr(transparent)` over its map definition, whose address the
    // helper takes as the map; the key has the trie's key size (asserted in
    // rewrite-common). The helper returns a pointer to the value in the trie, or null.
    let entry = unsafe { bpf_map_lookup_elem(ptr::from_ref(trie).cast_mut().cast(), ptr::from_ref(key).cast()) };
    (!entry.is_null()).then_some(entry.cast::<V>())
}

/// The port-scoped table a direction looks endpoints up in.
#[inline(always)]
pub fn port_table<const DIRECTION: u32>() -> &'static HashMap<Endpoint, EndpointEntry> {
    if DIRECTION == counters::EGRESS { &PORT_FORWARD } else { &PORT_REVERSE }
}

/// Counts one packet of `direction` under `outcome`.
#[inline(always)]
pub fn count(direction: u32, outcome: u32) {
    per_cpu::increment(&COUNTERS, counters::slot(direction, outcome));
}
