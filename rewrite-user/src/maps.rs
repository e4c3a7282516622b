//! The live mapping table in the pinned maps, edited in an order that never lets a
//! packet see half a mapping: the reverse entry (REAL -> VIRTUAL) goes in before the
//! forward one and comes out after it, so a reply is always recognised once requests
//! can be sent to REAL.

use std::net::IpAddr;

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use rewrite_common::{
    counters::{self, DIRECTION_NAMES, OUTCOME_NAMES},
    mapping::{AddPlan, MappingConflict, MappingView, plan_add},
    maps::{Addr, MAP_ADDR_FORWARD, MAP_ADDR_REVERSE, MAP_COUNTERS},
};

use crate::{Error, pins::PinLayout};

/// `BPF_NOEXIST`, `BPF_EXIST` and `BPF_ANY` update flags.
const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

type AddressMap = HashMap<MapData, Addr, Addr>;

fn open_pinned(pins: &PinLayout, name: &'static str) -> Result<Map, Error> {
    let path = pins.map(name);
    if !path.exists() {
        return Err(Error::NotLoaded { path });
    }
    let data = MapData::from_pin(&path).map_err(|source| Error::map(name, source))?;
    Map::from_map_data(data).map_err(|source| Error::map(name, source))
}

/// A missing key: lookups report `KeyNotFound`, deletes a plain ENOENT.
fn is_not_found(error: &MapError) -> bool {
    matches!(error, MapError::KeyNotFound) || is_errno(error, libc::ENOENT)
}

fn is_errno(error: &MapError, errno: i32) -> bool {
    matches!(error, MapError::SyscallError(syscall) if syscall.io_error.raw_os_error() == Some(errno))
}

/// The pinned VIRTUAL -> REAL and REAL -> VIRTUAL maps.
#[derive(Debug)]
pub struct MappingTable {
    forward: AddressMap,
    reverse: AddressMap,
    capacity: u32,
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
    /// Complete mappings, ordered by VIRTUAL.
    pub mappings: Vec<Mapping>,
    /// Reverse entries without their forward entry (from an interrupted command):
    /// ingress still rewrites REAL to VIRTUAL for them. `map del VIRTUAL` removes one.
    pub orphans: Vec<Mapping>,
}

/// One mapping, as listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Mapping {
    #[serde(rename = "virtual")]
    pub virtual_addr: IpAddr,
    #[serde(rename = "real")]
    pub real_addr: IpAddr,
}

impl MappingTable {
    pub fn open(pins: &PinLayout) -> Result<Self, Error> {
        let forward = AddressMap::try_from(open_pinned(pins, MAP_ADDR_FORWARD)?)
            .map_err(|source| Error::map(MAP_ADDR_FORWARD, source))?;
        let reverse = AddressMap::try_from(open_pinned(pins, MAP_ADDR_REVERSE)?)
            .map_err(|source| Error::map(MAP_ADDR_REVERSE, source))?;
        let path = pins.map(MAP_ADDR_FORWARD);
        let capacity = MapData::from_pin(&path)
            .and_then(|data| data.info())
            .map_err(|source| Error::map(MAP_ADDR_FORWARD, source))?
            .max_entries();
        Ok(Self { forward, reverse, capacity })
    }

    /// How many mappings the maps can hold.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    fn get(map: &AddressMap, name: &'static str, addr: IpAddr) -> Result<Option<IpAddr>, Error> {
        match map.get(&Addr::from(addr), 0) {
            Ok(value) => Ok(Some(value.into())),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(source) => Err(Error::map(name, source)),
        }
    }

    fn insert(&mut self, forward: bool, key: IpAddr, value: IpAddr, flags: u64) -> Result<(), MapError> {
        let map = if forward { &mut self.forward } else { &mut self.reverse };
        map.insert(Addr::from(key), Addr::from(value), flags)
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
        let conflict = |conflict| Error::Conflict { virtual_addr, real_addr, conflict };
        let plan = {
            let view = LiveView::new(self);
            let plan = plan_add(&view, virtual_addr, real_addr);
            if let Some(error) = view.take_error() {
                return Err(error);
            }
            plan.map_err(conflict)?
        };
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
        // NOEXIST makes the uniqueness of REAL atomic against a concurrent `map add`.
        if let Err(error) = self.insert(false, real_addr, virtual_addr, BPF_NOEXIST) {
            if is_errno(&error, libc::EEXIST) {
                let existing_virtual = Self::get(&self.reverse, MAP_ADDR_REVERSE, real_addr)?
                    .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
                return Err(conflict(MappingConflict::RealTaken { real: real_addr, existing_virtual }));
            }
            return Err(self.insert_error(MAP_ADDR_REVERSE, error));
        }
        let forward_flags = if matches!(plan, AddPlan::Replace { .. }) { BPF_EXIST } else { BPF_NOEXIST };
        if let Err(error) = self.insert(true, virtual_addr, real_addr, forward_flags) {
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
        let orphan = orphan.ok_or(Error::NoSuchMapping { virtual_addr })?;
        Self::remove(&mut self.reverse, MAP_ADDR_REVERSE, orphan.real_addr)?;
        Ok(Removed::Orphan(orphan.real_addr))
    }

    /// Every mapping, ordered by VIRTUAL, and any half-applied reverse entries.
    pub fn list(&self) -> Result<Listing, Error> {
        let mut listing = Listing::default();
        for entry in self.forward.iter() {
            let (key, value) = entry.map_err(|source| Error::map(MAP_ADDR_FORWARD, source))?;
            listing.mappings.push(Mapping { virtual_addr: key.into(), real_addr: value.into() });
        }
        listing.mappings.sort();
        for entry in self.reverse.iter() {
            let (key, value) = entry.map_err(|source| Error::map(MAP_ADDR_REVERSE, source))?;
            let entry = Mapping { virtual_addr: value.into(), real_addr: key.into() };
            if listing.mappings.binary_search(&entry).is_err() {
                listing.orphans.push(entry);
            }
        }
        listing.orphans.sort();
        Ok(listing)
    }

    /// Inserts many mappings that are known to be new and valid (benchmarks and bulk
    /// loads), reverse entries first. Stops at the first error.
    pub fn insert_new_unchecked(&mut self, mappings: &[Mapping]) -> Result<(), Error> {
        for mapping in mappings {
            self.insert(false, mapping.real_addr, mapping.virtual_addr, BPF_ANY)
                .map_err(|error| self.insert_error(MAP_ADDR_REVERSE, error))?;
        }
        for mapping in mappings {
            self.insert(true, mapping.virtual_addr, mapping.real_addr, BPF_ANY)
                .map_err(|error| self.insert_error(MAP_ADDR_FORWARD, error))?;
        }
        Ok(())
    }
}

/// [`MappingView`] over the live maps. The trait is infallible, so a lookup error is
/// kept aside and reported after the plan is made.
struct LiveView<'a> {
    table: &'a MappingTable,
    error: std::cell::Cell<Option<Error>>,
}

impl<'a> LiveView<'a> {
    fn new(table: &'a MappingTable) -> Self {
        Self { table, error: std::cell::Cell::new(None) }
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
}

/// The outcome counters, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// `values[direction][outcome]`, indexed as in `rewrite_common::counters`.
    pub values: Vec<Vec<u64>>,
}

impl Counters {
    pub fn read(pins: &PinLayout) -> Result<Self, Error> {
        let map = PerCpuArray::<MapData, u64>::try_from(open_pinned(pins, MAP_COUNTERS)?)
            .map_err(|source| Error::map(MAP_COUNTERS, source))?;
        let mut values = Vec::new();
        for direction in 0..counters::DIRECTIONS {
            let mut row = Vec::new();
            for outcome in 0..counters::OUTCOMES {
                let slot = counters::slot(direction, outcome);
                let per_cpu = map.get(&slot, 0).map_err(|source| Error::map(MAP_COUNTERS, source))?;
                row.push(per_cpu.iter().sum());
            }
            values.push(row);
        }
        Ok(Self { values })
    }

    pub fn get(&self, direction: u32, outcome: u32) -> u64 {
        self.values[direction as usize][outcome as usize]
    }

    /// As a JSON object: `{"ingress": {"rewritten": N, ...}, "egress": {...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        for (direction, row) in self.values.iter().enumerate() {
            let outcomes =
                OUTCOME_NAMES.iter().zip(row).map(|(name, value)| ((*name).to_owned(), (*value).into())).collect();
            object.insert(DIRECTION_NAMES[direction].to_owned(), serde_json::Value::Object(outcomes));
        }
        serde_json::Value::Object(object)
    }
}
