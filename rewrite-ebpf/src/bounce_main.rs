//! The bounce object: bounce mode's program alone (see `bounce`), with its own maps.
//! It is a separate object so that loading the rewrite programs never creates the flow
//! table, which preallocates every entry; `rewrite bounce add` loads this one the first
//! time a service is added.
#![no_std]
#![no_main]
// For `atomic_xadd` (see `atomic::atomic_add`), as in the rewrite object.
#![feature(core_intrinsics)]
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

use aya_ebpf::{macros::classifier, programs::TcContext};

/// On the ingress of every attached device, after the rewrite programs: a full NAT for
/// packets to LISTEN endpoints and their flows, which it forwards straight to their
/// egress device.
#[classifier]
pub fn bounce_tc_ingress(mut ctx: TcContext) -> i32 {
    bounce::bounce(&mut ctx).unwrap_or(bounce::PASS)
}
