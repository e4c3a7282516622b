//! Byte layout of every map that userspace and the eBPF programs share.
//!
//! Every key and value is `#[repr(C)]`, has no implicit padding and no `bool`,
//! `Option` or enum field, so the kernel, the programs and every version of the CLI
//! agree on its bytes. Addresses are stored as their wire octets (network byte order),
//! so the programs compare and copy them without swapping.

/// Name of the hash map VIRTUAL -> REAL (IPv4), looked up on egress.
pub const MAP_V4_FORWARD: &str = "V4_FORWARD";
/// Name of the hash map REAL -> VIRTUAL (IPv4), looked up on ingress.
pub const MAP_V4_REVERSE: &str = "V4_REVERSE";
/// Name of the per-CPU array of outcome counters, see [`crate::counters`].
pub const MAP_COUNTERS: &str = "COUNTERS";

/// Capacity of each mapping map unless the first `attach` asks for another
/// (`--max-mappings`).
/// The maps are created with `BPF_F_NO_PREALLOC`, so an idle table costs memory only
/// for the entries it holds.
pub const DEFAULT_MAX_MAPPINGS: u32 = 1 << 20;

/// `BPF_F_NO_PREALLOC`: allocate hash entries on insert rather than at map creation.
pub const BPF_F_NO_PREALLOC: u32 = 1;

pub const ETH_P_IP: u16 = 0x0800;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// An IPv4 address as a map key: the four octets exactly as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Key {
    pub addr: [u8; 4],
}

/// The address a key maps to: the four octets exactly as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Value {
    pub addr: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<Ipv4Key>() == 4);
const _: () = assert!(core::mem::align_of::<Ipv4Key>() == 1);
const _: () = assert!(core::mem::size_of::<Ipv4Value>() == 4);
const _: () = assert!(core::mem::align_of::<Ipv4Value>() == 1);

#[cfg(feature = "user")]
mod user {
    use super::{Ipv4Key, Ipv4Value};
    use std::net::Ipv4Addr;

    // SAFETY: both are repr(C) arrays of u8: every bit pattern is valid and there is
    // no padding (checked by the const asserts above).
    unsafe impl aya::Pod for Ipv4Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Ipv4Value {}

    impl From<Ipv4Addr> for Ipv4Key {
        fn from(addr: Ipv4Addr) -> Self {
            Self { addr: addr.octets() }
        }
    }
    impl From<Ipv4Key> for Ipv4Addr {
        fn from(key: Ipv4Key) -> Self {
            Ipv4Addr::from(key.addr)
        }
    }
    impl From<Ipv4Addr> for Ipv4Value {
        fn from(addr: Ipv4Addr) -> Self {
            Self { addr: addr.octets() }
        }
    }
    impl From<Ipv4Value> for Ipv4Addr {
        fn from(value: Ipv4Value) -> Self {
            Ipv4Addr::from(value.addr)
        }
    }
}
