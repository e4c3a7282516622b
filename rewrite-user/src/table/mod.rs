//! The mapping table: every mapping, whatever its source (CLI, config file, fleet), is
//! admitted once against the table's rules ([`admission`]), becomes a plan of map
//! writes, and is written to the live maps in an order no packet can see half of
//! ([`live`]); [`counters`] reads what the programs counted.

pub mod admission;
pub mod counters;
pub mod listing;
pub mod live;
pub mod plan;
pub mod view;
