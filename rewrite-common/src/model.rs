//! An in-memory mapping table with the same rules as the live maps: the reference the
//! tests compare the kernel against, and what userspace validates against.

use std::{collections::BTreeMap, net::IpAddr};

use crate::{
    mapping::{Direction, PacketPorts, PortMapping, PrefixMapping, Rewrite, plan_rewrite},
    maps::{Addr, Endpoint, PrefixTarget},
    ports::PortRange,
    prefix::Prefix,
    protocol::Protocol,
    spec::MappingSpec,
    validate::{AddPlan, MappingConflict, MappingView, plan_add, plan_add_ports, plan_add_prefix},
};

/// A port-scoped entry's key: protocol number (as packets carry it), address, port.
type EndpointKey = (u8, IpAddr, u16);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelTable {
    forward: BTreeMap<IpAddr, IpAddr>,
    reverse: BTreeMap<IpAddr, IpAddr>,
    port_forward: BTreeMap<EndpointKey, (IpAddr, u16)>,
    port_reverse: BTreeMap<EndpointKey, (IpAddr, u16)>,
    prefixes: Vec<PrefixMapping>,
}

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

    pub fn add_ports(&mut self, mapping: &PortMapping) -> Result<AddPlan, MappingConflict> {
        let plan = plan_add_ports(self, mapping)?;
        for (virtual_port, real_port) in mapping.ports() {
            let protocol = mapping.protocol.number();
            self.port_forward.insert((protocol, mapping.virtual_addr, virtual_port), (mapping.real_addr, real_port));
            self.port_reverse.insert((protocol, mapping.real_addr, real_port), (mapping.virtual_addr, virtual_port));
        }
        Ok(plan)
    }

    pub fn add_prefix(&mut self, mapping: &PrefixMapping) -> Result<AddPlan, MappingConflict> {
        let plan = plan_add_prefix(self, mapping)?;
        if plan == AddPlan::Insert {
            self.prefixes.push(*mapping);
        }
        Ok(plan)
    }

    /// Adds any kind of mapping, checked against the table's rules (see `validate`).
    pub fn add_spec(&mut self, spec: &MappingSpec) -> Result<AddPlan, MappingConflict> {
        match spec {
            MappingSpec::Address { virtual_addr, real_addr } => self.add(*virtual_addr, *real_addr),
            MappingSpec::Ports(mapping) => self.add_ports(mapping),
            MappingSpec::Prefix(mapping) => self.add_prefix(mapping),
        }
    }

    /// Removes any kind of mapping by its VIRTUAL side; whether it was there does not
    /// matter to the callers (a plan removes what the table holds).
    pub fn remove_spec(&mut self, spec: &MappingSpec) {
        match spec {
            MappingSpec::Address { virtual_addr, .. } => {
                self.remove(*virtual_addr);
            }
            MappingSpec::Ports(mapping) => {
                self.remove_ports(mapping.protocol, mapping.virtual_addr, mapping.virtual_ports());
            }
            MappingSpec::Prefix(mapping) => {
                self.remove_prefix(mapping.virtual_net, mapping.len);
            }
        }
    }

    /// The longest prefix mapping whose `from` side (VIRTUAL on egress, REAL on
    /// ingress) contains `addr`, as the trie would find it.
    fn longest_prefix(&self, addr: IpAddr, direction: Direction) -> Option<PrefixTarget> {
        self.prefixes
            .iter()
            .filter_map(|prefix| {
                let (from, to) = match direction {
                    Direction::Egress => (prefix.virtual_net, prefix.real_net),
                    Direction::Ingress => (prefix.real_net, prefix.virtual_net),
                };
                Prefix::clamped(from, prefix.len).contains(addr).then_some((prefix.len, to))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(len, to)| PrefixTarget { network: Addr::from(to), prefix_len: PrefixMapping::key_len(to, len) })
    }

    /// Removes the address mapping of `virtual_addr` and returns its REAL, if any.
    pub fn remove(&mut self, virtual_addr: IpAddr) -> Option<IpAddr> {
        let real = self.forward.remove(&virtual_addr)?;
        self.reverse.remove(&real);
        Some(real)
    }

    /// Removes the port-scoped entries of `virtual_addr` on `ports` (both directions);
    /// returns how many there were.
    pub fn remove_ports(&mut self, protocol: Protocol, virtual_addr: IpAddr, ports: PortRange) -> usize {
        let mut removed = 0;
        let protocol = protocol.number();
        for port in ports.ports() {
            if let Some(real) = self.port_forward.remove(&(protocol, virtual_addr, port)) {
                self.port_reverse.remove(&(protocol, real.0, real.1));
                removed += 1;
            }
        }
        removed
    }

    /// Removes the prefix mapping of VIRTUAL `net`/`len`; returns its REAL network.
    pub fn remove_prefix(&mut self, net: IpAddr, len: u8) -> Option<IpAddr> {
        let index = self.prefixes.iter().position(|prefix| prefix.virtual_net == net && prefix.len == len)?;
        Some(self.prefixes.remove(index).real_net)
    }

    /// Address mappings as (VIRTUAL, REAL), ordered by VIRTUAL.
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, IpAddr)> + '_ {
        self.forward.iter().map(|(v, r)| (*v, *r))
    }

    /// Where the reference model says a packet's addresses (and ports, given as
    /// (protocol, source port, destination port)) end up, for `direction`.
    pub fn rewrite(&self, direction: Direction, src: IpAddr, dst: IpAddr, ports: Option<(u8, u16, u16)>) -> Rewrite {
        let (table, port_table) = match direction {
            Direction::Egress => (&self.forward, &self.port_forward),
            Direction::Ingress => (&self.reverse, &self.port_reverse),
        };
        let ports =
            ports.map(|(protocol, src, dst)| PacketPorts { protocol, src: src.to_be_bytes(), dst: dst.to_be_bytes() });
        let port_lookup = |key: &Endpoint| {
            let found = port_table.get(&(key.protocol, IpAddr::from(key.addr), u16::from_be_bytes(key.port)))?;
            Some(Endpoint::new(Addr::from(found.0), found.1.to_be_bytes(), key.protocol))
        };
        let addr_lookup = |key: &Addr| table.get(&IpAddr::from(*key)).map(|addr| Addr::from(*addr));
        let prefix_lookup = |key: &Addr| self.longest_prefix(IpAddr::from(*key), direction);
        plan_rewrite(&Addr::from(src), &Addr::from(dst), ports, port_lookup, addr_lookup, prefix_lookup)
    }
}

impl MappingView for ModelTable {
    fn real_of(&self, virtual_addr: IpAddr) -> Option<IpAddr> {
        self.forward.get(&virtual_addr).copied()
    }
    fn virtual_of(&self, real_addr: IpAddr) -> Option<IpAddr> {
        self.reverse.get(&real_addr).copied()
    }
    fn port_real_of(&self, protocol: Protocol, virtual_addr: IpAddr, port: u16) -> Option<(IpAddr, u16)> {
        self.port_forward.get(&(protocol.number(), virtual_addr, port)).copied()
    }
    fn port_virtual_of(&self, protocol: Protocol, real_addr: IpAddr, port: u16) -> Option<(IpAddr, u16)> {
        self.port_reverse.get(&(protocol.number(), real_addr, port)).copied()
    }
    fn is_port_real(&self, addr: IpAddr) -> bool {
        self.port_reverse.keys().any(|(_, real, _)| *real == addr)
    }
    fn is_port_virtual(&self, addr: IpAddr) -> bool {
        self.port_forward.keys().any(|(_, virtual_addr, _)| *virtual_addr == addr)
    }
    fn prefixes(&self) -> Vec<PrefixMapping> {
        self.prefixes.clone()
    }
    fn address_in(&self, prefix: Prefix, real_side: bool) -> Option<IpAddr> {
        let (addresses, ports) =
            if real_side { (&self.reverse, &self.port_reverse) } else { (&self.forward, &self.port_forward) };
        addresses.keys().copied().chain(ports.keys().map(|(_, addr, _)| *addr)).find(|addr| prefix.contains(*addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        mapping::Target,
        maps::{IPPROTO_TCP, IPPROTO_UDP},
    };

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address parses")
    }

    fn to(addr: &str) -> Option<Target> {
        Some(Target { addr: Addr::from(ip(addr)), port: None })
    }

    fn to_port(addr: &str, port: u16) -> Option<Target> {
        Some(Target { addr: Addr::from(ip(addr)), port: Some(port.to_be_bytes()) })
    }

    #[test]
    fn prefix_mappings_move_a_subnet_keeping_host_bits_and_lose_to_more_specific_kinds() {
        let mut table = ModelTable::default();
        let subnet = PrefixMapping { virtual_net: ip("10.1.0.0"), real_net: ip("172.20.0.0"), len: 16 };
        assert_eq!(table.add_prefix(&subnet), Ok(AddPlan::Insert));
        assert_eq!(table.add_prefix(&subnet), Ok(AddPlan::Unchanged));
        let client = ip("192.0.2.1");
        let out = table.rewrite(Direction::Egress, client, ip("10.1.3.7"), None);
        assert_eq!(out.dst, to("172.20.3.7"));
        let back = table.rewrite(Direction::Ingress, ip("172.20.3.7"), client, None);
        assert_eq!(back.src, to("10.1.3.7"));
        // Nothing may nest inside a VIRTUAL prefix: two REALs would restore to it.
        let inner = PrefixMapping { virtual_net: ip("10.1.9.0"), real_net: ip("172.30.9.0"), len: 24 };
        assert!(matches!(table.add_prefix(&inner), Err(MappingConflict::VirtualPrefixOverlap { .. })));
        assert!(matches!(table.add(ip("10.1.9.6"), ip("192.0.2.66")), Err(MappingConflict::InVirtualPrefix { .. })));
        // A second, disjoint subnet is fine, and each address finds its own.
        let other = PrefixMapping { virtual_net: ip("10.2.0.0"), real_net: ip("172.30.0.0"), len: 24 };
        assert_eq!(table.add_prefix(&other), Ok(AddPlan::Insert));
        assert_eq!(table.rewrite(Direction::Egress, client, ip("10.2.0.5"), None).dst, to("172.30.0.5"));
        assert!(table.rewrite(Direction::Egress, client, ip("10.3.0.5"), None).is_empty());
    }

    #[test]
    fn prefix_conflicts_are_rejected() {
        let mut table = ModelTable::default();
        let subnet = PrefixMapping { virtual_net: ip("10.1.0.0"), real_net: ip("172.20.0.0"), len: 16 };
        table.add_prefix(&subnet).expect("valid prefix mapping");
        let overlap = PrefixMapping { virtual_net: ip("10.2.0.0"), real_net: ip("172.20.128.0"), len: 17 };
        assert!(matches!(table.add_prefix(&overlap), Err(MappingConflict::RealPrefixOverlap { .. })));
        let retarget = PrefixMapping { real_net: ip("172.21.0.0"), ..subnet };
        assert!(matches!(table.add_prefix(&retarget), Err(MappingConflict::PrefixTaken { .. })));
        let host_bits = PrefixMapping { virtual_net: ip("10.3.0.1"), real_net: ip("172.23.0.0"), len: 16 };
        assert!(matches!(table.add_prefix(&host_bits), Err(MappingConflict::HostBitsSet { .. })));
        let zero = PrefixMapping { virtual_net: ip("0.0.0.0"), real_net: ip("0.0.0.0"), len: 0 };
        assert!(matches!(table.add_prefix(&zero), Err(MappingConflict::BadPrefixLength { .. })));
        let mixed = PrefixMapping { virtual_net: ip("10.3.0.0"), real_net: ip("2001:db8::"), len: 16 };
        assert!(matches!(table.add_prefix(&mixed), Err(MappingConflict::MixedFamilies { .. })));
        // A prefix may not contain broadcast, link-local, loopback, multicast or
        // unspecified space, on either side, even when its network address is usable.
        for (virtual_net, real_net, len) in [
            ("10.4.0.0", "255.255.255.0", 24),
            ("10.5.0.0", "169.254.0.0", 16),
            ("169.254.0.0", "10.5.0.0", 16),
            ("10.0.0.0", "126.0.0.0", 7),
            ("128.0.0.0", "10.6.0.0", 1),
            ("fd00:7::", "fe80::", 64),
            ("fc00::", "fe00::", 7),
            ("fd00:9::", "::", 64),
        ] {
            let mapping = PrefixMapping { virtual_net: ip(virtual_net), real_net: ip(real_net), len };
            let refused = table.add_prefix(&mapping);
            assert!(
                matches!(
                    refused,
                    Err(MappingConflict::PrefixContainsUnusable { .. } | MappingConflict::UnusableAddress { .. })
                ),
                "{virtual_net}/{len} -> {real_net}/{len}: {refused:?}"
            );
        }
        let crossing = PrefixMapping { virtual_net: ip("172.20.5.0"), real_net: ip("172.40.0.0"), len: 24 };
        assert!(matches!(table.add_prefix(&crossing), Err(MappingConflict::PrefixSidesOverlap { .. })));
        // Addresses inside a REAL prefix cannot be another mapping's REAL or VIRTUAL.
        assert!(matches!(table.add(ip("10.9.0.1"), ip("172.20.0.9")), Err(MappingConflict::InRealPrefix { .. })));
        assert!(matches!(table.add(ip("172.20.0.9"), ip("10.9.0.1")), Err(MappingConflict::InRealPrefix { .. })));
        assert!(matches!(table.add(ip("10.9.0.1"), ip("10.1.0.9")), Err(MappingConflict::InVirtualPrefix { .. })));
        assert!(matches!(table.add(ip("10.1.0.9"), ip("10.9.0.1")), Err(MappingConflict::InVirtualPrefix { .. })));
        table.add(ip("10.70.0.1"), ip("172.70.0.1")).expect("valid mapping");
        let swallowing_virtual = PrefixMapping { virtual_net: ip("10.70.0.0"), real_net: ip("172.71.0.0"), len: 16 };
        assert!(matches!(table.add_prefix(&swallowing_virtual), Err(MappingConflict::PrefixContainsVirtual { .. })));
        // And a new REAL prefix cannot swallow an existing REAL.
        table.add(ip("10.9.0.1"), ip("172.50.0.9")).expect("valid mapping");
        let swallowing = PrefixMapping { virtual_net: ip("10.60.0.0"), real_net: ip("172.50.0.0"), len: 16 };
        assert!(matches!(table.add_prefix(&swallowing), Err(MappingConflict::PrefixContainsReal { .. })));
    }

    #[test]
    fn egress_rewrites_virtual_destination_and_own_virtual_source() {
        let mut table = ModelTable::default();
        table.add(ip("10.200.0.2"), ip("10.100.0.2")).expect("valid mapping");
        table.add(ip("10.200.0.1"), ip("10.100.0.1")).expect("valid mapping");
        let out = table.rewrite(Direction::Egress, ip("10.200.0.1"), ip("10.200.0.2"), None);
        assert_eq!(out, Rewrite { src: to("10.100.0.1"), dst: to("10.100.0.2") });
        // Egress never looks at REAL addresses.
        let out = table.rewrite(Direction::Egress, ip("10.100.0.1"), ip("10.100.0.2"), None);
        assert!(out.is_empty(), "egress must not touch REAL addresses: {out:?}");
    }

    #[test]
    fn ingress_restores_virtual_for_real_source_and_own_real_destination() {
        let mut table = ModelTable::default();
        table.add(ip("10.200.0.2"), ip("10.100.0.2")).expect("valid mapping");
        let out = table.rewrite(Direction::Ingress, ip("10.100.0.2"), ip("10.100.0.9"), None);
        assert_eq!(out, Rewrite { src: to("10.200.0.2"), dst: None });
        let out = table.rewrite(Direction::Ingress, ip("10.100.0.9"), ip("10.100.0.2"), None);
        assert_eq!(out, Rewrite { src: None, dst: to("10.200.0.2") });
        let out = table.rewrite(Direction::Ingress, ip("10.200.0.2"), ip("10.100.0.9"), None);
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

    #[test]
    fn ipv6_mappings_follow_the_same_rules_and_never_mix_families() {
        let mut table = ModelTable::default();
        table.add(ip("fd00::5"), ip("2001:db8::5")).expect("valid IPv6 mapping");
        let out = table.rewrite(Direction::Egress, ip("2001:db8::1"), ip("fd00::5"), None);
        assert_eq!(out.dst, to("2001:db8::5"));
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

    fn bricks() -> PortMapping {
        // GlusterFS brick ports moved to another host and another range.
        PortMapping {
            protocol: Protocol::Tcp,
            virtual_addr: ip("10.0.0.5"),
            virtual_first: 49152,
            real_addr: ip("192.0.2.5"),
            real_first: 50152,
            count: 100,
        }
    }

    #[test]
    fn port_mappings_are_more_specific_than_address_mappings() {
        let mut table = ModelTable::default();
        table.add_ports(&bricks()).expect("valid port mapping");
        table.add(ip("10.0.0.5"), ip("192.0.2.50")).expect("an address mapping for the rest of the host");
        let client = ip("10.9.0.1");
        let egress =
            |dst_port| table.rewrite(Direction::Egress, client, ip("10.0.0.5"), Some((IPPROTO_TCP, 40000, dst_port)));
        assert_eq!(egress(49152).dst, to_port("192.0.2.5", 50152));
        assert_eq!(egress(49251).dst, to_port("192.0.2.5", 50251));
        // Outside the range, or another protocol: the address mapping.
        assert_eq!(egress(49252).dst, to("192.0.2.50"));
        assert_eq!(egress(22).dst, to("192.0.2.50"));
        let udp = table.rewrite(Direction::Egress, client, ip("10.0.0.5"), Some((IPPROTO_UDP, 40000, 49152)));
        assert_eq!(udp.dst, to("192.0.2.50"));
        // No ports (a non-first fragment): only the address mapping can match.
        assert_eq!(table.rewrite(Direction::Egress, client, ip("10.0.0.5"), None).dst, to("192.0.2.50"));
        // Replies come back to the VIRTUAL endpoint.
        let reply = table.rewrite(Direction::Ingress, ip("192.0.2.5"), client, Some((IPPROTO_TCP, 50200, 40000)));
        assert_eq!(reply.src, to_port("10.0.0.5", 49200));
        // Other services of the REAL host are left alone (ssh to it, say).
        let ssh = table.rewrite(Direction::Ingress, ip("192.0.2.5"), client, Some((IPPROTO_TCP, 22, 40000)));
        assert!(ssh.is_empty(), "{ssh:?}");
    }

    #[test]
    fn port_mapping_conflicts_are_rejected() {
        let mut table = ModelTable::default();
        table.add_ports(&bricks()).expect("valid port mapping");
        assert_eq!(table.add_ports(&bricks()), Ok(AddPlan::Unchanged));
        let shifted = PortMapping { real_first: 60000, ..bricks() };
        assert!(matches!(table.add_ports(&shifted), Err(MappingConflict::PortTaken { .. })));
        let stealing = PortMapping { virtual_addr: ip("10.0.0.6"), ..bricks() };
        assert!(matches!(table.add_ports(&stealing), Err(MappingConflict::RealPortTaken { .. })));
        // REAL already serves an address mapping, or the reverse.
        table.add(ip("10.0.0.7"), ip("192.0.2.7")).expect("valid mapping");
        let onto_address_real = PortMapping { virtual_addr: ip("10.0.0.8"), real_addr: ip("192.0.2.7"), ..bricks() };
        assert!(matches!(table.add_ports(&onto_address_real), Err(MappingConflict::PortRealOverlapsAddress { .. })));
        assert!(matches!(
            table.add(ip("10.0.0.9"), ip("192.0.2.5")),
            Err(MappingConflict::RealOverlapsPortReal { .. })
        ));
        // An address cannot be both a VIRTUAL and a REAL, across kinds.
        assert!(matches!(table.add(ip("192.0.2.5"), ip("192.0.2.99")), Err(MappingConflict::VirtualIsPortReal { .. })));
        assert!(matches!(table.add(ip("10.0.0.99"), ip("10.0.0.5")), Err(MappingConflict::RealIsPortVirtual { .. })));
        let same_host = PortMapping { real_addr: ip("10.0.0.5"), ..bricks() };
        assert!(matches!(table.add_ports(&same_host), Err(MappingConflict::SameAddress(_))));
        let zero = PortMapping { virtual_first: 0, ..bricks() };
        assert_eq!(table.add_ports(&zero), Err(MappingConflict::ZeroPort));
        let overflow = PortMapping { real_first: 65500, ..bricks() };
        assert!(matches!(table.add_ports(&overflow), Err(MappingConflict::PortRangeOverflow { .. })));
        let mixed = PortMapping { real_addr: ip("2001:db8::5"), ..bricks() };
        assert!(matches!(table.add_ports(&mixed), Err(MappingConflict::MixedFamilies { .. })));
    }
}
