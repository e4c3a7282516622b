//! The config file's `[bounce]` section: the settings and every service, checked as
//! `bounce add` checks them, and written back.

use std::{collections::HashMap, net::IpAddr};

use rewrite_common::bounce::{DEFAULT_TCP_IDLE_SECONDS, DEFAULT_UDP_IDLE_SECONDS, DEFAULT_UNREPLIED_SECONDS};
use serde::Deserialize;
use toml::Spanned;

use rewrite_common::{ports::PortRange, protocol::Protocol};

use crate::{
    bounce::{BounceError, ServiceSpec, Timeouts, parse_port_range},
    located::{Locator, Problem, quoted, seconds},
};

/// The `[bounce]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BounceConfig {
    /// Size of the flow table, if this config's first service creates it.
    pub max_flows: Option<u32>,
    pub timeouts: Timeouts,
    pub services: Vec<ServiceSpec>,
}

impl BounceConfig {
    /// The services' protocols and source ports, where their targets' replies arrive.
    pub fn source_port_ranges(&self) -> Vec<(Protocol, PortRange)> {
        self.services.iter().map(|service| (service.protocol, service.ports)).collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBounce {
    max_flows: Option<Spanned<u32>>,
    udp_idle_seconds: Option<Spanned<u64>>,
    tcp_idle_seconds: Option<Spanned<u64>>,
    unreplied_seconds: Option<Spanned<u64>>,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    listen: Spanned<String>,
    target: Spanned<String>,
    source: Option<Spanned<String>>,
    ports: Option<Spanned<String>>,
}

/// The `[bounce]` section: every service checked as `bounce add` checks it, and no
/// LISTEN twice.
pub(crate) fn bounce_config(raw: &RawBounce, locate: &Locator, problems: &mut Vec<Problem>) -> BounceConfig {
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
    let timeouts = Timeouts { udp: udp_idle, tcp: tcp_idle, unreplied };
    let mut seen: HashMap<(std::net::SocketAddr, Protocol), usize> = HashMap::new();
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
            Some(text) => match parse_port_range(text.get_ref()) {
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

/// The `[bounce]` section with its services, as [`bounce_config`] reads it.
pub(crate) fn render_bounce(bounce: &BounceConfig) -> String {
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
        out.push_str(&format!("ports = {}\n", quoted(&service.ports.to_string())));
    }
    out
}
