//! The declarative config file (TOML): the interfaces to attach and the mappings the
//! table must hold, each in the form `map add` takes, with an optional label.
//!
//! ```toml
//! max_mappings = 100000            # optional: capacity of a table this config creates
//!
//! [[interface]]
//! name = "eth0"
//! ingress = "auto"                 # optional: auto, xdp, xdp-skb or tc
//!
//! [[mapping]]
//! virtual = "10.0.0.5"
//! real = "192.0.2.5"
//! label = "es-data-1"              # optional
//!
//! [fleet]                          # optional: follow a fleet table in etcd
//! etcd = ["https://10.1.0.1:2379"]
//! prefix = "/rewrite/prod"
//! ca = "/etc/rewrite/etcd-ca.pem"   # optional: TLS; cert and key for client auth
//! user = "rewrite"                  # optional, with password_file
//! password_file = "/etc/rewrite/etcd-password"
//! keepalive_seconds = 10           # optional
//! retry_max_seconds = 10           # optional
//!
//! [fleet.node]                     # optional: register this node
//! id = "es-data-1"
//! real = ["192.0.2.5"]
//! pool = "overlay"
//! lease_ttl_seconds = 10           # optional
//! expire_after = "lease"           # optional: lease, never, or a grace period (90s, 10m)
//!
//! [bounce]                         # optional: bounce mode; without it, apply leaves
//!                                  # the bounce services as they are
//! max_flows = 1000000              # optional: size of a flow table this config creates
//! udp_idle_seconds = 60            # optional
//! tcp_idle_seconds = 7200          # optional
//! unreplied_seconds = 10           # optional: flows the target never answered
//!
//! [[bounce.service]]
//! listen = "10.0.0.1:9200/tcp"
//! target = "192.0.2.7:9200"
//! source = "192.0.2.1"             # optional: the route's source address by default
//! ports = "61000-65535"            # optional
//!
//! [gate]                           # optional: the gatekeeper; without it, apply
//!                                  # leaves the gate as it is
//! mode = "monitor"                 # off (default), monitor or enforce
//! protect = ["tcp/9200", "udp/24007-24008"]   # or "tcp/all", "udp/all", "all"
//! allow = ["192.0.2.0/24"]         # sources admitted besides the fleet
//! management = ["tcp/22"]          # optional: ssh by default; [] closes it too
//! ```
//!
//! [`parse`] checks the whole file before anything is applied and reports every
//! problem it finds with its line and column: TOML syntax, unknown keys, bad
//! addresses, ranges of different widths, duplicate VIRTUALs, REALs claimed twice,
//! any conflict the table would refuse, and a table that would overflow.

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use clap::ValueEnum as _;
use rewrite_common::{
    bounce::{DEFAULT_TCP_IDLE_SECONDS, DEFAULT_UDP_IDLE_SECONDS, DEFAULT_UNREPLIED_SECONDS},
    maps::{DEFAULT_MAX_MAPPINGS, MAX_PREFIX_MAPPINGS},
    model::ModelTable,
    spec::{MappingSpec, Side},
    validate::MappingConflict,
};
use serde::Deserialize;
use toml::Spanned;

use crate::{
    bounce::{BounceError, ServiceSpec},
    fleet::{FleetSettings, Layout, MappingExpiry, NodeOptions, StoreOptions, check_name},
    gate::GateConfig,
    loader::IngressMode,
};

/// A validated config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Capacity of the mapping maps, if this config's first attach creates them.
    pub max_mappings: Option<u32>,
    pub interfaces: Vec<InterfaceConfig>,
    pub mappings: Vec<ConfigMapping>,
    /// The fleet table to follow, if any.
    pub fleet: Option<FleetSettings>,
    /// Bounce mode's services and settings; `None` leaves bounce mode alone.
    pub bounce: Option<BounceConfig>,
    /// The gatekeeper as it must be; `None` leaves the gate alone.
    pub gate: Option<GateConfig>,
}

/// The `[bounce]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BounceConfig {
    /// Size of the flow table, if this config's first service creates it.
    pub max_flows: Option<u32>,
    pub timeouts: crate::bounce::Timeouts,
    pub services: Vec<ServiceSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub name: String,
    pub ingress: IngressMode,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigMapping {
    pub spec: MappingSpec,
    pub label: Option<String>,
    /// The line of the mapping's `virtual` key (1-based), for messages.
    pub line: usize,
}

/// One problem in a config file, at a 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}", Invalid { path, problems })]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

/// Problems listed in a message; a generated file can have thousands of one kind.
const SHOWN_PROBLEMS: usize = 100;

/// Renders problems as `FILE:LINE:COLUMN: message`, one per line, with a count.
struct Invalid<'a> {
    path: &'a Path,
    problems: &'a [Problem],
}

impl fmt::Display for Invalid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(
            f,
            "{} has {count} problem{}; nothing was applied",
            self.path.display(),
            if count == 1 { "" } else { "s" }
        )?;
        for problem in self.problems.iter().take(SHOWN_PROBLEMS) {
            write!(f, "\n  {}:{}:{}: {}", self.path.display(), problem.line, problem.column, problem.message)?;
        }
        if count > SHOWN_PROBLEMS {
            write!(f, "\n  … and {} more", count - SHOWN_PROBLEMS)?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    max_mappings: Option<Spanned<u32>>,
    #[serde(default, rename = "interface")]
    interfaces: Vec<RawInterface>,
    #[serde(default, rename = "mapping")]
    mappings: Vec<RawMapping>,
    fleet: Option<RawFleet>,
    bounce: Option<RawBounce>,
    gate: Option<RawGate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGate {
    mode: Option<Spanned<String>>,
    #[serde(default)]
    protect: Vec<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    management: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBounce {
    max_flows: Option<Spanned<u32>>,
    udp_idle_seconds: Option<Spanned<u64>>,
    tcp_idle_seconds: Option<Spanned<u64>>,
    unreplied_seconds: Option<Spanned<u64>>,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    listen: Spanned<String>,
    target: Spanned<String>,
    source: Option<Spanned<String>>,
    ports: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    etcd: Spanned<Vec<String>>,
    prefix: Spanned<String>,
    ca: Option<PathBuf>,
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    user: Option<String>,
    password_file: Option<PathBuf>,
    keepalive_seconds: Option<Spanned<u64>>,
    retry_max_seconds: Option<Spanned<u64>>,
    node: Option<RawNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: Spanned<String>,
    real: Spanned<Vec<String>>,
    pool: Spanned<String>,
    lease_ttl_seconds: Option<Spanned<u64>>,
    expire_after: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: Spanned<String>,
    ingress: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    #[serde(rename = "virtual")]
    virtual_side: Spanned<String>,
    #[serde(rename = "real")]
    real_side: Spanned<String>,
    label: Option<String>,
}

/// Reads and validates the config at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse(path, &text)
}

/// Validates `text` (the contents of `path`, which names it in messages) as a whole:
/// either every mapping can be in one table, or every problem is reported.
/// `capacity` limits are those of a table created by this config (or the default);
/// [`check_capacity`] checks against a live table's.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let locate = Locator::new(text);
    let invalid = |problems| ConfigError::Invalid { path: path.to_owned(), problems };
    let raw: RawConfig = toml::from_str(text).map_err(|error| {
        let at = error.span().map_or(0, |span| span.start);
        invalid(vec![locate.problem(at, error.message().to_owned())])
    })?;
    let mut problems = Vec::new();
    let max_mappings = match raw.max_mappings {
        Some(value) if *value.get_ref() == 0 => {
            problems.push(locate.problem(value.span().start, "max_mappings must be at least 1".into()));
            None
        }
        other => other.map(Spanned::into_inner),
    };
    let interfaces = interfaces(&raw.interfaces, &locate, &mut problems);
    let mappings = mappings(&raw.mappings, &locate, &mut problems);
    let fleet = raw.fleet.as_ref().and_then(|fleet| fleet_settings(fleet, &locate, &mut problems));
    let bounce = raw.bounce.as_ref().map(|bounce| bounce_config(bounce, &locate, &mut problems));
    let gate = raw.gate.as_ref().map(|gate| gate_config(gate, &locate, &mut problems));
    if problems.is_empty() {
        let capacity = max_mappings.unwrap_or(DEFAULT_MAX_MAPPINGS);
        problems.extend(check_capacity(&mappings, capacity, "max_mappings").err());
    }
    if problems.is_empty() {
        Ok(Config { max_mappings, interfaces, mappings, fleet, bounce, gate })
    } else {
        problems.sort_by_key(|problem| (problem.line, problem.column));
        Err(invalid(problems))
    }
}

fn interfaces(raw: &[RawInterface], locate: &Locator, problems: &mut Vec<Problem>) -> Vec<InterfaceConfig> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut interfaces = Vec::new();
    for interface in raw {
        let name = interface.name.get_ref();
        let at = interface.name.span().start;
        let mut valid = true;
        if let Err(error) = crate::iface::validate_name(name) {
            problems.push(locate.problem(at, error.to_string()));
            valid = false;
        } else if let Some(line) = seen.insert(name, locate.line(at)) {
            problems.push(locate.problem(at, format!("interface {name} is already listed on line {line}")));
            valid = false;
        }
        let ingress = match &interface.ingress {
            None => IngressMode::Auto,
            Some(text) => IngressMode::from_str(text.get_ref(), false).unwrap_or_else(|_| {
                let message = format!("ingress {:?} is not one of auto, xdp, xdp-skb, tc", text.get_ref());
                problems.push(locate.problem(text.span().start, message));
                valid = false;
                IngressMode::Auto
            }),
        };
        if !valid {
            continue;
        }
        interfaces.push(InterfaceConfig { name: name.clone(), ingress });
    }
    interfaces
}

/// A number of seconds within `range`, or a problem at its value.
fn seconds(
    value: Option<&Spanned<u64>>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    name: &str,
    locate: &Locator,
    problems: &mut Vec<Problem>,
) -> std::time::Duration {
    let seconds = value.map_or(default, |value| *value.get_ref());
    if let Some(value) = value.filter(|_| !range.contains(&seconds)) {
        let message = format!("{name} must be from {} to {}", range.start(), range.end());
        problems.push(locate.problem(value.span().start, message));
    }
    std::time::Duration::from_secs(seconds)
}

fn fleet_settings(raw: &RawFleet, locate: &Locator, problems: &mut Vec<Problem>) -> Option<FleetSettings> {
    let before = problems.len();
    if raw.etcd.get_ref().is_empty() {
        problems.push(locate.problem(raw.etcd.span().start, "etcd needs at least one endpoint URL".into()));
    }
    for endpoint in raw.etcd.get_ref() {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            let message = format!("etcd endpoint {endpoint:?} must start with http:// or https://");
            problems.push(locate.problem(raw.etcd.span().start, message));
        }
    }
    if let Err(error) = Layout::new(raw.prefix.get_ref()) {
        problems.push(locate.problem(raw.prefix.span().start, error.to_string()));
    }
    match (&raw.cert, &raw.key) {
        (Some(_), Some(_)) | (None, None) => {}
        (Some(half), None) | (None, Some(half)) => {
            problems.push(locate.problem(half.span().start, "cert and key go together: give both or neither".into()));
        }
    }
    let mut store = StoreOptions::new(raw.etcd.get_ref().clone(), raw.prefix.get_ref().clone());
    store.ca = raw.ca.clone();
    store.cert = raw.cert.as_ref().map(|cert| cert.get_ref().clone());
    store.key = raw.key.as_ref().map(|key| key.get_ref().clone());
    store.user = raw.user.clone();
    store.password_file = raw.password_file.clone();
    store.keepalive = seconds(raw.keepalive_seconds.as_ref(), 10, 1..=600, "keepalive_seconds", locate, problems);
    let retry_max = seconds(raw.retry_max_seconds.as_ref(), 10, 1..=3600, "retry_max_seconds", locate, problems);
    let node = raw.node.as_ref().map(|node| {
        if let Err(error) = check_name("node", node.id.get_ref()) {
            problems.push(locate.problem(node.id.span().start, error.to_string()));
        }
        if let Err(error) = check_name("pool", node.pool.get_ref()) {
            problems.push(locate.problem(node.pool.span().start, error.to_string()));
        }
        let mut reals = Vec::new();
        for text in node.real.get_ref() {
            match text.parse() {
                Ok(addr) => reals.push(addr),
                Err(_) => problems.push(locate.problem(node.real.span().start, format!("{text:?} is not an address"))),
            }
        }
        if node.real.get_ref().is_empty() {
            problems.push(locate.problem(node.real.span().start, "real needs at least one address".into()));
        }
        let lease_ttl = seconds(node.lease_ttl_seconds.as_ref(), 10, 2..=86400, "lease_ttl_seconds", locate, problems);
        let expiry = match &node.expire_after {
            None => MappingExpiry::WithLease,
            Some(text) => text.get_ref().parse().unwrap_or_else(|message| {
                problems.push(locate.problem(text.span().start, message));
                MappingExpiry::WithLease
            }),
        };
        NodeOptions { id: node.id.get_ref().clone(), reals, pool: node.pool.get_ref().clone(), lease_ttl, expiry }
    });
    (problems.len() == before).then_some(FleetSettings { store, node, retry_max })
}

/// The `[bounce]` section: every service checked as `bounce add` checks it, and no
/// LISTEN twice.
fn bounce_config(raw: &RawBounce, locate: &Locator, problems: &mut Vec<Problem>) -> BounceConfig {
    let max_flows = match &raw.max_flows {
        Some(value) if *value.get_ref() == 0 => {
            problems.push(locate.problem(value.span().start, "max_flows must be at least 1".into()));
            None
        }
        other => other.as_ref().map(|value| *value.get_ref()),
    };
    let week = 7 * 86_400;
    let udp_idle = seconds(
        raw.udp_idle_seconds.as_ref(),
        DEFAULT_UDP_IDLE_SECONDS,
        1..=week,
        "udp_idle_seconds",
        locate,
        problems,
    );
    let tcp_idle = seconds(
        raw.tcp_idle_seconds.as_ref(),
        DEFAULT_TCP_IDLE_SECONDS,
        1..=week,
        "tcp_idle_seconds",
        locate,
        problems,
    );
    let unreplied = seconds(
        raw.unreplied_seconds.as_ref(),
        u64::from(DEFAULT_UNREPLIED_SECONDS),
        1..=3600,
        "unreplied_seconds",
        locate,
        problems,
    );
    let timeouts = crate::bounce::Timeouts { udp: udp_idle, tcp: tcp_idle, unreplied };
    let mut seen: HashMap<(std::net::SocketAddr, crate::bounce::Protocol), usize> = HashMap::new();
    let mut services = Vec::new();
    for service in &raw.services {
        let at = service.listen.span().start;
        let source = match &service.source {
            None => None,
            Some(text) => match text.get_ref().parse::<IpAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    problems.push(
                        locate.problem(text.span().start, format!("source {:?} is not an address", text.get_ref())),
                    );
                    continue;
                }
            },
        };
        let ports = match &service.ports {
            None => None,
            Some(text) => match crate::bounce::parse_port_range(text.get_ref()) {
                Ok(range) => Some(range),
                Err(error) => {
                    problems.push(locate.problem(text.span().start, error.to_string()));
                    continue;
                }
            },
        };
        match ServiceSpec::new(service.listen.get_ref(), service.target.get_ref(), source, ports) {
            Ok(spec) => {
                if let Some(line) = seen.insert((spec.listen, spec.protocol), locate.line(at)) {
                    let message =
                        format!("a service already listens on {}/{} (line {line})", spec.listen, spec.protocol);
                    problems.push(locate.problem(at, message));
                } else {
                    services.push(spec);
                }
            }
            Err(error) => {
                // A problem with the target is reported at the target.
                let at = match error {
                    BounceError::BadTarget { .. } | BounceError::PortZero { what: "target" } => {
                        service.target.span().start
                    }
                    _ => at,
                };
                problems.push(locate.problem(at, error.to_string()));
            }
        }
    }
    BounceConfig { max_flows, timeouts, services }
}

/// The `[gate]` section: the mode, and every port spec and prefix checked as the CLI
/// checks them. (Whether a port lies in the host's ephemeral range is checked when the
/// section is applied, against the host it is applied on.)
fn gate_config(raw: &RawGate, locate: &Locator, problems: &mut Vec<Problem>) -> GateConfig {
    let mode = match &raw.mode {
        None => crate::gate::Mode::Off,
        Some(text) => crate::gate::Mode::parse(text.get_ref()).unwrap_or_else(|error| {
            problems.push(locate.problem(text.span().start, error.to_string()));
            crate::gate::Mode::Off
        }),
    };
    let mut specs = |texts: &[Spanned<String>]| -> Vec<String> {
        texts
            .iter()
            .filter_map(|text| match crate::gate::PortSpec::parse(text.get_ref()) {
                Ok(_) => Some(text.get_ref().clone()),
                Err(error) => {
                    problems.push(locate.problem(text.span().start, error.to_string()));
                    None
                }
            })
            .collect()
    };
    let protect = specs(&raw.protect);
    let management = raw.management.as_deref().map(&mut specs);
    let allow = raw
        .allow
        .iter()
        .filter_map(|text| match crate::gate::parse_prefix(text.get_ref()) {
            Ok(prefix) => Some(prefix),
            Err(error) => {
                problems.push(locate.problem(text.span().start, error.to_string()));
                None
            }
        })
        .collect();
    GateConfig { mode, protect, allow, management }
}

/// What a mapping occupies, to find a second mapping of the same VIRTUAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum VirtualKey {
    Address(IpAddr),
    Port(u8, IpAddr, u16),
    Prefix(IpAddr, u8),
}

pub(crate) fn virtual_keys(spec: &MappingSpec) -> Vec<VirtualKey> {
    match spec {
        MappingSpec::Address { virtual_addr, .. } => vec![VirtualKey::Address(*virtual_addr)],
        MappingSpec::Ports(mapping) => {
            mapping.ports().map(|(port, _)| VirtualKey::Port(mapping.protocol, mapping.virtual_addr, port)).collect()
        }
        MappingSpec::Prefix(mapping) => vec![VirtualKey::Prefix(mapping.virtual_net, mapping.len)],
    }
}

fn mappings(raw: &[RawMapping], locate: &Locator, problems: &mut Vec<Problem>) -> Vec<ConfigMapping> {
    let mut model = ModelTable::default();
    let mut claimed: HashMap<VirtualKey, usize> = HashMap::new();
    let mut mappings = Vec::new();
    for mapping in raw {
        // Each problem points at the value it is about: the VIRTUAL, or the REAL.
        let (virtual_at, real_at) = (mapping.virtual_side.span().start, mapping.real_side.span().start);
        let line = locate.line(virtual_at);
        let sides = (
            mapping.virtual_side.get_ref().parse::<Side>().map_err(|error| (virtual_at, error)),
            mapping.real_side.get_ref().parse::<Side>().map_err(|error| (real_at, error)),
        );
        let spec = match sides {
            (Err((at, error)), _) | (_, Err((at, error))) => {
                problems.push(locate.problem(at, error.to_string()));
                continue;
            }
            // Two sides that do not match: the REAL must follow the VIRTUAL.
            (Ok(virtual_side), Ok(real_side)) => match MappingSpec::new(virtual_side, real_side) {
                Ok(spec) => spec,
                Err(error) => {
                    problems.push(locate.problem(real_at, error.to_string()));
                    continue;
                }
            },
        };
        if let Some(first) = virtual_keys(&spec).iter().find_map(|key| claimed.get(key)) {
            let message = format!("VIRTUAL {} is already mapped on line {first}", mapping.virtual_side.get_ref());
            problems.push(locate.problem(virtual_at, message));
            continue;
        }
        let added = match &spec {
            MappingSpec::Address { virtual_addr, real_addr } => model.add(*virtual_addr, *real_addr),
            MappingSpec::Ports(ports) => model.add_ports(ports),
            MappingSpec::Prefix(prefix) => model.add_prefix(prefix),
        };
        if let Err(conflict) = added {
            let at = if conflict_is_about_real(&conflict, &spec) { real_at } else { virtual_at };
            problems.push(locate.problem(at, conflict.to_string()));
            continue;
        }
        claimed.extend(virtual_keys(&spec).into_iter().map(|key| (key, line)));
        mappings.push(ConfigMapping { spec, label: mapping.label.clone(), line });
    }
    mappings
}

/// Whether a mapping's conflict with the table is about its REAL side (so a message
/// points at the `real` value) rather than its VIRTUAL side.
fn conflict_is_about_real(conflict: &MappingConflict, spec: &MappingSpec) -> bool {
    let real = match spec {
        MappingSpec::Address { real_addr, .. } => *real_addr,
        MappingSpec::Ports(ports) => ports.real_addr,
        MappingSpec::Prefix(prefix) => prefix.real_net,
    };
    match *conflict {
        MappingConflict::SameAddress(_)
        | MappingConflict::MixedFamilies { .. }
        | MappingConflict::RealTaken { .. }
        | MappingConflict::RealIsVirtual { .. }
        | MappingConflict::RealIsPortVirtual { .. }
        | MappingConflict::RealOverlapsPortReal { .. }
        | MappingConflict::PortRealOverlapsAddress { .. }
        | MappingConflict::RealPortTaken { .. }
        | MappingConflict::RealPrefixOverlap { .. }
        | MappingConflict::PrefixContainsReal { .. } => true,
        MappingConflict::VirtualIsReal { .. }
        | MappingConflict::VirtualIsPortReal { .. }
        | MappingConflict::PortTaken { .. }
        | MappingConflict::VirtualPrefixOverlap { .. }
        | MappingConflict::PrefixContainsVirtual { .. }
        | MappingConflict::PrefixTaken { .. }
        | MappingConflict::BadPrefixLength { .. } => false,
        MappingConflict::UnusableAddress { addr, .. }
        | MappingConflict::InRealPrefix { addr, .. }
        | MappingConflict::InVirtualPrefix { addr, .. } => addr == real,
        MappingConflict::HostBitsSet { net, .. }
        | MappingConflict::PrefixContainsUnusable { net, .. }
        | MappingConflict::PrefixSidesOverlap { net, .. }
        | MappingConflict::PrefixContainsOtherSide { net, .. } => net == real,
        MappingConflict::ZeroPort => matches!(spec, MappingSpec::Ports(ports) if ports.virtual_first != 0),
        MappingConflict::PortRangeOverflow { first, .. } => {
            matches!(spec, MappingSpec::Ports(ports) if ports.real_first == first && ports.virtual_first != first)
        }
    }
}

/// Checks that `mappings` fit a table of `capacity` entries per map (and the fixed
/// prefix table). The problem points at the first mapping that would not fit;
/// `limit` names where the capacity comes from.
pub fn check_capacity(mappings: &[ConfigMapping], capacity: u32, limit: &str) -> Result<(), Problem> {
    let (mut addresses, mut ports, mut prefixes) = (0u64, 0u64, 0u64);
    for mapping in mappings {
        let (used, table, holds) = match &mapping.spec {
            MappingSpec::Address { .. } => {
                addresses += 1;
                (addresses, "address", u64::from(capacity))
            }
            MappingSpec::Ports(ports_mapping) => {
                ports += u64::from(ports_mapping.count);
                (ports, "port", u64::from(capacity))
            }
            MappingSpec::Prefix(_) => {
                prefixes += 1;
                (prefixes, "prefix", u64::from(MAX_PREFIX_MAPPINGS))
            }
        };
        if used > holds {
            let message = format!(
                "the {table} table would overflow here: it holds {holds} entries ({limit}) and this mapping \
                 needs entry {used}"
            );
            return Err(Problem { line: mapping.line, column: 1, message });
        }
    }
    Ok(())
}

/// Turns byte offsets into 1-based lines and columns.
struct Locator {
    line_starts: Vec<usize>,
}

impl Locator {
    fn new(text: &str) -> Self {
        let line_starts =
            std::iter::once(0).chain(text.match_indices('\n').map(|(at, _)| at + 1)).collect::<Vec<usize>>();
        Self { line_starts }
    }

    fn line(&self, at: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= at)
    }

    fn problem(&self, at: usize, message: String) -> Problem {
        let line = self.line(at);
        Problem { line, column: at - self.line_starts[line - 1] + 1, message }
    }
}

/// Writes `config` as a TOML config file that [`parse`] reads back to the same config.
pub fn render(config: &Config) -> String {
    let mut out = String::from("# rewrite config, written by `rewrite export`\n");
    if let Some(capacity) = config.max_mappings {
        out.push_str(&format!("max_mappings = {capacity}\n"));
    }
    for interface in &config.interfaces {
        let ingress = interface.ingress.to_possible_value().map(|value| value.get_name().to_owned());
        out.push_str(&format!("\n[[interface]]\nname = {}\n", quoted(&interface.name)));
        out.push_str(&format!("ingress = {}\n", quoted(&ingress.unwrap_or_else(|| "auto".into()))));
    }
    if let Some(fleet) = &config.fleet {
        out.push_str(&render_fleet(fleet));
    }
    if let Some(bounce) = &config.bounce {
        out.push_str(&render_bounce(bounce));
    }
    if let Some(gate) = &config.gate {
        out.push_str(&render_gate(gate));
    }
    for mapping in &config.mappings {
        let (virtual_side, real_side) = written(&mapping.spec);
        out.push_str(&format!("\n[[mapping]]\nvirtual = {}\nreal = {}\n", quoted(&virtual_side), quoted(&real_side)));
        if let Some(label) = &mapping.label {
            out.push_str(&format!("label = {}\n", quoted(label)));
        }
    }
    out
}

/// The `[gate]` section, as [`parse`] reads it.
fn render_gate(gate: &GateConfig) -> String {
    let list = |items: &[String]| format!("[{}]", items.iter().map(|item| quoted(item)).collect::<Vec<_>>().join(", "));
    let allow: Vec<String> = gate.allow.iter().map(|(addr, len)| format!("{addr}/{len}")).collect();
    let mut out = format!(
        "\n[gate]\nmode = {}\nprotect = {}\nallow = {}\n",
        quoted(gate.mode.name()),
        list(&gate.protect),
        list(&allow)
    );
    if let Some(management) = &gate.management {
        out.push_str(&format!("management = {}\n", list(management)));
    }
    out
}

/// The `[fleet]` section (and `[fleet.node]`), as [`parse`] reads it.
fn render_fleet(fleet: &FleetSettings) -> String {
    let list =
        |items: Vec<String>| format!("[{}]", items.iter().map(|item| quoted(item)).collect::<Vec<_>>().join(", "));
    let path = |path: &Path| quoted(&path.to_string_lossy());
    let store = &fleet.store;
    let mut out = format!("\n[fleet]\netcd = {}\nprefix = {}\n", list(store.endpoints.clone()), quoted(&store.prefix));
    for (key, value) in
        [("ca", &store.ca), ("cert", &store.cert), ("key", &store.key), ("password_file", &store.password_file)]
    {
        if let Some(value) = value {
            out.push_str(&format!("{key} = {}\n", path(value)));
        }
    }
    if let Some(user) = &store.user {
        out.push_str(&format!("user = {}\n", quoted(user)));
    }
    out.push_str(&format!("keepalive_seconds = {}\n", store.keepalive.as_secs()));
    out.push_str(&format!("retry_max_seconds = {}\n", fleet.retry_max.as_secs()));
    if let Some(node) = &fleet.node {
        let expire_after = match node.expiry {
            MappingExpiry::WithLease => "lease".to_owned(),
            MappingExpiry::Never => "never".to_owned(),
            MappingExpiry::After(grace) => format!("{}s", grace.as_secs()),
        };
        out.push_str(&format!(
            "\n[fleet.node]\nid = {}\nreal = {}\npool = {}\nlease_ttl_seconds = {}\nexpire_after = {}\n",
            quoted(&node.id),
            list(node.reals.iter().map(ToString::to_string).collect()),
            quoted(&node.pool),
            node.lease_ttl.as_secs(),
            quoted(&expire_after)
        ));
    }
    out
}

/// The `[bounce]` section with its services, as [`parse`] reads it.
fn render_bounce(bounce: &BounceConfig) -> String {
    let mut out = String::from("\n[bounce]\n");
    if let Some(max_flows) = bounce.max_flows {
        out.push_str(&format!("max_flows = {max_flows}\n"));
    }
    out.push_str(&format!("udp_idle_seconds = {}\n", bounce.timeouts.udp.as_secs().max(1)));
    out.push_str(&format!("tcp_idle_seconds = {}\n", bounce.timeouts.tcp.as_secs().max(1)));
    out.push_str(&format!("unreplied_seconds = {}\n", bounce.timeouts.unreplied.as_secs().max(1)));
    for service in &bounce.services {
        let listen = format!("{}/{}", service.listen, service.protocol);
        out.push_str(&format!(
            "\n[[bounce.service]]\nlisten = {}\ntarget = {}\n",
            quoted(&listen),
            quoted(&service.target.to_string())
        ));
        if let Some(source) = service.source {
            out.push_str(&format!("source = {}\n", quoted(&source.to_string())));
        }
        out.push_str(&format!("ports = {}\n", quoted(&format!("{}-{}", service.ports.0, service.ports.1))));
    }
    out
}

/// A TOML basic string.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// The two sides of a mapping in the form `map add` takes.
pub fn written(spec: &MappingSpec) -> (String, String) {
    match spec {
        MappingSpec::Address { virtual_addr, real_addr } => (virtual_addr.to_string(), real_addr.to_string()),
        MappingSpec::Prefix(prefix) => {
            (format!("{}/{}", prefix.virtual_net, prefix.len), format!("{}/{}", prefix.real_net, prefix.len))
        }
        MappingSpec::Ports(ports) => crate::maps::port_sides(ports),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn problems(text: &str) -> Vec<(usize, String)> {
        match parse(Path::new("test.toml"), text) {
            Ok(config) => panic!("must be refused, parsed as {config:?}"),
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.into_iter().map(|problem| (problem.line, problem.message)).collect()
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    /// Every problem of a mapping, at the line and column of the value it is about.
    fn located(text: &str) -> Vec<(usize, usize, String)> {
        match parse(Path::new("test.toml"), text) {
            Ok(config) => panic!("must be refused, parsed as {config:?}"),
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.into_iter().map(|problem| (problem.line, problem.column, problem.message)).collect()
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn a_mapping_problem_points_at_the_value_it_is_about() {
        let text = "\
[[mapping]]
virtual = \"10.94.0.1\"
real = \"10.94.0.299\"

[[mapping]]
virtual = \"10.94.0.3x\"
real = \"10.95.0.3\"

[[mapping]]
virtual = \"10.0.0.6:1-10/tcp\"
real = \"10.95.0.6:1-9/tcp\"

[[mapping]]
virtual = \"10.94.0.7\"
real = \"10.95.0.8\"

[[mapping]]
virtual = \"10.94.0.9\"
real = \"10.95.0.8\"

[[mapping]]
virtual = \"10.94.0.7\"
real = \"10.95.0.10\"

[[mapping]]
virtual = \"10.94.0.11\"
real = \"224.0.0.1\"
";
        let found = located(text);
        let at = |line: usize, column: usize, needle: &str| {
            assert!(
                found.iter().any(|(l, c, message)| *l == line && *c == column && message.contains(needle)),
                "no problem at {line}:{column} containing {needle:?}: {found:?}"
            );
        };
        at(3, 8, "10.94.0.299");
        at(6, 11, "10.94.0.3x");
        at(11, 8, "ranges must have the same width");
        at(19, 8, "is already the target of");
        at(22, 11, "already mapped on line 14");
        at(27, 8, "224.0.0.1");
        assert_eq!(found.len(), 6, "{found:?}");
    }

    #[test]
    fn a_fleet_section_is_read_with_its_node() {
        let text = r#"
[fleet]
etcd = ["https://10.1.0.1:2379", "https://10.1.0.2:2379"]
prefix = "/rewrite/prod/"
ca = "/etc/rewrite/ca.pem"
cert = "/etc/rewrite/client.pem"
key = "/etc/rewrite/client.key"
keepalive_seconds = 5

[fleet.node]
id = "es-data-1"
real = ["192.0.2.5", "2001:db8::5"]
pool = "overlay"
expire_after = "10m"
"#;
        let config = parse(Path::new("test.toml"), text).expect("a valid config");
        let written = render(&config);
        assert_eq!(parse(Path::new("written.toml"), &written).expect("the written config parses"), config, "{written}");
        let fleet = config.fleet.expect("a fleet section");
        assert_eq!(fleet.store.endpoints.len(), 2);
        assert_eq!(fleet.store.keepalive, Duration::from_secs(5));
        assert_eq!(fleet.retry_max, Duration::from_secs(10));
        let node = fleet.node.expect("a node");
        assert_eq!(node.reals.len(), 2);
        assert_eq!(node.lease_ttl, Duration::from_secs(10));
        assert_eq!(node.expiry, MappingExpiry::After(Duration::from_secs(600)));
    }

    #[test]
    fn a_gate_section_is_read_checked_and_written_back() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds/config_file/gate.toml"))
            .expect("the gate seed");
        let config = parse(Path::new("gate.toml"), &text).expect("the seed is valid");
        let gate = config.gate.clone().expect("a gate section");
        assert_eq!(gate.mode, crate::gate::Mode::Monitor);
        assert_eq!(gate.protect, ["tcp/9200", "tcp/9300-9400", "udp/all"]);
        assert_eq!(gate.allow.len(), 3);
        assert_eq!(gate.management.as_deref().map(<[String]>::len), Some(2));
        let again = parse(Path::new("again.toml"), &render(&config)).expect("the rendered config parses");
        assert_eq!(again.gate, config.gate, "render and parse agree");

        let bad = "[gate]\nmode = \"strict\"\nprotect = [\"tcp/x\", \"tcp/22\"]\nallow = [\"10.0.0.0/40\"]\n";
        let found = problems(bad);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].0 == 2 && found[0].1.contains("not a gate mode"), "{found:?}");
        assert!(found[1].0 == 3 && found[1].1.contains("PROTO/PORT"), "{found:?}");
        assert!(found[2].0 == 4 && found[2].1.contains("not an address prefix"), "{found:?}");
    }

    #[test]
    fn a_bounce_section_is_read_checked_and_written_back() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds/config_file/bounce.toml"))
                .expect("the bounce seed");
        let config = parse(Path::new("c.toml"), &text).expect("valid");
        let bounce = config.bounce.clone().expect("a bounce section");
        assert_eq!(bounce.max_flows, Some(1000));
        assert_eq!((bounce.timeouts.udp, bounce.timeouts.tcp), (Duration::from_secs(30), Duration::from_secs(7200)));
        assert_eq!(bounce.timeouts.unreplied, Duration::from_secs(u64::from(DEFAULT_UNREPLIED_SECONDS)));
        assert_eq!(bounce.services.len(), 2);
        assert_eq!(bounce.services[1].ports, (62000, 62999));
        let again = parse(Path::new("c.toml"), &render(&config)).expect("the rendering parses");
        assert_eq!(again.bounce, config.bounce, "render and parse agree");

        let bad = r#"[bounce]
max_flows = 0

[[bounce.service]]
listen = "10.0.0.1:80"
target = "10.1.0.1:80"

[[bounce.service]]
listen = "10.0.0.1:81/tcp"
target = "10.1.0.1:0"

[[bounce.service]]
listen = "10.0.0.1:82/tcp"
target = "10.1.0.1:82"
ports = "9-3"

[[bounce.service]]
listen = "10.0.0.1:83/tcp"
target = "10.1.0.1:83"

[[bounce.service]]
listen = "10.0.0.1:83/tcp"
target = "10.1.0.2:83"
"#;
        let found = problems(bad);
        let lines: Vec<usize> = found.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, vec![2, 5, 10, 15, 22], "{found:?}");
        assert!(found[0].1.contains("max_flows must be at least 1"), "{found:?}");
        assert!(found[1].1.contains("is not ADDR:PORT/tcp"), "{found:?}");
        assert!(found[2].1.contains("port 0 is not a valid target port"), "{found:?}");
        assert!(found[3].1.contains("is not a port range"), "{found:?}");
        assert!(found[4].1.contains("a service already listens on 10.0.0.1:83/tcp (line 18)"), "{found:?}");
    }

    #[test]
    fn a_bad_fleet_section_names_each_problem() {
        let text = r#"[fleet]
etcd = ["10.1.0.1:2379"]
prefix = "rewrite"
cert = "/etc/rewrite/client.pem"
retry_max_seconds = 0

[fleet.node]
id = "a/b"
real = ["not-an-address"]
pool = "overlay"
expire_after = "soon"
"#;
        let found = problems(text);
        let lines: Vec<usize> = found.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 8, 9, 11], "{found:?}");
        assert!(found[0].1.contains("http://"), "{found:?}");
        assert!(found[1].1.contains("must start with '/'"), "{found:?}");
        assert!(found[2].1.contains("cert and key go together"), "{found:?}");
        assert!(found[6].1.contains("grace period"), "{found:?}");
        assert!(
            problems("[fleet]\netcd = [\"http://a:1\"]\nprefix = \"/r/x\"\ntimeout = 3\n")[0]
                .1
                .contains("unknown field")
        );
    }
}
