//! The pinned bounce maps from userspace: the services, the timeouts, and the flow table
//! as far as `list` and `status` read it.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use aya::maps::{Array, HashMap, MapData, MapError};
use rewrite_common::{
    bounce::{
        BounceService, BounceSettings, FROM_CLIENT, FlowEntry, FlowTuple, MAP_BOUNCE_FLOWS, MAP_BOUNCE_SERVICES,
        MAP_BOUNCE_SETTINGS, is_idle,
    },
    maps::Endpoint,
    ports::PortRange,
    protocol::Protocol,
};
use serde::Serialize;

use crate::{
    Error,
    bounce::{
        BounceError,
        config::BounceConfig,
        service::{ResolvedService, ServiceSpec, endpoint, socket_of},
    },
    dataplane::{
        objects::{is_not_found, open_pinned},
        pins::PinLayout,
        ring::monotonic_ns,
    },
};

/// How long flows live without packets: UDP and TCP flows the target answered, and
/// flows it never answered (a SYN, a datagram without reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub udp: Duration,
    pub tcp: Duration,
    pub unreplied: Duration,
}

/// The pinned bounce maps.
pub struct BounceTable {
    services: HashMap<MapData, Endpoint, BounceService>,
    flows: HashMap<MapData, FlowTuple, FlowEntry>,
    settings: Array<MapData, BounceSettings>,
    /// The flow table's size in entries.
    flow_capacity: u32,
}

impl fmt::Debug for BounceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BounceTable").field("flow_capacity", &self.flow_capacity).finish_non_exhaustive()
    }
}

/// What `add` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    New,
    Changed,
    Unchanged,
}

/// A service as `list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceRow {
    pub listen: SocketAddr,
    pub protocol: Protocol,
    pub target: SocketAddr,
    pub source: IpAddr,
    /// The source ports, `[first, last]` in JSON.
    #[serde(serialize_with = "first_and_last")]
    pub ports: PortRange,
    /// Flows whose client half is in the table and not idle.
    pub live_flows: u64,
}

impl BounceTable {
    pub fn open(pins: &PinLayout) -> Result<Self, Error> {
        let map_error = |name: &'static str| move |source: MapError| Error::map(name, source);
        let flow_capacity = MapData::from_pin(pins.map(MAP_BOUNCE_FLOWS))
            .and_then(|data| data.info())
            .map(|info| info.max_entries())
            .map_err(map_error(MAP_BOUNCE_FLOWS))?;
        Ok(Self {
            flow_capacity,
            services: HashMap::try_from(open_pinned(pins, MAP_BOUNCE_SERVICES)?)
                .map_err(map_error(MAP_BOUNCE_SERVICES))?,
            flows: HashMap::try_from(open_pinned(pins, MAP_BOUNCE_FLOWS)?).map_err(map_error(MAP_BOUNCE_FLOWS))?,
            settings: Array::try_from(open_pinned(pins, MAP_BOUNCE_SETTINGS)?)
                .map_err(map_error(MAP_BOUNCE_SETTINGS))?,
        })
    }

    /// Adds or changes a service. The settings' "enabled" flag goes on before the first
    /// service, so that no packet to it is missed.
    pub fn add(&mut self, service: &ResolvedService) -> Result<Added, Error> {
        let ResolvedService { key, value } = *service;
        let existing = match self.services.get(&key, 0) {
            Ok(existing) => Some(existing),
            Err(MapError::KeyNotFound) => None,
            Err(source) => return Err(Error::map(MAP_BOUNCE_SERVICES, source)),
        };
        if existing == Some(value) {
            return Ok(Added::Unchanged);
        }
        self.set_enabled(true)?;
        self.services.insert(key, value, 0).map_err(|source| match &source {
            MapError::SyscallError(call) if call.io_error.raw_os_error() == Some(libc::E2BIG) => {
                Error::Bounce(BounceError::ServicesFull)
            }
            _ => Error::map(MAP_BOUNCE_SERVICES, source),
        })?;
        Ok(if existing.is_some() { Added::Changed } else { Added::New })
    }

    /// Removes a service and the flows it holds.
    pub fn remove(&mut self, listen: SocketAddr, protocol: Protocol) -> Result<usize, Error> {
        let key = endpoint(listen, protocol);
        match self.services.remove(&key) {
            Ok(()) => {}
            Err(error) if is_not_found(&error) => {
                return Err(BounceError::NoSuchService { listen: format!("{listen}/{protocol}") }.into());
            }
            Err(source) => return Err(Error::map(MAP_BOUNCE_SERVICES, source)),
        }
        let stale: Vec<FlowTuple> = self
            .flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, entry)| entry.service == key)
            .map(|(tuple, _)| tuple)
            .collect();
        for tuple in &stale {
            // A flow that ended meanwhile is already gone: that is what we want.
            let _ = self.flows.remove(tuple);
        }
        if self.services.keys().next().is_none() {
            self.set_enabled(false)?;
        }
        Ok(stale.len() / 2)
    }

    fn settings(&self) -> Result<BounceSettings, Error> {
        self.settings.get(&0, 0).map_err(|source| Error::map(MAP_BOUNCE_SETTINGS, source))
    }

    /// Stores the settings; a fresh array slot (all zero) gets the default timeouts.
    fn store_settings(&mut self, update: impl FnOnce(&mut BounceSettings)) -> Result<(), Error> {
        let mut settings = self.settings()?;
        if settings.udp_idle_ns == 0 && settings.tcp_idle_ns == 0 {
            settings = BounceSettings { enabled: settings.enabled, ..BounceSettings::default() };
        }
        update(&mut settings);
        self.settings.set(0, settings, 0).map_err(|source| Error::map(MAP_BOUNCE_SETTINGS, source))
    }

    fn set_enabled(&mut self, enabled: bool) -> Result<(), Error> {
        self.store_settings(|settings| settings.enabled = u32::from(enabled))
    }

    /// Sets the timeouts (`None` keeps one as it is).
    pub fn set_timeouts(
        &mut self,
        udp: Option<Duration>,
        tcp: Option<Duration>,
        unreplied: Option<Duration>,
    ) -> Result<(), Error> {
        let nanos = |duration: Duration| u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.store_settings(|settings| {
            if let Some(udp) = udp {
                settings.udp_idle_ns = nanos(udp);
            }
            if let Some(tcp) = tcp {
                settings.tcp_idle_ns = nanos(tcp);
            }
            if let Some(unreplied) = unreplied {
                settings.unreplied_seconds = u32::try_from(unreplied.as_secs().max(1)).unwrap_or(u32::MAX);
            }
        })
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> Result<Timeouts, Error> {
        let settings = self.settings()?;
        let defaults = BounceSettings::default();
        let pick = |value: u64, default: u64| Duration::from_nanos(if value == 0 { default } else { value });
        Ok(Timeouts {
            udp: pick(settings.udp_idle_ns, defaults.udp_idle_ns),
            tcp: pick(settings.tcp_idle_ns, defaults.tcp_idle_ns),
            unreplied: Duration::from_nanos(settings.timeout_ns(false, false)),
        })
    }

    /// The services with their live flow counts.
    pub fn list(&self) -> Result<Vec<ServiceRow>, Error> {
        let live = self.live_flows()?;
        let mut rows = Vec::new();
        for item in self.services.iter() {
            let (key, service) = item.map_err(|source| Error::map(MAP_BOUNCE_SERVICES, source))?;
            let Some(protocol) = Protocol::from_number(key.protocol) else { continue };
            rows.push(ServiceRow {
                listen: socket_of(&key.addr, key.port),
                protocol,
                target: socket_of(&service.target.addr, service.target.port),
                source: IpAddr::from(service.source),
                ports: PortRange::new(service.port_first, service.port_last)
                    .unwrap_or(PortRange::single(service.port_first)),
                live_flows: live.get(&key).copied().unwrap_or(0),
            });
        }
        rows.sort_by_key(|row| (row.listen, row.protocol));
        Ok(rows)
    }

    /// Live flows per service: client halves that are not idle.
    pub(crate) fn live_flows(&self) -> Result<BTreeMap<Endpoint, u64>, Error> {
        let settings = self.settings()?;
        let now = monotonic_ns();
        let mut entries = std::collections::HashMap::new();
        for item in self.flows.iter() {
            let Ok((key, entry)) = item else { continue };
            entries.insert(key, entry);
        }
        let mut live = BTreeMap::new();
        for (_, entry) in entries.iter().filter(|(_, entry)| entry.side == FROM_CLIENT) {
            // The target's half tells whether the target answered: until it does, the
            // flow lives by the short timeout.
            let answered = entries.get(&entry.out.reversed()).is_some_and(|target| target.packets > 0);
            let timeout_ns = settings.timeout_ns(entry.out.protocol == Protocol::Tcp.number(), answered);
            if !is_idle(entry.last_seen_ns, now, timeout_ns) {
                *live.entry(entry.service).or_insert(0) += 1;
            }
        }
        Ok(live)
    }

    /// How many flows the table has room for.
    pub fn capacity_flows(&self) -> u32 {
        self.flow_capacity / 2
    }

    /// The services as the map holds them.
    pub fn services(&self) -> Result<Vec<ResolvedService>, Error> {
        self.services
            .iter()
            .map(|item| {
                item.map(|(key, value)| ResolvedService { key, value })
                    .map_err(|source| Error::map(MAP_BOUNCE_SERVICES, source))
            })
            .collect()
    }

    /// The live services as a `[bounce]` section would give them (for `rewrite export`).
    pub fn config(&self) -> Result<BounceConfig, Error> {
        let timeouts = self.timeouts()?;
        let services = self
            .list()?
            .into_iter()
            .map(|row| ServiceSpec {
                listen: row.listen,
                protocol: row.protocol,
                target: row.target,
                source: Some(row.source),
                ports: row.ports,
            })
            .collect();
        Ok(BounceConfig { max_flows: Some(self.capacity_flows()), timeouts, services })
    }

    /// Flow table entries in use (two per flow), and the table's size in entries.
    pub fn occupancy(&self) -> (u64, u32) {
        let used = self.flows.keys().filter(Result::is_ok).count() as u64;
        (used, self.flow_capacity)
    }
}

/// A port range as `[first, last]`, as `bounce list --json` has always written it.
fn first_and_last<S: serde::Serializer>(ports: &PortRange, serializer: S) -> Result<S::Ok, S::Error> {
    [ports.first(), ports.last()].serialize(serializer)
}
