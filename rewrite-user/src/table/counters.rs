//! What the programs counted: outcomes per direction (per CPU, summed here), and
//! packets and bytes per mapping.

use aya::maps::{MapData, PerCpuArray};
use rewrite_common::{
    counters,
    maps::{MAP_COUNTERS, MappingStats},
};

use crate::{
    Error,
    dataplane::objects::open_pinned,
    dataplane::pins::PinLayout,
    table::{listing::Listing, live::MappingTable},
};

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
}

/// One mapping's counters, summed over the ports of a range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingCounters {
    /// The mapping in the written form, `VIRTUAL -> REAL`, as `map list` shows it.
    pub mapping: String,
    /// "address", "port" or "prefix".
    pub kind: &'static str,
    pub stats: MappingStats,
}

impl MappingCounters {
    /// The counters of every mapping in `listing`, in its order.
    pub fn read(table: &MappingTable, listing: &Listing) -> Result<Vec<Self>, Error> {
        Ok(table
            .counters(listing)?
            .into_iter()
            .map(|(row, stats)| MappingCounters {
                mapping: format!("{} -> {}", row.virtual_side, row.real_side),
                kind: row.kind,
                stats,
            })
            .collect())
    }
}
