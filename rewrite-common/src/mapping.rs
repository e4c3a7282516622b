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
//! Two kinds of mapping share that table, and the most specific one wins:
//! 1. **port-scoped**, `VIRTUAL:PORT/PROTO -> REAL:PORT/PROTO` (one entry per port of a
//!    range), which rewrites the address and the port of that service only;
//! 2. **address**, `VIRTUAL -> REAL`, which rewrites the address of every packet.
//!
//! For that to be reversible, the table must be a bijection between disjoint sets:
//! every REAL endpoint belongs to one VIRTUAL, no address is both a VIRTUAL and a
//! REAL, and an address that is the REAL of an address mapping is not also the REAL of
//! a port-scoped one (a reply from it could not tell which VIRTUAL to restore).
//! [`plan_add`] and [`plan_add_ports`] enforce it.

use core::{fmt, net::IpAddr};

use crate::maps::{Addr, Endpoint, IPPROTO_TCP, IPPROTO_UDP};

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
/// table first (when the packet has ports), then the address table. The two sides are
/// independent: a packet between two mapped hosts has both rewritten.
#[inline(always)]
pub fn plan_rewrite<P, A>(src: &Addr, dst: &Addr, ports: Option<PacketPorts>, port_lookup: P, addr_lookup: A) -> Rewrite
where
    P: Fn(&Endpoint) -> Option<Endpoint>,
    A: Fn(&Addr) -> Option<Addr>,
{
    let side = |addr: &Addr, port: Option<[u8; 2]>| {
        if let (Some(ports), Some(port)) = (ports, port)
            && let Some(target) = port_lookup(&Endpoint::new(*addr, port, ports.protocol))
        {
            return Some(Target { addr: target.addr, port: Some(target.port) });
        }
        addr_lookup(addr).map(|addr| Target { addr, port: None })
    };
    Rewrite { src: side(src, ports.map(|ports| ports.src)), dst: side(dst, ports.map(|ports| ports.dst)) }
}

/// A port-scoped mapping: `count` consecutive ports from `virtual_first` on
/// `virtual_addr` go to as many consecutive ports from `real_first` on `real_addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortMapping {
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
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
}

/// An address and port in the form `ADDR:PORT/PROTO` (`[ADDR]:PORT/PROTO` for IPv6),
/// for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShowEndpoint(pub IpAddr, pub u16, pub u8);

impl fmt::Display for ShowEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = protocol_name(self.2);
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}:{}/{protocol}", self.1),
            IpAddr::V6(v6) => write!(f, "[{v6}]:{}/{protocol}", self.1),
        }
    }
}

/// "tcp", "udp", or "?" for anything else.
pub const fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        _ => "?",
    }
}

/// Read access to the live (or a modelled) mapping table, for validation.
pub trait MappingView {
    /// The REAL address of `virtual_addr`, if it has an address mapping.
    fn real_of(&self, virtual_addr: IpAddr) -> Option<IpAddr>;
    /// The VIRTUAL address whose address mapping has REAL `real_addr`, if any.
    fn virtual_of(&self, real_addr: IpAddr) -> Option<IpAddr>;
    /// The REAL endpoint of a VIRTUAL endpoint, if a port-scoped mapping has it.
    fn port_real_of(&self, protocol: u8, virtual_addr: IpAddr, port: u16) -> Option<(IpAddr, u16)>;
    /// The VIRTUAL endpoint of a REAL endpoint, if a port-scoped mapping has it.
    fn port_virtual_of(&self, protocol: u8, real_addr: IpAddr, port: u16) -> Option<(IpAddr, u16)>;
    /// Whether some port-scoped mapping has `addr` as its REAL address.
    fn is_port_real(&self, addr: IpAddr) -> bool;
    /// Whether some port-scoped mapping has `addr` as its VIRTUAL address.
    fn is_port_virtual(&self, addr: IpAddr) -> bool;
}

/// Why a mapping cannot be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MappingConflict {
    #[error("VIRTUAL and REAL are the same address ({0}): a mapping must change the address")]
    SameAddress(IpAddr),
    #[error("VIRTUAL {virtual_addr} and REAL {real_addr} are of different address families")]
    MixedFamilies { virtual_addr: IpAddr, real_addr: IpAddr },
    #[error("{addr} is {reason} and cannot be used in a mapping")]
    UnusableAddress { addr: IpAddr, reason: &'static str },
    #[error("port 0 cannot be mapped")]
    ZeroPort,
    #[error("the port range starting at {first} with {count} ports runs past 65535")]
    PortRangeOverflow { first: u16, count: u16 },
    #[error(
        "REAL {real} is already the target of {existing_virtual} -> {real}: ingress packets \
         from {real} could not tell which VIRTUAL to restore; delete that mapping first"
    )]
    RealTaken { real: IpAddr, existing_virtual: IpAddr },
    #[error(
        "VIRTUAL {virtual_addr} is the REAL address of mapping {other_virtual} -> {virtual_addr}: \
         an address cannot be both a VIRTUAL and a REAL"
    )]
    VirtualIsReal { virtual_addr: IpAddr, other_virtual: IpAddr },
    #[error(
        "REAL {real} is itself a VIRTUAL address (mapping {real} -> {its_real}): an address \
         cannot be both a VIRTUAL and a REAL"
    )]
    RealIsVirtual { real: IpAddr, its_real: IpAddr },
    #[error("{addr} is the REAL address of a port-scoped mapping: it cannot also be a VIRTUAL")]
    VirtualIsPortReal { addr: IpAddr },
    #[error("{addr} is the VIRTUAL address of a port-scoped mapping: it cannot also be a REAL")]
    RealIsPortVirtual { addr: IpAddr },
    #[error(
        "REAL {real} is already the REAL of a port-scoped mapping: ingress packets from it could \
         not tell which VIRTUAL to restore"
    )]
    RealOverlapsPortReal { real: IpAddr },
    #[error(
        "REAL {real} is already the target of address mapping {existing_virtual} -> {real}: ingress \
         packets from it could not tell which VIRTUAL to restore"
    )]
    PortRealOverlapsAddress { real: IpAddr, existing_virtual: IpAddr },
    #[error("VIRTUAL {virtual_endpoint} is already mapped to {existing_real}; delete that mapping first")]
    PortTaken { virtual_endpoint: ShowEndpoint, existing_real: ShowEndpoint },
    #[error(
        "REAL {real_endpoint} is already the target of {existing_virtual}: ingress packets from it \
         could not tell which VIRTUAL to restore; delete that mapping first"
    )]
    RealPortTaken { real_endpoint: ShowEndpoint, existing_virtual: ShowEndpoint },
}

/// What adding a mapping does to the table, once it is known to be valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddPlan {
    /// The same mapping is already there.
    Unchanged,
    /// VIRTUAL is new (for a port range: at least one of its ports is).
    Insert,
    /// VIRTUAL was mapped to `old_real`, which is released.
    Replace { old_real: IpAddr },
}

/// Addresses that can never be a host's routable unicast address on a wire.
fn unusable_reason(addr: IpAddr) -> Option<&'static str> {
    if addr.is_unspecified() {
        return Some("the unspecified address");
    }
    if addr.is_multicast() {
        return Some("a multicast address");
    }
    if addr.is_loopback() {
        return Some("a loopback address (loopback traffic never crosses an attached interface)");
    }
    match addr {
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address (it never leaves its link)"),
        // Neighbour discovery and MLD run on link-local addresses; rewriting them would
        // break the link itself.
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("a link-local address (it never leaves its link)"),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped IPv6 address (write the IPv4 address instead)")
        }
        _ => None,
    }
}

/// The checks every mapping kind shares: usable addresses of one family.
fn check_addresses(virtual_addr: IpAddr, real_addr: IpAddr) -> Result<(), MappingConflict> {
    for addr in [virtual_addr, real_addr] {
        if let Some(reason) = unusable_reason(addr) {
            return Err(MappingConflict::UnusableAddress { addr, reason });
        }
    }
    if virtual_addr.is_ipv4() != real_addr.is_ipv4() {
        return Err(MappingConflict::MixedFamilies { virtual_addr, real_addr });
    }
    Ok(())
}

/// Checks that the address mapping `virtual_addr -> real_addr` keeps the table a
/// bijection between disjoint sets, and says what adding it changes.
pub fn plan_add(table: &impl MappingView, virtual_addr: IpAddr, real_addr: IpAddr) -> Result<AddPlan, MappingConflict> {
    check_addresses(virtual_addr, real_addr)?;
    if virtual_addr == real_addr {
        return Err(MappingConflict::SameAddress(virtual_addr));
    }
    if let Some(other_virtual) = table.virtual_of(virtual_addr) {
        return Err(MappingConflict::VirtualIsReal { virtual_addr, other_virtual });
    }
    if table.is_port_real(virtual_addr) {
        return Err(MappingConflict::VirtualIsPortReal { addr: virtual_addr });
    }
    if let Some(its_real) = table.real_of(real_addr) {
        return Err(MappingConflict::RealIsVirtual { real: real_addr, its_real });
    }
    if table.is_port_virtual(real_addr) {
        return Err(MappingConflict::RealIsPortVirtual { addr: real_addr });
    }
    if table.is_port_real(real_addr) {
        return Err(MappingConflict::RealOverlapsPortReal { real: real_addr });
    }
    let current_real = table.real_of(virtual_addr);
    if current_real == Some(real_addr) {
        return Ok(AddPlan::Unchanged);
    }
    if let Some(existing_virtual) = table.virtual_of(real_addr) {
        return Err(MappingConflict::RealTaken { real: real_addr, existing_virtual });
    }
    Ok(match current_real {
        Some(old_real) => AddPlan::Replace { old_real },
        None => AddPlan::Insert,
    })
}

/// Checks a port-scoped mapping against the table, port by port. Re-adding ports that
/// are mapped the same way is allowed (`Unchanged` if all are); mapping a VIRTUAL
/// endpoint elsewhere is not: delete it first.
pub fn plan_add_ports(table: &impl MappingView, mapping: &PortMapping) -> Result<AddPlan, MappingConflict> {
    let PortMapping { protocol, virtual_addr, virtual_first, real_addr, real_first, count } = *mapping;
    check_addresses(virtual_addr, real_addr)?;
    if virtual_first == 0 || real_first == 0 {
        return Err(MappingConflict::ZeroPort);
    }
    for first in [virtual_first, real_first] {
        if u32::from(first) + u32::from(count) - 1 > u32::from(u16::MAX) {
            return Err(MappingConflict::PortRangeOverflow { first, count });
        }
    }
    // Moving a service to another port of the same host would make the address both a
    // VIRTUAL and a REAL; a port-scoped mapping moves a service to another host.
    if virtual_addr == real_addr {
        return Err(MappingConflict::SameAddress(virtual_addr));
    }
    if let Some(other_virtual) = table.virtual_of(virtual_addr) {
        return Err(MappingConflict::VirtualIsReal { virtual_addr, other_virtual });
    }
    if table.is_port_real(virtual_addr) {
        return Err(MappingConflict::VirtualIsPortReal { addr: virtual_addr });
    }
    if table.is_port_virtual(real_addr) {
        return Err(MappingConflict::RealIsPortVirtual { addr: real_addr });
    }
    if let Some(its_real) = table.real_of(real_addr) {
        return Err(MappingConflict::RealIsVirtual { real: real_addr, its_real });
    }
    if let Some(existing_virtual) = table.virtual_of(real_addr) {
        return Err(MappingConflict::PortRealOverlapsAddress { real: real_addr, existing_virtual });
    }
    let mut all_present = true;
    for (virtual_port, real_port) in mapping.ports() {
        match table.port_real_of(protocol, virtual_addr, virtual_port) {
            Some(existing) if existing == (real_addr, real_port) => continue,
            Some((existing_addr, existing_port)) => {
                return Err(MappingConflict::PortTaken {
                    virtual_endpoint: ShowEndpoint(virtual_addr, virtual_port, protocol),
                    existing_real: ShowEndpoint(existing_addr, existing_port, protocol),
                });
            }
            None => all_present = false,
        }
        if let Some((existing_addr, existing_port)) = table.port_virtual_of(protocol, real_addr, real_port) {
            return Err(MappingConflict::RealPortTaken {
                real_endpoint: ShowEndpoint(real_addr, real_port, protocol),
                existing_virtual: ShowEndpoint(existing_addr, existing_port, protocol),
            });
        }
    }
    Ok(if all_present { AddPlan::Unchanged } else { AddPlan::Insert })
}
