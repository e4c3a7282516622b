//! Test harness for rewrite's kernel-path tests: namespaces and pins behind guards,
//! packet builders with independently computed checksums, real socket traffic, and
//! the `rewrite` CLI run as a separate process.

pub mod agent;
pub mod bounce;
pub mod cli;
pub mod crafted;
pub mod fixture;
pub mod fleet;
pub mod hosts;
pub mod machine;
pub mod netns;
pub mod packet;
pub mod programs;
pub mod recipe;
pub mod traffic;
pub mod wait;
