//! The written forms of mappings, as the CLI (and later the config file) takes them:
//!
//! ```text
//! 10.0.0.5                      fd00::5                     an address
//! 10.0.0.5:9300/tcp             [fd00::5]:9300/tcp          one port of a service
//! 10.0.0.5:49152-49251/tcp      [fd00::5]:49152-49251/udp   a range of ports
//! 10.1.0.0/16                   fd00:1::/64                 a prefix (a subnet)
//! ```

use std::{fmt, net::IpAddr, str::FromStr};

use crate::{
    mapping::{PortMapping, PrefixMapping, protocol_name},
    maps::{IPPROTO_TCP, IPPROTO_UDP},
};

/// One side of a mapping as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Address(IpAddr),
    Service { addr: IpAddr, first: u16, last: u16, protocol: u8 },
    Prefix { net: IpAddr, len: u8 },
}

/// A whole mapping as written: two sides of the same kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MappingSpec {
    Address { virtual_addr: IpAddr, real_addr: IpAddr },
    Ports(PortMapping),
    Prefix(PrefixMapping),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{text:?} is not an address, ADDR/LEN, ADDR:PORT/PROTO or ADDR:PORT-PORT/PROTO ({why})")]
    Malformed { text: String, why: &'static str },
    #[error("{text:?}: unknown protocol {protocol:?}; use tcp or udp")]
    UnknownProtocol { text: String, protocol: String },
    #[error("{text:?}: the range {first}-{last} is empty (the first port is larger than the last)")]
    EmptyRange { text: String, first: u16, last: u16 },
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

fn malformed(text: &str, why: &'static str) -> SpecError {
    SpecError::Malformed { text: text.to_owned(), why }
}

fn parse_port(text: &str, port: &str) -> Result<u16, SpecError> {
    port.parse().map_err(|_| malformed(text, "a port is a number from 1 to 65535"))
}

impl FromStr for Side {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let Some((endpoint, protocol)) = text.rsplit_once('/') else {
            return text.parse().map(Side::Address).map_err(|_| malformed(text, "not an IPv4 or IPv6 address"));
        };
        let protocol = match protocol {
            "tcp" => IPPROTO_TCP,
            "udp" => IPPROTO_UDP,
            _ if !protocol.is_empty() && protocol.chars().all(|c| c.is_ascii_digit()) => {
                let net: IpAddr = endpoint.parse().map_err(|_| malformed(text, "not an IPv4 or IPv6 network"))?;
                let len = protocol.parse().map_err(|_| malformed(text, "a prefix length is a number"))?;
                return Ok(Side::Prefix { net, len });
            }
            _ => return Err(SpecError::UnknownProtocol { text: text.to_owned(), protocol: protocol.to_owned() }),
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
        let (first, last) = match ports.split_once('-') {
            Some((first, last)) => (parse_port(text, first)?, parse_port(text, last)?),
            None => {
                let port = parse_port(text, ports)?;
                (port, port)
            }
        };
        if first > last {
            return Err(SpecError::EmptyRange { text: text.to_owned(), first, last });
        }
        Ok(Side::Service { addr, first, last, protocol })
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Side::Address(addr) => write!(f, "{addr}"),
            Side::Prefix { net, len } => write!(f, "{net}/{len}"),
            Side::Service { addr, first, last, protocol } => {
                match addr {
                    IpAddr::V4(v4) => write!(f, "{v4}:{first}")?,
                    IpAddr::V6(v6) => write!(f, "[{v6}]:{first}")?,
                }
                if last != first {
                    write!(f, "-{last}")?;
                }
                write!(f, "/{}", protocol_name(protocol))
            }
        }
    }
}

impl MappingSpec {
    /// Combines the two written sides of a mapping. Address checks (families, usable
    /// addresses, conflicts) are the table's business, see `mapping::plan_add`.
    pub fn new(virtual_side: Side, real_side: Side) -> Result<Self, SpecError> {
        match (virtual_side, real_side) {
            (Side::Address(virtual_addr), Side::Address(real_addr)) => Ok(Self::Address { virtual_addr, real_addr }),
            (Side::Prefix { net: virtual_net, len }, Side::Prefix { net: real_net, len: real_len }) => {
                if len != real_len {
                    return Err(SpecError::PrefixLengthMismatch {
                        virtual_side: virtual_side.to_string(),
                        real_side: real_side.to_string(),
                    });
                }
                Ok(Self::Prefix(PrefixMapping { virtual_net, real_net, len }))
            }
            (
                Side::Service { addr: virtual_addr, first: virtual_first, last: virtual_last, protocol },
                Side::Service { addr: real_addr, first: real_first, last: real_last, protocol: real_protocol },
            ) => {
                if protocol != real_protocol {
                    return Err(SpecError::ProtocolMismatch {
                        virtual_side: virtual_side.to_string(),
                        real_side: real_side.to_string(),
                    });
                }
                let virtual_count = u32::from(virtual_last) - u32::from(virtual_first) + 1;
                let real_count = u32::from(real_last) - u32::from(real_first) + 1;
                if virtual_count != real_count {
                    return Err(SpecError::WidthMismatch {
                        virtual_side: virtual_side.to_string(),
                        virtual_count,
                        real_side: real_side.to_string(),
                        real_count,
                    });
                }
                // A range of every port from 0 has 65536 ports; port 0 is refused later.
                let count = u16::try_from(virtual_count).unwrap_or(u16::MAX);
                Ok(Self::Ports(PortMapping { protocol, virtual_addr, virtual_first, real_addr, real_first, count }))
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
                protocol: IPPROTO_TCP,
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
