//! The kernel side: the two eBPF objects and their pins, the attachments to interfaces
//! (XDP links, tcx links, netlink filters), the facts of the host they depend on, one
//! writer at a time, and the event rings the programs fill.

pub mod attach;
pub(crate) mod batch;
pub mod filter;
pub mod host;
pub mod iface;
pub mod lock;
pub mod netlink;
pub mod objects;
pub mod pins;
pub mod ring;
pub mod slots;
pub mod status;
pub mod tc;
pub mod upgrade;
