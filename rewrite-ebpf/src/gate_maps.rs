//! The gatekeeper's maps (see `rewrite_common::gate`), pinned beside the mapping table
//! and created empty with it: the gate starts off.

use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, PerCpuArray, RingBuf},
};
use rewrite_common::{
    gate::{self, GateSettings},
    maps::BPF_F_NO_PREALLOC,
};

use crate::per_cpu::increment;

/// The gatekeeper's settings, port classes, allow prefixes and counters (see
/// `rewrite_common::gate`). Created empty with the table: the gate starts off.
#[map(name = "GATE_SETTINGS")]
pub static GATE_SETTINGS: Array<GateSettings> = Array::pinned(1, 0);

#[map(name = "GATE_PORTS")]
pub static GATE_PORTS: Array<u32> = Array::pinned(gate::PORT_SLOTS, 0);

#[map(name = "GATE_ALLOW")]
pub static GATE_ALLOW: LpmTrie<[u8; 16], u32> = LpmTrie::pinned(gate::MAX_ALLOW_PREFIXES, BPF_F_NO_PREALLOC);

#[map(name = "GATE_COUNTERS")]
static GATE_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(gate::GATE_COUNTER_SLOTS, 0);

#[map(name = "GATE_LOG")]
pub static GATE_LOG: RingBuf = RingBuf::pinned(gate::GATE_LOG_BYTES, 0);

#[map(name = "GATE_LOG_LEASE")]
pub static GATE_LOG_LEASE: Array<u64> = Array::pinned(1, 0);

/// When this CPU last wrote a sample.
#[map(name = "GATE_SAMPLED_AT")]
pub static GATE_SAMPLED_AT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Counts one packet under a `rewrite_common::gate::GATE_*` slot.
#[inline(always)]
pub fn count_gate(counter: u32) {
    increment(&GATE_COUNTERS, counter);
}
