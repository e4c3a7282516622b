//! Shared between the eBPF programs (`no_std`, built for `bpfel-unknown-none`) and
//! userspace (`user` feature): the byte layout of every map key and value, the
//! counter indices, and the pure logic of the rewrite (checksum arithmetic and the
//! mapping semantics), so that the host can unit-test what the kernel runs.
#![cfg_attr(not(any(test, feature = "user")), no_std)]

pub mod bounce;
pub mod checksum;
pub mod counters;
pub mod gate;
pub mod mapping;
pub mod maps;
#[cfg(any(test, feature = "user"))]
pub mod model;
#[cfg(any(test, feature = "user"))]
pub mod reference;
#[cfg(any(test, feature = "user"))]
pub mod spec;
#[cfg(any(test, feature = "user"))]
pub mod validate;
