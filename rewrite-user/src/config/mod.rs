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
//! watch = ["http://127.0.0.1:23790"]  # optional: follow the table through a gRPC proxy
//! prefix = "/rewrite/prod"
//! ca = "/etc/rewrite/etcd-ca.pem"   # optional: TLS; cert and key for client auth
//! user = "rewrite"                  # optional, with password_file
//! password_file = "/etc/rewrite/etcd-password"
//! keepalive_seconds = 10           # optional
//! retry_max_seconds = 10           # optional
//! zone = "vpc-a"                   # optional: of a mapping with a REAL per zone, apply this zone's
//!
//! [fleet.node]                     # optional: register this node
//! id = "es-data-1"
//! real = ["192.0.2.5"]
//! pool = "overlay"
//! lease_ttl_seconds = 10           # optional
//! expire_after = "lease"           # optional: lease, never, or a grace period (90s, 10m)
//! release_claim_after = "never"    # optional: give a gone node's VIRTUAL back after (1h)
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

pub mod apply;
pub mod mappings;

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
};

use clap::ValueEnum as _;
use rewrite_common::maps::DEFAULT_MAX_MAPPINGS;
use serde::Deserialize;
use toml::Spanned;

use self::mappings::{RawMapping, mappings, render_mappings};
use crate::{
    bounce::config::{BounceConfig, RawBounce, bounce_config, render_bounce},
    dataplane::slots::IngressMode,
    fleet::{
        FleetSettings,
        config::{RawFleet, fleet_settings, render_fleet},
    },
    gate::{
        GateConfig,
        config::{RawGate, gate_config, render_gate},
    },
    located::{Locator, Problem, quoted},
    table::admission::{Capacity, DesiredTable},
};

/// A validated config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Capacity of the mapping maps, if this config's first attach creates them.
    pub max_mappings: Option<u32>,
    pub interfaces: Vec<InterfaceConfig>,
    /// The mappings, admitted together (against `max_mappings`, or the default).
    pub table: DesiredTable,
    /// The fleet table to follow, if any.
    pub fleet: Option<FleetSettings>,
    /// Bounce mode's services and settings; `None` leaves bounce mode alone.
    pub bounce: Option<BounceConfig>,
    /// The gatekeeper as it must be; `None` leaves the gate alone.
    pub gate: Option<GateConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub name: String,
    pub ingress: IngressMode,
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
struct RawInterface {
    name: Spanned<String>,
    ingress: Option<Spanned<String>>,
}

/// Reads and validates the config at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse(path, &text)
}

/// Validates `text` (the contents of `path`, which names it in messages) as a whole:
/// either every mapping can be in one table, or every problem is reported. The table's
/// capacity is that of a table created by this config (or the default); `apply` holds
/// it against a live table's.
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
    let capacity = Capacity::of_table(max_mappings.unwrap_or(DEFAULT_MAX_MAPPINGS));
    let table = mappings(&raw.mappings, capacity, &locate, &mut problems);
    let fleet = raw.fleet.as_ref().and_then(|fleet| fleet_settings(fleet, &locate, &mut problems));
    let bounce = raw.bounce.as_ref().map(|bounce| bounce_config(bounce, &locate, &mut problems));
    let gate = raw.gate.as_ref().map(|gate| gate_config(gate, &locate, &mut problems));
    if problems.is_empty() {
        Ok(Config { max_mappings, interfaces, table, fleet, bounce, gate })
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
        if let Err(error) = crate::dataplane::iface::validate_name(name) {
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
    out.push_str(&render_mappings(&config.table));
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rewrite_common::{bounce::DEFAULT_UNREPLIED_SECONDS, ports::PortRange};

    use super::*;
    use crate::fleet::MappingExpiry;

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
watch = ["http://127.0.0.1:23790"]
prefix = "/rewrite/prod/"
ca = "/etc/rewrite/ca.pem"
cert = "/etc/rewrite/client.pem"
key = "/etc/rewrite/client.key"
keepalive_seconds = 5
zone = "vpc-a"

[fleet.node]
id = "es-data-1"
real = ["192.0.2.5", "2001:db8::5"]
pool = "overlay"
expire_after = "10m"
release_claim_after = "1h"
"#;
        let config = parse(Path::new("test.toml"), text).expect("a valid config");
        let written = render(&config);
        assert_eq!(parse(Path::new("written.toml"), &written).expect("the written config parses"), config, "{written}");
        let fleet = config.fleet.expect("a fleet section");
        assert_eq!(fleet.store.endpoints.len(), 2);
        assert_eq!(fleet.store.watch_endpoints, ["http://127.0.0.1:23790"]);
        assert_eq!(fleet.store.for_watching().endpoints, ["http://127.0.0.1:23790"], "the watch goes to the proxy");
        assert_eq!(fleet.store.all_endpoints().len(), 3);
        assert_eq!(fleet.store.keepalive, Duration::from_secs(5));
        assert_eq!(fleet.retry_max, Duration::from_secs(10));
        assert_eq!(fleet.zone.as_deref(), Some("vpc-a"));
        let node = fleet.node.expect("a node");
        assert_eq!(node.reals.len(), 2);
        assert_eq!(node.lease_ttl, Duration::from_secs(10));
        assert_eq!(node.expiry, MappingExpiry::After(Duration::from_secs(600)));
        assert_eq!(node.release_claim_after, Some(Duration::from_secs(3600)));
        let early = text.replace("release_claim_after = \"1h\"", "release_claim_after = \"5m\"");
        let found = problems(&early);
        let line = early.lines().position(|line| line.starts_with("release_claim_after")).expect("the line") + 1;
        assert_eq!(found.iter().map(|(line, _)| *line).collect::<Vec<_>>(), [line], "{found:?}");
        assert!(found[0].1.contains("before its mapping leaves the table"), "{found:?}");
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
        assert_eq!(bounce.services[1].ports, PortRange::new(62000, 62999).expect("a range"));
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
watch = ["127.0.0.1:23790"]
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
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 9, 10, 12], "{found:?}");
        assert!(found[0].1.contains("http://"), "{found:?}");
        assert!(found[1].1.contains("\"127.0.0.1:23790\" must start with http://"), "{found:?}");
        assert!(found[2].1.contains("must start with '/'"), "{found:?}");
        assert!(found[3].1.contains("cert and key go together"), "{found:?}");
        assert!(found[7].1.contains("grace period"), "{found:?}");
        assert!(
            problems("[fleet]\netcd = [\"http://a:1\"]\nprefix = \"/r/x\"\ntimeout = 3\n")[0]
                .1
                .contains("unknown field")
        );
    }
}
