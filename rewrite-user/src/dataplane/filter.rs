//! The address filter's userspace side (the layout and the hash are in
//! `rewrite_common::filter`): the array map mapped into this process's memory, bits set
//! before the entries they cover are inserted, and the build from the maps' keys that
//! the programs wait for before they trust a clear bit.

use std::{
    borrow::Borrow,
    num::NonZeroUsize,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, lpm_trie::LpmTrie},
};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use rewrite_common::{
    counters,
    filter::{
        ADDRESS_KEYS, FILTER_BUILT, FILTER_SLOTS, MAP_ADDR_FILTER, PORT_KEYS, filter_bit, prefix_filter_bit,
        prefix_filter_bits,
    },
    maps::{
        Addr, AddressEntry, Endpoint, EndpointEntry, MAP_ADDR_FORWARD, MAP_ADDR_REVERSE, MAP_PORT_FORWARD,
        MAP_PORT_REVERSE, MAP_PREFIX_FORWARD, MAP_PREFIX_REVERSE, PrefixEntry,
    },
};

use crate::Error;

/// What a bit of the filter stands for: a key of an address or port map, or a prefix of
/// a trie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterKey {
    /// `addr` in a key of `direction`'s map of `kind` (`ADDRESS_KEYS`, `PORT_KEYS`).
    Address { direction: u32, kind: u32, addr: Addr },
    /// A prefix of `direction`'s trie, `prefix_len` in bits of the 16-byte form.
    Prefix { direction: u32, network: Addr, prefix_len: u32 },
}

impl FilterKey {
    /// The filter's bits for this key.
    fn bits(self) -> impl Iterator<Item = (u32, u64)> {
        let (address, prefix) = match self {
            Self::Address { direction, kind, addr } => (Some(filter_bit(direction, kind, &addr)), None),
            Self::Prefix { direction, network, prefix_len } => {
                (None, Some(prefix_filter_bits(direction, &network, prefix_len)))
            }
        };
        address.into_iter().chain(prefix.into_iter().flatten())
    }
}

/// The filter map, mapped shared into this process: what this process stores, the
/// programs read at once.
pub struct AddressFilter {
    slots: NonNull<AtomicU64>,
    len: NonZeroUsize,
}

// SAFETY: the mapping is process-wide memory that every thread may use, and it is only
// ever read and written through atomics.
unsafe impl Send for AddressFilter {}
// SAFETY: as above.
unsafe impl Sync for AddressFilter {}

impl std::fmt::Debug for AddressFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressFilter").field("built", &self.is_built()).finish_non_exhaustive()
    }
}

impl AddressFilter {
    /// Maps the filter map of `data` (which must have the registry's layout, see
    /// `objects::check_map_layout`) into memory.
    pub fn from_map_data(data: &MapData) -> Result<Self, Error> {
        let entries = data.info().map_err(|source| Error::map(MAP_ADDR_FILTER, source))?.max_entries();
        if entries != FILTER_SLOTS {
            return Err(Error::FilterMap {
                why: format!("it has {entries} entries where this build expects {FILTER_SLOTS}"),
            });
        }
        let bytes = (FILTER_SLOTS as usize) * size_of::<u64>();
        let len = NonZeroUsize::new(bytes.next_multiple_of(page_size())).expect("the filter has slots");
        // SAFETY: a new shared mapping of the map's own memory (the kernel checks the
        // length against the map), which nothing else in this process aliases; it is
        // unmapped on drop and only used through atomics meanwhile.
        let mapped = unsafe {
            mmap(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, data.fd(), 0)
        }
        .map_err(|errno| Error::FilterMap { why: format!("mmap failed: {errno}") })?;
        Ok(Self { slots: mapped.cast(), len })
    }

    /// The filter map pinned at `path`.
    pub fn from_pin(path: &std::path::Path) -> Result<Self, Error> {
        Self::from_map_data(&MapData::from_pin(path).map_err(|source| Error::map(MAP_ADDR_FILTER, source))?)
    }

    /// The filter map of a loaded object.
    pub fn of(ebpf: &Ebpf) -> Result<Self, Error> {
        match ebpf.map(MAP_ADDR_FILTER) {
            Some(Map::Array(data)) => Self::from_map_data(data),
            Some(_) => Err(Error::FilterMap { why: "the object declares it as another type of map".into() }),
            None => Err(Error::NotLoaded { path: MAP_ADDR_FILTER.into() }),
        }
    }

    fn slots(&self) -> &[AtomicU64] {
        // SAFETY: the mapping holds FILTER_SLOTS aligned u64 (the map's values, page
        // aligned) for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.slots.as_ptr(), FILTER_SLOTS as usize) }
    }

    /// Whether the programs trust this filter's clear bits.
    pub fn is_built(&self) -> bool {
        self.slots()[0].load(Ordering::Acquire) == FILTER_BUILT
    }

    /// What the programs conclude from the filter: whether `direction`'s maps of `kind`
    /// may hold `addr` in a key (false only when built and the bit is clear).
    pub fn may_hold(&self, direction: u32, kind: u32, addr: &Addr) -> bool {
        self.admits(filter_bit(direction, kind, addr))
    }

    /// Whether a prefix of `direction`'s trie may cover `addr`, as the programs see it.
    pub fn may_cover(&self, direction: u32, addr: &Addr) -> bool {
        self.admits(prefix_filter_bit(direction, addr))
    }

    fn admits(&self, (index, mask): (u32, u64)) -> bool {
        !self.is_built() || self.slots()[index as usize].load(Ordering::Acquire) & mask != 0
    }

    /// Sets the bits of `key`: call before inserting the entry it stands for.
    pub fn admit(&self, key: FilterKey) {
        let slots = self.slots();
        for (index, mask) in key.bits() {
            slots[index as usize].fetch_or(mask, Ordering::Release);
        }
    }

    /// Sets the bits of exactly `keys` and marks the filter built.
    /// Each word is stored whole and keeps every bit of a key the maps hold, so a
    /// program reading during the rebuild never misses an entry: run it under the write
    /// lock, with every key of the maps, and nothing inserted meanwhile.
    pub fn rebuild(&self, keys: impl IntoIterator<Item = FilterKey>) {
        let mut words = vec![0u64; FILTER_SLOTS as usize];
        for (index, mask) in keys.into_iter().flat_map(FilterKey::bits) {
            words[index as usize] |= mask;
        }
        let slots = self.slots();
        for (slot, word) in slots.iter().zip(&words).skip(1) {
            slot.store(*word, Ordering::Release);
        }
        slots[0].store(FILTER_BUILT, Ordering::Release);
    }

    /// Builds the filter from the maps of `ebpf` when `when` says so.
    pub fn build_from(ebpf: &Ebpf, when: BuildFilter) -> Result<(), Error> {
        let filter = Self::of(ebpf)?;
        if when == BuildFilter::Always || !filter.is_built() {
            filter.rebuild(table_keys(ebpf)?);
        }
        Ok(())
    }
}

/// When a load builds the filter from the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildFilter {
    /// Only if no build has done so yet: a table just created, or a filter map created
    /// beside a table of an older build.
    IfUnbuilt,
    /// Always: an upgrade, after which writers of any build may have inserted without
    /// setting bits.
    Always,
}

impl Drop for AddressFilter {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `from_map_data`, unmapped once.
        let _ = unsafe { munmap(self.slots.cast(), self.len.get()) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// Every key of the address and port maps and of the tries of `ebpf`, as the filter
/// covers it.
fn table_keys(ebpf: &Ebpf) -> Result<Vec<FilterKey>, Error> {
    let map =
        |name: &'static str| -> Result<&Map, Error> { ebpf.map(name).ok_or(Error::NotLoaded { path: name.into() }) };
    let address =
        |name| HashMap::<_, Addr, AddressEntry>::try_from(map(name)?).map_err(|source| Error::map(name, source));
    let port =
        |name| HashMap::<_, Endpoint, EndpointEntry>::try_from(map(name)?).map_err(|source| Error::map(name, source));
    let prefix =
        |name| LpmTrie::<_, [u8; 16], PrefixEntry>::try_from(map(name)?).map_err(|source| Error::map(name, source));
    keys_of(
        [&address(MAP_ADDR_FORWARD)?, &address(MAP_ADDR_REVERSE)?],
        [&port(MAP_PORT_FORWARD)?, &port(MAP_PORT_REVERSE)?],
        [&prefix(MAP_PREFIX_FORWARD)?, &prefix(MAP_PREFIX_REVERSE)?],
    )
}

/// Every key of the address maps, the port maps and the tries, each pair given as
/// `[forward, reverse]`, as the filter covers it (forward maps: egress; reverse maps:
/// ingress).
pub fn keys_of<A: Borrow<MapData>, P: Borrow<MapData>, L: Borrow<MapData>>(
    addresses: [&HashMap<A, Addr, AddressEntry>; 2],
    ports: [&HashMap<P, Endpoint, EndpointEntry>; 2],
    prefixes: [&LpmTrie<L, [u8; 16], PrefixEntry>; 2],
) -> Result<Vec<FilterKey>, Error> {
    const DIRECTIONS: [(u32, &str, &str, &str); 2] = [
        (counters::EGRESS, MAP_ADDR_FORWARD, MAP_PORT_FORWARD, MAP_PREFIX_FORWARD),
        (counters::INGRESS, MAP_ADDR_REVERSE, MAP_PORT_REVERSE, MAP_PREFIX_REVERSE),
    ];
    let mut keys = Vec::new();
    for (index, (direction, address_name, port_name, prefix_name)) in DIRECTIONS.into_iter().enumerate() {
        for key in addresses[index].keys() {
            let addr = key.map_err(|source| Error::map(address_name, source))?;
            keys.push(FilterKey::Address { direction, kind: ADDRESS_KEYS, addr });
        }
        for key in ports[index].keys() {
            let addr = key.map_err(|source| Error::map(port_name, source))?.addr;
            keys.push(FilterKey::Address { direction, kind: PORT_KEYS, addr });
        }
        for key in prefixes[index].keys() {
            let key = key.map_err(|source| Error::map(prefix_name, source))?;
            keys.push(FilterKey::Prefix {
                direction,
                network: Addr { octets: key.data() },
                prefix_len: key.prefix_len(),
            });
        }
    }
    Ok(keys)
}
