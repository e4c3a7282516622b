//! The written forms of mappings, as the CLI, the config file and the fleet table take
//! them, and the one vocabulary every part of rewrite uses for them:
//!
//! ```text
//! 10.0.0.5                      fd00::5                     an address
//! 10.0.0.5:9300/tcp             [fd00::5]:9300/tcp          one port of a service
//! 10.0.0.5:49152-49251/tcp      [fd00::5]:49152-49251/udp   a range of ports
//! 10.1.0.0/16                   fd00:1::/64                 a prefix (a subnet)
//! ```
//!
//! A [`MappingSpec`] is written `VIRTUAL -> REAL` and known by its [`MappingKey`], its
//! VIRTUAL side: two mappings of one VIRTUAL are the same mapping, changed.

use std::{fmt, net::IpAddr, str::FromStr};

use crate::{
    mapping::{AddressMapping, PortMapping, PrefixMapping},
    ports::{PortRange, PortRangeError},
    prefix::Prefix,
    protocol::Protocol,
};

/// One side of a mapping as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    Address(IpAddr),
    Service { addr: IpAddr, ports: PortRange, protocol: Protocol },
    Prefix(Prefix),
}

/// A whole mapping as written: two sides of the same kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MappingSpec {
    Address { virtual_addr: IpAddr, real_addr: IpAddr },
    Ports(PortMapping),
    Prefix(PrefixMapping),
}

/// What a mapping is known by: its VIRTUAL side as written. The agent's table, `apply`'s
/// diff and the fleet table's keys all pair mappings by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MappingKey(pub Side);

impl fmt::Display for MappingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for MappingKey {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        text.parse().map(Self)
    }
}

/// The entries a mapping takes in each kind of map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    pub addresses: u64,
    pub ports: u64,
    pub prefixes: u64,
}

impl std::ops::Add for Footprint {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            addresses: self.addresses + other.addresses,
            ports: self.ports + other.ports,
            prefixes: self.prefixes + other.prefixes,
        }
    }
}

impl std::ops::Sub for Footprint {
    type Output = Self;

    fn sub(self, other: Self) -> Self {
        Self {
            addresses: self.addresses.saturating_sub(other.addresses),
            ports: self.ports.saturating_sub(other.ports),
            prefixes: self.prefixes.saturating_sub(other.prefixes),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{text:?} is not an address, ADDR/LEN, ADDR:PORT/PROTO or ADDR:PORT-PORT/PROTO ({why})")]
    Malformed { text: String, why: String },
    #[error("{text:?}: unknown protocol {protocol:?}; use tcp or udp")]
    UnknownProtocol { text: String, protocol: String },
    #[error("{text:?}: the range {first}-{last} is empty (the first port is larger than the last)")]
    EmptyRange { text: String, first: u16, last: u16 },
    #[error("{text:?} is not VIRTUAL -> REAL")]
    NoArrow { text: String },
    #[error(
        "VIRTUAL {virtual_side} and REAL {real_side} must be of one kind: both addresses, both prefixes or both ADDR:PORT/PROTO"
    )]
    KindMismatch { virtual_side: String, real_side: String },
    #[error(
        "VIRTUAL {virtual_side} and REAL {real_side} have different prefix lengths: a prefix mapping keeps the host bits, so both sides need the same length"
    )]
    PrefixLengthMismatch { virtual_side: String, real_side: String },
    #[error("VIRTUAL {virtual_side} and REAL {real_side} name different protocols")]
    ProtocolMismatch { virtual_side: String, real_side: String },
    #[error(
        "VIRTUAL {virtual_side} has {virtual_count} ports but REAL {real_side} has {real_count}: ranges must have the same width"
    )]
    WidthMismatch { virtual_side: String, virtual_count: u32, real_side: String, real_count: u32 },
}

fn malformed(text: &str, why: impl fmt::Display) -> SpecError {
    SpecError::Malformed { text: text.to_owned(), why: why.to_string() }
}

impl FromStr for Side {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let Some((endpoint, protocol)) = text.rsplit_once('/') else {
            return text.parse().map(Side::Address).map_err(|_| malformed(text, "not an IPv4 or IPv6 address"));
        };
        let protocol = match Protocol::from_name(protocol) {
            Some(protocol) => protocol,
            None if !protocol.is_empty() && protocol.chars().all(|c| c.is_ascii_digit()) => {
                return text.parse::<Prefix>().map(Side::Prefix).map_err(|error| malformed(text, error));
            }
            None => return Err(SpecError::UnknownProtocol { text: text.to_owned(), protocol: protocol.to_owned() }),
        };
        let (addr, ports) = if let Some(rest) = endpoint.strip_prefix('[') {
            rest.split_once("]:").ok_or_else(|| malformed(text, "an IPv6 endpoint is written [ADDR]:PORT"))?
        } else {
            endpoint.rsplit_once(':').ok_or_else(|| malformed(text, "missing :PORT"))?
        };
        let addr: IpAddr = addr.parse().map_err(|_| malformed(text, "not an IPv4 or IPv6 address"))?;
        if addr.is_ipv6() && !endpoint.starts_with('[') {
            return Err(malformed(text, "an IPv6 endpoint is written [ADDR]:PORT"));
        }
        let ports = ports.parse::<PortRange>().map_err(|error| match error {
            PortRangeError::NotAPort => malformed(text, "a port is a number from 1 to 65535"),
            PortRangeError::Empty { first, last } => SpecError::EmptyRange { text: text.to_owned(), first, last },
        })?;
        Ok(Side::Service { addr, ports, protocol })
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Side::Address(addr) => write!(f, "{addr}"),
            Side::Prefix(prefix) => write!(f, "{prefix}"),
            Side::Service { addr: IpAddr::V4(v4), ports, protocol } => write!(f, "{v4}:{ports}/{protocol}"),
            Side::Service { addr: IpAddr::V6(v6), ports, protocol } => write!(f, "[{v6}]:{ports}/{protocol}"),
        }
    }
}

impl Side {
    /// The address, or the prefix's network as written.
    pub fn addr(&self) -> IpAddr {
        match *self {
            Side::Address(addr) | Side::Service { addr, .. } => addr,
            Side::Prefix(prefix) => prefix.net(),
        }
    }
}

serde_as_text!(Side, "an address, ADDR/LEN, ADDR:PORT/PROTO or ADDR:PORT-PORT/PROTO");
serde_as_text!(MappingKey, "a mapping's VIRTUAL side");
serde_as_text!(MappingSpec, "VIRTUAL -> REAL");

impl MappingSpec {
    /// Combines the two written sides of a mapping. Address checks (families, usable
    /// addresses, conflicts) are the table's business, see `validate`.
    pub fn new(virtual_side: Side, real_side: Side) -> Result<Self, SpecError> {
        match (virtual_side, real_side) {
            (Side::Address(virtual_addr), Side::Address(real_addr)) => Ok(Self::Address { virtual_addr, real_addr }),
            (Side::Prefix(virtual_net), Side::Prefix(real_net)) => {
                if virtual_net.len() != real_net.len() {
                    return Err(SpecError::PrefixLengthMismatch {
                        virtual_side: virtual_side.to_string(),
                        real_side: real_side.to_string(),
                    });
                }
                Ok(Self::Prefix(PrefixMapping {
                    virtual_net: virtual_net.net(),
                    real_net: real_net.net(),
                    len: virtual_net.len(),
                }))
            }
            (
                Side::Service { addr: virtual_addr, ports: virtual_ports, protocol },
                Side::Service { addr: real_addr, ports: real_ports, protocol: real_protocol },
            ) => {
                if protocol != real_protocol {
                    return Err(SpecError::ProtocolMismatch {
                        virtual_side: virtual_side.to_string(),
                        real_side: real_side.to_string(),
                    });
                }
                if virtual_ports.len() != real_ports.len() {
                    return Err(SpecError::WidthMismatch {
                        virtual_side: virtual_side.to_string(),
                        virtual_count: virtual_ports.len(),
                        real_side: real_side.to_string(),
                        real_count: real_ports.len(),
                    });
                }
                // A range of every port from 0 has 65536 ports; port 0 is refused later.
                let count = u16::try_from(virtual_ports.len()).unwrap_or(u16::MAX);
                Ok(Self::Ports(PortMapping {
                    protocol,
                    virtual_addr,
                    virtual_first: virtual_ports.first(),
                    real_addr,
                    real_first: real_ports.first(),
                    count,
                }))
            }
            _ => Err(SpecError::KindMismatch {
                virtual_side: virtual_side.to_string(),
                real_side: real_side.to_string(),
            }),
        }
    }

    pub fn parse(virtual_text: &str, real_text: &str) -> Result<Self, SpecError> {
        Self::new(virtual_text.parse()?, real_text.parse()?)
    }

    /// The VIRTUAL side as written.
    pub fn virtual_side(&self) -> Side {
        match *self {
            Self::Address { virtual_addr, .. } => Side::Address(virtual_addr),
            Self::Ports(mapping) => {
                Side::Service { addr: mapping.virtual_addr, ports: mapping.virtual_ports(), protocol: mapping.protocol }
            }
            Self::Prefix(mapping) => Side::Prefix(mapping.virtual_prefix()),
        }
    }

    /// The REAL side as written.
    pub fn real_side(&self) -> Side {
        match *self {
            Self::Address { real_addr, .. } => Side::Address(real_addr),
            Self::Ports(mapping) => {
                Side::Service { addr: mapping.real_addr, ports: mapping.real_ports(), protocol: mapping.protocol }
            }
            Self::Prefix(mapping) => Side::Prefix(mapping.real_prefix()),
        }
    }

    /// What the mapping is known by: its VIRTUAL side.
    pub fn key(&self) -> MappingKey {
        MappingKey(self.virtual_side())
    }

    /// The entries the mapping takes: one address entry, one prefix entry, or one port
    /// entry per port of its range (in each direction's map).
    pub fn footprint(&self) -> Footprint {
        match self {
            Self::Address { .. } => Footprint { addresses: 1, ..Footprint::default() },
            Self::Ports(ports) => Footprint { ports: u64::from(ports.count), ..Footprint::default() },
            Self::Prefix(_) => Footprint { prefixes: 1, ..Footprint::default() },
        }
    }

    /// The REAL address (a prefix's network).
    pub fn real_addr(&self) -> IpAddr {
        self.real_side().addr()
    }
}

/// `VIRTUAL -> REAL`.
impl fmt::Display for MappingSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.virtual_side(), self.real_side())
    }
}

impl FromStr for MappingSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let (virtual_text, real_text) =
            text.split_once("->").ok_or_else(|| SpecError::NoArrow { text: text.to_owned() })?;
        Self::parse(virtual_text.trim(), real_text.trim())
    }
}

impl AddressMapping {
    pub const fn spec(&self) -> MappingSpec {
        MappingSpec::Address { virtual_addr: self.virtual_addr, real_addr: self.real_addr }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address parses")
    }

    #[test]
    fn every_written_form_parses_and_prints_back() {
        for text in [
            "10.0.0.5",
            "fd00::5",
            "10.0.0.5:9300/tcp",
            "[fd00::5]:9300/udp",
            "10.0.0.5:49152-49251/tcp",
            "10.1.0.0/16",
            "fd00:1::/64",
        ] {
            let side: Side = text.parse().unwrap_or_else(|error| panic!("{text}: {error}"));
            assert_eq!(side.to_string(), text);
        }
        assert_eq!(
            MappingSpec::parse("10.0.0.5:49152-49251/tcp", "192.0.2.5:50152-50251/tcp"),
            Ok(MappingSpec::Ports(PortMapping {
                protocol: Protocol::Tcp,
                virtual_addr: ip("10.0.0.5"),
                virtual_first: 49152,
                real_addr: ip("192.0.2.5"),
                real_first: 50152,
                count: 100,
            }))
        );
        assert_eq!(
            MappingSpec::parse("fd00::5", "2001:db8::5"),
            Ok(MappingSpec::Address { virtual_addr: ip("fd00::5"), real_addr: ip("2001:db8::5") })
        );
    }

    #[test]
    fn a_mapping_prints_as_it_is_written_and_parses_back() {
        for text in [
            "10.0.0.5 -> 192.0.2.5",
            "10.0.0.5:9300/tcp -> 192.0.2.5:9301/tcp",
            "[fd00::5]:53-54/udp -> [2001:db8::5]:5353-5354/udp",
            "10.1.0.0/16 -> 172.20.0.0/16",
        ] {
            let spec: MappingSpec = text.parse().unwrap_or_else(|error| panic!("{text}: {error}"));
            assert_eq!(spec.to_string(), text);
            assert_eq!(spec.key().to_string(), text.split(" -> ").next().expect("a VIRTUAL"));
            assert_eq!(spec.key().to_string().parse::<MappingKey>(), Ok(spec.key()));
        }
        let ports: MappingSpec = "10.0.0.5:100-109/tcp -> 192.0.2.5:200-209/tcp".parse().expect("a range");
        assert_eq!(ports.footprint(), Footprint { ports: 10, ..Footprint::default() });
        assert!(matches!("10.0.0.5 192.0.2.5".parse::<MappingSpec>(), Err(SpecError::NoArrow { .. })));
    }

    #[test]
    fn malformed_forms_say_what_is_wrong() {
        let error = |virtual_text: &str, real_text: &str| {
            MappingSpec::parse(virtual_text, real_text).expect_err("must be rejected").to_string()
        };
        assert!(error("10.0.0.300", "10.0.0.1").contains("not an IPv4 or IPv6 address"));
        assert!(error("10.0.0.5:99999/tcp", "10.0.0.1:1/tcp").contains("a port is a number"));
        assert!(error("10.0.0.5:80/sctp", "10.0.0.1:80/sctp").contains("unknown protocol \"sctp\""));
        assert!(error("10.0.0.5:80/tcp", "10.0.0.1:80/udp").contains("different protocols"));
        assert!(error("10.0.0.5:80-90/tcp", "10.0.0.1:80-89/tcp").contains("11 ports but REAL"));
        assert!(error("10.0.0.5:90-80/tcp", "10.0.0.1:90-80/tcp").contains("is empty"));
        assert!(error("10.0.0.5:80/tcp", "10.0.0.1").contains("must be of one kind"));
        assert!(error("fd00::5:80/tcp", "[fd00::6]:80/tcp").contains("[ADDR]:PORT"));
        assert!(error("10.0.0.5/tcp", "10.0.0.1/tcp").contains("missing :PORT"));
        assert!(error("10.1.0.0/16", "172.20.0.0/24").contains("different prefix lengths"));
        assert!(error("10.1.0.0/16", "172.20.0.1").contains("must be of one kind"));
    }
}
