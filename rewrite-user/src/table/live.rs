//! The live mapping table in the pinned maps, edited in an order that never lets a
//! packet see half a mapping: the reverse entry (REAL -> VIRTUAL) goes in before the
//! forward one and comes out after it, so a reply is always recognised once requests
//! can be sent to REAL.

use std::net::IpAddr;

use aya::maps::{Array, HashMap, MapData, MapError, lpm_trie::LpmTrie};
use rewrite_common::{
    counters,
    filter::{ADDRESS_KEYS, MAP_ADDR_FILTER, PORT_KEYS},
    mapping::{AddressMapping, PortMapping, PrefixMapping},
    maps::{
        Addr, AddressEntry, Counts, Endpoint, EndpointEntry, MAP_ADDR_FORWARD, MAP_ADDR_REVERSE, MAP_PORT_FORWARD,
        MAP_PORT_REVERSE, MAP_PREFIX_FORWARD, MAP_PREFIX_REVERSE, MAP_TABLES_IN_USE, MAX_PREFIX_MAPPINGS, PrefixEntry,
        PrefixTarget, TablesInUse, trie_key,
    },
    ports::PortRange,
    protocol::Protocol,
    spec::{MappingSpec, Side},
    validate::{AddPlan, MappingConflict},
};

use crate::{
    Error,
    dataplane::{
        batch::{self, BatchError},
        filter::{self, AddressFilter, FilterKey},
        objects::{is_errno, is_not_found, open_pinned, table_capacity},
        pins::PinLayout,
    },
};

/// `BPF_NOEXIST` and `BPF_EXIST` update flags (`BPF_ANY`, which replaces an existing
/// entry silently, is used nowhere).
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

pub(crate) type AddressMap = HashMap<MapData, Addr, AddressEntry>;
pub(crate) type PortMap = HashMap<MapData, Endpoint, EndpointEntry>;
pub(crate) type PrefixMap = LpmTrie<MapData, [u8; 16], PrefixEntry>;

/// The pinned VIRTUAL -> REAL and REAL -> VIRTUAL maps, for addresses and for
/// port-scoped endpoints.
pub struct MappingTable {
    pub(crate) forward: AddressMap,
    pub(crate) reverse: AddressMap,
    pub(crate) port_forward: PortMap,
    pub(crate) port_reverse: PortMap,
    pub(crate) prefix_forward: PrefixMap,
    pub(crate) prefix_reverse: PrefixMap,
    in_use: Array<MapData, TablesInUse>,
    /// The address filter, if the dataplane has one (a table created by an older build
    /// has none until a load of this build adds it).
    filter: Option<AddressFilter>,
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
        let capacity = table_capacity(pins)?;
        let prefix_forward = PrefixMap::try_from(open_pinned(pins, MAP_PREFIX_FORWARD)?)
            .map_err(|source| Error::map(MAP_PREFIX_FORWARD, source))?;
        let prefix_reverse = PrefixMap::try_from(open_pinned(pins, MAP_PREFIX_REVERSE)?)
            .map_err(|source| Error::map(MAP_PREFIX_REVERSE, source))?;
        let in_use = Array::try_from(open_pinned(pins, MAP_TABLES_IN_USE)?)
            .map_err(|source| Error::map(MAP_TABLES_IN_USE, source))?;
        let map_data =
            |name: &'static str| MapData::from_pin(pins.map(name)).map_err(|source| Error::map(name, source));
        let filter_pin = pins.map(MAP_ADDR_FILTER);
        let filter =
            if filter_pin.exists() { Some(AddressFilter::from_map_data(&map_data(MAP_ADDR_FILTER)?)?) } else { None };
        Ok(Self {
            forward,
            reverse,
            port_forward,
            port_reverse,
            prefix_forward,
            prefix_reverse,
            in_use,
            filter,
            capacity,
            forward_batch: map_data(MAP_ADDR_FORWARD)?,
            reverse_batch: map_data(MAP_ADDR_REVERSE)?,
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

    pub(crate) fn get(map: &AddressMap, name: &'static str, addr: IpAddr) -> Result<Option<IpAddr>, Error> {
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

    /// Sets the filter bit of an address about to be in a key of `direction`'s map of
    /// `kind` (before the insert, so that no program skips the entry).
    fn admit_to_filter(&self, direction: u32, kind: u32, addr: &Addr) {
        self.admit_key(FilterKey::Address { direction, kind, addr: *addr });
    }

    fn admit_key(&self, key: FilterKey) {
        if let Some(filter) = &self.filter {
            filter.admit(key);
        }
    }

    /// Sets the filter bits of a prefix mapping about to be inserted.
    fn admit_prefix(&self, virtual_net: Addr, real_net: Addr, prefix_len: u32) {
        self.admit_key(FilterKey::Prefix { direction: counters::EGRESS, network: virtual_net, prefix_len });
        self.admit_key(FilterKey::Prefix { direction: counters::INGRESS, network: real_net, prefix_len });
    }

    /// [`Self::admit_to_filter`] for the endpoints of port entries: forward keys (VIRTUAL) on
    /// egress, reverse keys (REAL) on ingress.
    fn admit_endpoints(&self, endpoints: &[(Endpoint, Endpoint)]) {
        for (virtual_endpoint, real_endpoint) in endpoints {
            self.admit_to_filter(counters::EGRESS, PORT_KEYS, &virtual_endpoint.addr);
            self.admit_to_filter(counters::INGRESS, PORT_KEYS, &real_endpoint.addr);
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
        self.admit_to_filter(
            if forward { counters::EGRESS } else { counters::INGRESS },
            ADDRESS_KEYS,
            &Addr::from(key),
        );
        let map = if forward { &mut self.forward } else { &mut self.reverse };
        map.insert(Addr::from(key), AddressEntry { addr: Addr::from(value), counts }, flags)
    }

    fn remove_key(map: &mut AddressMap, name: &'static str, key: IpAddr) -> Result<(), Error> {
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
                Self::remove_key(&mut self.reverse, MAP_ADDR_REVERSE, orphan)?;
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
            let _ = Self::remove_key(&mut self.reverse, MAP_ADDR_REVERSE, real_addr);
            return Err(self.insert_error(MAP_ADDR_FORWARD, error));
        }
        if let AddPlan::Replace { old_real } = plan {
            Self::remove_key(&mut self.reverse, MAP_ADDR_REVERSE, old_real)?;
        }
        Ok(plan)
    }

    /// Writes `spec` as the admission planned it (see [`MappingTable::admit`] and
    /// `table::plan`), without checking it against the table again: the kernel still
    /// refuses a key that exists (`BPF_NOEXIST`).
    pub fn write(&mut self, spec: &MappingSpec, plan: AddPlan) -> Result<AddPlan, Error> {
        match spec {
            MappingSpec::Address { virtual_addr, real_addr } => self.add_planned(*virtual_addr, *real_addr, plan),
            MappingSpec::Ports(mapping) => self.write_ports(mapping, plan),
            MappingSpec::Prefix(mapping) => self.write_prefix(mapping, plan),
        }
    }

    /// Removes the mapping of `spec`'s VIRTUAL side (forward entries first).
    pub fn remove(&mut self, spec: &MappingSpec) -> Result<(), Error> {
        match spec {
            MappingSpec::Address { virtual_addr, .. } => self.remove_mapping(*virtual_addr).map(drop),
            MappingSpec::Ports(mapping) => {
                self.remove_ports(mapping.protocol, mapping.virtual_addr, mapping.virtual_ports()).map(drop)
            }
            MappingSpec::Prefix(mapping) => self.remove_prefix(mapping.virtual_net, mapping.len).map(drop),
        }
    }

    /// Removes the mapping of `virtual_addr` (forward entry first, so no packet is
    /// sent to REAL whose reply would not be restored), or, when only a half-applied
    /// reverse entry for it is left, that entry.
    pub fn remove_mapping(&mut self, virtual_addr: IpAddr) -> Result<Removed, Error> {
        if let Some(real_addr) = Self::get(&self.forward, MAP_ADDR_FORWARD, virtual_addr)? {
            Self::remove_key(&mut self.forward, MAP_ADDR_FORWARD, virtual_addr)?;
            Self::remove_key(&mut self.reverse, MAP_ADDR_REVERSE, real_addr)?;
            return Ok(Removed::Mapping(real_addr));
        }
        let orphan = self.list()?.orphans.into_iter().find(|orphan| orphan.virtual_addr == virtual_addr);
        let orphan = orphan.ok_or_else(|| Error::NoSuchMapping { virtual_side: virtual_addr.to_string() })?;
        Self::remove_key(&mut self.reverse, MAP_ADDR_REVERSE, orphan.real_addr)?;
        Ok(Removed::Orphan(orphan.real_addr))
    }

    /// Writes a prefix mapping the table admitted (`plan`, see `admit`): reverse trie
    /// entry first, then forward.
    fn write_prefix(&mut self, mapping: &PrefixMapping, plan: AddPlan) -> Result<AddPlan, Error> {
        if plan == AddPlan::Unchanged {
            return Ok(plan);
        }
        let key_len = PrefixMapping::key_len(mapping.virtual_net, mapping.len);
        let (virtual_net, real_net) = (Addr::from(mapping.virtual_net), Addr::from(mapping.real_net));
        let reverse_key = trie_key(key_len, real_net);
        let forward_key = trie_key(key_len, virtual_net);
        let full = |error: MapError, name| {
            if is_errno(&error, libc::ENOSPC) || is_errno(&error, libc::E2BIG) {
                Error::PrefixTableFull { capacity: MAX_PREFIX_MAPPINGS }
            } else {
                Error::map(name, error)
            }
        };
        self.mark_in_use(None, Some(true))?;
        self.admit_prefix(virtual_net, real_net, key_len);
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
        let forward_key = trie_key(key_len, Addr::from(net));
        let target = match self.prefix_forward.get(&forward_key, 0) {
            Ok(entry) => entry.target,
            Err(error) if is_not_found(&error) => {
                return Err(Error::NoSuchMapping { virtual_side: format!("{net}/{len}") });
            }
            Err(source) => return Err(Error::map(MAP_PREFIX_FORWARD, source)),
        };
        self.prefix_forward.remove(&forward_key).map_err(|source| Error::map(MAP_PREFIX_FORWARD, source))?;
        match self.prefix_reverse.remove(&trie_key(key_len, target.network)) {
            Ok(()) => {}
            Err(error) if is_not_found(&error) => {}
            Err(source) => return Err(Error::map(MAP_PREFIX_REVERSE, source)),
        }
        self.unmark_empty()?;
        Ok(IpAddr::from(target.network))
    }

    /// Writes a port-scoped mapping the table admitted (every port of its range).
    /// Reverse entries go in before forward ones; on failure the entries this call added
    /// are removed again.
    fn write_ports(&mut self, mapping: &PortMapping, plan: AddPlan) -> Result<AddPlan, Error> {
        if plan == AddPlan::Unchanged {
            return Ok(plan);
        }
        let endpoints: Vec<(Endpoint, Endpoint)> = mapping.endpoints().collect();
        self.mark_in_use(Some(true), None)?;
        self.admit_endpoints(&endpoints);
        // Reverse entries first, so that ingress can restore whatever egress rewrites.
        let reverse = endpoints.iter().map(|(virtual_endpoint, real_endpoint)| (*real_endpoint, *virtual_endpoint));
        let (added_reverse, mut result) = insert_new(&mut self.port_reverse, reverse, MAP_PORT_REVERSE);
        let mut added_forward = Vec::new();
        if result.is_ok() {
            (added_forward, result) = insert_new(&mut self.port_forward, endpoints.iter().copied(), MAP_PORT_FORWARD);
        }
        let result = result.map_err(|(name, error)| self.insert_error(name, error));
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
    pub fn remove_ports(&mut self, protocol: Protocol, virtual_addr: IpAddr, ports: PortRange) -> Result<usize, Error> {
        let mut removed = 0;
        for port in ports.ports() {
            let key = Endpoint::new(Addr::from(virtual_addr), port.to_be_bytes(), protocol.number());
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
            let side = Side::Service { addr: virtual_addr, ports, protocol };
            return Err(Error::NoSuchMapping { virtual_side: side.to_string() });
        }
        self.unmark_empty()?;
        Ok(removed)
    }

    /// Inserts port-scoped mappings known to be new and valid, without the checks
    /// (benchmarks): reverse entries first. Stops at the first error.
    pub fn insert_ports_unchecked(&mut self, mappings: &[PortMapping]) -> Result<(), Error> {
        let endpoints: Vec<(Endpoint, Endpoint)> = mappings.iter().flat_map(PortMapping::endpoints).collect();
        self.mark_in_use(Some(true), None)?;
        self.admit_endpoints(&endpoints);
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
        self.admit_prefix(virtual_net, real_net, key_len);
        self.prefix_reverse
            .insert(
                &trie_key(key_len, real_net),
                PrefixEntry::new(PrefixTarget { network: virtual_net, prefix_len: key_len }),
                BPF_NOEXIST,
            )
            .map_err(|source| Error::map(MAP_PREFIX_REVERSE, source))?;
        self.prefix_forward
            .insert(
                &trie_key(key_len, virtual_net),
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
    pub fn insert_new_many(&mut self, mappings: &[AddressMapping]) -> Result<(), Error> {
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
    pub fn remove_batch(&mut self, mappings: &[AddressMapping]) -> Result<(), Error> {
        let virtuals: Vec<Addr> = mappings.iter().map(|mapping| Addr::from(mapping.virtual_addr)).collect();
        let reals: Vec<Addr> = mappings.iter().map(|mapping| Addr::from(mapping.real_addr)).collect();
        batch::delete(&self.forward_batch, &virtuals).map_err(|error| self.batch_error(MAP_ADDR_FORWARD, error))?;
        batch::delete(&self.reverse_batch, &reals).map_err(|error| self.batch_error(MAP_ADDR_REVERSE, error))?;
        if mappings.len() >= COMPACT_FILTER_AFTER {
            self.compact_filter()?;
        }
        Ok(())
    }

    /// Rebuilds the address filter from the maps, clearing the bits that removals left
    /// set (each costs a lookup that finds nothing). A whole rebuild reads every key of
    /// the table, so it follows large removals only (see [`COMPACT_FILTER_AFTER`]);
    /// smaller ones leave their bits until then.
    pub fn compact_filter(&self) -> Result<(), Error> {
        let Some(filter) = &self.filter else { return Ok(()) };
        let keys = filter::keys_of(
            [&self.forward, &self.reverse],
            [&self.port_forward, &self.port_reverse],
            [&self.prefix_forward, &self.prefix_reverse],
        )?;
        filter.rebuild(keys);
        Ok(())
    }

    fn batch_error(&self, map: &'static str, error: BatchError) -> Error {
        match error.source.raw_os_error() {
            Some(libc::E2BIG | libc::ENOMEM) => Error::TableFull { capacity: self.capacity },
            _ => Error::Batch { map, done: error.done, source: error.source },
        }
    }

    /// Inserts many mappings that are known to be new and valid, without the table's
    /// checks (benchmarks), reverse entries first. The kernel still refuses an existing
    /// key (BPF_NOEXIST). Stops at the first error.
    pub fn insert_new_unchecked(&mut self, mappings: &[AddressMapping]) -> Result<(), Error> {
        self.insert_new_many(mappings)
    }
}

/// Removals of at least this many address mappings at once rebuild the address filter.
/// The rebuild reads every key of the table, so it must not follow each small change:
/// an agent applies every fleet change as a plan, and a rebuild per change would make
/// each one cost as much as the whole table.
pub const COMPACT_FILTER_AFTER: usize = 1024;

/// Inserts each `key -> value` pair into `map` with `BPF_NOEXIST`, stopping at the first
/// error. A key already there is left alone: the plan checked it holds the same value.
/// Returns the keys this call added (for undoing them) and how it ended.
fn insert_new(
    map: &mut PortMap,
    pairs: impl Iterator<Item = (Endpoint, Endpoint)>,
    name: &'static str,
) -> (Vec<Endpoint>, Result<(), (&'static str, MapError)>) {
    let mut added = Vec::new();
    for (key, value) in pairs {
        match map.insert(key, EndpointEntry::new(value), BPF_NOEXIST) {
            Ok(()) => added.push(key),
            Err(error) if is_errno(&error, libc::EEXIST) => {}
            Err(error) => return (added, Err((name, error))),
        }
    }
    (added, Ok(()))
}
