//! Bounce mode's userspace side: the services (LISTEN -> TARGET) in the pinned map,
//! their live flow counts, the counters, and the connect and disconnect events (see
//! `rewrite_common::bounce` for the flow model).

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use rewrite_common::{
    bounce::{
        BOUNCE_COUNTER_NAMES, BOUNCE_COUNTER_SLOTS, BounceEvent, BounceService, BounceSettings, DEFAULT_PORT_FIRST,
        DEFAULT_PORT_LAST, EVENT_CONNECT, FROM_CLIENT, FlowEntry, FlowTuple, MAP_BOUNCE_COUNTERS, MAP_BOUNCE_EVENTS,
        MAP_BOUNCE_FLOWS, MAP_BOUNCE_LOG_LEASE, MAP_BOUNCE_SERVICES, MAP_BOUNCE_SETTINGS, MAX_SERVICES, REASON_NAMES,
        is_idle,
    },
    maps::{Addr, Endpoint, IPPROTO_TCP, IPPROTO_UDP},
};
use serde::Serialize;

use crate::{
    Error,
    maps::open_pinned,
    pins::PinLayout,
    ring::{self, Clock, monotonic_ns},
};

/// A problem with a bounce service as given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BounceError {
    #[error("{text:?} is not ADDR:PORT/tcp or ADDR:PORT/udp (IPv6 as [ADDR]:PORT/PROTO)")]
    BadListen { text: String },
    #[error("{text:?} is not ADDR:PORT (IPv6 as [ADDR]:PORT), optionally with the listen side's /PROTO")]
    BadTarget { text: String },
    #[error("target {target} is {target_protocol}, but the listen side {listen} is {listen_protocol}")]
    ProtocolMismatch { listen: String, listen_protocol: &'static str, target: String, target_protocol: &'static str },
    #[error(
        "{what} {addr} is {family}, but the listen side {listen} is not: bounce does not translate between IPv4 and IPv6"
    )]
    FamilyMismatch { what: &'static str, addr: IpAddr, family: &'static str, listen: String },
    #[error("port 0 is not a valid {what} port")]
    PortZero { what: &'static str },
    #[error("{text:?} is not a port range FIRST-LAST (1-65535, FIRST <= LAST)")]
    BadPortRange { text: String },
    #[error("no route to the target {target}: {why}")]
    NoRoute { target: IpAddr, why: String },
    #[error("no bounce service listens on {listen}")]
    NoSuchService { listen: String },
    #[error("the bounce service table is full ({MAX_SERVICES} services)")]
    ServicesFull,
    #[error(
        "IPv{version} forwarding is off (net.{sysctl} = 0): the route lookup bounce forwards with refuses to \
         forward; turn it on with `sysctl -w net.{sysctl}=1`"
    )]
    ForwardingOff { version: u8, sysctl: &'static str },
    #[error(
        "the source ports {first}-{last} overlap this host's ephemeral port range {ephemeral_first}-{ephemeral_last} \
         (net.ipv4.ip_local_port_range): the host's own connections could take a port a flow holds; choose a range \
         outside it (the default is {DEFAULT_PORT_FIRST}-{DEFAULT_PORT_LAST})"
    )]
    EphemeralOverlap { first: u16, last: u16, ephemeral_first: u16, ephemeral_last: u16 },
    #[error("cannot check the source ports against this host's ephemeral range: {why}")]
    EphemeralUnknown { why: String },
    #[error(
        "{protocol}/{port}, in the source port range {first}-{last}, is protected by the gate, which would drop the \
         target's replies there: `rewrite gate unprotect {protocol}/{first}-{last}` first"
    )]
    GateProtected { protocol: &'static str, port: u16, first: u16, last: u16 },
}

/// How long flows live without packets: UDP and TCP flows the target answered, and
/// flows it never answered (a SYN, a datagram without reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub udp: Duration,
    pub tcp: Duration,
    pub unreplied: Duration,
}

/// A service as the CLI and the config give it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceSpec {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    pub target: SocketAddr,
    /// The bouncer's address the target sees; by default the source address of the
    /// route to the target.
    pub source: Option<IpAddr>,
    pub ports: (u16, u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => IPPROTO_TCP,
            Self::Udp => IPPROTO_UDP,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    fn from_number(number: u8) -> Option<Self> {
        match number {
            IPPROTO_TCP => Some(Self::Tcp),
            IPPROTO_UDP => Some(Self::Udp),
            _ => None,
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "tcp" => Some(Self::Tcp),
            "udp" => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `ADDR:PORT/PROTO`, the form of a LISTEN endpoint.
pub fn parse_listen(text: &str) -> Result<(SocketAddr, Protocol), BounceError> {
    let bad = || BounceError::BadListen { text: text.to_owned() };
    let (addr, protocol) = text.rsplit_once('/').ok_or_else(bad)?;
    let protocol = Protocol::parse(protocol).ok_or_else(bad)?;
    let addr: SocketAddr = addr.parse().map_err(|_| bad())?;
    if addr.port() == 0 {
        return Err(BounceError::PortZero { what: "listen" });
    }
    Ok((addr, protocol))
}

/// `ADDR:PORT`, or `ADDR:PORT/PROTO` with the listen side's protocol.
pub fn parse_target(text: &str) -> Result<(SocketAddr, Option<Protocol>), BounceError> {
    let bad = || BounceError::BadTarget { text: text.to_owned() };
    let (addr, protocol) = match text.rsplit_once('/') {
        Some((addr, protocol)) => (addr, Some(Protocol::parse(protocol).ok_or_else(bad)?)),
        None => (text, None),
    };
    let addr: SocketAddr = addr.parse().map_err(|_| bad())?;
    if addr.port() == 0 {
        return Err(BounceError::PortZero { what: "target" });
    }
    Ok((addr, protocol))
}

/// `FIRST-LAST`.
pub fn parse_port_range(text: &str) -> Result<(u16, u16), BounceError> {
    let bad = || BounceError::BadPortRange { text: text.to_owned() };
    let (first, last) = text.split_once('-').ok_or_else(bad)?;
    let (first, last): (u16, u16) = (first.trim().parse().map_err(|_| bad())?, last.trim().parse().map_err(|_| bad())?);
    if first == 0 || first > last {
        return Err(bad());
    }
    Ok((first, last))
}

impl ServiceSpec {
    /// Checks a service given as LISTEN, TARGET and options.
    pub fn new(
        listen: &str,
        target: &str,
        source: Option<IpAddr>,
        ports: Option<(u16, u16)>,
    ) -> Result<Self, BounceError> {
        let (listen, protocol) = parse_listen(listen)?;
        let (target, target_protocol) = parse_target(target)?;
        if let Some(target_protocol) = target_protocol.filter(|given| *given != protocol) {
            return Err(BounceError::ProtocolMismatch {
                listen: listen.to_string(),
                listen_protocol: protocol.name(),
                target: target.to_string(),
                target_protocol: target_protocol.name(),
            });
        }
        let family = |addr: IpAddr| if addr.is_ipv4() { "IPv4" } else { "IPv6" };
        for (what, addr) in [("target", Some(target.ip())), ("source", source)] {
            if let Some(addr) = addr.filter(|addr| addr.is_ipv4() != listen.is_ipv4()) {
                return Err(BounceError::FamilyMismatch {
                    what,
                    addr,
                    family: family(addr),
                    listen: listen.to_string(),
                });
            }
        }
        Ok(Self { listen, protocol, target, source, ports: ports.unwrap_or((DEFAULT_PORT_FIRST, DEFAULT_PORT_LAST)) })
    }

    /// Completes the service from the host: the source address (the route's, unless
    /// given) and a check that the kernel forwards its family.
    pub fn resolve(&self) -> Result<ResolvedService, BounceError> {
        let ephemeral =
            crate::gate::ephemeral_range().map_err(|error| BounceError::EphemeralUnknown { why: error.to_string() })?;
        self.check_ports(&ephemeral)?;
        let source = match self.source {
            Some(source) => source,
            None => route_source(self.target.ip())?,
        };
        check_forwarding(self.listen.ip())?;
        Ok(ResolvedService {
            key: endpoint(self.listen, self.protocol),
            value: BounceService {
                target: endpoint(self.target, self.protocol),
                source: Addr::from(source),
                port_first: self.ports.0,
                port_last: self.ports.1,
            },
        })
    }
}

impl ServiceSpec {
    /// The service's source ports must stay clear of the host's ephemeral range: a
    /// connection of the host's own could take a port a flow holds, and the flow's
    /// packets would go to it.
    fn check_ports(&self, ephemeral: &std::ops::RangeInclusive<u16>) -> Result<(), BounceError> {
        let (first, last) = self.ports;
        if first <= *ephemeral.end() && *ephemeral.start() <= last {
            return Err(BounceError::EphemeralOverlap {
                first,
                last,
                ephemeral_first: *ephemeral.start(),
                ephemeral_last: *ephemeral.end(),
            });
        }
        Ok(())
    }
}

/// Refuses a service whose source ports the gate protects: the target's replies arrive
/// there, and the gate would drop them.
pub fn check_gate_leaves_open(pins: &PinLayout, service: &ResolvedService) -> Result<(), Error> {
    if !pins.map(rewrite_common::gate::MAP_GATE_SETTINGS).exists() {
        return Ok(());
    }
    let (protocol, range) = (service.key.protocol, service.value.port_first..=service.value.port_last);
    let gate = crate::gate::GateTable::open(pins)?;
    match gate.protected_port_in(protocol, range)? {
        Some(port) => Err(Error::Bounce(BounceError::GateProtected {
            protocol: if protocol == IPPROTO_TCP { "tcp" } else { "udp" },
            port,
            first: service.value.port_first,
            last: service.value.port_last,
        })),
        None => Ok(()),
    }
}

/// A service as the map holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedService {
    pub key: Endpoint,
    pub value: BounceService,
}

fn endpoint(addr: SocketAddr, protocol: Protocol) -> Endpoint {
    Endpoint::new(Addr::from(addr.ip()), addr.port().to_be_bytes(), protocol.number())
}

/// The LISTEN endpoint and protocol of a services-map key.
pub fn listen_of(key: &Endpoint) -> Option<(SocketAddr, Protocol)> {
    Some((socket_of(&key.addr, key.port), Protocol::from_number(key.protocol)?))
}

fn socket_of(addr: &Addr, port: [u8; 2]) -> SocketAddr {
    SocketAddr::new(IpAddr::from(*addr), u16::from_be_bytes(port))
}

/// The source address of the kernel's route to `target` (`ip route get`).
pub fn route_source(target: IpAddr) -> Result<IpAddr, BounceError> {
    let no_route = |why: String| BounceError::NoRoute { target, why };
    let output = std::process::Command::new("ip")
        .args(["-j", "route", "get", &target.to_string()])
        .output()
        .map_err(|error| no_route(format!("cannot run `ip route get`: {error}")))?;
    if !output.status.success() {
        return Err(no_route(String::from_utf8_lossy(&output.stderr).trim().to_owned()));
    }
    let routes: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)
        .map_err(|error| no_route(format!("unreadable `ip -j route get` output: {error}")))?;
    routes
        .first()
        .and_then(|route| route.get("prefsrc"))
        .and_then(|source| source.as_str())
        .and_then(|source| source.parse().ok())
        .ok_or_else(|| no_route("the route names no source address; give one with --source".to_owned()))
}

/// Checks that the kernel forwards the family of `addr`: the route lookup the program
/// forwards with (`bpf_fib_lookup`) refuses otherwise.
pub fn check_forwarding(addr: IpAddr) -> Result<(), BounceError> {
    let (version, sysctl, path) = if addr.is_ipv4() {
        (4, "ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward")
    } else {
        (6, "ipv6.conf.all.forwarding", "/proc/sys/net/ipv6/conf/all/forwarding")
    };
    match std::fs::read_to_string(path) {
        Ok(value) if value.trim() == "0" => Err(BounceError::ForwardingOff { version, sysctl }),
        _ => Ok(()),
    }
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
    pub ports: (u16, u16),
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
            Err(error) if crate::maps::is_not_found(&error) => {
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
                ports: (service.port_first, service.port_last),
                live_flows: live.get(&key).copied().unwrap_or(0),
            });
        }
        rows.sort_by_key(|row| (row.listen, row.protocol));
        Ok(rows)
    }

    /// Live flows per service: client halves that are not idle.
    fn live_flows(&self) -> Result<BTreeMap<Endpoint, u64>, Error> {
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
            let timeout_ns = settings.timeout_ns(entry.out.protocol == IPPROTO_TCP, answered);
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
    pub fn config(&self) -> Result<crate::config::BounceConfig, Error> {
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
        Ok(crate::config::BounceConfig { max_flows: Some(self.capacity_flows()), timeouts, services })
    }

    /// Flow table entries in use (two per flow), and the table's size in entries.
    pub fn occupancy(&self) -> (u64, u32) {
        let used = self.flows.keys().filter(Result::is_ok).count() as u64;
        (used, self.flow_capacity)
    }
}

/// The bounce counters, summed over CPUs, with the flows the table holds and the flows
/// evicted from it (by difference: every flow opened was closed, is in the table, or
/// was evicted).
#[derive(Clone, Debug, Default, Serialize)]
pub struct BounceStats {
    pub counters: BTreeMap<&'static str, u64>,
    pub live_flows: u64,
    pub table_entries: u64,
    pub table_capacity_flows: u32,
    pub evicted_flows: u64,
    /// Whether a `bounce log` reader is present: events are only written then.
    pub log_reader: bool,
}

impl BounceStats {
    pub fn read(pins: &PinLayout) -> Result<Self, Error> {
        let counters: PerCpuArray<MapData, u64> = PerCpuArray::try_from(open_pinned(pins, MAP_BOUNCE_COUNTERS)?)
            .map_err(|source| Error::map(MAP_BOUNCE_COUNTERS, source))?;
        let mut totals = BTreeMap::new();
        for index in 0..BOUNCE_COUNTER_SLOTS {
            let values = counters.get(&index, 0).map_err(|source| Error::map(MAP_BOUNCE_COUNTERS, source))?;
            totals.insert(BOUNCE_COUNTER_NAMES[index as usize], values.iter().copied().fold(0u64, u64::wrapping_add));
        }
        let table = BounceTable::open(pins)?;
        let live_flows: u64 = table.live_flows()?.values().sum();
        let (table_entries, capacity) = table.occupancy();
        let closed: u64 = ["closed_fin", "closed_rst", "closed_idle", "closed_evicted"]
            .iter()
            .map(|name| totals.get(name).copied().unwrap_or(0))
            .sum();
        let connects = totals.get("connects").copied().unwrap_or(0);
        // Halves still in the table (live or idle) are not evicted; each flow has two.
        let in_table = table_entries.div_ceil(2);
        Ok(Self {
            evicted_flows: connects.saturating_sub(closed).saturating_sub(in_table),
            counters: totals,
            live_flows,
            table_entries,
            table_capacity_flows: capacity / 2,
            log_reader: log_reader_present(pins)?,
        })
    }
}

/// A connect or disconnect event as `bounce log` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub time: f64,
    /// `connect` or `disconnect`.
    pub event: &'static str,
    /// For a disconnect: `fin`, `rst`, `idle` or `evicted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub protocol: &'static str,
    pub client: SocketAddr,
    pub listen: SocketAddr,
    pub source: SocketAddr,
    pub target: SocketAddr,
    /// For a disconnect: client -> target, then target -> client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packets: Option<[u64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<[u64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
}

impl Event {
    fn from_raw(raw: &BounceEvent, clock: &Clock) -> Self {
        let connect = raw.kind == EVENT_CONNECT;
        Self {
            time: clock.to_unix(raw.time_ns),
            event: if connect { "connect" } else { "disconnect" },
            reason: (!connect).then(|| REASON_NAMES.get(raw.reason as usize).copied().unwrap_or("unknown")),
            protocol: Protocol::from_number(raw.client.protocol).map_or("?", Protocol::name),
            client: socket_of(&raw.client.src, raw.client.src_port),
            listen: socket_of(&raw.client.dst, raw.client.dst_port),
            source: socket_of(&raw.target.src, raw.target.src_port),
            target: socket_of(&raw.target.dst, raw.target.dst_port),
            packets: (!connect).then_some(raw.packets),
            bytes: (!connect).then_some(raw.bytes),
            duration_seconds: (!connect).then(|| raw.duration_ns as f64 / 1e9),
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.3} {} {} {} -> {} via {} -> {}",
            self.time, self.event, self.protocol, self.client, self.listen, self.source, self.target
        )?;
        if let (Some(reason), Some(packets), Some(bytes), Some(duration)) =
            (self.reason, self.packets, self.bytes, self.duration_seconds)
        {
            write!(
                f,
                " {reason} after {duration:.3} s, {} packets/{} bytes out, {} packets/{} bytes back",
                packets[0], bytes[0], packets[1], bytes[1]
            )?;
        }
        Ok(())
    }
}

/// Reads events from the pinned ring buffer and hands each to `sink` until `sink`
/// returns false or `deadline` passes. The ring buffer has one reader: two `bounce log`
/// processes would each see part of the events.
pub fn follow_events(
    pins: &PinLayout,
    deadline: Option<Instant>,
    mut sink: impl FnMut(Event) -> bool,
) -> Result<(), Error> {
    let clock = Clock::now();
    ring::follow::<BounceEvent>(pins, MAP_BOUNCE_EVENTS, MAP_BOUNCE_LOG_LEASE, deadline, |raw| {
        sink(Event::from_raw(&raw, &clock))
    })
}

/// Whether a `bounce log` reader is following the events now.
pub fn log_reader_present(pins: &PinLayout) -> Result<bool, Error> {
    ring::reader_present(pins, MAP_BOUNCE_LOG_LEASE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_and_target_forms_are_parsed_and_bad_ones_say_what_is_wrong() {
        let spec = ServiceSpec::new("10.0.0.1:8080/tcp", "10.1.0.5:80", None, None).expect("valid");
        assert_eq!(spec.listen, "10.0.0.1:8080".parse().expect("an address"));
        assert_eq!(spec.protocol, Protocol::Tcp);
        assert_eq!(spec.target, "10.1.0.5:80".parse().expect("an address"));
        assert_eq!(spec.ports, (DEFAULT_PORT_FIRST, DEFAULT_PORT_LAST));
        let v6 = ServiceSpec::new("[fd00::1]:53/UDP", "[fd01::5]:5353/udp", None, Some((62000, 62009))).expect("valid");
        assert_eq!((v6.protocol, v6.ports), (Protocol::Udp, (62000, 62009)));

        assert_eq!(
            ServiceSpec::new("10.0.0.1:8080", "10.1.0.5:80", None, None),
            Err(BounceError::BadListen { text: "10.0.0.1:8080".into() }),
            "the listen side needs its protocol"
        );
        assert!(matches!(
            ServiceSpec::new("10.0.0.1:8080/tcp", "10.1.0.5:80/udp", None, None),
            Err(BounceError::ProtocolMismatch { .. })
        ));
        assert!(matches!(
            ServiceSpec::new("10.0.0.1:8080/tcp", "[fd00::5]:80", None, None),
            Err(BounceError::FamilyMismatch { what: "target", .. })
        ));
        assert!(matches!(
            ServiceSpec::new("10.0.0.1:8080/tcp", "10.1.0.5:80", Some("fd00::1".parse().expect("an address")), None),
            Err(BounceError::FamilyMismatch { what: "source", .. })
        ));
        assert_eq!(
            ServiceSpec::new("10.0.0.1:0/udp", "10.1.0.5:80", None, None),
            Err(BounceError::PortZero { what: "listen" })
        );
        assert_eq!(
            ServiceSpec::new("10.0.0.1:53/udp", "10.1.0.5:0", None, None),
            Err(BounceError::PortZero { what: "target" })
        );
        assert_eq!(parse_port_range("61000-61003"), Ok((61000, 61003)));
        for bad in ["61003-61000", "0-5", "61000", "a-b", "1-65536"] {
            assert!(parse_port_range(bad).is_err(), "{bad} must be refused");
        }
        // The source ports stay clear of the host's ephemeral range.
        let ephemeral = 32768..=60999;
        assert_eq!(spec.check_ports(&ephemeral), Ok(()), "the default range is above Linux's default");
        for (first, last) in [(40000, 40010), (60999, 61010), (30000, 32768), (1024, 65535)] {
            let spec = ServiceSpec::new("10.0.0.1:8080/tcp", "10.1.0.5:80", None, Some((first, last))).expect("valid");
            let error = spec.check_ports(&ephemeral).expect_err("overlaps the ephemeral range").to_string();
            assert!(error.contains(&format!("{first}-{last}")) && error.contains("32768-60999"), "{error}");
        }
    }

    #[test]
    fn events_convert_to_wall_clock_and_name_both_sides() {
        let tuple = |src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16| FlowTuple {
            src: Addr::from_v4(src),
            dst: Addr::from_v4(dst),
            src_port: sport.to_be_bytes(),
            dst_port: dport.to_be_bytes(),
            protocol: IPPROTO_TCP,
            reserved: [0; 3],
        };
        let raw = BounceEvent {
            time_ns: 2_000_000_000,
            kind: rewrite_common::bounce::EVENT_DISCONNECT,
            reason: rewrite_common::bounce::REASON_FIN,
            client: tuple([10, 1, 0, 2], 40000, [10, 1, 0, 1], 8080),
            target: tuple([10, 2, 0, 1], 61001, [10, 2, 0, 2], 80),
            packets: [5, 4],
            bytes: [500, 4000],
            duration_ns: 1_500_000_000,
        };
        let clock = Clock { unix_at_start: 1000.0, monotonic_at_start: 1_000_000_000 };
        let event = Event::from_raw(&raw, &clock);
        assert!((event.time - 1001.0).abs() < 1e-9, "{}", event.time);
        assert_eq!(event.reason, Some("fin"));
        assert_eq!(event.client, "10.1.0.2:40000".parse().expect("an address"));
        assert_eq!(event.listen, "10.1.0.1:8080".parse().expect("an address"));
        assert_eq!(event.source, "10.2.0.1:61001".parse().expect("an address"));
        assert_eq!(event.target, "10.2.0.2:80".parse().expect("an address"));
        assert_eq!(
            event.to_string(),
            "1001.000 disconnect tcp 10.1.0.2:40000 -> 10.1.0.1:8080 via 10.2.0.1:61001 -> 10.2.0.2:80 fin after \
             1.500 s, 5 packets/500 bytes out, 4 packets/4000 bytes back"
        );
    }
}
