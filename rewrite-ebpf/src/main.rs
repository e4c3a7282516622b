//! The dataplane: an XDP ingress program, a TC ingress program and a TC egress program
//! that rewrite IPv4 and IPv6 addresses through the mapping maps (see `rewrite_common::mapping`
//! for what a mapping means). The entry points only pick the packet access method and
//! the direction; everything else is shared, so XDP and TC cannot drift apart.
#![no_std]
#![no_main]
// For `atomic_xadd` (see `atomic::atomic_add`). The crate is built with RUSTC_BOOTSTRAP
// already, for -Z build-std.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod atomic;
mod gate;
mod maps;
mod object;
mod packet;
mod parse;
mod rewrite;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use rewrite_common::counters::{EGRESS, INGRESS};

use crate::{
    packet::{TcPacket, XdpPacket},
    rewrite::{ALL_BUT_ICMP_ERRORS, ALL_PACKETS, ONLY_ICMP_ERRORS, rewrite_and_count},
};

/// Ingress on devices whose packets come from a wire: runs before the skb exists.
#[xdp]
pub fn rewrite_xdp_ingress(ctx: XdpContext) -> u32 {
    let action = try_rewrite_xdp_ingress(&ctx).unwrap_or(xdp_action::XDP_PASS);
    if action == xdp_action::XDP_DROP {
        return action;
    }
    // A packet rewrite failed on still goes to bounce mode, which parses for itself.
    maps::tail_call_bounce(&ctx);
    action
}

#[inline(always)]
fn try_rewrite_xdp_ingress(ctx: &XdpContext) -> Result<u32, ()> {
    let mut packet = XdpPacket::new(ctx);
    if gate::drops(&packet) {
        return Ok(xdp_action::XDP_DROP);
    }
    rewrite_and_count::<_, INGRESS, ALL_BUT_ICMP_ERRORS>(&mut packet)?;
    Ok(xdp_action::XDP_PASS)
}

// The TC programs return TC_ACT_UNSPEC (TCX_NEXT) rather than TC_ACT_OK: the packet
// passes either way, but only "next" lets other tcx programs and classic clsact filters
// on the same device run after rewrite.

/// Ingress where XDP cannot see partial checksums (veth and other virtual devices).
#[classifier]
pub fn rewrite_tc_ingress(ctx: TcContext) -> i32 {
    try_rewrite_tc::<INGRESS, ALL_PACKETS>(ctx).unwrap_or(TC_ACT_UNSPEC)
}

/// Egress on every attached device.
#[classifier]
pub fn rewrite_tc_egress(ctx: TcContext) -> i32 {
    try_rewrite_tc::<EGRESS, ALL_PACKETS>(ctx).unwrap_or(TC_ACT_UNSPEC)
}

/// Beside the XDP ingress program: rewrites the ICMP errors that XDP leaves alone (a
/// quoted packet is more than XDP's verifier bounds and stack allow) and lets
/// everything else through at once.
#[classifier]
pub fn rewrite_tc_icmp_errors(ctx: TcContext) -> i32 {
    try_rewrite_tc::<INGRESS, ONLY_ICMP_ERRORS>(ctx).unwrap_or(TC_ACT_UNSPEC)
}

// Inlined into each entry point: as a separate BPF function its frame would add to the
// entry's, past the 512-byte limit for the whole call chain.
#[inline(always)]
fn try_rewrite_tc<const DIRECTION: u32, const PACKETS: u32>(mut ctx: TcContext) -> Result<i32, ()> {
    let mut packet = TcPacket::new(&mut ctx);
    // The gate runs once per packet: in TC only where TC is the ingress program.
    if DIRECTION == INGRESS && PACKETS == ALL_PACKETS && gate::drops(&packet) {
        return Ok(TC_ACT_SHOT);
    }
    rewrite_and_count::<_, DIRECTION, PACKETS>(&mut packet)?;
    Ok(TC_ACT_UNSPEC)
}

/// An XDP program that does nothing: the baseline that benchmarks subtract from the
/// rewrite programs' BPF_PROG_TEST_RUN cost. The loader never attaches it.
#[xdp]
pub fn bench_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
