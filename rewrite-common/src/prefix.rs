//! An address prefix, `ADDR/LEN`, as written everywhere (a prefix mapping's side, a gate
//! allow prefix, a fleet pool), with the CIDR arithmetic of `ipnet`. The address is kept
//! as written, host bits included, so that each user decides what host bits mean: a
//! mapping refuses them, a pool names the network it meant, the gate masks them.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;

/// `net/len`, `len` at most 32 for IPv4 and 128 for IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix(IpNet);

/// Why a prefix does not parse; the caller names the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("not ADDR/LEN")]
    NotAPrefix,
    #[error("not an IPv4 or IPv6 network")]
    BadAddress,
    #[error("a prefix length is a number, at most 32 for IPv4 and 128 for IPv6")]
    BadLength,
}

impl Prefix {
    /// `net/len`, or `None` if `len` is longer than the family's addresses.
    pub fn new(net: IpAddr, len: u8) -> Option<Self> {
        IpNet::new(net, len).ok().map(Self)
    }

    /// `net/len`, with a length too long for the family cut to the family's (for
    /// callers that checked the length already, or refuse such a prefix later).
    pub fn clamped(net: IpAddr, len: u8) -> Self {
        let max = if net.is_ipv4() { 32 } else { 128 };
        Self::new(net, len.min(max)).unwrap_or_else(|| Self::host(net))
    }

    /// The prefix of one address.
    pub fn host(addr: IpAddr) -> Self {
        Self(IpNet::from(addr))
    }

    /// `ADDR/LEN`, or a bare address as the prefix of that one host.
    pub fn parse_or_host(text: &str) -> Result<Self, PrefixError> {
        if text.contains('/') {
            text.parse()
        } else {
            text.parse::<IpAddr>().map(Self::host).map_err(|_| PrefixError::BadAddress)
        }
    }

    /// The address as written (host bits included).
    pub fn net(self) -> IpAddr {
        self.0.addr()
    }

    pub fn len(self) -> u8 {
        self.0.prefix_len()
    }

    /// Never: `/0` still holds every address of its family.
    pub fn is_empty(self) -> bool {
        false
    }

    pub fn is_ipv4(self) -> bool {
        self.net().is_ipv4()
    }

    /// The family's address length in bits: 32 or 128.
    pub fn max_len(self) -> u8 {
        self.0.max_prefix_len()
    }

    /// The prefix with its host bits cleared.
    pub fn masked(self) -> Self {
        Self(self.0.trunc())
    }

    pub fn has_host_bits(self) -> bool {
        self.0.addr() != self.0.network()
    }

    /// Whether `addr` lies in the prefix (host bits ignored).
    pub fn contains(self, addr: IpAddr) -> bool {
        self.0.contains(&addr)
    }

    /// Whether the two prefixes share an address: the shorter one holds the other.
    pub fn overlaps(self, other: Self) -> bool {
        self.0.contains(&other.0.trunc()) || other.0.contains(&self.0.trunc())
    }

    /// The prefix length in the maps' 16-byte address form (IPv4 is IPv4-mapped, so an
    /// IPv4 /N is 96 + N).
    pub fn key_len(self) -> u32 {
        if self.is_ipv4() { 96 + u32::from(self.len()) } else { u32::from(self.len()) }
    }

    /// The first and last address a host of the prefix may have, as numbers (an IPv4
    /// address in the low 32 bits): not the network address, and for IPv4 prefixes of
    /// /30 and wider not the broadcast address either; a /32, /31 or /128 is all hosts.
    /// `None` for a prefix that has no host address.
    pub fn host_numbers(self) -> Option<(u128, u128)> {
        let base = number(self.0.network());
        let last = number(self.0.broadcast());
        let host_bits = self.max_len() - self.len();
        let (first, last) = match (self.is_ipv4(), host_bits) {
            (_, 0) | (true, 1) => (base, last),
            (true, _) => (base + 1, last - 1),
            (false, _) => (base + 1, last),
        };
        (first <= last).then_some((first, last))
    }

    /// How many host addresses [`Prefix::host_numbers`] gives (saturating).
    pub fn host_count(self) -> u128 {
        self.host_numbers().map_or(0, |(first, last)| (last - first).saturating_add(1))
    }

    /// The address of number `value` in this prefix's family.
    pub fn address(self, value: u128) -> IpAddr {
        if self.is_ipv4() {
            IpAddr::V4(u32::try_from(value).unwrap_or(u32::MAX).into())
        } else {
            IpAddr::V6(value.into())
        }
    }
}

/// An address as a number (IPv4 in the low 32 bits).
pub fn number(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    fn from_str(text: &str) -> Result<Self, PrefixError> {
        let (addr, len) = text.split_once('/').ok_or(PrefixError::NotAPrefix)?;
        let addr: IpAddr = addr.parse().map_err(|_| PrefixError::BadAddress)?;
        if len.is_empty() || !len.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(PrefixError::BadLength);
        }
        let len: u8 = len.parse().map_err(|_| PrefixError::BadLength)?;
        Self::new(addr, len).ok_or(PrefixError::BadLength)
    }
}

serde_as_text!(Prefix, "ADDR/LEN");

/// `ADDR/LEN`, the address as written.
impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net(), self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(text: &str) -> Prefix {
        text.parse().unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    #[test]
    fn prefixes_parse_print_and_compare() {
        assert_eq!(prefix("10.1.2.3/8").to_string(), "10.1.2.3/8", "written as given");
        assert!(prefix("10.1.2.3/8").has_host_bits() && !prefix("10.0.0.0/8").has_host_bits());
        assert_eq!(prefix("10.1.2.3/8").masked(), prefix("10.0.0.0/8"));
        assert_eq!("10.0.0.0/33".parse::<Prefix>(), Err(PrefixError::BadLength));
        assert_eq!("10.0.0.0/+8".parse::<Prefix>(), Err(PrefixError::BadLength));
        assert_eq!("10.0.0.0".parse::<Prefix>(), Err(PrefixError::NotAPrefix));
        assert_eq!("10.0.0/8".parse::<Prefix>(), Err(PrefixError::BadAddress));
        assert_eq!(Prefix::parse_or_host("fd00::1").map(Prefix::len), Ok(128));
        assert!(prefix("10.0.0.0/8").contains("10.200.0.1".parse().expect("ip")));
        assert!(!prefix("10.0.0.0/8").contains("fd00::1".parse().expect("ip")));
        assert!(prefix("10.0.0.0/8").overlaps(prefix("10.9.0.0/16")));
        assert!(prefix("10.9.0.0/16").overlaps(prefix("10.0.0.0/8")));
        assert!(!prefix("10.0.0.0/16").overlaps(prefix("10.1.0.0/16")));
        assert!(!prefix("0.0.0.0/0").overlaps(prefix("::/0")), "families never overlap");
        assert_eq!((prefix("10.0.0.0/8").key_len(), prefix("fd00::/64").key_len()), (104, 64));
    }

    #[test]
    fn host_addresses_leave_out_network_and_broadcast() {
        let hosts = |text: &str| {
            let p = prefix(text);
            p.host_numbers().map(|(first, last)| (p.address(first).to_string(), p.address(last).to_string()))
        };
        assert_eq!(hosts("100.64.0.0/30"), Some(("100.64.0.1".into(), "100.64.0.2".into())));
        assert_eq!(hosts("100.64.0.0/31"), Some(("100.64.0.0".into(), "100.64.0.1".into())));
        assert_eq!(hosts("100.64.0.7/32"), Some(("100.64.0.7".into(), "100.64.0.7".into())));
        assert_eq!(hosts("fd00::/127"), Some(("fd00::1".into(), "fd00::1".into())));
        assert_eq!(prefix("fd00::/64").host_count(), (1 << 64) - 1);
    }
}
