//! Per-CPU map slots: the programs' working memory and their counters. A program runs to
//! completion on its CPU (tail calls included), so no other packet touches a CPU's slot
//! while the program holds it, and a counter needs no atomic operation and shares no
//! cache line with other CPUs.

use aya_ebpf::maps::PerCpuArray;

/// This CPU's slot `index` of `map`, for the rest of the program's run.
// The map is shared, the slot is not: a per-CPU value is this CPU's alone while the
// program runs, which is what makes handing out `&mut` from `&` sound here.
#[allow(clippy::mut_from_ref)]
#[inline(always)]
pub fn slot<T>(map: &'static PerCpuArray<T>, index: u32) -> Option<&'static mut T> {
    // SAFETY: the slot belongs to this CPU for the program's run (see above), and the
    // kernel keeps the map value alive for it.
    map.get_ptr_mut(index).map(|slot| unsafe { &mut *slot })
}

/// Adds one to this CPU's counter `index` of `map`.
#[inline(always)]
pub fn increment(map: &PerCpuArray<u64>, index: u32) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a per-CPU array: nothing else runs on this CPU while
        // the program does, so the increment cannot race.
        unsafe { *counter += 1 };
    }
}
