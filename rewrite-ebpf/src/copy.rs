//! Stores and copies the compiler cannot merge into `memset` or `memmove` calls. In
//! BPF those become subprograms that loop byte by byte (aya-ebpf's), which cost the
//! per-packet path more than its map lookups: clearing a run of fields and copying an
//! address between map values were the two patterns that did it. Volatile accesses are
//! each one instruction and are never merged.

use rewrite_common::maps::Addr;

/// Writes `value` to `field` with one store.
#[inline(always)]
pub fn set<T: Copy>(field: &mut T, value: T) {
    // SAFETY: a valid, aligned, exclusive reference.
    unsafe { core::ptr::write_volatile(field, value) };
}

#[allow(dead_code, reason = "the rewrite object uses it; the bounce object does not")]
/// Copies the address at `source` to `target`, a word at a time.
///
/// # Safety
/// `source` must point to a live, readable `Addr` (map memory the kernel keeps for the
/// program's run, or a reference).
#[inline(always)]
pub unsafe fn copy_addr(target: &mut Addr, source: *const Addr) {
    let from = source.cast::<u32>();
    let to = core::ptr::from_mut(target).cast::<u32>();
    for word in 0..4 {
        // SAFETY: `Addr` is 16 bytes aligned to 4: four aligned words, inside both.
        unsafe { core::ptr::write_volatile(to.add(word), core::ptr::read_volatile(from.add(word))) };
    }
}

#[allow(dead_code, reason = "the rewrite object uses it; the bounce object does not")]
/// Writes the zero address to `target`, a word at a time.
#[inline(always)]
pub fn clear_addr(target: &mut Addr) {
    let to = core::ptr::from_mut(target).cast::<u32>();
    for word in 0..4 {
        // SAFETY: `Addr` is 16 bytes aligned to 4: four aligned words.
        unsafe { core::ptr::write_volatile(to.add(word), 0) };
    }
}
