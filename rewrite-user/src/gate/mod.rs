//! The gatekeeper's maps from userspace (see `rewrite_common::gate` for what the
//! programs do with them): mode, protected and management ports, allow prefixes, and
//! the per-reason counters. Every input is checked before anything is written.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    time::Instant,
};

use aya::maps::{Array, MapData, PerCpuArray, lpm_trie::Key, lpm_trie::LpmTrie};
use rewrite_common::{
    gate::{
        DEFAULT_MANAGEMENT_PORT, GATE_COUNTER_NAMES, GATE_COUNTER_SLOTS, GateSample, GateSettings, MAP_GATE_ALLOW,
        MAP_GATE_COUNTERS, MAP_GATE_LOG, MAP_GATE_LOG_LEASE, MAP_GATE_PORTS, MAP_GATE_SETTINGS, MODE_ENFORCE,
        MODE_MONITOR, MODE_OFF, PORT_MANAGEMENT, PORT_PROTECTED, PORT_SLOTS, port_slot,
    },
    mapping::PrefixMapping,
    maps::Addr,
    validate::masked,
};
use serde::Serialize;

use crate::{
    Error,
    maps::open_pinned,
    pins::PinLayout,
    ring::{self, Clock},
};

/// Where Linux keeps the ephemeral port range that replies to this host's own
/// connections arrive on.
const EPHEMERAL_RANGE_PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("{text:?} is not PROTO/PORT, PROTO/FIRST-LAST, PROTO/all or all (PROTO is tcp or udp)")]
    BadPorts { text: String },
    #[error(
        "{protocol}/{port} is in this host's ephemeral port range {first}-{last} ({EPHEMERAL_RANGE_PATH}), where \
         replies to its own connections arrive: protecting it could drop them"
    )]
    EphemeralPort { protocol: &'static str, port: u16, first: u16, last: u16 },
    #[error("{text:?} is not an address prefix (ADDR/LEN, LEN at most 32 for IPv4 and 128 for IPv6)")]
    BadPrefix { text: String },
    #[error("{text:?} is not a gate mode: off, monitor or enforce")]
    BadMode { text: String },
    #[error("cannot read the ephemeral port range from {}: {why}", path.display())]
    EphemeralRange { path: PathBuf, why: String },
    #[error(
        "{protocol}/{port} is in the source port range {first}-{last} of a bounce service, where the target's replies \
         arrive: protecting it would drop them"
    )]
    BounceRange { protocol: &'static str, port: u16, first: u16, last: u16 },
}

/// UDP ports where replies to this host's own clients of fixed-port protocols arrive:
/// DHCP (68), NTP (123: ntpd and chrony send from it and the server answers to it) and
/// DHCPv6 (546). `all` leaves them out; naming one protects it, as the operator says.
pub const CLIENT_UDP_PORTS: [u16; 3] = [68, 123, 546];

/// The ports where replies to this host's own traffic arrive, which the gate must not
/// close: its ephemeral range (both protocols), bounce mode's source port ranges (per
/// protocol), and the fixed UDP client ports. `all` leaves them all out; a named port
/// inside the ephemeral range or a bounce range is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientPorts {
    pub ephemeral: RangeInclusive<u16>,
    pub bounce: Vec<(u8, RangeInclusive<u16>)>,
}

impl ClientPorts {
    /// This host's: its ephemeral range and the live bounce services' ranges.
    pub fn of_host(pins: &PinLayout) -> Result<Self, Error> {
        let bounce = if crate::loader::bounce_enabled(pins) {
            crate::bounce::BounceTable::open(pins)?
                .services()?
                .iter()
                .map(|service| (service.key.protocol, service.value.port_first..=service.value.port_last))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self { ephemeral: ephemeral_range()?, bounce })
    }

    /// Whether `all` leaves `port` of `protocol` out.
    fn left_out(&self, protocol: u8, port: u16) -> bool {
        self.ephemeral.contains(&port)
            || (protocol == 17 && CLIENT_UDP_PORTS.contains(&port))
            || self.bounce.iter().any(|(bounced, range)| *bounced == protocol && range.contains(&port))
    }

    /// Why a named `port` of `protocol` may not be protected, if it may not.
    fn refusal(&self, protocol: u8, port: u16) -> Option<GateError> {
        if self.ephemeral.contains(&port) {
            return Some(GateError::EphemeralPort {
                protocol: protocol_name(protocol),
                port,
                first: *self.ephemeral.start(),
                last: *self.ephemeral.end(),
            });
        }
        self.bounce.iter().find(|(bounced, range)| *bounced == protocol && range.contains(&port)).map(|(_, range)| {
            GateError::BounceRange {
                protocol: protocol_name(protocol),
                port,
                first: *range.start(),
                last: *range.end(),
            }
        })
    }
}

/// `off`, `monitor` or `enforce`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Off,
    Monitor,
    Enforce,
}

impl Mode {
    pub fn parse(text: &str) -> Result<Self, GateError> {
        match text {
            "off" => Ok(Self::Off),
            "monitor" => Ok(Self::Monitor),
            "enforce" => Ok(Self::Enforce),
            _ => Err(GateError::BadMode { text: text.to_owned() }),
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Monitor => "monitor",
            Self::Enforce => "enforce",
        }
    }

    const fn value(self) -> u32 {
        match self {
            Self::Off => MODE_OFF,
            Self::Monitor => MODE_MONITOR,
            Self::Enforce => MODE_ENFORCE,
        }
    }

    const fn from_value(value: u32) -> Self {
        match value {
            MODE_MONITOR => Self::Monitor,
            MODE_ENFORCE => Self::Enforce,
            _ => Self::Off,
        }
    }
}

/// TCP or UDP ports: `tcp/9200`, `udp/5000-5010`, `tcp/all`, or `all` (both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// 6, 17, or both.
    pub protocols: Vec<u8>,
    /// `None`: every port but the ephemeral range.
    pub ports: Option<RangeInclusive<u16>>,
}

impl PortSpec {
    pub fn parse(text: &str) -> Result<Self, GateError> {
        let bad = || GateError::BadPorts { text: text.to_owned() };
        if text == "all" {
            return Ok(Self { protocols: vec![6, 17], ports: None });
        }
        let (protocol, ports) = text.split_once('/').ok_or_else(bad)?;
        let protocol = match protocol {
            "tcp" => 6,
            "udp" => 17,
            _ => return Err(bad()),
        };
        let ports = match ports {
            "all" => None,
            single if !single.contains('-') => {
                let port: u16 = single.parse().map_err(|_| bad())?;
                Some(port..=port)
            }
            range => {
                let (first, last) = range.split_once('-').ok_or_else(bad)?;
                let (first, last): (u16, u16) = (first.parse().map_err(|_| bad())?, last.parse().map_err(|_| bad())?);
                if first > last {
                    return Err(bad());
                }
                Some(first..=last)
            }
        };
        Ok(Self { protocols: vec![protocol], ports })
    }

    /// Every (protocol, port) the spec names. `all` leaves out the host's client ports;
    /// a named port among those that must stay open is an error.
    fn slots(&self, client: &ClientPorts) -> Result<Vec<(u8, u16)>, GateError> {
        let mut slots = Vec::new();
        for &protocol in &self.protocols {
            match &self.ports {
                None => slots.extend(
                    (0..=u16::MAX).filter(|port| !client.left_out(protocol, *port)).map(|port| (protocol, port)),
                ),
                Some(ports) => {
                    if let Some(refusal) = ports.clone().find_map(|port| client.refusal(protocol, port)) {
                        return Err(refusal);
                    }
                    slots.extend(ports.clone().map(|port| (protocol, port)));
                }
            }
        }
        Ok(slots)
    }
}

const fn protocol_name(protocol: u8) -> &'static str {
    if protocol == 6 { "tcp" } else { "udp" }
}

/// An allow prefix, `ADDR/LEN` (a bare address is a host).
pub fn parse_prefix(text: &str) -> Result<(IpAddr, u8), GateError> {
    let bad = || GateError::BadPrefix { text: text.to_owned() };
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr.parse::<IpAddr>().map_err(|_| bad())?, Some(len.parse::<u8>().map_err(|_| bad())?)),
        None => (text.parse::<IpAddr>().map_err(|_| bad())?, None),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    if len > max {
        return Err(bad());
    }
    Ok((addr, len))
}

/// This host's ephemeral port range.
pub fn ephemeral_range() -> Result<RangeInclusive<u16>, GateError> {
    ephemeral_range_from(Path::new(EPHEMERAL_RANGE_PATH))
}

fn ephemeral_range_from(path: &Path) -> Result<RangeInclusive<u16>, GateError> {
    let failed = |why: String| GateError::EphemeralRange { path: path.to_owned(), why };
    let text = std::fs::read_to_string(path).map_err(|error| failed(error.to_string()))?;
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    match (fields.next(), fields.next()) {
        (Some(Ok(first)), Some(Ok(last))) if first <= last => Ok(first..=last),
        _ => Err(failed(format!("{text:?} is not two ports"))),
    }
}

/// The gate's pinned maps.
#[expect(missing_debug_implementations, reason = "map handles; nothing to show")]
pub struct GateTable {
    /// The ports `all` leaves out, and named ports may not be.
    client: ClientPorts,
    settings: Array<MapData, GateSettings>,
    ports: Array<MapData, u32>,
    allow: LpmTrie<MapData, Addr, u32>,
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
            client: ClientPorts::of_host(pins)?,
            settings: Array::try_from(open_pinned(pins, MAP_GATE_SETTINGS)?).map_err(map_error(MAP_GATE_SETTINGS))?,
            ports: Array::try_from(open_pinned(pins, MAP_GATE_PORTS)?).map_err(map_error(MAP_GATE_PORTS))?,
            allow: LpmTrie::try_from(open_pinned(pins, MAP_GATE_ALLOW)?).map_err(map_error(MAP_GATE_ALLOW))?,
            counters: PerCpuArray::try_from(open_pinned(pins, MAP_GATE_COUNTERS)?)
                .map_err(map_error(MAP_GATE_COUNTERS))?,
        })
    }

    fn read_settings(&self) -> Result<GateSettings, Error> {
        self.settings.get(&0, 0).map_err(|source| Error::map(MAP_GATE_SETTINGS, source))
    }

    fn write_settings(&mut self, settings: GateSettings) -> Result<(), Error> {
        self.settings.set(0, settings, 0).map_err(|source| Error::map(MAP_GATE_SETTINGS, source))
    }

    pub fn mode(&self) -> Result<Mode, Error> {
        Ok(Mode::from_value(self.read_settings()?.mode))
    }

    pub fn set_mode(&mut self, mode: Mode) -> Result<(), Error> {
        let settings = self.read_settings()?;
        self.write_settings(GateSettings { mode: mode.value(), ..settings })
    }

    fn port_bits(&self, protocol: u8, port: u16) -> Result<u32, Error> {
        let slot = port_slot(protocol, port).unwrap_or(0);
        self.ports.get(&slot, 0).map_err(|source| Error::map(MAP_GATE_PORTS, source))
    }

    fn set_port_bits(&mut self, protocol: u8, port: u16, bits: u32) -> Result<(), Error> {
        let slot = port_slot(protocol, port).unwrap_or(0);
        self.ports.set(slot, bits, 0).map_err(|source| Error::map(MAP_GATE_PORTS, source))
    }

    /// Sets or clears `bit` on every port of `specs`, all checked first. Returns how
    /// many ports changed.
    fn change_ports(&mut self, specs: &[PortSpec], bit: u32, on: bool) -> Result<usize, Error> {
        let mut slots = Vec::new();
        for spec in specs {
            slots.extend(spec.slots(&self.client)?);
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
    pub fn protected_port_in(&self, protocol: u8, range: RangeInclusive<u16>) -> Result<Option<u16>, Error> {
        for port in range {
            if self.port_bits(protocol, port)? & PORT_PROTECTED != 0 {
                return Ok(Some(port));
            }
        }
        Ok(None)
    }

    /// Protects (or, with `on` false, opens) the ports of `specs`.
    pub fn protect(&mut self, specs: &[PortSpec], on: bool) -> Result<usize, Error> {
        self.change_ports(specs, PORT_PROTECTED, on)
    }

    /// Makes `specs` the management ports, replacing the previous ones (ssh by
    /// default); an empty list takes the fail-safe away.
    pub fn set_management(&mut self, specs: &[PortSpec]) -> Result<(), Error> {
        for spec in specs {
            spec.slots(&self.client)?;
        }
        for (protocol, port) in self.ports_with(PORT_MANAGEMENT)? {
            let bits = self.port_bits(protocol, port)?;
            self.set_port_bits(protocol, port, bits & !PORT_MANAGEMENT)?;
        }
        self.change_ports(specs, PORT_MANAGEMENT, true)?;
        let settings = self.read_settings()?;
        self.write_settings(GateSettings { management_configured: 1, ..settings })
    }

    fn all_port_bits(&self) -> Result<Vec<u32>, Error> {
        (0..PORT_SLOTS)
            .map(|slot| self.ports.get(&slot, 0).map_err(|source| Error::map(MAP_GATE_PORTS, source)))
            .collect()
    }

    fn allow_prefixes(&self) -> Result<Vec<(IpAddr, u8)>, Error> {
        self.allow
            .keys()
            .map(|key| {
                let key = key.map_err(|source| Error::map(MAP_GATE_ALLOW, source))?;
                let addr = IpAddr::from(key.data());
                let len = if addr.is_ipv4() { key.prefix_len().saturating_sub(96) } else { key.prefix_len() };
                Ok((addr, u8::try_from(len).unwrap_or(u8::MAX)))
            })
            .collect()
    }

    /// The live gate as a `[gate]` section.
    pub fn config(&self) -> Result<GateConfig, Error> {
        let view = self.view()?;
        let mut allow = self.allow_prefixes()?;
        allow.sort();
        Ok(GateConfig {
            mode: view.mode,
            protect: view.protected,
            allow,
            management: view.management_configured.then_some(view.management),
        })
    }

    /// The (protocol, port) pairs with `bit` set, from one read of the whole port map.
    fn ports_with(&self, bit: u32) -> Result<Vec<(u8, u16)>, Error> {
        Ok(ports_with(&self.all_port_bits()?, bit))
    }

    /// Adds (or removes) an allow prefix.
    pub fn allow(&mut self, (addr, len): (IpAddr, u8), on: bool) -> Result<(), Error> {
        let key = Key::new(PrefixMapping::key_len(addr, len), Addr::from(masked(addr, len)));
        let result = if on { self.allow.insert(&key, 1, 0) } else { self.allow.remove(&key) };
        result.map_err(|source| Error::map(MAP_GATE_ALLOW, source))
    }

    pub fn view(&self) -> Result<GateView, Error> {
        let settings = self.read_settings()?;
        let ranges = |ports: Vec<(u8, u16)>| compress(&ports);
        // One read of the port map for both lists: 131,072 lookups each.
        let bits = self.all_port_bits()?;
        let mut management = ranges(ports_with(&bits, PORT_MANAGEMENT));
        if settings.management_configured == 0 {
            management.insert(0, format!("tcp/{DEFAULT_MANAGEMENT_PORT}"));
        }
        let mut allow: Vec<String> =
            self.allow_prefixes()?.into_iter().map(|(addr, len)| format!("{addr}/{len}")).collect();
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

/// The `[gate]` section of a config file: the whole gate, as it must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateConfig {
    pub mode: Mode,
    /// Port specs as `protect` takes them, each checked.
    pub protect: Vec<String>,
    /// Allow prefixes: network address and length.
    pub allow: Vec<(IpAddr, u8)>,
    /// `None`: ssh, the default fail-safe; an empty list: no management port.
    pub management: Option<Vec<String>>,
}

/// What applying a `[gate]` section changes, worked out against the live maps (or an
/// empty gate if the dataplane is not loaded yet), with every port checked first.
#[derive(Debug)]
pub struct GatePlan {
    settings: GateSettings,
    /// (slot, new bits) for every port whose bits change.
    ports: Vec<(u32, u32)>,
    allow_added: Vec<(IpAddr, u8)>,
    allow_removed: Vec<(IpAddr, u8)>,
    mode_changes: Option<(Mode, Mode)>,
}

impl GatePlan {
    /// One line per kind of change, for `apply` and the agent's log.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some((from, to)) = self.mode_changes {
            lines.push(format!("gate mode {} -> {}", from.name(), to.name()));
        }
        if !self.ports.is_empty() {
            let ports = self.ports.len();
            lines.push(if ports == 1 {
                "gate: 1 port changes class".to_owned()
            } else {
                format!("gate: {ports} ports change class")
            });
        }
        let prefix = |(addr, len): &(IpAddr, u8)| format!("{addr}/{len}");
        lines.extend(self.allow_added.iter().map(|allowed| format!("gate allow {}", prefix(allowed))));
        lines.extend(self.allow_removed.iter().map(|allowed| format!("gate disallow {}", prefix(allowed))));
        lines
    }
}

/// Works out what `config` changes in the gate at `pins`, given the client ports the
/// gate must leave open (with the bounce ranges the same apply leaves in place).
/// Changes nothing.
pub fn plan(pins: &PinLayout, config: &GateConfig, client: &ClientPorts) -> Result<GatePlan, Error> {
    let mut wanted = vec![0u32; PORT_SLOTS as usize];
    let mut mark = |texts: &[String], bit: u32| -> Result<(), Error> {
        for text in texts {
            for (protocol, port) in PortSpec::parse(text)?.slots(client)? {
                wanted[port_slot(protocol, port).unwrap_or(0) as usize] |= bit;
            }
        }
        Ok(())
    };
    mark(&config.protect, PORT_PROTECTED)?;
    mark(config.management.as_deref().unwrap_or_default(), PORT_MANAGEMENT)?;
    let settings =
        GateSettings { mode: config.mode.value(), management_configured: u32::from(config.management.is_some()) };
    let (current_settings, current_ports, current_allow) = if pins.map(MAP_GATE_SETTINGS).exists() {
        let table = GateTable::open(pins)?;
        (table.read_settings()?, table.all_port_bits()?, table.allow_prefixes()?)
    } else {
        (GateSettings::default(), vec![0u32; PORT_SLOTS as usize], Vec::new())
    };
    let ports = (0..PORT_SLOTS)
        .zip(wanted.iter().zip(&current_ports))
        .filter(|(_, (wanted, current))| wanted != current)
        .map(|(slot, (wanted, _))| (slot, *wanted))
        .collect();
    let wanted_allow: Vec<(IpAddr, u8)> = config.allow.iter().map(|&(addr, len)| (masked(addr, len), len)).collect();
    let (from, to) = (Mode::from_value(current_settings.mode), config.mode);
    Ok(GatePlan {
        settings,
        ports,
        allow_added: wanted_allow.iter().filter(|prefix| !current_allow.contains(prefix)).copied().collect(),
        allow_removed: current_allow.iter().filter(|prefix| !wanted_allow.contains(prefix)).copied().collect(),
        mode_changes: (from != to).then_some((from, to)),
    })
}

/// Applies a plan: prefixes first and ports next, the mode last, so that a gate
/// going into enforce already admits what it must.
pub fn apply(pins: &PinLayout, plan: &GatePlan) -> Result<(), Error> {
    let mut table = GateTable::open(pins)?;
    for prefix in &plan.allow_added {
        table.allow(*prefix, true)?;
    }
    for &(slot, bits) in &plan.ports {
        table.ports.set(slot, bits, 0).map_err(|source| Error::map(MAP_GATE_PORTS, source))?;
    }
    for prefix in &plan.allow_removed {
        table.allow(*prefix, false)?;
    }
    table.write_settings(plan.settings)
}

/// A denied packet as `gate log` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Unix time, seconds.
    pub time: f64,
    /// `dropped` (enforce) or `would_drop` (monitor).
    pub verdict: &'static str,
    pub protocol: &'static str,
    pub source: IpAddr,
    pub port: u16,
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3} {} {} {} -> port {}", self.time, self.verdict, self.protocol, self.source, self.port)
    }
}

/// Follows the sampled denied packets (at most one per CPU per 10 ms, and only while
/// this reader is there) until `sink` returns false or `deadline` passes. One reader
/// at a time.
pub fn follow_samples(
    pins: &PinLayout,
    deadline: Option<Instant>,
    mut sink: impl FnMut(Sample) -> bool,
) -> Result<(), Error> {
    let clock = Clock::now();
    ring::follow::<GateSample>(pins, MAP_GATE_LOG, MAP_GATE_LOG_LEASE, deadline, |raw| {
        sink(Sample {
            time: clock.to_unix(raw.time_ns),
            verdict: if raw.dropped != 0 { "dropped" } else { "would_drop" },
            protocol: protocol_name(raw.protocol),
            source: IpAddr::from(raw.src),
            port: raw.dst_port,
        })
    })
}

/// Whether a `gate log` reader is following the samples now.
pub fn log_reader_present(pins: &PinLayout) -> Result<bool, Error> {
    ring::reader_present(pins, MAP_GATE_LOG_LEASE)
}

/// The (protocol, port) pairs whose slot in `bits` (the whole port map) has `bit`.
fn ports_with(bits: &[u32], bit: u32) -> Vec<(u8, u16)> {
    [6u8, 17]
        .into_iter()
        .flat_map(|protocol| (0..=u16::MAX).map(move |port| (protocol, port)))
        .filter(|&(protocol, port)| {
            port_slot(protocol, port).and_then(|slot| bits.get(slot as usize)).is_some_and(|value| value & bit != 0)
        })
        .collect()
}

/// Sorted (protocol, port) pairs as `tcp/22`, `udp/5000-5010`, ... runs.
fn compress(ports: &[(u8, u16)]) -> Vec<String> {
    let mut runs: Vec<(u8, u16, u16)> = Vec::new();
    for &(protocol, port) in ports {
        match runs.last_mut() {
            Some((last_protocol, _, last)) if *last_protocol == protocol && u32::from(*last) + 1 == u32::from(port) => {
                *last = port;
            }
            _ => runs.push((protocol, port, port)),
        }
    }
    runs.into_iter()
        .map(|(protocol, first, last)| {
            let name = protocol_name(protocol);
            if first == last { format!("{name}/{first}") } else { format!("{name}/{first}-{last}") }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs_parse_and_bad_ones_say_what_is_wrong() {
        assert_eq!(
            PortSpec::parse("tcp/9200").expect("valid"),
            PortSpec { protocols: vec![6], ports: Some(9200..=9200) }
        );
        assert_eq!(PortSpec::parse("udp/5000-5010").expect("valid").ports, Some(5000..=5010));
        assert_eq!(PortSpec::parse("all").expect("valid"), PortSpec { protocols: vec![6, 17], ports: None });
        for bad in ["tcp", "icmp/1", "tcp/70000", "tcp/10-5", "tcp/x", ""] {
            let error = PortSpec::parse(bad).expect_err(bad).to_string();
            assert!(error.contains("PROTO/PORT"), "{bad}: {error}");
        }
    }

    #[test]
    fn all_leaves_out_the_ephemeral_range_and_a_named_port_there_is_refused() {
        let client = ClientPorts { ephemeral: 32768..=60999, bounce: Vec::new() };
        let all = PortSpec::parse("tcp/all").expect("valid").slots(&client).expect("slots");
        assert_eq!(all.len(), 65536 - (60999 - 32768 + 1));
        assert!(all.iter().all(|(_, port)| !client.ephemeral.contains(port)));
        let error = PortSpec::parse("udp/40000").expect("valid").slots(&client).expect_err("ephemeral").to_string();
        assert!(error.contains("udp/40000") && error.contains("32768-60999"), "{error}");
    }

    #[test]
    fn all_leaves_out_client_ports_and_bounce_ranges() {
        let client = ClientPorts { ephemeral: 32768..=60999, bounce: vec![(6, 61000..=65535)] };
        let all = PortSpec::parse("all").expect("valid").slots(&client).expect("slots");
        for port in CLIENT_UDP_PORTS {
            assert!(!all.contains(&(17, port)), "udp/{port}: replies to this host's DHCP, NTP and DHCPv6 clients");
            assert!(all.contains(&(6, port)), "tcp/{port} is no client port");
        }
        assert!(!all.iter().any(|&(protocol, port)| protocol == 6 && port >= 61000), "bounce's TCP range");
        assert!(all.contains(&(17, 61000)), "bounce's range is TCP only here");
        let error = PortSpec::parse("tcp/62000").expect("valid").slots(&client).expect_err("bounce range").to_string();
        assert!(error.contains("tcp/62000") && error.contains("61000-65535") && error.contains("bounce"), "{error}");
        assert!(PortSpec::parse("udp/123").expect("valid").slots(&client).is_ok(), "named, a client port is protected");
    }

    #[test]
    fn prefixes_parse_mask_and_compress() {
        assert_eq!(parse_prefix("10.1.2.3/8").expect("valid"), ("10.1.2.3".parse().expect("ip"), 8));
        assert_eq!(parse_prefix("fd00::1").expect("valid").1, 128);
        assert!(parse_prefix("10.0.0.0/33").is_err());
        assert_eq!(masked("10.1.2.3".parse().expect("ip"), 8), "10.0.0.0".parse::<IpAddr>().expect("ip"));
        assert_eq!(compress(&[(6, 22), (6, 23), (6, 24), (17, 25), (17, 53)]), ["tcp/22-24", "udp/25", "udp/53"]);
        let mut bits = vec![0u32; PORT_SLOTS as usize];
        bits[22] = PORT_PROTECTED | PORT_MANAGEMENT;
        bits[65_536 + 53] = PORT_PROTECTED;
        assert_eq!(ports_with(&bits, PORT_PROTECTED), [(6, 22), (17, 53)]);
        assert_eq!(ports_with(&bits, PORT_MANAGEMENT), [(6, 22)]);
    }
}
