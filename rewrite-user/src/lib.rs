//! The userspace side of rewrite, as a library so that the tests and benchmarks drive
//! exactly the code the `rewrite` binary runs. ARCHITECTURE.md at the top of the
//! repository walks through the modules; in short, from the bottom up:
//!
//! - [`dataplane`]: the kernel side of things: loading the objects, pins, attaching
//!   to interfaces (XDP, tcx, netlink filters), the write lock, event rings;
//! - [`table`]: the mapping table: admission of mappings against the rules, plans,
//!   the live maps and their listing and counters;
//! - [`gate`], [`bounce`]: the two features beside the rewrite, each with its maps,
//!   its config section and its checks;
//! - [`fleet`]: the etcd fleet table: schema, key layout, store, pools, registration,
//!   watch;
//! - [`trace`]: `rewrite trace`, the programs' per-packet records on demand;
//! - [`config`]: the config file (every section) and `apply`;
//! - [`agent`]: the long-running agent and its metrics;
//! - [`cli`]: the command line's grammar (the `rewrite` binary's `commands` run it).

pub mod agent;
pub mod bounce;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod error;
pub mod fleet;
pub mod gate;
pub mod located;
pub mod table;
pub mod trace;

pub use error::Error;
