//! The gatekeeper from userspace (see `rewrite_common::gate` for what the programs do
//! with its maps): the ports it protects and must leave open ([`ports`]), its maps
//! ([`table`]), a config's `[gate]` section ([`config`], [`plan`]) and its log
//! ([`log`]). Every input is checked before anything is written.

pub mod config;
pub mod log;
pub mod plan;
pub mod ports;
pub mod table;

use rewrite_common::{
    gate::{MODE_ENFORCE, MODE_MONITOR, MODE_OFF},
    ports::PortRange,
    prefix::Prefix,
    protocol::Protocol,
};
use serde::Serialize;

pub use self::{
    log::{Sample, follow_samples, log_reader_present},
    plan::{GateConfig, GatePlan},
    ports::{ClientPorts, PortSpec},
    table::{GateTable, GateView},
};
use crate::dataplane::host::{EPHEMERAL_RANGE_PATH, EphemeralRangeError};

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("{text:?} is not PROTO/PORT, PROTO/FIRST-LAST, PROTO/all or all (PROTO is tcp or udp)")]
    BadPorts { text: String },
    #[error(
        "{protocol}/{port} is in this host's ephemeral port range {range} ({EPHEMERAL_RANGE_PATH}), where \
         replies to its own connections arrive: protecting it could drop them"
    )]
    EphemeralPort { protocol: Protocol, port: u16, range: PortRange },
    #[error("{text:?} is not an address prefix (ADDR/LEN, LEN at most 32 for IPv4 and 128 for IPv6)")]
    BadPrefix { text: String },
    #[error("{text:?} is not a gate mode: off, monitor or enforce")]
    BadMode { text: String },
    #[error(transparent)]
    EphemeralRange(#[from] EphemeralRangeError),
    #[error(
        "{protocol}/{port} is in the source port range {range} of a bounce service, where the target's replies \
         arrive: protecting it would drop them"
    )]
    BounceRange { protocol: Protocol, port: u16, range: PortRange },
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

    pub(crate) const fn value(self) -> u32 {
        match self {
            Self::Off => MODE_OFF,
            Self::Monitor => MODE_MONITOR,
            Self::Enforce => MODE_ENFORCE,
        }
    }

    pub(crate) const fn from_value(value: u32) -> Self {
        match value {
            MODE_MONITOR => Self::Monitor,
            MODE_ENFORCE => Self::Enforce,
            _ => Self::Off,
        }
    }
}

/// An allow prefix, `ADDR/LEN` (a bare address is a host; host bits are ignored).
pub fn parse_allow(text: &str) -> Result<Prefix, GateError> {
    Prefix::parse_or_host(text).map(Prefix::masked).map_err(|_| GateError::BadPrefix { text: text.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_prefixes_parse_and_mask() {
        assert_eq!(parse_allow("10.1.2.3/8").expect("valid").to_string(), "10.0.0.0/8");
        assert_eq!(parse_allow("fd00::1").expect("valid").len(), 128);
        assert!(parse_allow("10.0.0.0/33").is_err());
        assert!(parse_allow("10.0.0.0/").is_err());
    }
}
