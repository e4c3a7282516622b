//! The one atomic operation the programs need.

use core::intrinsics::AtomicOrdering;

/// Adds `value` to `*counter` with one BPF atomic add instruction (`lock ... +=`).
/// Not per CPU: per-CPU entries cost the kernel about 20 µs each to allocate (which
/// halved the connection rate when a migration's first packets touched 100,000
/// mappings) and grow with the CPU count; an uncontended atomic add costs nanoseconds.
/// `AtomicU64::fetch_add` is not available: the BPF target has no compare-and-swap, so
/// core offers atomic loads and stores only. The result is unused, so LLVM emits the
/// plain atomic add every BPF CPU version has.
///
/// # Safety
/// `counter` must point to a live, aligned u64 that is only ever updated atomically.
#[inline(always)]
pub unsafe fn atomic_add(counter: *mut u64, value: u64) {
    // SAFETY: as the caller guarantees.
    unsafe { core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}
