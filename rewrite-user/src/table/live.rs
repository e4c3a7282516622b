//! The live mapping table in the pinned maps, edited in an order that never lets a
//! packet see half a mapping: the reverse entry (REAL -> VIRTUAL) goes in before the
//! forward one and comes out after it, so a reply is always recognised once requests
//! can be sent to REAL.

use std::{collections::HashSet, net::IpAddr};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError};
use rewrite_common::{
    mapping::{PortMapping, PrefixMapping},
    maps::{
        Addr, AddressEntry, Counts, Endpoint, EndpointEntry, MAP_ADDR_FORWARD, MAP_ADDR_REVERSE, MAP_PORT_FORWARD,
        MAP_PORT_REVERSE, MAP_PREFIX_FORWARD, MAP_PREFIX_REVERSE, MAP_TABLES_IN_USE, MappingStats, PrefixEntry,
        PrefixTarget, TablesInUse,
    },
    spec::Side,
    validate::{AddPlan, MappingConflict, MappingView, in_prefix, plan_add, plan_add_ports, plan_add_prefix},
};

use crate::{Error, pins::PinLayout};

/// `BPF_NOEXIST` and `BPF_EXIST` update flags (`BPF_ANY`, which replaces an existing
/// entry silently, is used nowhere).
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

type AddressMap = HashMap<MapData, Addr, AddressEntry>;
type PortMap = HashMap<MapData, Endpoint, EndpointEntry>;
type PrefixMap = LpmTrie<MapData, Addr, PrefixEntry>;

pub(crate) fn open_pinned(pins: &PinLayout, name: &'static str) -> Result<Map, Error> {
    let path = pins.map(name);
    if !path.exists() {
        return Err(Error::NotLoaded { path });
    }
    let data = MapData::from_pin(&path).map_err(|source| Error::map(name, source))?;
    Map::from_map_data(data).map_err(|source| Error::map(name, source))
}

/// A missing key: lookups report `KeyNotFound`, deletes a plain ENOENT.
pub(crate) fn is_not_found(error: &MapError) -> bool {
    matches!(error, MapError::KeyNotFound) || is_errno(error, libc::ENOENT)
}

fn is_errno(error: &MapError, errno: i32) -> bool {
    matches!(error, MapError::SyscallError(syscall) if syscall.io_error.raw_os_error() == Some(errno))
}

/// The pinned VIRTUAL -> REAL and REAL -> VIRTUAL maps, for addresses and for
/// port-scoped endpoints.
pub struct MappingTable {
    forward: AddressMap,
    reverse: AddressMap,
    port_forward: PortMap,
    port_reverse: PortMap,
    prefix_forward: PrefixMap,
    prefix_reverse: PrefixMap,
    in_use: Array<MapData, TablesInUse>,
    capacity: u32,
    /// The address maps again, for the batch commands aya's typed maps do not offer.
    forward_batch: MapData,
    reverse_batch: MapData,
}

/// What [`MappingTable::remove_mapping`] removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removed {
    /// A whole mapping, whose REAL this is.
    Mapping(IpAddr),
    /// Only a reverse entry REAL -> VIRTUAL, left by a command that was interrupted
    /// between its two map writes.
    Orphan(IpAddr),
}

/// The table as [`MappingTable::list`] reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Complete address mappings, ordered by VIRTUAL.
    pub mappings: Vec<Mapping>,
    /// Port-scoped mappings, consecutive ports merged into ranges.
    pub port_mappings: Vec<PortMapping>,
    /// Prefix mappings, ordered by VIRTUAL network.
    pub prefixes: Vec<PrefixMapping>,
    /// Reverse entries without their forward entry (from an interrupted command):
    /// ingress still rewrites REAL to VIRTUAL for them. `map del VIRTUAL` removes one.
    pub orphans: Vec<Mapping>,
}

/// One mapping in the written form, as `map list` and `stats` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub virtual_side: String,
    pub real_side: String,
    /// "address", "port" or "prefix".
    pub kind: &'static str,
}

/// The map keys of a listed mapping's entries, where its counters are.
enum EntryKeys {
    Address {
        virtual_addr: Addr,
        real_addr: Addr,
    },
    Prefix {
        virtual_net: Key<Addr>,
        real_net: Key<Addr>,
    },
    /// One (VIRTUAL, REAL) endpoint pair per port of the range.
    Ports(Vec<(Endpoint, Endpoint)>),
}

impl Listing {
    /// Address mappings first, then prefix and port-scoped ones, each in the written
    /// form. Orphans are not mappings and are left out.
    pub fn rows(&self) -> Vec<Row> {
        self.rows_with_keys().into_iter().map(|(row, _)| row).collect()
    }

    fn rows_with_keys(&self) -> Vec<(Row, EntryKeys)> {
        let mut rows: Vec<(Row, EntryKeys)> = self
            .mappings
            .iter()
            .map(|mapping| {
                let row = Row {
                    virtual_side: mapping.virtual_addr.to_string(),
                    real_side: mapping.real_addr.to_string(),
                    kind: "address",
                };
                let keys = EntryKeys::Address {
                    virtual_addr: mapping.virtual_addr.into(),
                    real_addr: mapping.real_addr.into(),
                };
                (row, keys)
            })
            .collect();
        for prefix in &self.prefixes {
            let key_len = PrefixMapping::key_len(prefix.virtual_net, prefix.len);
            let row = Row {
                virtual_side: format!("{}/{}", prefix.virtual_net, prefix.len),
                real_side: format!("{}/{}", prefix.real_net, prefix.len),
                kind: "prefix",
            };
            let keys = EntryKeys::Prefix {
                virtual_net: Key::new(key_len, prefix.virtual_net.into()),
                real_net: Key::new(key_len, prefix.real_net.into()),
            };
            rows.push((row, keys));
        }
        for mapping in &self.port_mappings {
            let (virtual_side, real_side) = port_sides(mapping);
            let row = Row { virtual_side, real_side, kind: "port" };
            rows.push((row, EntryKeys::Ports(port_endpoints(mapping).collect())));
        }
        rows
    }
}

/// The (VIRTUAL, REAL) endpoints of each port of a port-scoped mapping, as the port maps
/// key them.
fn port_endpoints(mapping: &PortMapping) -> impl Iterator<Item = (Endpoint, Endpoint)> + '_ {
    mapping.ports().map(|(virtual_port, real_port)| {
        (
            Endpoint::new(Addr::from(mapping.virtual_addr), virtual_port.to_be_bytes(), mapping.protocol),
            Endpoint::new(Addr::from(mapping.real_addr), real_port.to_be_bytes(), mapping.protocol),
        )
    })
}

/// One mapping, as listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Mapping {
    #[serde(rename = "virtual")]
    pub virtual_addr: IpAddr,
    #[serde(rename = "real")]
    pub real_addr: IpAddr,
}

impl std::fmt::Debug for MappingTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappingTable").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

impl MappingTable {
    pub fn open(pins: &PinLayout) -> Result<Self, Error> {
        let forward = AddressMap::try_from(open_pinned(pins, MAP_ADDR_FORWARD)?)
            .map_err(|source| Error::map(MAP_ADDR_FORWARD, source))?;
        let reverse = AddressMap::try_from(open_pinned(pins, MAP_ADDR_REVERSE)?)
            .map_err(|source| Error::map(MAP_ADDR_REVERSE, source))?;
        let port_forward = PortMap::try_from(open_pinned(pins, MAP_PORT_FORWARD)?)
            .map_err(|source| Error::map(MAP_PORT_FORWARD, source))?;
        let port_reverse = PortMap::try_from(open_pinned(pins, MAP_PORT_REVERSE)?)
            .map_err(|source| Error::map(MAP_PORT_REVERSE, source))?;
        let path = pins.map(MAP_ADDR_FORWARD);
        let capacity = MapData::from_pin(&path)
            .and_then(|data| data.info())
            .map_err(|source| Error::map(MAP_ADDR_FORWARD, source))?
            .max_entries();
        let prefix_forward = PrefixMap::try_from(open_pinned(pins, MAP_PREFIX_FORWARD)?)
            .map_err(|source| Error::map(MAP_PREFIX_FORWARD, source))?;
        let prefix_reverse = PrefixMap::try_from(open_pinned(pins, MAP_PREFIX_REVERSE)?)
            .map_err(|source| Error::map(MAP_PREFIX_REVERSE, source))?;
        let in_use = Array::try_from(open_pinned(pins, MAP_TABLES_IN_USE)?)
            .map_err(|source| Error::map(MAP_TABLES_IN_USE, source))?;
        let batch_handle =
            |name: &'static str| MapData::from_pin(pins.map(name)).map_err(|source| Error::map(name, source));
        Ok(Self {
            forward,
            reverse,
            port_forward,
            port_reverse,
            prefix_forward,
            prefix_reverse,
            in_use,
            capacity,
            forward_batch: batch_handle(MAP_ADDR_FORWARD)?,
            reverse_batch: batch_handle(MAP_ADDR_REVERSE)?,
        })
    }

    /// Updates the flags that let the programs skip empty tables. Call with `true`
    /// before inserting a table's first entry, with `false` after removing its last.
    fn mark_in_use(&mut self, ports: Option<bool>, prefixes: Option<bool>) -> Result<(), Error> {
        let mut flags = self.in_use.get(&0, 0).map_err(|source| Error::map(MAP_TABLES_IN_USE, source))?;
        if let Some(ports) = ports {
            flags.ports = u32::from(ports);
        }
        if let Some(prefixes) = prefixes {
            flags.prefixes = u32::from(prefixes);
        }
        self.in_use.set(0, flags, 0).map_err(|source| Error::map(MAP_TABLES_IN_USE, source))
    }

    /// After a removal: clears the flags of tables that are now empty.
    fn unmark_empty(&mut self) -> Result<(), Error> {
        let ports_empty = self.port_forward.keys().next().is_none() && self.port_reverse.keys().next().is_none();
        let prefixes_empty = self.prefix_forward.keys().next().is_none() && self.prefix_reverse.keys().next().is_none();
        self.mark_in_use(ports_empty.then_some(false), prefixes_empty.then_some(false))
    }

    /// The REAL that VIRTUAL `virtual_addr` is sent to by an address mapping, if any:
    /// one map lookup.
    pub fn real_of(&self, virtual_addr: IpAddr) -> Result<Option<IpAddr>, Error> {
        match self.forward.get(&Addr::from(virtual_addr), 0) {
            Ok(entry) => Ok(Some(IpAddr::from(entry.addr))),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(source) => Err(Error::map(MAP_ADDR_FORWARD, source)),
        }
    }

    /// How many mappings the maps can hold.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    fn get(map: &AddressMap, name: &'static str, addr: IpAddr) -> Result<Option<IpAddr>, Error> {
        match map.get(&Addr::from(addr), 0) {
            Ok(entry) => Ok(Some(entry.addr.into())),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(source) => Err(Error::map(name, source)),
        }
    }

    /// The counters of an address entry, zero if it is gone.
    fn counts_of(map: &AddressMap, name: &'static str, key: IpAddr) -> Result<Counts, Error> {
        match map.get(&Addr::from(key), 0) {
            Ok(entry) => Ok(entry.counts),
            Err(error) if is_not_found(&error) => Ok(Counts::default()),
            Err(source) => Err(Error::map(name, source)),
        }
    }

    fn insert(&mut self, forward: bool, key: IpAddr, value: IpAddr, flags: u64) -> Result<(), MapError> {
        self.insert_counted(forward, key, value, Counts::default(), flags)
    }

    fn insert_counted(
        &mut self,
        forward: bool,
        key: IpAddr,
        value: IpAddr,
        counts: Counts,
        flags: u64,
    ) -> Result<(), MapError> {
        let map = if forward { &mut self.forward } else { &mut self.reverse };
        map.insert(Addr::from(key), AddressEntry { addr: Addr::from(value), counts }, flags)
    }

    fn remove(map: &mut AddressMap, name: &'static str, key: IpAddr) -> Result<(), Error> {
        match map.remove(&Addr::from(key)) {
            Ok(()) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(source) => Err(Error::map(name, source)),
        }
    }

    fn insert_error(&self, name: &'static str, error: MapError) -> Error {
        if is_errno(&error, libc::E2BIG) || is_errno(&error, libc::ENOMEM) {
            Error::TableFull { capacity: self.capacity }
        } else {
            Error::map(name, error)
        }
    }

    /// Adds or retargets `virtual_addr -> real_addr`. Takes effect for the next packet.
    pub fn add(&mut self, virtual_addr: IpAddr, real_addr: IpAddr) -> Result<AddPlan, Error> {
        let conflict = |conflict| Error::Conflict { mapping: format!("{virtual_addr} -> {real_addr}"), conflict };
        let plan = {
            let view = LiveView::new(self);
            let plan = plan_add(&view, virtual_addr, real_addr);
            if let Some(error) = view.take_error() {
                return Err(error);
            }
            plan.map_err(conflict)?
        };
        self.add_planned(virtual_addr, real_addr, plan)
    }

    /// Writes `virtual_addr -> real_addr` as `plan` says, without checking it against
    /// the live table: for callers that checked the whole change on a model first
    /// (`apply`). Reading the table for each of 10,000 mappings would make a bulk
    /// apply quadratic. REAL's uniqueness is still enforced by the map (NOEXIST).
    pub fn add_planned(&mut self, virtual_addr: IpAddr, real_addr: IpAddr, plan: AddPlan) -> Result<AddPlan, Error> {
        let conflict = |conflict| Error::Conflict { mapping: format!("{virtual_addr} -> {real_addr}"), conflict };
        if plan == AddPlan::Unchanged {
            return Ok(plan);
        }
        // The plan ignores half-applied reverse entries; one sitting on REAL or VIRTUAL
        // is garbage from an interrupted command, and this add clears it.
        for orphan in [real_addr, virtual_addr] {
            if Self::get(&self.reverse, MAP_ADDR_REVERSE, orphan)?.is_some() {
                Self::remove(&mut self.reverse, MAP_ADDR_REVERSE, orphan)?;
            }
        }
        // A retargeted mapping keeps its counters: they move to its new entries. (The
        // packets counted between this read and the writes below are lost from them.)
        let (ingress, egress) = match plan {
            AddPlan::Replace { old_real } => (
                Self::counts_of(&self.reverse, MAP_ADDR_REVERSE, old_real)?,
                Self::counts_of(&self.forward, MAP_ADDR_FORWARD, virtual_addr)?,
            ),
            _ => (Counts::default(), Counts::default()),
        };
        // NOEXIST makes the uniqueness of REAL atomic against a concurrent `map add`.
        if let Err(error) = self.insert_counted(false, real_addr, virtual_addr, ingress, BPF_NOEXIST) {
            if is_errno(&error, libc::EEXIST) {
                let existing_virtual = Self::get(&self.reverse, MAP_ADDR_REVERSE, real_addr)?
                    .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
                return Err(conflict(MappingConflict::RealTaken { real: real_addr, existing_virtual }));
            }
            return Err(self.insert_error(MAP_ADDR_REVERSE, error));
        }
        let forward_flags = if matches!(plan, AddPlan::Replace { .. }) { BPF_EXIST } else { BPF_NOEXIST };
        if let Err(error) = self.insert_counted(true, virtual_addr, real_addr, egress, forward_flags) {
            // Roll back, so a failed add leaves the table as it was. Should even that
            // fail, the original error is the one to report; the reverse entry left
            // behind shows in `map list` and goes with `map del`.
            let _ = Self::remove(&mut self.reverse, MAP_ADDR_REVERSE, real_addr);
            return Err(self.insert_error(MAP_ADDR_FORWARD, error));
        }
        if let AddPlan::Replace { old_real } = plan {
            Self::remove(&mut self.reverse, MAP_ADDR_REVERSE, old_real)?;
        }
        Ok(plan)
    }

    /// Removes the mapping of `virtual_addr` (forward entry first, so no packet is
    /// sent to REAL whose reply would not be restored), or, when only a half-applied
    /// reverse entry for it is left, that entry.
    pub fn remove_mapping(&mut self, virtual_addr: IpAddr) -> Result<Removed, Error> {
        if let Some(real_addr) = Self::get(&self.forward, MAP_ADDR_FORWARD, virtual_addr)? {
            Self::remove(&mut self.forward, MAP_ADDR_FORWARD, virtual_addr)?;
            Self::remove(&mut self.reverse, MAP_ADDR_REVERSE, real_addr)?;
            return Ok(Removed::Mapping(real_addr));
        }
        let orphan = self.list()?.orphans.into_iter().find(|orphan| orphan.virtual_addr == virtual_addr);
        let orphan = orphan.ok_or_else(|| Error::NoSuchMapping { virtual_side: virtual_addr.to_string() })?;
        Self::remove(&mut self.reverse, MAP_ADDR_REVERSE, orphan.real_addr)?;
        Ok(Removed::Orphan(orphan.real_addr))
    }

    /// Every mapping, ordered by VIRTUAL, and any half-applied reverse entries.
    pub fn list(&self) -> Result<Listing, Error> {
        let mut listing = Listing::default();
        for entry in self.forward.iter() {
            let (key, value) = entry.map_err(|source| Error::map(MAP_ADDR_FORWARD, source))?;
            listing.mappings.push(Mapping { virtual_addr: key.into(), real_addr: value.addr.into() });
        }
        listing.mappings.sort();
        for entry in self.reverse.iter() {
            let (key, value) = entry.map_err(|source| Error::map(MAP_ADDR_REVERSE, source))?;
            let entry = Mapping { virtual_addr: value.addr.into(), real_addr: key.into() };
            if listing.mappings.binary_search(&entry).is_err() {
                listing.orphans.push(entry);
            }
        }
        listing.orphans.sort();
        listing.prefixes = self.read_prefixes()?;
        let mut entries = Vec::new();
        for entry in self.port_forward.iter() {
            let (key, value) = entry.map_err(|source| Error::map(MAP_PORT_FORWARD, source))?;
            entries.push(PortMapping {
                protocol: key.protocol,
                virtual_addr: key.addr.into(),
                virtual_first: u16::from_be_bytes(key.port),
                real_addr: value.endpoint.addr.into(),
                real_first: u16::from_be_bytes(value.endpoint.port),
                count: 1,
            });
        }
        listing.port_mappings = merge_port_runs(entries);
        Ok(listing)
    }

    /// Each listed mapping's counters, in the order of [`Listing::rows`]: its reverse
    /// entries' counts as ingress, its forward entries' as egress. Reads each map once.
    pub fn counters(&self, listing: &Listing) -> Result<Vec<(Row, MappingStats)>, Error> {
        fn collect<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
            map: &HashMap<MapData, K, V>,
            name: &'static str,
            counts: impl Fn(&V) -> Counts,
        ) -> Result<std::collections::HashMap<K, Counts>, Error> {
            map.iter()
                .map(|entry| entry.map(|(key, value)| (key, counts(&value))).map_err(|source| Error::map(name, source)))
                .collect()
        }
        let forward = collect(&self.forward, MAP_ADDR_FORWARD, |entry: &AddressEntry| entry.counts)?;
        let reverse = collect(&self.reverse, MAP_ADDR_REVERSE, |entry: &AddressEntry| entry.counts)?;
        let port_forward = collect(&self.port_forward, MAP_PORT_FORWARD, |entry: &EndpointEntry| entry.counts)?;
        let port_reverse = collect(&self.port_reverse, MAP_PORT_REVERSE, |entry: &EndpointEntry| entry.counts)?;
        let prefix_counts = |trie: &PrefixMap, name, key: &Key<Addr>| match trie.get(key, 0) {
            Ok(entry) => Ok(entry.counts),
            Err(error) if is_not_found(&error) => Ok(Counts::default()),
            Err(source) => Err(Error::map(name, source)),
        };
        let mut rows = Vec::new();
        for (row, keys) in listing.rows_with_keys() {
            let stats = match keys {
                EntryKeys::Address { virtual_addr, real_addr } => MappingStats::from_entries(
                    reverse.get(&real_addr).copied().unwrap_or_default(),
                    forward.get(&virtual_addr).copied().unwrap_or_default(),
                ),
                EntryKeys::Prefix { virtual_net, real_net } => MappingStats::from_entries(
                    prefix_counts(&self.prefix_reverse, MAP_PREFIX_REVERSE, &real_net)?,
                    prefix_counts(&self.prefix_forward, MAP_PREFIX_FORWARD, &virtual_net)?,
                ),
                EntryKeys::Ports(endpoints) => {
                    let per_port: Vec<MappingStats> = endpoints
                        .iter()
                        .map(|(virtual_endpoint, real_endpoint)| {
                            MappingStats::from_entries(
                                port_reverse.get(real_endpoint).copied().unwrap_or_default(),
                                port_forward.get(virtual_endpoint).copied().unwrap_or_default(),
                            )
                        })
                        .collect();
                    MappingStats::sum(&per_port)
                }
            };
            rows.push((row, stats));
        }
        Ok(rows)
    }

    /// Every prefix mapping, read from the forward trie.
    fn read_prefixes(&self) -> Result<Vec<PrefixMapping>, Error> {
        let mut prefixes = Vec::new();
        for entry in self.prefix_forward.iter() {
            let (key, entry) = entry.map_err(|source| Error::map(MAP_PREFIX_FORWARD, source))?;
            let target = entry.target;
            let virtual_net = IpAddr::from(key.data());
            let family_bits = if virtual_net.is_ipv4() { 96 } else { 0 };
            let len = u8::try_from(key.prefix_len() - family_bits).unwrap_or(u8::MAX);
            prefixes.push(PrefixMapping { virtual_net, real_net: IpAddr::from(target.network), len });
        }
        prefixes.sort();
        Ok(prefixes)
    }

    /// Adds a prefix mapping: reverse trie entry first, then forward.
    pub fn add_prefix(&mut self, mapping: &PrefixMapping) -> Result<AddPlan, Error> {
        let plan = {
            let view = LiveView::new(self);
            let plan = plan_add_prefix(&view, mapping);
            if let Some(error) = view.take_error() {
                return Err(error);
            }
            let describe = || format!("{0}/{2} -> {1}/{2}", mapping.virtual_net, mapping.real_net, mapping.len);
            plan.map_err(|conflict| Error::Conflict { mapping: describe(), conflict })?
        };
        if plan == AddPlan::Unchanged {
            return Ok(plan);
        }
        let key_len = PrefixMapping::key_len(mapping.virtual_net, mapping.len);
        let (virtual_net, real_net) = (Addr::from(mapping.virtual_net), Addr::from(mapping.real_net));
        let reverse_key = Key::new(key_len, real_net);
        let forward_key = Key::new(key_len, virtual_net);
        let full = |error: MapError, name| {
            if is_errno(&error, libc::ENOSPC) || is_errno(&error, libc::E2BIG) {
                Error::PrefixTableFull { capacity: rewrite_common::maps::MAX_PREFIX_MAPPINGS }
            } else {
                Error::map(name, error)
            }
        };
        self.mark_in_use(None, Some(true))?;
        let reverse_value = PrefixTarget { network: virtual_net, prefix_len: key_len };
        match self.prefix_reverse.insert(&reverse_key, PrefixEntry::new(reverse_value), BPF_NOEXIST) {
            Ok(()) => {}
            // Left by an add interrupted before its forward entry: this add completes it.
            Err(error)
                if is_errno(&error, libc::EEXIST)
                    && self.prefix_reverse.get(&reverse_key, 0).is_ok_and(|entry| entry.target == reverse_value) => {}
            Err(error) => return Err(full(error, MAP_PREFIX_REVERSE)),
        }
        if let Err(error) = self.prefix_forward.insert(
            &forward_key,
            PrefixEntry::new(PrefixTarget { network: real_net, prefix_len: key_len }),
            BPF_NOEXIST,
        ) {
            let _ = self.prefix_reverse.remove(&reverse_key);
            return Err(full(error, MAP_PREFIX_FORWARD));
        }
        Ok(plan)
    }

    /// Removes the prefix mapping of `net/len` (forward first) and returns its REAL
    /// network.
    pub fn remove_prefix(&mut self, net: IpAddr, len: u8) -> Result<IpAddr, Error> {
        let key_len = PrefixMapping::key_len(net, len);
        let forward_key = Key::new(key_len, Addr::from(net));
        let target = match self.prefix_forward.get(&forward_key, 0) {
            Ok(entry) => entry.target,
            Err(error) if is_not_found(&error) => {
                return Err(Error::NoSuchMapping { virtual_side: format!("{net}/{len}") });
            }
            Err(source) => return Err(Error::map(MAP_PREFIX_FORWARD, source)),
        };
        self.prefix_forward.remove(&forward_key).map_err(|source| Error::map(MAP_PREFIX_FORWARD, source))?;
        match self.prefix_reverse.remove(&Key::new(key_len, target.network)) {
            Ok(()) => {}
            Err(error) if is_not_found(&error) => {}
            Err(source) => return Err(Error::map(MAP_PREFIX_REVERSE, source)),
        }
        self.unmark_empty()?;
        Ok(IpAddr::from(target.network))
    }

    /// Adds a port-scoped mapping (every port of its range). Reverse entries go in
    /// before forward ones; on failure the entries this call added are removed again.
    pub fn add_ports(&mut self, mapping: &PortMapping) -> Result<AddPlan, Error> {
        let plan = {
            let view = LiveView::new(self);
            let plan = plan_add_ports(&view, mapping);
            if let Some(error) = view.take_error() {
                return Err(error);
            }
            plan.map_err(|conflict| Error::Conflict { mapping: describe_ports(mapping), conflict })?
        };
        if plan == AddPlan::Unchanged {
            return Ok(plan);
        }
        let endpoints: Vec<(Endpoint, Endpoint)> = port_endpoints(mapping).collect();
        self.mark_in_use(Some(true), None)?;
        let mut added_reverse = Vec::new();
        let mut added_forward = Vec::new();
        let mut result = Ok(());
        for (virtual_endpoint, real_endpoint) in &endpoints {
            match self.port_reverse.insert(real_endpoint, EndpointEntry::new(*virtual_endpoint), BPF_NOEXIST) {
                Ok(()) => added_reverse.push(*real_endpoint),
                // Already there, the same way (the plan checked): leave it.
                Err(error) if is_errno(&error, libc::EEXIST) => {}
                Err(error) => {
                    result = Err(self.insert_error(MAP_PORT_REVERSE, error));
                    break;
                }
            }
        }
        if result.is_ok() {
            for (virtual_endpoint, real_endpoint) in &endpoints {
                match self.port_forward.insert(virtual_endpoint, EndpointEntry::new(*real_endpoint), BPF_NOEXIST) {
                    Ok(()) => added_forward.push(*virtual_endpoint),
                    Err(error) if is_errno(&error, libc::EEXIST) => {}
                    Err(error) => {
                        result = Err(self.insert_error(MAP_PORT_FORWARD, error));
                        break;
                    }
                }
            }
        }
        if let Err(error) = result {
            // Forward entries out first, as in a delete.
            for endpoint in added_forward {
                let _ = self.port_forward.remove(&endpoint);
            }
            for endpoint in added_reverse {
                let _ = self.port_reverse.remove(&endpoint);
            }
            return Err(error);
        }
        Ok(plan)
    }

    /// Removes the port-scoped entries of `protocol` on `virtual_addr` from `first` to
    /// `last`, forward entry first. Returns how many ports were mapped.
    pub fn remove_ports(&mut self, protocol: u8, virtual_addr: IpAddr, first: u16, last: u16) -> Result<usize, Error> {
        let mut removed = 0;
        for port in first..=last {
            let key = Endpoint::new(Addr::from(virtual_addr), port.to_be_bytes(), protocol);
            let real = match self.port_forward.get(&key, 0) {
                Ok(entry) => entry.endpoint,
                Err(error) if is_not_found(&error) => continue,
                Err(source) => return Err(Error::map(MAP_PORT_FORWARD, source)),
            };
            for (map, name, endpoint) in
                [(&mut self.port_forward, MAP_PORT_FORWARD, key), (&mut self.port_reverse, MAP_PORT_REVERSE, real)]
            {
                match map.remove(&endpoint) {
                    Ok(()) => {}
                    Err(error) if is_not_found(&error) => {}
                    Err(source) => return Err(Error::map(name, source)),
                }
            }
            removed += 1;
        }
        if removed == 0 {
            let side = Side::Service { addr: virtual_addr, first, last, protocol };
            return Err(Error::NoSuchMapping { virtual_side: side.to_string() });
        }
        self.unmark_empty()?;
        Ok(removed)
    }

    /// Inserts port-scoped mappings known to be new and valid, without the checks
    /// (benchmarks): reverse entries first. Stops at the first error.
    pub fn insert_ports_unchecked(&mut self, mappings: &[PortMapping]) -> Result<(), Error> {
        let endpoints: Vec<(Endpoint, Endpoint)> = mappings.iter().flat_map(port_endpoints).collect();
        self.mark_in_use(Some(true), None)?;
        for (virtual_endpoint, real_endpoint) in &endpoints {
            self.port_reverse
                .insert(real_endpoint, EndpointEntry::new(*virtual_endpoint), BPF_NOEXIST)
                .map_err(|error| self.insert_error(MAP_PORT_REVERSE, error))?;
        }
        for (virtual_endpoint, real_endpoint) in &endpoints {
            self.port_forward
                .insert(virtual_endpoint, EndpointEntry::new(*real_endpoint), BPF_NOEXIST)
                .map_err(|error| self.insert_error(MAP_PORT_FORWARD, error))?;
        }
        Ok(())
    }

    /// Inserts a prefix mapping without the checks (benchmarks).
    pub fn insert_prefix_unchecked(&mut self, mapping: &PrefixMapping) -> Result<(), Error> {
        let key_len = PrefixMapping::key_len(mapping.virtual_net, mapping.len);
        let (virtual_net, real_net) = (Addr::from(mapping.virtual_net), Addr::from(mapping.real_net));
        self.mark_in_use(None, Some(true))?;
        self.prefix_reverse
            .insert(
                &Key::new(key_len, real_net),
                PrefixEntry::new(PrefixTarget { network: virtual_net, prefix_len: key_len }),
                BPF_NOEXIST,
            )
            .map_err(|source| Error::map(MAP_PREFIX_REVERSE, source))?;
        self.prefix_forward
            .insert(
                &Key::new(key_len, virtual_net),
                PrefixEntry::new(PrefixTarget { network: real_net, prefix_len: key_len }),
                BPF_NOEXIST,
            )
            .map_err(|source| Error::map(MAP_PREFIX_FORWARD, source))
    }

    /// Adds many address mappings that were checked beforehand (as `apply` checks a
    /// whole config on its model): every reverse entry first, then every forward entry,
    /// so no packet is sent to a REAL whose reply would not be restored. Each entry is
    /// written with BPF_NOEXIST, so an entry that exists after all (another writer, a
    /// model that went wrong) is an error naming it, never silently re-pointed; batch
    /// updates cannot refuse an existing key (the kernel allows only BPF_F_LOCK per
    /// element), which is why these are written one by one.
    pub fn insert_new_many(&mut self, mappings: &[Mapping]) -> Result<(), Error> {
        for mapping in mappings {
            self.insert(false, mapping.real_addr, mapping.virtual_addr, BPF_NOEXIST)
                .map_err(|error| self.insert_error(MAP_ADDR_REVERSE, error))?;
        }
        for mapping in mappings {
            self.insert(true, mapping.virtual_addr, mapping.real_addr, BPF_NOEXIST)
                .map_err(|error| self.insert_error(MAP_ADDR_FORWARD, error))?;
        }
        Ok(())
    }

    /// Removes many address mappings with batch deletes: every forward entry first,
    /// then every reverse entry.
    pub fn remove_batch(&mut self, mappings: &[Mapping]) -> Result<(), Error> {
        let virtuals: Vec<Addr> = mappings.iter().map(|mapping| Addr::from(mapping.virtual_addr)).collect();
        let reals: Vec<Addr> = mappings.iter().map(|mapping| Addr::from(mapping.real_addr)).collect();
        crate::batch::delete(&self.forward_batch, &virtuals)
            .map_err(|error| self.batch_error(MAP_ADDR_FORWARD, error))?;
        crate::batch::delete(&self.reverse_batch, &reals).map_err(|error| self.batch_error(MAP_ADDR_REVERSE, error))
    }

    fn batch_error(&self, map: &'static str, error: crate::batch::BatchError) -> Error {
        match error.source.raw_os_error() {
            Some(libc::E2BIG | libc::ENOMEM) => Error::TableFull { capacity: self.capacity },
            _ => Error::Batch { map, done: error.done, source: error.source },
        }
    }

    /// Inserts many mappings that are known to be new and valid, without the table's
    /// checks (benchmarks), reverse entries first. The kernel still refuses an existing
    /// key (BPF_NOEXIST). Stops at the first error.
    pub fn insert_new_unchecked(&mut self, mappings: &[Mapping]) -> Result<(), Error> {
        self.insert_new_many(mappings)
    }
}

/// [`MappingView`] over the live maps. The trait is infallible, so a lookup error is
/// kept aside and reported after the plan is made.
struct LiveView<'a> {
    table: &'a MappingTable,
    error: std::cell::Cell<Option<Error>>,
    /// The addresses used by port-scoped mappings, read once: those maps hold a few
    /// services' ports, and the checks ask about addresses, which are not their keys.
    port_virtual_addrs: HashSet<IpAddr>,
    port_real_addrs: HashSet<IpAddr>,
    prefixes: Vec<PrefixMapping>,
}

impl<'a> LiveView<'a> {
    fn new(table: &'a MappingTable) -> Self {
        let view = Self {
            table,
            error: std::cell::Cell::new(None),
            port_virtual_addrs: HashSet::new(),
            port_real_addrs: HashSet::new(),
            prefixes: Vec::new(),
        };
        let prefixes = table.read_prefixes().unwrap_or_else(|error| {
            view.error.set(Some(error));
            Vec::new()
        });
        let mut virtual_addrs = HashSet::new();
        let mut real_addrs = HashSet::new();
        for entry in table.port_forward.keys() {
            match entry {
                Ok(virtual_endpoint) => {
                    virtual_addrs.insert(IpAddr::from(virtual_endpoint.addr));
                }
                Err(source) => view.error.set(Some(Error::map(MAP_PORT_FORWARD, source))),
            }
        }
        // REAL endpoints from the reverse map, so that a half-applied entry left there
        // still keeps its REAL from being given to another mapping.
        for entry in table.port_reverse.keys() {
            match entry {
                Ok(real_endpoint) => {
                    real_addrs.insert(IpAddr::from(real_endpoint.addr));
                }
                Err(source) => view.error.set(Some(Error::map(MAP_PORT_REVERSE, source))),
            }
        }
        Self { port_virtual_addrs: virtual_addrs, port_real_addrs: real_addrs, prefixes, ..view }
    }

    fn port_lookup(
        &self,
        map: &PortMap,
        name: &'static str,
        protocol: u8,
        addr: IpAddr,
        port: u16,
    ) -> Option<(IpAddr, u16)> {
        let key = Endpoint::new(Addr::from(addr), port.to_be_bytes(), protocol);
        match map.get(&key, 0) {
            Ok(found) => Some((found.endpoint.addr.into(), u16::from_be_bytes(found.endpoint.port))),
            Err(error) if is_not_found(&error) => None,
            Err(source) => {
                self.error.set(Some(Error::map(name, source)));
                None
            }
        }
    }

    fn take_error(&self) -> Option<Error> {
        self.error.take()
    }

    fn lookup(&self, map: &AddressMap, name: &'static str, addr: IpAddr) -> Option<IpAddr> {
        MappingTable::get(map, name, addr).unwrap_or_else(|error| {
            self.error.set(Some(error));
            None
        })
    }
}

impl MappingView for LiveView<'_> {
    fn real_of(&self, virtual_addr: IpAddr) -> Option<IpAddr> {
        self.lookup(&self.table.forward, MAP_ADDR_FORWARD, virtual_addr)
    }
    /// Only a complete mapping owns REAL: a reverse entry whose forward entry is gone
    /// or points elsewhere is left over from an interrupted command.
    fn virtual_of(&self, real_addr: IpAddr) -> Option<IpAddr> {
        let virtual_addr = self.lookup(&self.table.reverse, MAP_ADDR_REVERSE, real_addr)?;
        (self.real_of(virtual_addr) == Some(real_addr)).then_some(virtual_addr)
    }
    fn port_real_of(&self, protocol: u8, virtual_addr: IpAddr, port: u16) -> Option<(IpAddr, u16)> {
        self.port_lookup(&self.table.port_forward, MAP_PORT_FORWARD, protocol, virtual_addr, port)
    }
    fn port_virtual_of(&self, protocol: u8, real_addr: IpAddr, port: u16) -> Option<(IpAddr, u16)> {
        self.port_lookup(&self.table.port_reverse, MAP_PORT_REVERSE, protocol, real_addr, port)
    }
    fn is_port_real(&self, addr: IpAddr) -> bool {
        self.port_real_addrs.contains(&addr)
    }
    fn is_port_virtual(&self, addr: IpAddr) -> bool {
        self.port_virtual_addrs.contains(&addr)
    }
    fn prefixes(&self) -> Vec<PrefixMapping> {
        self.prefixes.clone()
    }
    /// Scans the address map of that side: prefix mappings are added rarely, and the
    /// maps have no index by network.
    fn address_in(&self, net: IpAddr, len: u8, real_side: bool) -> Option<IpAddr> {
        let (map, name, ports) = if real_side {
            (&self.table.reverse, MAP_ADDR_REVERSE, &self.port_real_addrs)
        } else {
            (&self.table.forward, MAP_ADDR_FORWARD, &self.port_virtual_addrs)
        };
        if let Some(addr) = ports.iter().find(|addr| in_prefix(**addr, net, len)) {
            return Some(*addr);
        }
        for key in map.keys() {
            match key {
                Ok(key) if in_prefix(IpAddr::from(key), net, len) => return Some(IpAddr::from(key)),
                Ok(_) => {}
                Err(source) => {
                    self.error.set(Some(Error::map(name, source)));
                    return None;
                }
            }
        }
        None
    }
}

/// Port-scoped mappings in their canonical form, as `map list` shows them: every port
/// on its own, then runs of consecutive ports that move together merged into one range.
pub fn merge_port_runs(mappings: impl IntoIterator<Item = PortMapping>) -> Vec<PortMapping> {
    let mut single: Vec<PortMapping> = mappings
        .into_iter()
        .flat_map(|mapping| {
            mapping.ports().map(move |(virtual_first, real_first)| PortMapping {
                virtual_first,
                real_first,
                count: 1,
                ..mapping
            })
        })
        .collect();
    single.sort();
    let mut merged: Vec<PortMapping> = Vec::new();
    for entry in single {
        if let Some(last) = merged.last_mut()
            && (last.protocol, last.virtual_addr, last.real_addr)
                == (entry.protocol, entry.virtual_addr, entry.real_addr)
            && u32::from(last.virtual_first) + u32::from(last.count) == u32::from(entry.virtual_first)
            && u32::from(last.real_first) + u32::from(last.count) == u32::from(entry.real_first)
        {
            last.count += 1;
            continue;
        }
        merged.push(entry);
    }
    merged
}

/// `VIRTUAL -> REAL` of a port-scoped mapping in the written form.
pub fn describe_ports(mapping: &PortMapping) -> String {
    let (virtual_side, real_side) = port_sides(mapping);
    format!("{virtual_side} -> {real_side}")
}

/// The VIRTUAL and REAL sides of a port-scoped mapping in the written form.
pub fn port_sides(mapping: &PortMapping) -> (String, String) {
    let last = |first: u16| first.saturating_add(mapping.count - 1);
    let side = |addr, first| Side::Service { addr, first, last: last(first), protocol: mapping.protocol };
    (
        side(mapping.virtual_addr, mapping.virtual_first).to_string(),
        side(mapping.real_addr, mapping.real_first).to_string(),
    )
}
