//! The gate's pinned maps from userspace: mode, port classes, allow prefixes, counters.

use std::collections::BTreeMap;

use aya::maps::{Array, MapData, PerCpuArray, lpm_trie::LpmTrie};
use rewrite_common::{
    gate::{
        DEFAULT_MANAGEMENT_PORT, GATE_COUNTER_NAMES, GATE_COUNTER_SLOTS, GateSettings, MAP_GATE_ALLOW,
        MAP_GATE_COUNTERS, MAP_GATE_PORTS, MAP_GATE_SETTINGS, PORT_MANAGEMENT, PORT_PROTECTED, PORT_SLOTS,
    },
    maps::{Addr, trie_key},
    ports::PortRange,
    prefix::Prefix,
    protocol::Protocol,
};
use serde::Serialize;

use crate::{
    Error,
    dataplane::{objects::open_pinned, pins::PinLayout},
    gate::{
        Mode,
        ports::{ClientPorts, PortSpec, compress, ports_with, slot},
    },
};

/// The gate's pinned maps.
#[expect(missing_debug_implementations, reason = "map handles; nothing to show")]
pub struct GateTable {
    settings: Array<MapData, GateSettings>,
    ports: Array<MapData, u32>,
    allow: LpmTrie<MapData, [u8; 16], u32>,
    counters: PerCpuArray<MapData, u64>,
}

/// What `gate show` prints.
#[derive(Debug, Serialize)]
pub struct GateView {
    pub mode: Mode,
    /// `tcp/22`, `udp/5000-5010`, ...
    pub protected: Vec<String>,
    pub management: Vec<String>,
    /// Whether the management ports are the operator's (otherwise ssh, the default).
    pub management_configured: bool,
    pub allow: Vec<String>,
}

impl GateTable {
    pub fn open(pins: &PinLayout) -> Result<Self, Error> {
        let map_error = |name: &'static str| move |source| Error::map(name, source);
        Ok(Self {
            settings: Array::try_from(open_pinned(pins, MAP_GATE_SETTINGS)?).map_err(map_error(MAP_GATE_SETTINGS))?,
            ports: Array::try_from(open_pinned(pins, MAP_GATE_PORTS)?).map_err(map_error(MAP_GATE_PORTS))?,
            allow: LpmTrie::try_from(open_pinned(pins, MAP_GATE_ALLOW)?).map_err(map_error(MAP_GATE_ALLOW))?,
            counters: PerCpuArray::try_from(open_pinned(pins, MAP_GATE_COUNTERS)?)
                .map_err(map_error(MAP_GATE_COUNTERS))?,
        })
    }

    pub(crate) fn read_settings(&self) -> Result<GateSettings, Error> {
        self.settings.get(&0, 0).map_err(|source| Error::map(MAP_GATE_SETTINGS, source))
    }

    pub(crate) fn write_settings(&mut self, settings: GateSettings) -> Result<(), Error> {
        self.settings.set(0, settings, 0).map_err(|source| Error::map(MAP_GATE_SETTINGS, source))
    }

    pub fn mode(&self) -> Result<Mode, Error> {
        Ok(Mode::from_value(self.read_settings()?.mode))
    }

    pub fn set_mode(&mut self, mode: Mode) -> Result<(), Error> {
        let settings = self.read_settings()?;
        self.write_settings(GateSettings { mode: mode.value(), ..settings })
    }

    fn port_bits(&self, protocol: Protocol, port: u16) -> Result<u32, Error> {
        self.ports.get(&slot(protocol, port), 0).map_err(|source| Error::map(MAP_GATE_PORTS, source))
    }

    fn set_port_bits(&mut self, protocol: Protocol, port: u16, bits: u32) -> Result<(), Error> {
        self.set_slot(slot(protocol, port), bits)
    }

    pub(crate) fn set_slot(&mut self, slot: u32, bits: u32) -> Result<(), Error> {
        self.ports.set(slot, bits, 0).map_err(|source| Error::map(MAP_GATE_PORTS, source))
    }

    /// Sets or clears `bit` on every port of `specs`, all checked first against the
    /// ports that must stay open (`client`). Returns how many ports changed.
    fn change_ports(&mut self, specs: &[PortSpec], client: &ClientPorts, bit: u32, on: bool) -> Result<usize, Error> {
        let mut slots = Vec::new();
        for spec in specs {
            slots.extend(spec.slots(client)?);
        }
        let mut changed = 0;
        for (protocol, port) in slots {
            let bits = self.port_bits(protocol, port)?;
            let new = if on { bits | bit } else { bits & !bit };
            if new != bits {
                self.set_port_bits(protocol, port, new)?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// The first port of `range` (of `protocol`) the gate protects, if any.
    pub fn protected_port_in(&self, protocol: Protocol, range: PortRange) -> Result<Option<u16>, Error> {
        for port in range.ports() {
            if self.port_bits(protocol, port)? & PORT_PROTECTED != 0 {
                return Ok(Some(port));
            }
        }
        Ok(None)
    }

    /// Protects (or, with `on` false, opens) the ports of `specs`, leaving `client`
    /// open.
    pub fn protect(&mut self, specs: &[PortSpec], client: &ClientPorts, on: bool) -> Result<usize, Error> {
        self.change_ports(specs, client, PORT_PROTECTED, on)
    }

    /// Makes `specs` the management ports, replacing the previous ones (ssh by
    /// default); an empty list takes the fail-safe away.
    pub fn set_management(&mut self, specs: &[PortSpec], client: &ClientPorts) -> Result<(), Error> {
        for spec in specs {
            spec.slots(client)?;
        }
        for (protocol, port) in self.ports_with(PORT_MANAGEMENT)? {
            let bits = self.port_bits(protocol, port)?;
            self.set_port_bits(protocol, port, bits & !PORT_MANAGEMENT)?;
        }
        self.change_ports(specs, client, PORT_MANAGEMENT, true)?;
        let settings = self.read_settings()?;
        self.write_settings(GateSettings { management_configured: 1, ..settings })
    }

    pub(crate) fn all_port_bits(&self) -> Result<Vec<u32>, Error> {
        (0..PORT_SLOTS)
            .map(|slot| self.ports.get(&slot, 0).map_err(|source| Error::map(MAP_GATE_PORTS, source)))
            .collect()
    }

    pub(crate) fn allow_prefixes(&self) -> Result<Vec<Prefix>, Error> {
        self.allow
            .keys()
            .map(|key| {
                let key = key.map_err(|source| Error::map(MAP_GATE_ALLOW, source))?;
                let addr = std::net::IpAddr::from(Addr { octets: key.data() });
                let len = if addr.is_ipv4() { key.prefix_len().saturating_sub(96) } else { key.prefix_len() };
                Ok(Prefix::clamped(addr, u8::try_from(len).unwrap_or(u8::MAX)))
            })
            .collect()
    }

    /// The (protocol, port) pairs with `bit` set, from one read of the whole port map.
    fn ports_with(&self, bit: u32) -> Result<Vec<(Protocol, u16)>, Error> {
        Ok(ports_with(&self.all_port_bits()?, bit))
    }

    /// Adds (or removes) an allow prefix (host bits ignored).
    pub fn allow(&mut self, prefix: Prefix, on: bool) -> Result<(), Error> {
        let key = trie_key(prefix.key_len(), Addr::from(prefix.masked().net()));
        let result = if on { self.allow.insert(&key, 1, 0) } else { self.allow.remove(&key) };
        result.map_err(|source| Error::map(MAP_GATE_ALLOW, source))
    }

    pub fn view(&self) -> Result<GateView, Error> {
        let settings = self.read_settings()?;
        let ranges = |ports: Vec<(Protocol, u16)>| compress(&ports);
        // One read of the port map for both lists: 131,072 lookups each.
        let bits = self.all_port_bits()?;
        let mut management = ranges(ports_with(&bits, PORT_MANAGEMENT));
        if settings.management_configured == 0 {
            management.insert(0, format!("tcp/{DEFAULT_MANAGEMENT_PORT}"));
        }
        let mut allow: Vec<String> = self.allow_prefixes()?.into_iter().map(|prefix| prefix.to_string()).collect();
        allow.sort();
        Ok(GateView {
            mode: Mode::from_value(settings.mode),
            protected: ranges(ports_with(&bits, PORT_PROTECTED)),
            management,
            management_configured: settings.management_configured != 0,
            allow,
        })
    }

    /// The counters, summed over CPUs, by name.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, Error> {
        let mut totals = BTreeMap::new();
        for index in 0..GATE_COUNTER_SLOTS {
            let values = self.counters.get(&index, 0).map_err(|source| Error::map(MAP_GATE_COUNTERS, source))?;
            totals.insert(GATE_COUNTER_NAMES[index as usize], values.iter().copied().fold(0u64, u64::wrapping_add));
        }
        Ok(totals)
    }
}
