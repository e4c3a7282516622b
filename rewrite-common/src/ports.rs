//! A range of TCP or UDP ports, `PORT` or `FIRST-LAST` as written everywhere (a
//! port-scoped mapping's side, a gate port spec, a bounce service's source ports).

use core::{fmt, ops::RangeInclusive, str::FromStr};

/// `first..=last`, both inclusive, never empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

/// Why a port range does not parse; the caller names the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    #[error("a port is a number from 0 to 65535")]
    NotAPort,
    #[error("the range {first}-{last} is empty (the first port is larger than the last)")]
    Empty { first: u16, last: u16 },
}

impl PortRange {
    /// `first..=last`, or `None` if `first > last`.
    pub const fn new(first: u16, last: u16) -> Option<Self> {
        if first > last { None } else { Some(Self { first, last }) }
    }

    /// One port.
    pub const fn single(port: u16) -> Self {
        Self { first: port, last: port }
    }

    /// `count` ports from `first`, cut at 65535.
    pub const fn from_count(first: u16, count: u16) -> Self {
        let count = if count == 0 { 1 } else { count };
        Self { first, last: first.saturating_add(count - 1) }
    }

    pub const fn first(self) -> u16 {
        self.first
    }

    pub const fn last(self) -> u16 {
        self.last
    }

    /// How many ports: 1 to 65536.
    pub const fn len(self) -> u32 {
        self.last as u32 - self.first as u32 + 1
    }

    /// Never: a range holds at least one port.
    pub const fn is_empty(self) -> bool {
        false
    }

    pub const fn contains(self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }

    pub const fn overlaps(self, other: Self) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    pub const fn ports(self) -> RangeInclusive<u16> {
        self.first..=self.last
    }
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(text: &str) -> Result<Self, PortRangeError> {
        let port = |text: &str| text.parse::<u16>().map_err(|_| PortRangeError::NotAPort);
        let (first, last) = match text.split_once('-') {
            Some((first, last)) => (port(first)?, port(last)?),
            None => {
                let single = port(text)?;
                (single, single)
            }
        };
        Self::new(first, last).ok_or(PortRangeError::Empty { first, last })
    }
}

#[cfg(any(test, feature = "user"))]
serde_as_text!(PortRange, "PORT or FIRST-LAST");

/// `PORT`, or `FIRST-LAST` for more than one.
impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last { write!(f, "{}", self.first) } else { write!(f, "{}-{}", self.first, self.last) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_print_and_measure() {
        let range: PortRange = "5000-5010".parse().expect("a range");
        assert_eq!((range.first(), range.last(), range.len()), (5000, 5010, 11));
        assert_eq!(range.to_string(), "5000-5010");
        assert_eq!("80".parse::<PortRange>().map(|range| range.to_string()), Ok("80".into()));
        assert_eq!("0-65535".parse::<PortRange>().map(PortRange::len), Ok(65536));
        assert_eq!("90-80".parse::<PortRange>(), Err(PortRangeError::Empty { first: 90, last: 80 }));
        for bad in ["", "x", "70000", "1-", "-5", "1-2-3"] {
            assert_eq!(bad.parse::<PortRange>(), Err(PortRangeError::NotAPort), "{bad:?}");
        }
        assert_eq!(PortRange::from_count(65530, 100).last(), 65535);
        assert!(range.overlaps(PortRange::single(5010)) && !range.overlaps(PortRange::single(5011)));
    }
}
