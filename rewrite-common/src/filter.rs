//! The address filter: one bit per hash of an address, per direction and per kind of
//! map, set for every address the direction's address map holds as a key, and for
//! every address of a key of its port map. A packet has two
//! addresses and at most one side of it is usually mapped; the other side's hash
//! lookups (port map, then address map) each walk a bucket that holds nothing for it,
//! which at 100,000 mappings is a cache miss per lookup. A clear bit says "no entry of
//! that map has this address" from one inlined array read, so that side skips the
//! lookup: both lookups for an unmapped address, and the port lookup for an address
//! with an address mapping only. A set bit only says "maybe": the lookup runs as
//! before.
//!
//! Prefix mappings get a coarser filter: one bit per value of an address's first 16
//! bits (of its IPv4 address if IPv4-mapped), per direction and family, set for every
//! value a prefix of the direction's trie covers. A clear bit lets a side skip the
//! longest-prefix lookup, the costliest of the three.
//!
//! The one rule that keeps it correct: a bit is set before the entry whose key it
//! covers is inserted, and cleared only by a rebuild from the maps' keys (a removal
//! leaves its bit set, which costs only a lookup). Until the filter has been built from
//! the maps (a table created by a build without it, a filter map created fresh beside an
//! older table), its header says so and the programs look everything up.
//!
//! Layout of the array map [`MAP_ADDR_FILTER`] (`u32` index, `u64` value, host byte
//! order, created `BPF_F_MMAPABLE` so that userspace sets bits in place without a
//! system call per mapping): index 0 is the header, [`FILTER_BUILT`] once built; the
//! words of direction `d` (`counters::INGRESS`, `counters::EGRESS`) and kind `k`
//! ([`ADDRESS_KEYS`], [`PORT_KEYS`]) follow at `1 + (2 * d + k) * FILTER_WORDS`, then
//! the prefix filter of direction `d` and family `f` (0 IPv6, 1 IPv4) at
//! `PREFIX_FILTER_START + (2 * d + f) * PREFIX_FILTER_WORDS`.

use crate::{counters, maps::Addr};

/// Name of the filter's array map.
pub const MAP_ADDR_FILTER: &str = "ADDR_FILTER";

/// Bits of one direction's filter of one kind, as a power of two: 2^20 bits, 128 KiB,
/// which the CPU's caches hold while the table's entries do not. At 100,000 mappings
/// about one bit in ten is set, so nine of ten unmapped addresses skip their lookups.
pub const FILTER_BITS_LOG2: u32 = 20;

/// `u64` words of one direction's filter of one kind.
pub const FILTER_WORDS: u32 = 1 << (FILTER_BITS_LOG2 - 6);

/// The kind of filter that covers the keys of the address maps.
pub const ADDRESS_KEYS: u32 = 0;
/// The kind of filter that covers the addresses of the port maps' keys.
pub const PORT_KEYS: u32 = 1;
const KINDS: u32 = 2;

/// `u64` words of one direction's prefix filter of one family: a bit per value of 16
/// bits.
pub const PREFIX_FILTER_WORDS: u32 = (1 << 16) / 64;
const FAMILIES: u32 = 2;

/// Where the prefix filters start: after the header and the address filters.
const PREFIX_FILTER_START: u32 = 1 + counters::DIRECTIONS * KINDS * FILTER_WORDS;

/// Entries of the array map: the header, the address filters, the prefix filters.
pub const FILTER_SLOTS: u32 = PREFIX_FILTER_START + counters::DIRECTIONS * FAMILIES * PREFIX_FILTER_WORDS;

/// The header's value once userspace has built the filter from the maps.
pub const FILTER_BUILT: u64 = 0x5257_4649_4c54_0001;

/// `BPF_F_MMAPABLE`: an array map userspace can `mmap`.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Fibonacci hashing's multiplier (2^32 / golden ratio): the top bits of the product
/// depend on every bit of the folded address.
const MULTIPLIER: u32 = 0x9e37_79b1;

/// Where the bit of `addr` lies in the filter of `direction` and `kind`: the array
/// index and the mask within that word. The same function runs in the programs and in
/// userspace.
#[inline(always)]
pub fn filter_bit(direction: u32, kind: u32, addr: &Addr) -> (u32, u64) {
    let words = addr.as_words();
    // Every word takes part; an IPv4-mapped address differs from others in its last.
    let folded = words[0] ^ words[1].rotate_left(8) ^ words[2].rotate_left(16) ^ words[3];
    let bit = folded.wrapping_mul(MULTIPLIER) >> (32 - FILTER_BITS_LOG2);
    let region = (direction & 1) * KINDS + (kind & 1);
    let index = 1 + region * FILTER_WORDS + (bit >> 6);
    (index, 1u64 << (bit & 63))
}

/// The first 16 bits of `addr` that the prefix filter indexes (of the IPv4 address if
/// IPv4-mapped), and the family's region (1 IPv4, 0 IPv6).
#[inline(always)]
fn leading_bits(addr: &Addr) -> (u32, u32) {
    let v4 = addr.is_v4();
    let first = if v4 { 12 } else { 0 };
    let leading = u32::from(addr.octets[first]) << 8 | u32::from(addr.octets[first + 1]);
    (leading, u32::from(v4))
}

/// Where the prefix-filter bit of `addr` lies for `direction`: the array index and the
/// mask within that word.
#[inline(always)]
pub fn prefix_filter_bit(direction: u32, addr: &Addr) -> (u32, u64) {
    let (leading, family) = leading_bits(addr);
    prefix_filter_slot(direction, family, leading)
}

#[inline(always)]
fn prefix_filter_slot(direction: u32, family: u32, leading: u32) -> (u32, u64) {
    let region = (direction & 1) * FAMILIES + (family & 1);
    let index = PREFIX_FILTER_START + region * PREFIX_FILTER_WORDS + ((leading & 0xffff) >> 6);
    (index, 1u64 << (leading & 63))
}

/// Every prefix-filter bit that the prefix `network`/`prefix_len` covers for
/// `direction` (`prefix_len` in bits of the 16-byte form, as the tries key it: an IPv4
/// /N is 96 + N): one bit if the prefix fixes all 16 leading bits, 2^(16 - N) if not.
#[cfg(any(test, feature = "user"))]
pub fn prefix_filter_bits(direction: u32, network: &Addr, prefix_len: u32) -> impl Iterator<Item = (u32, u64)> + use<> {
    let (leading, family) = leading_bits(network);
    let significant = if family == 1 { prefix_len.saturating_sub(96) } else { prefix_len }.min(16);
    let free = 16 - significant;
    let first = leading >> free << free;
    (first..=first | ((1 << free) - 1)).map(move |leading| prefix_filter_slot(direction, family, leading))
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, net::Ipv4Addr};

    use super::*;

    #[test]
    fn every_bit_lies_inside_the_words_of_its_direction_and_kind() {
        let mut regions = HashSet::new();
        for direction in [counters::INGRESS, counters::EGRESS] {
            for kind in [ADDRESS_KEYS, PORT_KEYS] {
                let first = 1 + (2 * direction + kind) * FILTER_WORDS;
                assert!(regions.insert(first), "two regions start at {first}");
                for host in 0..10_000u32 {
                    let (index, mask) = filter_bit(direction, kind, &Addr::from(Ipv4Addr::from(0x0a00_0000 + host)));
                    assert!((first..first + FILTER_WORDS).contains(&index), "index {index} of {direction}/{kind}");
                    assert_eq!(mask.count_ones(), 1, "one bit per address");
                }
            }
        }
        assert_eq!(PREFIX_FILTER_START, 1 + 4 * FILTER_WORDS, "the header and four regions before the prefixes");
        assert_eq!(FILTER_SLOTS, PREFIX_FILTER_START + 4 * PREFIX_FILTER_WORDS, "four prefix regions end the map");
    }

    fn v4(text: &str) -> Addr {
        Addr::from(text.parse::<Ipv4Addr>().expect("IPv4 address"))
    }

    fn v6(text: &str) -> Addr {
        Addr { octets: text.parse::<std::net::Ipv6Addr>().expect("IPv6 address").octets() }
    }

    /// A prefix covers exactly the addresses whose bit it sets: checked for addresses
    /// inside and outside prefixes of lengths around the 16 bits the filter sees.
    #[test]
    fn a_prefix_sets_the_bit_of_every_address_it_covers_and_few_others() {
        let cases = [
            (v4("10.201.0.0"), 96 + 16, v4("10.201.255.3"), v4("10.202.0.1")),
            (v4("10.200.128.0"), 96 + 17, v4("10.200.200.1"), v4("10.199.1.1")),
            (v4("10.0.0.0"), 96 + 8, v4("10.255.1.1"), v4("11.0.0.1")),
            (v4("172.16.0.0"), 96 + 12, v4("172.31.9.9"), v4("172.32.0.1")),
            (v6("fd01::"), 64, v6("fd01::77"), v6("fd02::1")),
            (v6("2001:db8::"), 32, v6("2001:db8:ffff::1"), v6("2002:db8::1")),
            (v6("fc00::"), 7, v6("fdff::1"), v6("fe00::1")),
        ];
        for (network, prefix_len, inside, outside) in cases {
            let bits: HashSet<(u32, u64)> = prefix_filter_bits(counters::EGRESS, &network, prefix_len).collect();
            assert!(bits.contains(&prefix_filter_bit(counters::EGRESS, &inside)), "{inside:?} in /{prefix_len}");
            assert!(!bits.contains(&prefix_filter_bit(counters::EGRESS, &outside)), "{outside:?} outside");
            assert!(!bits.contains(&prefix_filter_bit(counters::INGRESS, &inside)), "the other direction's bit");
        }
        // The families are apart: 10.201.x.x and the IPv6 address 0a c9:: share their
        // leading 16 bits but not a region.
        let bits: HashSet<(u32, u64)> = prefix_filter_bits(counters::EGRESS, &v4("10.201.0.0"), 96 + 16).collect();
        assert!(!bits.contains(&prefix_filter_bit(counters::EGRESS, &v6("ac9::1"))), "IPv6 in the IPv4 region");
        // A /0 covers its whole family; /16 and longer set one bit.
        assert_eq!(prefix_filter_bits(counters::EGRESS, &v4("0.0.0.0"), 96).count(), 1 << 16);
        assert_eq!(prefix_filter_bits(counters::EGRESS, &v4("10.1.2.0"), 96 + 24).count(), 1);
        for (index, _) in prefix_filter_bits(counters::INGRESS, &v6("::"), 0) {
            assert!((PREFIX_FILTER_START..FILTER_SLOTS).contains(&index), "index {index} outside the prefix filters");
        }
    }

    /// Consecutive addresses (how operators number hosts) spread over the filter: 100,000
    /// of them set close to as many distinct bits as random ones would.
    #[test]
    fn consecutive_addresses_spread_over_the_filter() {
        let bits: HashSet<(u32, u64)> = (0..100_000u32)
            .map(|host| filter_bit(counters::EGRESS, ADDRESS_KEYS, &Addr::from(Ipv4Addr::from(0x0a00_0000 + host))))
            .collect();
        // Random placement of 100,000 into 2^20 bits expects about 95,400 distinct bits.
        assert!(bits.len() > 93_000, "only {} distinct bits for 100,000 addresses", bits.len());
        let v6: HashSet<(u32, u64)> = (0..10_000u128)
            .map(|host| {
                let addr =
                    Addr { octets: (0x2001_0db8_0000_0000_0000_0000_0000_0000u128 + (host << 16)).to_be_bytes() };
                filter_bit(counters::EGRESS, ADDRESS_KEYS, &addr)
            })
            .collect();
        assert!(v6.len() > 9_800, "only {} distinct bits for 10,000 IPv6 addresses", v6.len());
    }
}
