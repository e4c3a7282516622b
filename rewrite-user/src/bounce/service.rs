//! A bounce service as the CLI and the config give it (`LISTEN/PROTO -> TARGET`, with its
//! source address and ports), checked, and resolved against the host into what the
//! services map holds.

use std::net::{IpAddr, SocketAddr};

use rewrite_common::{
    bounce::{BounceService, DEFAULT_PORTS},
    gate::MAP_GATE_SETTINGS,
    maps::{Addr, Endpoint},
    ports::PortRange,
    protocol::Protocol,
};
use serde::Serialize;

use crate::{
    Error,
    bounce::BounceError,
    dataplane::{host, pins::PinLayout},
    gate::GateTable,
};

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
    pub ports: PortRange,
}

/// `ADDR:PORT/PROTO`, the form of a LISTEN endpoint.
pub fn parse_listen(text: &str) -> Result<(SocketAddr, Protocol), BounceError> {
    let bad = || BounceError::BadListen { text: text.to_owned() };
    let (addr, protocol) = text.rsplit_once('/').ok_or_else(bad)?;
    let protocol = Protocol::from_name(protocol).ok_or_else(bad)?;
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
        Some((addr, protocol)) => (addr, Some(Protocol::from_name(protocol).ok_or_else(bad)?)),
        None => (text, None),
    };
    let addr: SocketAddr = addr.parse().map_err(|_| bad())?;
    if addr.port() == 0 {
        return Err(BounceError::PortZero { what: "target" });
    }
    Ok((addr, protocol))
}

/// Source ports, `FIRST-LAST` (or one port), never port 0.
pub fn parse_port_range(text: &str) -> Result<PortRange, BounceError> {
    let bad = || BounceError::BadPortRange { text: text.to_owned() };
    let range: PortRange = text.trim().parse().map_err(|_| bad())?;
    if range.first() == 0 {
        return Err(bad());
    }
    Ok(range)
}

impl ServiceSpec {
    /// Checks a service given as LISTEN, TARGET and options.
    pub fn new(
        listen: &str,
        target: &str,
        source: Option<IpAddr>,
        ports: Option<PortRange>,
    ) -> Result<Self, BounceError> {
        let (listen, protocol) = parse_listen(listen)?;
        let (target, target_protocol) = parse_target(target)?;
        if let Some(target_protocol) = target_protocol.filter(|given| *given != protocol) {
            return Err(BounceError::ProtocolMismatch {
                listen: listen.to_string(),
                listen_protocol: protocol,
                target: target.to_string(),
                target_protocol,
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
        Ok(Self { listen, protocol, target, source, ports: ports.unwrap_or(DEFAULT_PORTS) })
    }

    /// Completes the service from the host: the source address (the route's, unless
    /// given) and a check that the kernel forwards its family.
    pub fn resolve(&self) -> Result<ResolvedService, BounceError> {
        let ephemeral =
            host::ephemeral_range().map_err(|error| BounceError::EphemeralUnknown { why: error.to_string() })?;
        self.check_ports(ephemeral)?;
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
                port_first: self.ports.first(),
                port_last: self.ports.last(),
            },
        })
    }
}

impl ServiceSpec {
    /// The service's source ports must stay clear of the host's ephemeral range: a
    /// connection of the host's own could take a port a flow holds, and the flow's
    /// packets would go to it.
    pub(crate) fn check_ports(&self, ephemeral: PortRange) -> Result<(), BounceError> {
        if self.ports.overlaps(ephemeral) {
            return Err(BounceError::EphemeralOverlap { ports: self.ports, ephemeral });
        }
        Ok(())
    }
}

/// Refuses a service whose source ports the gate protects: the target's replies arrive
/// there, and the gate would drop them.
pub fn check_gate_leaves_open(pins: &PinLayout, service: &ResolvedService) -> Result<(), Error> {
    if !pins.map(MAP_GATE_SETTINGS).exists() {
        return Ok(());
    }
    let Some((protocol, ports)) = service.source_ports() else { return Ok(()) };
    match GateTable::open(pins)?.protected_port_in(protocol, ports)? {
        Some(port) => Err(Error::Bounce(BounceError::GateProtected { protocol, port, ports })),
        None => Ok(()),
    }
}

/// A service as the map holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedService {
    pub key: Endpoint,
    pub value: BounceService,
}

impl ResolvedService {
    /// Its protocol and source ports, where the target's replies arrive.
    pub fn source_ports(&self) -> Option<(Protocol, PortRange)> {
        Some((Protocol::from_number(self.key.protocol)?, PortRange::new(self.value.port_first, self.value.port_last)?))
    }
}

pub(crate) fn endpoint(addr: SocketAddr, protocol: Protocol) -> Endpoint {
    Endpoint::new(Addr::from(addr.ip()), addr.port().to_be_bytes(), protocol.number())
}

/// The LISTEN endpoint and protocol of a services-map key.
pub fn listen_of(key: &Endpoint) -> Option<(SocketAddr, Protocol)> {
    Some((socket_of(&key.addr, key.port), Protocol::from_number(key.protocol)?))
}

pub(crate) fn socket_of(addr: &Addr, port: [u8; 2]) -> SocketAddr {
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
