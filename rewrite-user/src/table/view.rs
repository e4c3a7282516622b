//! The live maps seen as a table the rules can be checked against: the admission of one
//! mapping (`map add`) against what the maps hold now, with one lookup per question
//! (the maps are hash maps keyed by address; only prefixes need a scan).

use std::{collections::HashSet, net::IpAddr};

use rewrite_common::{
    mapping::PrefixMapping,
    maps::{Addr, Endpoint, MAP_ADDR_FORWARD, MAP_ADDR_REVERSE, MAP_PORT_FORWARD, MAP_PORT_REVERSE},
    prefix::Prefix,
    protocol::Protocol,
    spec::MappingSpec,
    validate::{AddPlan, MappingView, plan_add, plan_add_ports, plan_add_prefix},
};

use crate::{
    Error,
    dataplane::objects::is_not_found,
    table::live::{AddressMap, MappingTable, PortMap},
};

/// [`MappingView`] over the live maps. The trait is infallible, so a lookup error is
/// kept aside and reported after the plan is made.
struct LiveView<'a> {
    table: &'a MappingTable,
    error: std::cell::Cell<Option<Error>>,
    /// The addresses used by port-scoped mappings, read once: those maps hold a few
    /// services' ports, and the checks ask about addresses, which are not their keys.
    port_virtual_addrs: HashSet<IpAddr>,
    port_real_addrs: HashSet<IpAddr>,
    prefixes: Vec<PrefixMapping>,
}

impl<'a> LiveView<'a> {
    fn new(table: &'a MappingTable) -> Self {
        let view = Self {
            table,
            error: std::cell::Cell::new(None),
            port_virtual_addrs: HashSet::new(),
            port_real_addrs: HashSet::new(),
            prefixes: Vec::new(),
        };
        let prefixes = table.read_prefixes().unwrap_or_else(|error| {
            view.error.set(Some(error));
            Vec::new()
        });
        let mut virtual_addrs = HashSet::new();
        let mut real_addrs = HashSet::new();
        for entry in table.port_forward.keys() {
            match entry {
                Ok(virtual_endpoint) => {
                    virtual_addrs.insert(IpAddr::from(virtual_endpoint.addr));
                }
                Err(source) => view.error.set(Some(Error::map(MAP_PORT_FORWARD, source))),
            }
        }
        // REAL endpoints from the reverse map, so that a half-applied entry left there
        // still keeps its REAL from being given to another mapping.
        for entry in table.port_reverse.keys() {
            match entry {
                Ok(real_endpoint) => {
                    real_addrs.insert(IpAddr::from(real_endpoint.addr));
                }
                Err(source) => view.error.set(Some(Error::map(MAP_PORT_REVERSE, source))),
            }
        }
        Self { port_virtual_addrs: virtual_addrs, port_real_addrs: real_addrs, prefixes, ..view }
    }

    fn port_lookup(
        &self,
        map: &PortMap,
        name: &'static str,
        protocol: Protocol,
        addr: IpAddr,
        port: u16,
    ) -> Option<(IpAddr, u16)> {
        let key = Endpoint::new(Addr::from(addr), port.to_be_bytes(), protocol.number());
        match map.get(&key, 0) {
            Ok(found) => Some((found.endpoint.addr.into(), u16::from_be_bytes(found.endpoint.port))),
            Err(error) if is_not_found(&error) => None,
            Err(source) => {
                self.error.set(Some(Error::map(name, source)));
                None
            }
        }
    }

    fn take_error(&self) -> Option<Error> {
        self.error.take()
    }

    fn lookup(&self, map: &AddressMap, name: &'static str, addr: IpAddr) -> Option<IpAddr> {
        MappingTable::get(map, name, addr).unwrap_or_else(|error| {
            self.error.set(Some(error));
            None
        })
    }
}

impl MappingView for LiveView<'_> {
    fn real_of(&self, virtual_addr: IpAddr) -> Option<IpAddr> {
        self.lookup(&self.table.forward, MAP_ADDR_FORWARD, virtual_addr)
    }
    /// Only a complete mapping owns REAL: a reverse entry whose forward entry is gone
    /// or points elsewhere is left over from an interrupted command.
    fn virtual_of(&self, real_addr: IpAddr) -> Option<IpAddr> {
        let virtual_addr = self.lookup(&self.table.reverse, MAP_ADDR_REVERSE, real_addr)?;
        (self.real_of(virtual_addr) == Some(real_addr)).then_some(virtual_addr)
    }
    fn port_real_of(&self, protocol: Protocol, virtual_addr: IpAddr, port: u16) -> Option<(IpAddr, u16)> {
        self.port_lookup(&self.table.port_forward, MAP_PORT_FORWARD, protocol, virtual_addr, port)
    }
    fn port_virtual_of(&self, protocol: Protocol, real_addr: IpAddr, port: u16) -> Option<(IpAddr, u16)> {
        self.port_lookup(&self.table.port_reverse, MAP_PORT_REVERSE, protocol, real_addr, port)
    }
    fn is_port_real(&self, addr: IpAddr) -> bool {
        self.port_real_addrs.contains(&addr)
    }
    fn is_port_virtual(&self, addr: IpAddr) -> bool {
        self.port_virtual_addrs.contains(&addr)
    }
    fn prefixes(&self) -> Vec<PrefixMapping> {
        self.prefixes.clone()
    }
    /// Scans the address map of that side: prefix mappings are added rarely, and the
    /// maps have no index by network.
    fn address_in(&self, prefix: Prefix, real_side: bool) -> Option<IpAddr> {
        let (map, name, ports) = if real_side {
            (&self.table.reverse, MAP_ADDR_REVERSE, &self.port_real_addrs)
        } else {
            (&self.table.forward, MAP_ADDR_FORWARD, &self.port_virtual_addrs)
        };
        if let Some(addr) = ports.iter().find(|addr| prefix.contains(**addr)) {
            return Some(*addr);
        }
        for key in map.keys() {
            match key {
                Ok(key) if prefix.contains(IpAddr::from(key)) => return Some(IpAddr::from(key)),
                Ok(_) => {}
                Err(source) => {
                    self.error.set(Some(Error::map(name, source)));
                    return None;
                }
            }
        }
        None
    }
}

impl MappingTable {
    /// Admits `spec` against what the maps hold now (the admission of `map add`; see
    /// `table::admission`): what writing it changes, or why the table refuses it.
    pub fn admit(&self, spec: &MappingSpec) -> Result<AddPlan, Error> {
        let view = LiveView::new(self);
        let plan = match spec {
            MappingSpec::Address { virtual_addr, real_addr } => plan_add(&view, *virtual_addr, *real_addr),
            MappingSpec::Ports(mapping) => plan_add_ports(&view, mapping),
            MappingSpec::Prefix(mapping) => plan_add_prefix(&view, mapping),
        };
        if let Some(error) = view.take_error() {
            return Err(error);
        }
        plan.map_err(|conflict| Error::Conflict { mapping: spec.to_string(), conflict })
    }

    /// Admits `spec` and writes it: a mapping added or retargeted for the next packet.
    pub fn add(&mut self, spec: &MappingSpec) -> Result<AddPlan, Error> {
        let plan = self.admit(spec)?;
        self.write(spec, plan)
    }
}
