//! The transport protocols a mapping, the gate and bounce mode know: TCP and UDP, by
//! their IP protocol numbers (`maps::IPPROTO_TCP`, `maps::IPPROTO_UDP`) in the maps and
//! by name (`tcp`, `udp`) in everything written.

use core::fmt;

use crate::maps::{IPPROTO_TCP, IPPROTO_UDP};

/// TCP or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub const BOTH: [Self; 2] = [Self::Tcp, Self::Udp];

    /// The IP protocol number, as the maps and the packets hold it.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => IPPROTO_TCP,
            Self::Udp => IPPROTO_UDP,
        }
    }

    /// The protocol of an IP protocol number, if it is TCP or UDP.
    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            IPPROTO_TCP => Some(Self::Tcp),
            IPPROTO_UDP => Some(Self::Udp),
            _ => None,
        }
    }

    /// `tcp` or `udp`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    /// The protocol written `text` (`tcp` or `udp`, in any case).
    pub fn from_name(text: &str) -> Option<Self> {
        Self::BOTH.into_iter().find(|protocol| protocol.name().eq_ignore_ascii_case(text))
    }
}

#[cfg(any(test, feature = "user"))]
impl core::str::FromStr for Protocol {
    type Err = UnknownProtocol;

    fn from_str(text: &str) -> Result<Self, UnknownProtocol> {
        Self::from_name(text).ok_or(UnknownProtocol)
    }
}

/// A protocol name other than `tcp` and `udp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol; use tcp or udp")]
pub struct UnknownProtocol;

#[cfg(any(test, feature = "user"))]
serde_as_text!(Protocol, "tcp or udp");

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_round_trip() {
        for protocol in Protocol::BOTH {
            assert_eq!(Protocol::from_number(protocol.number()), Some(protocol));
            assert_eq!(Protocol::from_name(protocol.name()), Some(protocol));
        }
        assert_eq!(Protocol::from_number(1), None, "ICMP is no port protocol");
        assert_eq!(Protocol::from_name("UDP"), Some(Protocol::Udp));
        assert_eq!(Protocol::from_name("sctp"), None);
    }
}
