//! The rules that keep the mapping table reversible (see `mapping`): every REAL belongs
//! to one VIRTUAL, no address is both a VIRTUAL and a REAL, and no reply could match
//! two mappings. Checked before anything is written, against the live table or the
//! model.

use std::net::IpAddr;

use crate::{
    mapping::{PortMapping, PrefixMapping, ShowEndpoint},
    prefix::Prefix,
    protocol::Protocol,
};

/// Read access to the live (or a modelled) mapping table, for validation.
pub trait MappingView {
    /// The REAL address of `virtual_addr`, if it has an address mapping.
    fn real_of(&self, virtual_addr: IpAddr) -> Option<IpAddr>;
    /// The VIRTUAL address whose address mapping has REAL `real_addr`, if any.
    fn virtual_of(&self, real_addr: IpAddr) -> Option<IpAddr>;
    /// The REAL endpoint of a VIRTUAL endpoint, if a port-scoped mapping has it.
    fn port_real_of(&self, protocol: Protocol, virtual_addr: IpAddr, port: u16) -> Option<(IpAddr, u16)>;
    /// The VIRTUAL endpoint of a REAL endpoint, if a port-scoped mapping has it.
    fn port_virtual_of(&self, protocol: Protocol, real_addr: IpAddr, port: u16) -> Option<(IpAddr, u16)>;
    /// Whether some port-scoped mapping has `addr` as its REAL address.
    fn is_port_real(&self, addr: IpAddr) -> bool;
    /// Whether some port-scoped mapping has `addr` as its VIRTUAL address.
    fn is_port_virtual(&self, addr: IpAddr) -> bool;
    /// Every prefix mapping (there are few).
    fn prefixes(&self) -> Vec<PrefixMapping>;
    /// Some address used by an address or port-scoped mapping, on its REAL side
    /// (`real_side`) or its VIRTUAL side, that lies in `prefix`.
    fn address_in(&self, prefix: Prefix, real_side: bool) -> Option<IpAddr>;
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
    #[error("{net}/{len} has host bits set; write the network address ({len} bits)")]
    HostBitsSet { net: IpAddr, len: u8 },
    #[error("a prefix length must be from 1 to {max} for this address family, not {len}")]
    BadPrefixLength { len: u8, max: u8 },
    #[error("prefix {net}/{len} contains {range}/{range_len}, {reason}, which cannot be used in a mapping")]
    PrefixContainsUnusable { net: IpAddr, len: u8, range: IpAddr, range_len: u8, reason: &'static str },
    #[error(
        "{addr} lies in REAL prefix {net}/{len} of mapping {virtual_net}/{len} -> {net}/{len}: \
         replies from it could match two mappings"
    )]
    InRealPrefix { addr: IpAddr, net: IpAddr, len: u8, virtual_net: IpAddr },
    #[error("{addr} lies in VIRTUAL prefix {net}/{len}: an address cannot be both a VIRTUAL and a REAL")]
    InVirtualPrefix { addr: IpAddr, net: IpAddr, len: u8 },
    #[error(
        "REAL prefix {real_net}/{len} overlaps REAL prefix {other_net}/{other_len}: replies from the \
         overlap could match two mappings"
    )]
    RealPrefixOverlap { real_net: IpAddr, len: u8, other_net: IpAddr, other_len: u8 },
    #[error(
        "prefix {net}/{len} overlaps {other_net}/{other_len} on the other side: an address cannot be both a VIRTUAL and a REAL"
    )]
    PrefixSidesOverlap { net: IpAddr, len: u8, other_net: IpAddr, other_len: u8 },
    #[error(
        "VIRTUAL prefix {virtual_net}/{len} overlaps VIRTUAL prefix {other_net}/{other_len}: addresses in the \
         overlap would be restored from two REAL prefixes"
    )]
    VirtualPrefixOverlap { virtual_net: IpAddr, len: u8, other_net: IpAddr, other_len: u8 },
    #[error(
        "VIRTUAL prefix {net}/{len} contains {addr}, the VIRTUAL of another mapping: two REALs would restore to it"
    )]
    PrefixContainsVirtual { net: IpAddr, len: u8, addr: IpAddr },
    #[error("{virtual_net}/{len} is already mapped to {existing_real}/{len}; delete that mapping first")]
    PrefixTaken { virtual_net: IpAddr, len: u8, existing_real: IpAddr },
    #[error("prefix {net}/{len} contains {addr}, which another mapping already uses on the other side")]
    PrefixContainsOtherSide { net: IpAddr, len: u8, addr: IpAddr },
    #[error(
        "REAL prefix {net}/{len} contains {addr}, the REAL of another mapping: replies from it could match two mappings"
    )]
    PrefixContainsReal { net: IpAddr, len: u8, addr: IpAddr },
}

impl MappingConflict {
    /// Whether the conflict is about `spec`'s REAL side (so a message points at the REAL
    /// value a config wrote) rather than its VIRTUAL side.
    pub fn is_about_real(&self, spec: &crate::spec::MappingSpec) -> bool {
        use crate::spec::MappingSpec;
        let real = spec.real_addr();
        match *self {
            Self::SameAddress(_)
            | Self::MixedFamilies { .. }
            | Self::RealTaken { .. }
            | Self::RealIsVirtual { .. }
            | Self::RealIsPortVirtual { .. }
            | Self::RealOverlapsPortReal { .. }
            | Self::PortRealOverlapsAddress { .. }
            | Self::RealPortTaken { .. }
            | Self::RealPrefixOverlap { .. }
            | Self::PrefixContainsReal { .. } => true,
            Self::VirtualIsReal { .. }
            | Self::VirtualIsPortReal { .. }
            | Self::PortTaken { .. }
            | Self::VirtualPrefixOverlap { .. }
            | Self::PrefixContainsVirtual { .. }
            | Self::PrefixTaken { .. }
            | Self::BadPrefixLength { .. } => false,
            Self::UnusableAddress { addr, .. }
            | Self::InRealPrefix { addr, .. }
            | Self::InVirtualPrefix { addr, .. } => addr == real,
            Self::HostBitsSet { net, .. }
            | Self::PrefixContainsUnusable { net, .. }
            | Self::PrefixSidesOverlap { net, .. }
            | Self::PrefixContainsOtherSide { net, .. } => net == real,
            Self::ZeroPort => matches!(spec, MappingSpec::Ports(ports) if ports.virtual_first != 0),
            Self::PortRangeOverflow { first, .. } => {
                matches!(spec, MappingSpec::Ports(ports) if ports.real_first == first && ports.virtual_first != first)
            }
        }
    }
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

/// The address blocks no mapping may touch, with why: a prefix that contains any part
/// of one is refused, as an address inside one is.
const UNUSABLE_BLOCKS: [(IpAddr, u8, &str); 10] = [
    (IpAddr::V4(std::net::Ipv4Addr::new(0, 0, 0, 0)), 8, "the \"this network\" block of the unspecified address"),
    (IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)), 8, "the loopback block"),
    (IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 0, 0)), 16, "the link-local block"),
    (IpAddr::V4(std::net::Ipv4Addr::new(224, 0, 0, 0)), 4, "the multicast block"),
    (IpAddr::V4(std::net::Ipv4Addr::new(255, 255, 255, 255)), 32, "the broadcast address"),
    (IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 128, "the unspecified address"),
    (IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 128, "the loopback address"),
    (IpAddr::V6(std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10, "the link-local block"),
    (IpAddr::V6(std::net::Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)), 8, "the multicast block"),
    (IpAddr::V6(std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0)), 96, "the IPv4-mapped block"),
];

/// The first unusable block `net/len` touches, if any.
fn unusable_block(net: IpAddr, len: u8) -> Option<(IpAddr, u8, &'static str)> {
    UNUSABLE_BLOCKS.into_iter().find(|&(block, block_len, _)| overlap(net, len, block, block_len))
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

/// Checks a single address (of an address or port-scoped mapping) against the prefix
/// mappings: a REAL must not lie in any prefix (a REAL one would make replies
/// ambiguous, a VIRTUAL one would make it both), and a VIRTUAL must not lie in a REAL
/// prefix.
fn check_against_prefixes(
    table: &impl MappingView,
    virtual_addr: IpAddr,
    real_addr: IpAddr,
) -> Result<(), MappingConflict> {
    for prefix in table.prefixes() {
        let len = prefix.len;
        // A VIRTUAL inside a VIRTUAL prefix would make two REALs restore to it: its own,
        // and the prefix's translation of it. Every other pairing crosses sides.
        for addr in [real_addr, virtual_addr] {
            if prefix.real_prefix().contains(addr) {
                return Err(MappingConflict::InRealPrefix {
                    addr,
                    net: prefix.real_net,
                    len,
                    virtual_net: prefix.virtual_net,
                });
            }
            if prefix.virtual_prefix().contains(addr) {
                return Err(MappingConflict::InVirtualPrefix { addr, net: prefix.virtual_net, len });
            }
        }
    }
    Ok(())
}

/// Checks that `virtual_addr` and `real_addr` differ, and that neither is already used
/// on the other side by an address or port-scoped mapping.
fn check_sides_disjoint(
    table: &impl MappingView,
    virtual_addr: IpAddr,
    real_addr: IpAddr,
) -> Result<(), MappingConflict> {
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
    Ok(())
}

/// Checks that the address mapping `virtual_addr -> real_addr` keeps the table a
/// bijection between disjoint sets, and says what adding it changes.
pub fn plan_add(table: &impl MappingView, virtual_addr: IpAddr, real_addr: IpAddr) -> Result<AddPlan, MappingConflict> {
    check_addresses(virtual_addr, real_addr)?;
    check_sides_disjoint(table, virtual_addr, real_addr)?;
    if table.is_port_real(real_addr) {
        return Err(MappingConflict::RealOverlapsPortReal { real: real_addr });
    }
    check_against_prefixes(table, virtual_addr, real_addr)?;
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
    check_sides_disjoint(table, virtual_addr, real_addr)?;
    if let Some(existing_virtual) = table.virtual_of(real_addr) {
        return Err(MappingConflict::PortRealOverlapsAddress { real: real_addr, existing_virtual });
    }
    check_against_prefixes(table, virtual_addr, real_addr)?;
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
        // The same reverse entry may be there already, left by an add that was
        // interrupted before its forward entries: adding the mapping again completes it.
        if let Some((existing_addr, existing_port)) = table.port_virtual_of(protocol, real_addr, real_port)
            && (existing_addr, existing_port) != (virtual_addr, virtual_port)
        {
            return Err(MappingConflict::RealPortTaken {
                real_endpoint: ShowEndpoint(real_addr, real_port, protocol),
                existing_virtual: ShowEndpoint(existing_addr, existing_port, protocol),
            });
        }
    }
    Ok(if all_present { AddPlan::Unchanged } else { AddPlan::Insert })
}

/// Checks a prefix mapping: same family and length on both sides, no host bits, no
/// REAL prefix overlapping another REAL prefix or any REAL address, and neither side
/// overlapping anything on the other side.
pub fn plan_add_prefix(table: &impl MappingView, mapping: &PrefixMapping) -> Result<AddPlan, MappingConflict> {
    let PrefixMapping { virtual_net, real_net, len } = *mapping;
    if virtual_net.is_ipv4() != real_net.is_ipv4() {
        return Err(MappingConflict::MixedFamilies { virtual_addr: virtual_net, real_addr: real_net });
    }
    let max = if virtual_net.is_ipv4() { 32 } else { 128 };
    if len == 0 || len > max {
        return Err(MappingConflict::BadPrefixLength { len, max });
    }
    for net in [virtual_net, real_net] {
        if Prefix::clamped(net, len).has_host_bits() {
            return Err(MappingConflict::HostBitsSet { net, len });
        }
        if let Some(reason) = unusable_reason(net) {
            return Err(MappingConflict::UnusableAddress { addr: net, reason });
        }
        if let Some((range, range_len, reason)) = unusable_block(net, len) {
            return Err(MappingConflict::PrefixContainsUnusable { net, len, range, range_len, reason });
        }
    }
    if overlap(virtual_net, len, real_net, len) {
        return Err(MappingConflict::PrefixSidesOverlap { net: virtual_net, len, other_net: real_net, other_len: len });
    }
    for other in table.prefixes() {
        if other.virtual_net == virtual_net && other.len == len {
            if other.real_net == real_net {
                return Ok(AddPlan::Unchanged);
            }
            return Err(MappingConflict::PrefixTaken { virtual_net, len, existing_real: other.real_net });
        }
        if overlap(virtual_net, len, other.virtual_net, other.len) {
            return Err(MappingConflict::VirtualPrefixOverlap {
                virtual_net,
                len,
                other_net: other.virtual_net,
                other_len: other.len,
            });
        }
        if overlap(real_net, len, other.real_net, other.len) {
            return Err(MappingConflict::RealPrefixOverlap {
                real_net,
                len,
                other_net: other.real_net,
                other_len: other.len,
            });
        }
        for (net, other_net) in [(virtual_net, other.real_net), (real_net, other.virtual_net)] {
            if overlap(net, len, other_net, other.len) {
                return Err(MappingConflict::PrefixSidesOverlap { net, len, other_net, other_len: other.len });
            }
        }
    }
    if let Some(addr) = table.address_in(Prefix::clamped(real_net, len), true) {
        return Err(MappingConflict::PrefixContainsReal { net: real_net, len, addr });
    }
    if let Some(addr) = table.address_in(Prefix::clamped(real_net, len), false) {
        return Err(MappingConflict::PrefixContainsOtherSide { net: real_net, len, addr });
    }
    if let Some(addr) = table.address_in(Prefix::clamped(virtual_net, len), true) {
        return Err(MappingConflict::PrefixContainsOtherSide { net: virtual_net, len, addr });
    }
    if let Some(addr) = table.address_in(Prefix::clamped(virtual_net, len), false) {
        return Err(MappingConflict::PrefixContainsVirtual { net: virtual_net, len, addr });
    }
    Ok(AddPlan::Insert)
}

/// Whether `a/a_len` and `b/b_len` share an address.
fn overlap(a: IpAddr, a_len: u8, b: IpAddr, b_len: u8) -> bool {
    Prefix::clamped(a, a_len).overlaps(Prefix::clamped(b, b_len))
}
