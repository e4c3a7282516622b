//! The bounce object: bounce mode's program alone (see `bounce`), with its own maps.
//! It is a separate object so that loading the rewrite programs never creates the flow
//! table, which preallocates every entry; `rewrite bounce add` loads this one the first
//! time a service is added.
//!
//! The two objects share the modules they both need (`packet`, `parse`, `parsed`,
//! `per_cpu`, `atomic`, `object`) by declaring them, not through a library crate:
//! bpf-linker keeps every exported map of a linked library in each object, and a
//! library build put all 26 maps, the bounce flow table included, into the rewrite
//! object (tests/tests/registry.rs caught it). Each module is whole in both objects:
//! nothing in them is dead in either, so neither needs a `dead_code` allowance.
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
mod copy;
mod object;
mod packet;
mod parse;
mod parsed;
mod per_cpu;

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
