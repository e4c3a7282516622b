//! The programs' side of `rewrite trace` (see `rewrite_common::trace`): at the end of a
//! program's run, while a reader holds the lease, a record of the packet if it is on a
//! hook and interface the reader asked for and passes its filter, within this CPU's
//! budget. Without a reader a packet pays one read of the lease ([`trace`]).

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use rewrite_common::{
    bounce::FlowTuple,
    maps::Addr,
    trace::{
        GATE_NOT_JUDGED, HOOK_TC_EGRESS, OUTCOME_GATE_DROPPED, OUTCOME_LEFT_TO_TC, REASON_NONE, REASONS_WITH_ADDRESSES,
        TRACE_RING_BYTES, TRACE_WINDOW_NS, TraceBudget, TraceControl, TraceRecord,
    },
};

use crate::{
    copy::{clear_addr, copy_addr, set},
    maps::{MATCHED_NONE, MATCHED_PORT, Scratch, SidePlan},
    packet::Packet,
    parsed::IpPacket,
    per_cpu,
};

/// The reader's lease: the `bpf_ktime_get_ns` time until which it is there; 0 when none.
#[map(name = "TRACE_LEASE")]
static TRACE_LEASE: Array<u64> = Array::pinned(1, 0);

/// What the reader selects (hooks, interface, filter, rate).
#[map(name = "TRACE_CONTROL")]
static TRACE_CONTROL: Array<TraceControl> = Array::pinned(1, 0);

#[map(name = "TRACE_RING")]
static TRACE_RING: RingBuf = RingBuf::pinned(TRACE_RING_BYTES, 0);

/// Each CPU's rate limit and count of what it dropped; pinned so the reader sees it.
#[map(name = "TRACE_BUDGET")]
static TRACE_BUDGET: PerCpuArray<TraceBudget> = PerCpuArray::pinned(1, 0);

/// What the program made of a packet, for its record: the outcome, and whether the
/// rewrite ran (so the plans are the packet's). The parser's reason and the gate's
/// verdict are in the parsed packet already.
#[derive(Clone, Copy)]
pub struct Seen(u32);

impl Seen {
    const REWRITE_RAN: u32 = 0x100;
    pub const GATE_DROPPED: Self = Self(OUTCOME_GATE_DROPPED as u32);
    /// An ICMP error XDP leaves to the TC program beside it.
    pub const LEFT_TO_TC: Self = Self(OUTCOME_LEFT_TO_TC as u32);

    /// The rewrite ran and gave `outcome`.
    #[inline(always)]
    pub fn rewrite(outcome: u32) -> Self {
        Self(outcome | Self::REWRITE_RAN)
    }

    /// The packet went no further than `outcome` (a refusal by the parser, a failed
    /// tail call).
    #[inline(always)]
    pub fn refused(outcome: u32) -> Self {
        Self(outcome)
    }
}

/// Records the packet if a reader wants it. The only cost without a reader is the read
/// of the lease, an array lookup the kernel inlines. The record is written out of line
/// (a BPF-to-BPF call): inlined, its code changed how the compiler kept the per-packet
/// path's values in registers, and cost every packet 7 ns with no reader (prog_cost).
#[inline(always)]
pub fn trace<P: Packet>(packet: &P, scratch: &mut Scratch, hook: u8, seen: Seen) {
    traced::<P, true>(packet, scratch, hook, seen);
}

/// [`trace`] with the record inlined, for the ICMP-error programs: the 5.10 verifier
/// walks a call from them past its limit, and they run for ICMP errors only.
#[inline(always)]
pub fn trace_inline<P: Packet>(packet: &P, scratch: &mut Scratch, hook: u8, seen: Seen) {
    traced::<P, false>(packet, scratch, hook, seen);
}

#[inline(always)]
fn traced<P: Packet, const OUT_OF_LINE: bool>(packet: &P, scratch: &mut Scratch, hook: u8, seen: Seen) {
    if !on() {
        return;
    }
    set(&mut scratch.seen, seen.0);
    #[expect(clippy::cast_possible_truncation, reason = "a frame's length fits 32 bits")]
    let len = packet.len() as u32;
    if OUT_OF_LINE {
        record_out_of_line(scratch, hook, packet.ifindex(), len);
    } else {
        record(scratch, hook, packet.ifindex(), len);
    }
}

/// Whether a reader holds the lease (or held it and is gone: see [`record`]).
#[inline(always)]
fn on() -> bool {
    TRACE_LEASE.get(0).is_some_and(|until| *until != 0)
}

#[inline(never)]
fn record_out_of_line(scratch: &mut Scratch, hook: u8, ifindex: u32, len: u32) {
    record(scratch, hook, ifindex, len);
}

/// Writes the record, if the reader wants this packet.
#[inline(always)]
fn record(scratch: &mut Scratch, hook: u8, ifindex: u32, len: u32) {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(lease) = TRACE_LEASE.get_ptr_mut(0) else { return };
    // SAFETY: the map's one slot, live for the program's run.
    unsafe {
        if now >= *lease {
            // The reader is gone (killed before it could clear the lease): back to one
            // read per packet.
            *lease = 0;
            return;
        }
    }
    let Some(control) = TRACE_CONTROL.get(0) else { return };
    if control.hooks & u32::from(hook) == 0 || (control.ifindex != 0 && control.ifindex != ifindex) {
        return;
    }
    let Scratch { outer, lookup, after, seen, .. } = scratch;
    // SAFETY: a field of this CPU's scratch slot.
    let seen = unsafe { core::ptr::read_volatile(seen) };
    let (outcome, rewrite_ran) = (byte(seen & 0xff), seen & Seen::REWRITE_RAN != 0);
    // The parser writes its reason for every packet (none when it parsed): a packet the
    // gate dropped after the parser refused it has it too, and no tuple then.
    let reason = outer.reason;
    let has_tuple = reason == REASON_NONE || reason >= REASONS_WITH_ADDRESSES;
    if has_tuple {
        compute_after(outer, &lookup.plans, rewrite_ran, after);
        let filter = &control.filter;
        let selected = filter.selects(&outer.src, &outer.dst, [outer.src_port, outer.dst_port], outer.protocol)
            || filter.selects(&after.src, &after.dst, [after.src_port, after.dst_port], after.protocol);
        if !selected {
            return;
        }
    } else if control.filter.tests_the_tuple() {
        return;
    }
    let Some(budget) = per_cpu::slot(&TRACE_BUDGET, 0) else { return };
    if now.saturating_sub(budget.window_start_ns) >= TRACE_WINDOW_NS {
        budget.window_start_ns = now;
        budget.in_window = 0;
    }
    if budget.in_window >= u64::from(control.per_cpu_per_second) {
        budget.dropped += 1;
        return;
    }
    let Some(mut slot) = TRACE_RING.reserve::<TraceRecord>(0) else {
        budget.dropped += 1;
        return;
    };
    budget.in_window += 1;
    let record = slot.as_mut_ptr();
    // SAFETY: the reserved slot is ours until submitted; every field is written, each
    // with its own store (a struct copy would become a byte loop).
    unsafe {
        set(&mut (*record).time_ns, now);
        set(&mut (*record).ifindex, ifindex);
        set(&mut (*record).len, len);
        if has_tuple {
            write_tuple(&mut (*record).before, &outer.src, &outer.dst, outer.src_port, outer.dst_port, outer.protocol);
            write_tuple(&mut (*record).after, &after.src, &after.dst, after.src_port, after.dst_port, after.protocol);
        } else {
            clear_tuple(&mut (*record).before);
            clear_tuple(&mut (*record).after);
        }
        set(&mut (*record).hook, hook);
        set(&mut (*record).outcome, outcome);
        set(&mut (*record).reason, reason);
        set(&mut (*record).has_tuple, u8::from(has_tuple));
        set(&mut (*record).matched, [matched(&lookup.plans[0], rewrite_ran), matched(&lookup.plans[1], rewrite_ran)]);
        // `quoted` is written once the parser reaches the transport header, so only a
        // packet with a tuple can be an ICMP error. The gate judges at ingress only, and
        // never an ICMP error (no ports); the field is written by the gate's own run, so
        // elsewhere it may be another packet's.
        let icmp_error = has_tuple && outer.quoted != 0;
        let judged = hook != HOOK_TC_EGRESS && !icmp_error;
        set(&mut (*record).gate, if judged { outer.gate } else { GATE_NOT_JUDGED });
        set(&mut (*record).icmp_error, u8::from(icmp_error));
    }
    slot.submit(0);
}

#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "MATCHED_* are below 4")]
fn matched(plan: &SidePlan, valid: bool) -> u8 {
    if valid { plan.matched as u8 } else { 0 }
}

/// The packet's tuple as it leaves: as the rewrite planned it where the rewrite ran
/// (the record's outcome says whether it went through), the parsed one elsewhere.
#[inline(always)]
fn compute_after(outer: &IpPacket, plans: &[SidePlan; 2], rewrite_ran: bool, after: &mut FlowTuple) {
    let (src, dst) = (&plans[0], &plans[1]);
    let src_moved = rewrite_ran && src.matched != MATCHED_NONE;
    let dst_moved = rewrite_ran && dst.matched != MATCHED_NONE;
    // SAFETY: the addresses are live map memory (scratch), read at once.
    unsafe {
        copy_addr(&mut after.src, if src_moved { &raw const src.address } else { &raw const outer.src });
        copy_addr(&mut after.dst, if dst_moved { &raw const dst.address } else { &raw const outer.dst });
    }
    let ports = outer.has_ports();
    set(&mut after.src_port, if src_moved && ports && src.matched == MATCHED_PORT { src.port } else { outer.src_port });
    set(&mut after.dst_port, if dst_moved && ports && dst.matched == MATCHED_PORT { dst.port } else { outer.dst_port });
    set(&mut after.protocol, outer.protocol);
}

/// Writes a tuple field by field.
#[inline(always)]
fn write_tuple(tuple: &mut FlowTuple, src: &Addr, dst: &Addr, src_port: [u8; 2], dst_port: [u8; 2], protocol: u8) {
    // SAFETY: references to live addresses.
    unsafe {
        copy_addr(&mut tuple.src, src);
        copy_addr(&mut tuple.dst, dst);
    }
    set(&mut tuple.src_port, src_port);
    set(&mut tuple.dst_port, dst_port);
    set(&mut tuple.protocol, protocol);
    set(&mut tuple.reserved, [0; 3]);
}

#[inline(always)]
fn clear_tuple(tuple: &mut FlowTuple) {
    clear_addr(&mut tuple.src);
    clear_addr(&mut tuple.dst);
    set(&mut tuple.src_port, [0; 2]);
    set(&mut tuple.dst_port, [0; 2]);
    set(&mut tuple.protocol, 0);
    set(&mut tuple.reserved, [0; 3]);
}

#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "outcomes are below 256")]
fn byte(outcome: u32) -> u8 {
    outcome as u8
}
