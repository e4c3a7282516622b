//! The userspace side of rewrite, as a library so that the tests and benchmarks drive
//! exactly the code the `rewrite` binary runs.

pub mod agent;
pub mod apply;
mod batch;
pub mod bounce;
pub mod cli;
pub mod config;
pub mod desired;
pub mod error;
pub mod fleet;
pub mod follow;
pub mod gate;
pub mod iface;
pub mod loader;
pub mod lock;
pub mod maps;
pub mod metrics;
pub mod netlink;
pub mod pins;
pub mod ring;
pub mod stats;
pub mod tc;

pub use error::Error;
