//! What a mapping means, independent of where it runs.
//!
//! A mapping `VIRTUAL -> REAL` says: the host applications know as VIRTUAL is really
//! reached at REAL. On an attached interface, egress packets have VIRTUAL replaced by
//! REAL (in the destination, and in the source when VIRTUAL is this host's own
//! address), and ingress packets have REAL replaced by VIRTUAL (in the source, and in
//! the destination when REAL is this host's own address). So each direction looks both
//! addresses of a packet up in one table: egress in VIRTUAL -> REAL, ingress in
//! REAL -> VIRTUAL.
//!
//! Three kinds of mapping share that table, and the most specific one wins:
//! 1. **port-scoped**, `VIRTUAL:PORT/PROTO -> REAL:PORT/PROTO` (one entry per port of a
//!    range), which rewrites the address and the port of that service only;
//! 2. **address**, `VIRTUAL -> REAL`, which rewrites the address of every packet;
//! 3. **prefix**, `VIRTUAL/N -> REAL/N`, which moves a whole subnet and keeps the host
//!    bits (longest prefix first).
//!
//! For that to be reversible, the table must be a bijection between disjoint sets:
//! every REAL endpoint belongs to one VIRTUAL, no address is both a VIRTUAL and a
//! REAL, and an address that is the REAL of an address mapping is not also the REAL of
//! a port-scoped one (a reply from it could not tell which VIRTUAL to restore).
//! The `validate` module enforces it.

use core::{fmt, net::IpAddr};

use crate::{
    maps::{Addr, Endpoint, PrefixTarget},
    ports::PortRange,
    protocol::Protocol,
};

/// The two directions, for code that is not on the packet path (the programs use the
/// counter indices `counters::INGRESS` and `counters::EGRESS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Packets arriving on an attached interface: REAL -> VIRTUAL.
    Ingress,
    /// Packets leaving through an attached interface: VIRTUAL -> REAL.
    Egress,
}

impl Direction {
    /// Index of this direction in the counters map.
    pub const fn index(self) -> u32 {
        match self {
            Self::Ingress => crate::counters::INGRESS,
            Self::Egress => crate::counters::EGRESS,
        }
    }
}

/// Where one address field of a packet (with its port) goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: Addr,
    /// The new port, big-endian; `None` leaves the port alone (an address mapping).
    pub port: Option<[u8; 2]>,
}

/// What the rewrite does to a packet; `None` leaves that side alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rewrite {
    pub src: Option<Target>,
    pub dst: Option<Target>,
}

impl Rewrite {
    #[inline(always)]
    pub const fn is_empty(&self) -> bool {
        self.src.is_none() && self.dst.is_none()
    }
}

/// The transport protocol and ports of a packet that has them (TCP or UDP, and not a
/// non-first fragment), big-endian as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketPorts {
    pub protocol: u8,
    pub src: [u8; 2],
    pub dst: [u8; 2],
}

/// Looks both sides of a packet up in the tables of its direction: the port-scoped
/// table first (when the packet has ports), then the address table, then the prefix
/// table (longest prefix). The two sides are independent: a packet between two mapped
/// hosts has both rewritten. The programs follow the same order; this function states
/// it for the reference model.
pub fn plan_rewrite<P, A, L>(
    src: &Addr,
    dst: &Addr,
    ports: Option<PacketPorts>,
    port_lookup: P,
    addr_lookup: A,
    prefix_lookup: L,
) -> Rewrite
where
    P: Fn(&Endpoint) -> Option<Endpoint>,
    A: Fn(&Addr) -> Option<Addr>,
    L: Fn(&Addr) -> Option<PrefixTarget>,
{
    let side = |addr: &Addr, port: Option<[u8; 2]>| {
        if let (Some(ports), Some(port)) = (ports, port)
            && let Some(target) = port_lookup(&Endpoint::new(*addr, port, ports.protocol))
        {
            return Some(Target { addr: target.addr, port: Some(target.port) });
        }
        if let Some(target) = addr_lookup(addr) {
            return Some(Target { addr: target, port: None });
        }
        prefix_lookup(addr).map(|target| Target { addr: target.translate(addr), port: None })
    };
    Rewrite { src: side(src, ports.map(|ports| ports.src)), dst: side(dst, ports.map(|ports| ports.dst)) }
}

/// An address mapping: every packet to or from `virtual_addr` is rewritten to or from
/// `real_addr`, whatever its ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct AddressMapping {
    #[cfg_attr(feature = "user", serde(rename = "virtual"))]
    pub virtual_addr: IpAddr,
    #[cfg_attr(feature = "user", serde(rename = "real"))]
    pub real_addr: IpAddr,
}

/// A port-scoped mapping: `count` consecutive ports from `virtual_first` on
/// `virtual_addr` go to as many consecutive ports from `real_first` on `real_addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub virtual_addr: IpAddr,
    pub virtual_first: u16,
    pub real_addr: IpAddr,
    pub real_first: u16,
    /// How many ports, at least 1.
    pub count: u16,
}

impl PortMapping {
    /// The (VIRTUAL port, REAL port) pairs of the range.
    pub fn ports(&self) -> impl Iterator<Item = (u16, u16)> + use<> {
        let (virtual_first, real_first) = (self.virtual_first, self.real_first);
        (0..self.count).map(move |offset| (virtual_first + offset, real_first + offset))
    }

    /// The VIRTUAL ports, `virtual_first` and the `count - 1` after it.
    pub const fn virtual_ports(&self) -> PortRange {
        PortRange::from_count(self.virtual_first, self.count)
    }

    /// The REAL ports.
    pub const fn real_ports(&self) -> PortRange {
        PortRange::from_count(self.real_first, self.count)
    }

    /// The (VIRTUAL, REAL) endpoints of each port, as the port maps key them.
    #[cfg(any(test, feature = "user"))]
    pub fn endpoints(&self) -> impl Iterator<Item = (Endpoint, Endpoint)> + use<> {
        let (protocol, virtual_addr, real_addr) =
            (self.protocol.number(), Addr::from(self.virtual_addr), Addr::from(self.real_addr));
        self.ports().map(move |(virtual_port, real_port)| {
            (
                Endpoint::new(virtual_addr, virtual_port.to_be_bytes(), protocol),
                Endpoint::new(real_addr, real_port.to_be_bytes(), protocol),
            )
        })
    }
}

/// A prefix mapping (NETMAP-style): addresses in `virtual_net/len` go to the same host
/// bits in `real_net/len`. `len` counts bits of the address's own family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PrefixMapping {
    pub virtual_net: IpAddr,
    pub real_net: IpAddr,
    pub len: u8,
}

impl PrefixMapping {
    /// The prefix length in the maps' 16-byte form (IPv4 is IPv4-mapped: 96 + len).
    pub const fn key_len(net: IpAddr, len: u8) -> u32 {
        match net {
            IpAddr::V4(_) => 96 + len as u32,
            IpAddr::V6(_) => len as u32,
        }
    }

    /// The VIRTUAL side, `virtual_net/len` (a length too long for the family is cut
    /// to the family's: the table refuses such a mapping before it is used).
    #[cfg(any(test, feature = "user"))]
    pub fn virtual_prefix(&self) -> crate::prefix::Prefix {
        crate::prefix::Prefix::clamped(self.virtual_net, self.len)
    }

    /// The REAL side, `real_net/len`.
    #[cfg(any(test, feature = "user"))]
    pub fn real_prefix(&self) -> crate::prefix::Prefix {
        crate::prefix::Prefix::clamped(self.real_net, self.len)
    }
}

/// An address and port in the form `ADDR:PORT/PROTO` (`[ADDR]:PORT/PROTO` for IPv6),
/// for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShowEndpoint(pub IpAddr, pub u16, pub Protocol);

impl fmt::Display for ShowEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = self.2;
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}:{}/{protocol}", self.1),
            IpAddr::V6(v6) => write!(f, "[{v6}]:{}/{protocol}", self.1),
        }
    }
}
