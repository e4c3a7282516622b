//! What a mapping means, independent of where it runs.
//!
//! A mapping `VIRTUAL -> REAL` says: the host applications know as VIRTUAL is really
//! reached at REAL. On an attached interface, egress packets have VIRTUAL replaced by
//! REAL (in the destination, and in the source when VIRTUAL is this host's own
//! address), and ingress packets have REAL replaced by VIRTUAL (in the source, and in
//! the destination when REAL is this host's own address). So each direction does two
//! lookups in one table: egress in VIRTUAL -> REAL, ingress in REAL -> VIRTUAL.
//!
//! For that to be reversible, the table must be a bijection between disjoint sets:
//! every REAL belongs to one VIRTUAL, and no address is both a VIRTUAL and a REAL.
//! [`plan_add`] enforces it.

use core::net::IpAddr;

use crate::maps::Addr;

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

/// The addresses a packet gets after the rewrite; `None` leaves the field alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AddressRewrite {
    pub new_src: Option<Addr>,
    pub new_dst: Option<Addr>,
}

impl AddressRewrite {
    #[inline(always)]
    pub const fn is_empty(&self) -> bool {
        self.new_src.is_none() && self.new_dst.is_none()
    }
}

/// Looks up both addresses of a packet in the table of its direction (forward on
/// egress, reverse on ingress). The two lookups are independent: a packet between
/// two mapped hosts has both rewritten.
#[inline(always)]
pub fn plan_rewrite<F>(src: &Addr, dst: &Addr, lookup: F) -> AddressRewrite
where
    F: Fn(&Addr) -> Option<Addr>,
{
    AddressRewrite { new_src: lookup(src), new_dst: lookup(dst) }
}

/// Read access to the live (or a modelled) mapping table, for validation.
pub trait MappingView {
    /// The REAL address of `virtual_addr`, if it is mapped.
    fn real_of(&self, virtual_addr: IpAddr) -> Option<IpAddr>;
    /// The VIRTUAL address whose REAL is `real_addr`, if any.
    fn virtual_of(&self, real_addr: IpAddr) -> Option<IpAddr>;
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
}

/// What adding a mapping does to the table, once it is known to be valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddPlan {
    /// The same mapping is already there.
    Unchanged,
    /// VIRTUAL is new.
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

/// Checks that `virtual_addr -> real_addr` keeps the table a bijection between
/// disjoint sets, and says what adding it changes.
pub fn plan_add(table: &impl MappingView, virtual_addr: IpAddr, real_addr: IpAddr) -> Result<AddPlan, MappingConflict> {
    for addr in [virtual_addr, real_addr] {
        if let Some(reason) = unusable_reason(addr) {
            return Err(MappingConflict::UnusableAddress { addr, reason });
        }
    }
    if virtual_addr.is_ipv4() != real_addr.is_ipv4() {
        return Err(MappingConflict::MixedFamilies { virtual_addr, real_addr });
    }
    if virtual_addr == real_addr {
        return Err(MappingConflict::SameAddress(virtual_addr));
    }
    if let Some(other_virtual) = table.virtual_of(virtual_addr) {
        return Err(MappingConflict::VirtualIsReal { virtual_addr, other_virtual });
    }
    if let Some(its_real) = table.real_of(real_addr) {
        return Err(MappingConflict::RealIsVirtual { real: real_addr, its_real });
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

/// An in-memory table with the same rules as the live maps: the reference the tests
/// compare the kernel against, and what userspace validates a batch against.
#[cfg(any(test, feature = "user"))]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelTable {
    forward: std::collections::BTreeMap<IpAddr, IpAddr>,
    reverse: std::collections::BTreeMap<IpAddr, IpAddr>,
}

#[cfg(any(test, feature = "user"))]
impl ModelTable {
    pub fn add(&mut self, virtual_addr: IpAddr, real_addr: IpAddr) -> Result<AddPlan, MappingConflict> {
        let plan = plan_add(self, virtual_addr, real_addr)?;
        if let AddPlan::Replace { old_real } = plan {
            self.reverse.remove(&old_real);
        }
        self.forward.insert(virtual_addr, real_addr);
        self.reverse.insert(real_addr, virtual_addr);
        Ok(plan)
    }

    /// Removes the mapping of `virtual_addr` and returns its REAL, if it was mapped.
    pub fn remove(&mut self, virtual_addr: IpAddr) -> Option<IpAddr> {
        let real = self.forward.remove(&virtual_addr)?;
        self.reverse.remove(&real);
        Some(real)
    }

    /// Mappings as (VIRTUAL, REAL), ordered by VIRTUAL.
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, IpAddr)> + '_ {
        self.forward.iter().map(|(v, r)| (*v, *r))
    }

    /// Where the reference model says a packet's addresses end up, for `direction`.
    pub fn rewrite(&self, direction: Direction, src: IpAddr, dst: IpAddr) -> AddressRewrite {
        let table = match direction {
            Direction::Egress => &self.forward,
            Direction::Ingress => &self.reverse,
        };
        let lookup = |key: &Addr| table.get(&IpAddr::from(*key)).map(|addr| Addr::from(*addr));
        plan_rewrite(&Addr::from(src), &Addr::from(dst), lookup)
    }
}

#[cfg(any(test, feature = "user"))]
impl MappingView for ModelTable {
    fn real_of(&self, virtual_addr: IpAddr) -> Option<IpAddr> {
        self.forward.get(&virtual_addr).copied()
    }
    fn virtual_of(&self, real_addr: IpAddr) -> Option<IpAddr> {
        self.reverse.get(&real_addr).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address parses")
    }

    #[test]
    fn egress_rewrites_virtual_destination_and_own_virtual_source() {
        let mut table = ModelTable::default();
        table.add(ip("10.200.0.2"), ip("10.100.0.2")).expect("valid mapping");
        table.add(ip("10.200.0.1"), ip("10.100.0.1")).expect("valid mapping");
        let out = table.rewrite(Direction::Egress, ip("10.200.0.1"), ip("10.200.0.2"));
        assert_eq!(out.new_src, Some(Addr::from(ip("10.100.0.1"))));
        assert_eq!(out.new_dst, Some(Addr::from(ip("10.100.0.2"))));
        // Egress never looks at REAL addresses.
        let out = table.rewrite(Direction::Egress, ip("10.100.0.1"), ip("10.100.0.2"));
        assert!(out.is_empty(), "egress must not touch REAL addresses: {out:?}");
    }

    #[test]
    fn ingress_restores_virtual_for_real_source_and_own_real_destination() {
        let mut table = ModelTable::default();
        table.add(ip("10.200.0.2"), ip("10.100.0.2")).expect("valid mapping");
        let out = table.rewrite(Direction::Ingress, ip("10.100.0.2"), ip("10.100.0.9"));
        assert_eq!(out, AddressRewrite { new_src: Some(Addr::from(ip("10.200.0.2"))), new_dst: None });
        let out = table.rewrite(Direction::Ingress, ip("10.100.0.9"), ip("10.100.0.2"));
        assert_eq!(out, AddressRewrite { new_src: None, new_dst: Some(Addr::from(ip("10.200.0.2"))) });
        let out = table.rewrite(Direction::Ingress, ip("10.200.0.2"), ip("10.100.0.9"));
        assert!(out.is_empty(), "ingress must not touch VIRTUAL addresses: {out:?}");
    }

    #[test]
    fn add_rejects_conflicts_with_the_conflicting_mapping_named() {
        let mut table = ModelTable::default();
        table.add(ip("10.200.0.2"), ip("10.100.0.2")).expect("valid mapping");
        assert_eq!(
            table.add(ip("10.200.0.3"), ip("10.100.0.2")),
            Err(MappingConflict::RealTaken { real: ip("10.100.0.2"), existing_virtual: ip("10.200.0.2") })
        );
        assert_eq!(
            table.add(ip("10.100.0.2"), ip("10.100.0.7")),
            Err(MappingConflict::VirtualIsReal { virtual_addr: ip("10.100.0.2"), other_virtual: ip("10.200.0.2") })
        );
        assert_eq!(
            table.add(ip("10.200.0.9"), ip("10.200.0.2")),
            Err(MappingConflict::RealIsVirtual { real: ip("10.200.0.2"), its_real: ip("10.100.0.2") })
        );
        assert_eq!(table.add(ip("10.1.1.1"), ip("10.1.1.1")), Err(MappingConflict::SameAddress(ip("10.1.1.1"))));
        for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "127.0.0.1", "169.254.1.1"] {
            assert!(
                matches!(table.add(ip(bad), ip("10.9.9.9")), Err(MappingConflict::UnusableAddress { .. })),
                "{bad} must be rejected as VIRTUAL"
            );
            assert!(
                matches!(table.add(ip("10.9.9.9"), ip(bad)), Err(MappingConflict::UnusableAddress { .. })),
                "{bad} must be rejected as REAL"
            );
        }
        // Nothing of the rejected adds reached the table.
        assert_eq!(table.iter().collect::<Vec<_>>(), vec![(ip("10.200.0.2"), ip("10.100.0.2"))]);
    }

    #[test]
    fn re_adding_is_unchanged_and_retargeting_releases_the_old_real() {
        let mut table = ModelTable::default();
        assert_eq!(table.add(ip("10.200.0.2"), ip("10.100.0.2")), Ok(AddPlan::Insert));
        assert_eq!(table.add(ip("10.200.0.2"), ip("10.100.0.2")), Ok(AddPlan::Unchanged));
        assert_eq!(table.add(ip("10.200.0.2"), ip("10.100.0.3")), Ok(AddPlan::Replace { old_real: ip("10.100.0.2") }));
        assert_eq!(table.virtual_of(ip("10.100.0.2")), None, "the old REAL must be released");
        // ... so another VIRTUAL may now take it.
        assert_eq!(table.add(ip("10.200.0.4"), ip("10.100.0.2")), Ok(AddPlan::Insert));
        assert_eq!(table.remove(ip("10.200.0.2")), Some(ip("10.100.0.3")));
        assert_eq!(table.virtual_of(ip("10.100.0.3")), None);
    }
}

#[cfg(test)]
mod ipv6_tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address parses")
    }

    #[test]
    fn ipv6_mappings_follow_the_same_rules_and_never_mix_families() {
        let mut table = ModelTable::default();
        table.add(ip("fd00::5"), ip("2001:db8::5")).expect("valid IPv6 mapping");
        let out = table.rewrite(Direction::Egress, ip("2001:db8::1"), ip("fd00::5"));
        assert_eq!(out.new_dst, Some(Addr::from(ip("2001:db8::5"))));
        assert_eq!(
            table.add(ip("fd00::6"), ip("10.0.0.6")),
            Err(MappingConflict::MixedFamilies { virtual_addr: ip("fd00::6"), real_addr: ip("10.0.0.6") })
        );
        for bad in ["::", "::1", "ff02::1", "fe80::1", "::ffff:10.0.0.1"] {
            assert!(
                matches!(table.add(ip(bad), ip("2001:db8::9")), Err(MappingConflict::UnusableAddress { .. })),
                "{bad} must be rejected"
            );
        }
        // An IPv4 mapping and an IPv6 one live side by side in one table.
        table.add(ip("10.200.0.2"), ip("10.100.0.2")).expect("valid IPv4 mapping");
        assert_eq!(table.iter().count(), 2);
    }

    #[test]
    fn ipv4_keys_are_ipv4_mapped_and_round_trip() {
        let v4 = ip("192.0.2.7");
        let key = Addr::from(v4);
        assert!(key.is_v4());
        assert_eq!(key.v4(), [192, 0, 2, 7]);
        assert_eq!(IpAddr::from(key), v4);
        let v6 = ip("2001:db8::7");
        assert!(!Addr::from(v6).is_v4());
        assert_eq!(IpAddr::from(Addr::from(v6)), v6);
    }
}
