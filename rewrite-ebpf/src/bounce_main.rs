//! The bounce object: bounce mode's program alone (see `bounce`), with its own maps.
//! It is a separate object so that loading the rewrite programs never creates the flow
//! table, which preallocates every entry; `rewrite bounce add` loads this one the first
//! time a service is added.
#![no_std]
#![no_main]
// For `atomic_xadd` (see `atomic::atomic_add`), as in the rewrite object.
#![feature(core_intrinsics)]
// For the one-instruction bound in `packet::bounded`.
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

mod atomic;
mod bounce;
mod bounce_maps;
mod object;
// Shared with the rewrite object: the XDP half of `packet` and the ICMP-error parsing
// serve the rewrite programs only.
#[allow(dead_code, reason = "shared with the rewrite object, which uses the rest")]
mod packet;
#[allow(dead_code, reason = "shared with the rewrite object, which uses the rest")]
mod parse;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use crate::{
    bounce::Verdict,
    packet::{TcPacket, XdpPacket},
};

/// On the ingress of every attached device, after the rewrite programs: a full NAT for
/// packets to LISTEN endpoints and their flows, which it forwards straight to their
/// egress device.
#[classifier]
pub fn bounce_tc_ingress(mut ctx: TcContext) -> i32 {
    match bounce::bounce(&mut TcPacket::new(&mut ctx)).unwrap_or(Verdict::Pass) {
        // UNSPEC (tcx "next"), as the rewrite programs return.
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::Sent(action) => i32::try_from(action).unwrap_or(TC_ACT_SHOT),
    }
}

/// The same in XDP, tail-called by `rewrite_xdp_ingress` (so it runs only on devices
/// attached with XDP, whose packets' checksums are complete); what it passes, the TC
/// program above sees next.
#[xdp]
pub fn bounce_xdp_ingress(ctx: XdpContext) -> u32 {
    match bounce::bounce(&mut XdpPacket::new(&ctx)).unwrap_or(Verdict::Pass) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Sent(action) => action,
    }
}
