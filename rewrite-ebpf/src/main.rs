//! The dataplane: an XDP ingress program, TC ingress and egress programs that rewrite
//! IPv4 and IPv6 addresses through the mapping maps (see `rewrite_common::mapping` for
//! what a mapping means), and the TC programs that rewrite ICMP errors. The entry
//! points only pick the packet access method and the direction, parse once, and hand
//! the parsed packet to the gate and the rewrite; everything else is shared, so XDP and
//! TC cannot drift apart.
#![no_std]
#![no_main]
// For `atomic_xadd` (see `atomic::atomic_add`). The crate is built with RUSTC_BOOTSTRAP
// already, for -Z build-std.
#![feature(core_intrinsics)]
// For the one-instruction bound in `packet::bounded`, as aya-ebpf itself uses asm.
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

mod atomic;
mod copy;
mod gate;
mod gate_maps;
mod maps;
mod object;
mod packet;
mod parse;
mod parsed;
mod per_cpu;
mod quoted;
mod rewrite;
mod trace;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use rewrite_common::{
    counters::{EGRESS, HELPER_ERROR, INGRESS},
    trace::{HOOK_TC_EGRESS, HOOK_TC_INGRESS, HOOK_XDP},
};

use crate::{
    maps::{count, scratch, tables_in_use, tail_call_bounce, tail_call_icmp_errors},
    packet::{TcPacket, XdpPacket},
    parse::parse,
    rewrite::{rewrite_icmp_error, rewrite_packet},
    trace::{Seen, trace, trace_inline},
};

/// Ingress on devices whose packets come from a wire: runs before the skb exists.
#[xdp]
pub fn rewrite_xdp_ingress(ctx: XdpContext) -> u32 {
    if rewrite_xdp(&ctx) == xdp_action::XDP_DROP {
        return xdp_action::XDP_DROP;
    }
    // Every packet the gate let through goes on to bounce mode, which parses for itself.
    tail_call_bounce(&ctx);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn rewrite_xdp(ctx: &XdpContext) -> u32 {
    let mut packet = XdpPacket::new(ctx);
    let Some(scratch) = scratch() else { return xdp_action::XDP_PASS };
    let parsed = parse(&packet, &mut scratch.outer);
    if gate::drops(&packet, &mut scratch.outer, parsed.is_ok(), &mut scratch.lookup.prefix_key) {
        trace(&packet, scratch, HOOK_XDP, Seen::GATE_DROPPED);
        return xdp_action::XDP_DROP;
    }
    if let Err(outcome) = parsed {
        count(INGRESS, outcome);
        trace(&packet, scratch, HOOK_XDP, Seen::refused(outcome));
        return xdp_action::XDP_PASS;
    }
    // ICMP errors are left to the TC program beside XDP, which counts them: a quoted
    // packet is more than XDP's verifier bounds and stack allow.
    if scratch.outer.quoted == 0 {
        let outcome = rewrite_packet::<_, INGRESS>(&mut packet, scratch, &tables_in_use());
        count(INGRESS, outcome);
        trace(&packet, scratch, HOOK_XDP, Seen::rewrite(outcome));
    } else {
        trace(&packet, scratch, HOOK_XDP, Seen::LEFT_TO_TC);
    }
    xdp_action::XDP_PASS
}

// The TC programs return TC_ACT_UNSPEC (TCX_NEXT, and "next filter" for cls_bpf in
// direct-action mode) rather than TC_ACT_OK: the packet passes either way, but only
// "next" lets other programs and filters on the same device run after rewrite.

/// Ingress where XDP cannot see partial checksums (veth and other virtual devices).
#[classifier]
pub fn rewrite_tc_ingress(mut ctx: TcContext) -> i32 {
    rewrite_tc::<INGRESS>(&mut ctx)
}

/// Egress on every attached device.
#[classifier]
pub fn rewrite_tc_egress(mut ctx: TcContext) -> i32 {
    rewrite_tc::<EGRESS>(&mut ctx)
}

#[inline(always)]
fn rewrite_tc<const DIRECTION: u32>(ctx: &mut TcContext) -> i32 {
    let Some(scratch) = scratch() else { return TC_ACT_UNSPEC };
    let mut packet = TcPacket::new(ctx);
    let hook = if DIRECTION == INGRESS { HOOK_TC_INGRESS } else { HOOK_TC_EGRESS };
    let parsed = parse(&packet, &mut scratch.outer);
    // The gate runs once per packet: in TC only where TC is the ingress program.
    if DIRECTION == INGRESS && gate::drops(&packet, &mut scratch.outer, parsed.is_ok(), &mut scratch.lookup.prefix_key)
    {
        trace(&packet, scratch, hook, Seen::GATE_DROPPED);
        return TC_ACT_SHOT;
    }
    if let Err(outcome) = parsed {
        count(DIRECTION, outcome);
        trace(&packet, scratch, hook, Seen::refused(outcome));
        return TC_ACT_UNSPEC;
    }
    if scratch.outer.quoted != 0 {
        // The ICMP-error program traces the packet itself.
        tail_call_icmp_errors(packet.context(), DIRECTION);
        // Only reached when the slot is empty, which `attach` never leaves it.
        count(DIRECTION, HELPER_ERROR);
        trace(&packet, scratch, hook, Seen::refused(HELPER_ERROR));
        return TC_ACT_UNSPEC;
    }
    let outcome = rewrite_packet::<_, DIRECTION>(&mut packet, scratch, &tables_in_use());
    count(DIRECTION, outcome);
    trace(&packet, scratch, hook, Seen::rewrite(outcome));
    TC_ACT_UNSPEC
}

/// Rewrites ingress ICMP errors and the packet each quotes, and lets every other packet
/// through at once. Attached beside the XDP ingress program (which leaves ICMP errors
/// alone), and tail-called by the TC ingress program.
#[classifier]
pub fn rewrite_tc_icmp_errors(mut ctx: TcContext) -> i32 {
    icmp_errors::<INGRESS>(&mut ctx)
}

/// The same for egress, tail-called by the TC egress program.
#[classifier]
pub fn rewrite_tc_egress_icmp_errors(mut ctx: TcContext) -> i32 {
    icmp_errors::<EGRESS>(&mut ctx)
}

#[inline(always)]
fn icmp_errors<const DIRECTION: u32>(ctx: &mut TcContext) -> i32 {
    let Some(scratch) = scratch() else { return TC_ACT_UNSPEC };
    let mut packet = TcPacket::new(ctx);
    if let Some(outcome) = rewrite_icmp_error::<_, DIRECTION>(&mut packet, scratch, &tables_in_use()) {
        count(DIRECTION, outcome);
        let hook = if DIRECTION == INGRESS { HOOK_TC_INGRESS } else { HOOK_TC_EGRESS };
        trace_inline(&packet, scratch, hook, Seen::rewrite(outcome));
    }
    TC_ACT_UNSPEC
}

/// An XDP program that does nothing: the baseline that benchmarks subtract from the
/// rewrite programs' BPF_PROG_TEST_RUN cost, and the floor of XDP on a device in the
/// throughput benchmark. The loader never attaches it.
#[xdp]
pub fn bench_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Its TC counterpart: the floor of TC hooks on a device in the throughput benchmark.
/// The loader never attaches it.
#[classifier]
pub fn bench_tc_pass(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}
