//! Byte layout of every map that userspace and the eBPF programs share.
//!
//! Every key and value is `#[repr(C)]`, has no implicit padding and no `bool`,
//! `Option` or enum field, so the kernel, the programs and every version of the CLI
//! agree on its bytes. Addresses are stored as their wire octets (network byte order),
//! so the programs compare and copy them without swapping.

/// Name of the hash map VIRTUAL -> REAL, looked up on egress.
pub const MAP_ADDR_FORWARD: &str = "ADDR_FORWARD";
/// Name of the hash map REAL -> VIRTUAL, looked up on ingress.
pub const MAP_ADDR_REVERSE: &str = "ADDR_REVERSE";
/// Name of the hash map VIRTUAL:PORT/PROTO -> REAL:PORT/PROTO, looked up on egress.
pub const MAP_PORT_FORWARD: &str = "PORT_FORWARD";
/// Name of the hash map REAL:PORT/PROTO -> VIRTUAL:PORT/PROTO, looked up on ingress.
pub const MAP_PORT_REVERSE: &str = "PORT_REVERSE";
/// Name of the LPM trie VIRTUAL/N -> REAL/N, looked up on egress.
pub const MAP_PREFIX_FORWARD: &str = "PREFIX_FORWARD";
/// Name of the LPM trie REAL/N -> VIRTUAL/N, looked up on ingress.
pub const MAP_PREFIX_REVERSE: &str = "PREFIX_REVERSE";
/// Prefix mappings are few (one moves a subnet); this bounds the tries.
pub const MAX_PREFIX_MAPPINGS: u32 = 16_384;
/// Name of the one-entry array of [`TablesInUse`].
pub const MAP_TABLES_IN_USE: &str = "TABLES_IN_USE";
/// Name of the per-CPU array of outcome counters, see [`crate::counters`].
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Name of the program array through which the TC rewrite programs hand ICMP errors to
/// the programs that rewrite them, indexed by direction.
pub const MAP_ICMP_ERRORS: &str = "ICMP_ERRORS";

/// Capacity of each mapping map unless the first `attach` asks for another
/// (`--max-mappings`). The maps are created with `BPF_F_NO_PREALLOC`, so entries take
/// memory only once inserted; the kernel still allocates each hash map's buckets at
/// creation (16 bytes per slot of the capacity rounded up to a power of two).
pub const DEFAULT_MAX_MAPPINGS: u32 = 1 << 20;

/// `BPF_F_NO_PREALLOC`: allocate hash entries on insert rather than at map creation.
pub const BPF_F_NO_PREALLOC: u32 = 1;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
/// 802.1Q: one VLAN tag before the real ethertype.
pub const ETH_P_8021Q: u16 = 0x8100;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// An IPv4 or IPv6 address as the maps store it: 16 octets as on the wire, with IPv4
/// as an IPv4-mapped IPv6 address (::ffff:a.b.c.d). One map then serves both families,
/// and an IPv4 key can never equal an IPv6 key of a real host (the CLI refuses
/// IPv4-mapped IPv6 addresses).
///
/// Aligned to 4 bytes although it is only octets: the programs then copy and compare
/// addresses a word at a time rather than byte by byte, and every key that holds one
/// stays free of padding (an address always sits at a multiple of 4).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    pub octets: [u8; 16],
}

impl Addr {
    /// The IPv4-mapped form of an IPv4 address.
    #[inline(always)]
    pub const fn from_v4(v4: [u8; 4]) -> Self {
        Self::from_words([0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), u32::from_ne_bytes(v4)])
    }

    /// The address whose octets are these four words as they lie in memory. The
    /// programs build and copy addresses a word at a time through this: built from an
    /// octet array, an address compiled to byte loops (`memset`, `memmove`) in BPF.
    #[inline(always)]
    pub const fn from_words(words: [u32; 4]) -> Self {
        // SAFETY: four u32 and sixteen u8 have the same size, and any bits are valid u8.
        Self { octets: unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) } }
    }

    /// The octets as four words as they lie in memory (the inverse of
    /// [`Addr::from_words`]): four word loads in the programs.
    #[inline(always)]
    pub const fn as_words(&self) -> [u32; 4] {
        // SAFETY: an `Addr` is sixteen octets aligned to 4 (asserted below), which are
        // four valid u32.
        unsafe { *core::ptr::from_ref(self).cast::<[u32; 4]>() }
    }

    /// The last four octets: the IPv4 address of an IPv4-mapped address.
    #[inline(always)]
    pub const fn v4(&self) -> [u8; 4] {
        [self.octets[12], self.octets[13], self.octets[14], self.octets[15]]
    }

    /// Whether this is an IPv4-mapped address (`::ffff:a.b.c.d`). Compared a word at
    /// a time: the programs call it, and a 12-byte slice compare can become a byte loop
    /// in BPF.
    #[inline(always)]
    pub const fn is_v4(&self) -> bool {
        let words = self.as_words();
        let mapped = Self::from_v4([0; 4]).as_words();
        words[0] == mapped[0] && words[1] == mapped[1] && words[2] == mapped[2]
    }
}

const _: () = assert!(core::mem::size_of::<Addr>() == 16);
const _: () = assert!(core::mem::align_of::<Addr>() == 4);

/// One side of a port-scoped mapping, for one port: the key and the value of the
/// port maps. A range mapping is stored as one entry per port, so every lookup stays a
/// single O(1) hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: Addr,
    /// The port, big-endian as on the wire.
    pub port: [u8; 2],
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    /// Always zero, so that equal endpoints hash equally.
    pub reserved: u8,
}

const _: () = assert!(core::mem::size_of::<Endpoint>() == 20);
const _: () = assert!(core::mem::align_of::<Endpoint>() == 4);

/// The value of a prefix mapping: the network the matched prefix is replaced by, with
/// the prefix length in bits of the 16-byte address form (an IPv4 /N is 96 + N). The
/// LPM trie key is `(prefix_len, Addr)` with the same length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrefixTarget {
    pub network: Addr,
    pub prefix_len: u32,
}

const _: () = assert!(core::mem::size_of::<PrefixTarget>() == 20);
const _: () = assert!(core::mem::align_of::<PrefixTarget>() == 4);

/// The key of the prefix tries (the kernel's `struct bpf_lpm_trie_key_u8` with a 16-byte
/// address): the number of leading bits that take part, in host byte order, then the
/// address in the 16-byte form. The programs look up with `prefix_len` 128 (every bit
/// of the packet's address). The same bytes as aya's `Key<[u8; 16]>`, which userspace
/// uses; aya's key is packed, and so cannot hold the aligned [`Addr`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixKey {
    pub prefix_len: u32,
    pub addr: Addr,
}

impl PrefixKey {
    /// The key that looks `addr` up with all 128 bits.
    #[inline(always)]
    pub const fn host(addr: Addr) -> Self {
        Self { prefix_len: 128, addr }
    }
}

const _: () = assert!(core::mem::size_of::<PrefixKey>() == 20);

/// The prefix tries' key as aya's userspace API takes it: the same bytes as [`PrefixKey`].
#[cfg(feature = "user")]
pub type TrieKey = aya::maps::lpm_trie::Key<[u8; 16]>;

/// The trie key of `addr` with `prefix_len` leading bits.
#[cfg(feature = "user")]
pub fn trie_key(prefix_len: u32, addr: Addr) -> TrieKey {
    TrieKey::new(prefix_len, addr.octets)
}

/// How far ahead an event reader (`bounce log`, `gate log`) sets its lease, a pinned
/// `u64` of `bpf_ktime_get_ns` time: the programs write events only while it lies
/// ahead, so a ring nobody reads costs nothing, and a reader that died stops the
/// events within this time. The reader renews it every half second.
pub const LOG_LEASE_NS: u64 = 3_000_000_000;

/// Which of the optional tables hold entries: each flag is 0 or 1 (no `bool` in maps).
/// Userspace sets a flag before it inserts the first entry and clears it after it
/// removes the last, so the programs skip the lookups of an empty table (most hosts
/// have no port-scoped or prefix mappings) without ever missing an entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TablesInUse {
    pub ports: u32,
    pub prefixes: u32,
}

const _: () = assert!(core::mem::size_of::<TablesInUse>() == 8);

/// Traffic rewritten through one map entry: a forward entry counts egress packets, a
/// reverse entry ingress ones. Bytes are whole frames as the hook saw them (Ethernet
/// header included). The programs add with atomic instructions; userspace writes zero
/// when it creates the entry, and carries the counts over when it retargets a mapping.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Counts>() == 16);

/// The value of the address maps: the other side of the mapping, and the entry's
/// counters. Keeping the counters in the entry the lookup has just found costs no second
/// lookup and no cache miss of its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddressEntry {
    pub addr: Addr,
    pub counts: Counts,
}

const _: () = assert!(core::mem::size_of::<AddressEntry>() == 32);

/// The value of the port maps: the other endpoint, and the entry's counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointEntry {
    pub endpoint: Endpoint,
    /// Always zero; places the counters on an 8-byte boundary.
    pub reserved: [u8; 4],
    pub counts: Counts,
}

const _: () = assert!(core::mem::size_of::<EndpointEntry>() == 40);

/// The value of the prefix tries: the other network, and the entry's counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixEntry {
    pub target: PrefixTarget,
    /// Always zero; places the counters on an 8-byte boundary.
    pub reserved: u32,
    pub counts: Counts,
}

const _: () = assert!(core::mem::size_of::<PrefixEntry>() == 40);

impl AddressEntry {
    pub const fn new(addr: Addr) -> Self {
        Self { addr, counts: Counts { packets: 0, bytes: 0 } }
    }
}

impl EndpointEntry {
    pub const fn new(endpoint: Endpoint) -> Self {
        Self { endpoint, reserved: [0; 4], counts: Counts { packets: 0, bytes: 0 } }
    }
}

impl PrefixEntry {
    pub const fn new(target: PrefixTarget) -> Self {
        Self { target, reserved: 0, counts: Counts { packets: 0, bytes: 0 } }
    }
}

/// A mapping's counters as reported, indexed by direction (`counters::INGRESS`,
/// `EGRESS`): the [`Counts`] of its reverse and forward entries (summed over the ports
/// of a range).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingStats {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
}

const _: () = assert!(core::mem::size_of::<MappingStats>() == 32);

impl MappingStats {
    /// A mapping's counters from its reverse (ingress) and forward (egress) entries.
    #[must_use]
    pub const fn from_entries(ingress: Counts, egress: Counts) -> Self {
        Self { packets: [ingress.packets, egress.packets], bytes: [ingress.bytes, egress.bytes] }
    }

    /// The sum of several counters (the ports of a range).
    #[must_use]
    pub fn sum<'a>(copies: impl IntoIterator<Item = &'a MappingStats>) -> MappingStats {
        copies.into_iter().fold(MappingStats::default(), |mut total, copy| {
            for direction in 0..2 {
                total.packets[direction] = total.packets[direction].wrapping_add(copy.packets[direction]);
                total.bytes[direction] = total.bytes[direction].wrapping_add(copy.bytes[direction]);
            }
            total
        })
    }
}

impl PrefixTarget {
    /// `addr` with its first `prefix_len` bits replaced by the network's: NETMAP's
    /// translation, which keeps the host bits.
    ///
    /// Written without a branch: each byte's mask comes from the number of its bits
    /// inside the prefix, clamped to 0..=8 with shifts of the sign bit. The programs run
    /// this on the packet path, and a branch per byte would give older verifiers (5.10,
    /// 6.1) up to 3^16 paths to walk.
    #[inline(always)]
    #[expect(clippy::cast_possible_truncation, reason = "the mask is at most 0xff after the shift")]
    #[expect(clippy::cast_possible_wrap, reason = "a length beyond i32 is no prefix; it masks nothing")]
    pub fn translate(&self, addr: &Addr) -> Addr {
        let mut octets = addr.octets;
        let mut index = 0;
        while index < 16 {
            // Bits of this byte inside the prefix: negative, 0..=8, or more than 8.
            let inside = self.prefix_len as i32 - (index as i32) * 8;
            // max(inside, 0): the sign bit, spread, clears a negative value.
            let at_least_zero = inside & !(inside >> 31);
            // min(.., 8): `over` is all ones when the value exceeds 8.
            let over = (8 - at_least_zero) >> 31;
            let bits = (at_least_zero & !over) | (8 & over);
            // The top `bits` bits of the byte: 0xff00 >> 8 is 0xff, >> 0 leaves 0x00.
            let mask = (0xff00_u32 >> bits) as u8;
            octets[index] = (octets[index] & !mask) | (self.network.octets[index] & mask);
            index += 1;
        }
        Addr { octets }
    }
}

impl Endpoint {
    #[inline(always)]
    pub const fn new(addr: Addr, port: [u8; 2], protocol: u8) -> Self {
        Self { addr, port, protocol, reserved: 0 }
    }
}

// SAFETY: a repr(C) array of u8: every bit pattern is valid and there is no padding
// (checked by the const asserts above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for Addr {}
// SAFETY: as above: repr(C), only u8 fields, no padding (size asserted).
#[cfg(feature = "user")]
unsafe impl aya::Pod for Endpoint {}
// SAFETY: repr(C), an Addr and a u32, no padding (size asserted: 16 + 4).
#[cfg(feature = "user")]
unsafe impl aya::Pod for PrefixTarget {}
// SAFETY: repr(C), two u32, no padding (size asserted).
#[cfg(feature = "user")]
unsafe impl aya::Pod for TablesInUse {}
// SAFETY: repr(C), an Addr (16 bytes) then two u64 at offset 16, no padding (asserted).
#[cfg(feature = "user")]
unsafe impl aya::Pod for AddressEntry {}
// SAFETY: repr(C), an Endpoint (20 bytes), 4 explicit bytes, two u64 at offset 24, no
// padding (asserted).
#[cfg(feature = "user")]
unsafe impl aya::Pod for EndpointEntry {}
// SAFETY: repr(C), a PrefixTarget (20 bytes), an explicit u32, two u64 at offset 24, no
// padding (asserted).
#[cfg(feature = "user")]
unsafe impl aya::Pod for PrefixEntry {}

#[cfg(any(test, feature = "user"))]
mod std_conversions {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::Addr;

    impl From<IpAddr> for Addr {
        fn from(addr: IpAddr) -> Self {
            match addr {
                IpAddr::V4(v4) => Self::from_v4(v4.octets()),
                IpAddr::V6(v6) => Self { octets: v6.octets() },
            }
        }
    }

    impl From<Ipv4Addr> for Addr {
        fn from(addr: Ipv4Addr) -> Self {
            Self::from_v4(addr.octets())
        }
    }

    impl From<Addr> for IpAddr {
        fn from(addr: Addr) -> Self {
            if addr.is_v4() { IpAddr::V4(Ipv4Addr::from(addr.v4())) } else { IpAddr::V6(Ipv6Addr::from(addr.octets)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(text: &str) -> Addr {
        Addr::from(text.parse::<std::net::Ipv4Addr>().expect("IPv4 address"))
    }

    #[test]
    fn prefix_translation_keeps_the_host_bits() {
        let target = PrefixTarget { network: v4("172.20.0.0"), prefix_len: 96 + 16 };
        assert_eq!(target.translate(&v4("10.1.3.7")), v4("172.20.3.7"));
        // A length that is not a multiple of 8 splits a byte.
        let target = PrefixTarget { network: v4("192.168.128.0"), prefix_len: 96 + 17 };
        assert_eq!(target.translate(&v4("10.1.255.9")), v4("192.168.255.9"));
        assert_eq!(target.translate(&v4("10.1.3.9")), v4("192.168.131.9"));
        let v6 = |text: &str| Addr { octets: text.parse::<std::net::Ipv6Addr>().expect("IPv6 address").octets() };
        let target = PrefixTarget { network: v6("2001:db8:aa::"), prefix_len: 48 };
        assert_eq!(target.translate(&v6("fd00:1:2:3::4")), v6("2001:db8:aa:3::4"));
    }

    /// The translation against the plainest statement of it, bit by bit, for every
    /// prefix length (and lengths beyond 128, which mask all 128 bits).
    #[test]
    fn prefix_translation_replaces_exactly_the_prefix_bits_at_every_length() {
        let network = Addr { octets: [0xa5; 16] };
        let addr = Addr { octets: [0x5a; 16] };
        for prefix_len in 0..=140 {
            let translated = PrefixTarget { network, prefix_len }.translate(&addr);
            for bit in 0..128 {
                let (byte, shift) = (bit / 8, 7 - bit % 8);
                let from = if bit < prefix_len as usize { network } else { addr };
                assert_eq!(
                    translated.octets[byte] >> shift & 1,
                    from.octets[byte] >> shift & 1,
                    "bit {bit} at prefix length {prefix_len}"
                );
            }
        }
    }

    #[test]
    fn mapping_stats_sum_adds_each_direction() {
        let one = MappingStats { packets: [1, 2], bytes: [100, 200] };
        let other = MappingStats { packets: [10, 0], bytes: [1000, 0] };
        assert_eq!(MappingStats::sum([&one, &other]), MappingStats { packets: [11, 2], bytes: [1100, 200] });
        assert_eq!(MappingStats::sum([]), MappingStats::default());
    }
}
