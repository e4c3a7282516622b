//! Bounce mode's counters, summed over CPUs, and the flow table's occupancy.

use std::collections::BTreeMap;

use aya::maps::{MapData, PerCpuArray};
use rewrite_common::bounce::{BOUNCE_COUNTER_NAMES, BOUNCE_COUNTER_SLOTS, MAP_BOUNCE_COUNTERS};
use serde::Serialize;

use crate::{
    Error,
    bounce::{events::log_reader_present, table::BounceTable},
    dataplane::{objects::open_pinned, pins::PinLayout},
};

/// The bounce counters, summed over CPUs, with the flows the table holds and the flows
/// evicted from it (by difference: every flow opened was closed, is in the table, or
/// was evicted).
#[derive(Clone, Debug, Default, Serialize)]
pub struct BounceStats {
    pub counters: BTreeMap<&'static str, u64>,
    pub live_flows: u64,
    pub table_entries: u64,
    pub table_capacity_flows: u32,
    pub evicted_flows: u64,
    /// Whether a `bounce log` reader is present: events are only written then.
    pub log_reader: bool,
}

impl BounceStats {
    pub fn read(pins: &PinLayout) -> Result<Self, Error> {
        let counters: PerCpuArray<MapData, u64> = PerCpuArray::try_from(open_pinned(pins, MAP_BOUNCE_COUNTERS)?)
            .map_err(|source| Error::map(MAP_BOUNCE_COUNTERS, source))?;
        let mut totals = BTreeMap::new();
        for index in 0..BOUNCE_COUNTER_SLOTS {
            let values = counters.get(&index, 0).map_err(|source| Error::map(MAP_BOUNCE_COUNTERS, source))?;
            totals.insert(BOUNCE_COUNTER_NAMES[index as usize], values.iter().copied().fold(0u64, u64::wrapping_add));
        }
        let table = BounceTable::open(pins)?;
        let live_flows: u64 = table.live_flows()?.values().sum();
        let (table_entries, capacity) = table.occupancy();
        let closed: u64 = ["closed_fin", "closed_rst", "closed_idle", "closed_evicted"]
            .iter()
            .map(|name| totals.get(name).copied().unwrap_or(0))
            .sum();
        let connects = totals.get("connects").copied().unwrap_or(0);
        // Halves still in the table (live or idle) are not evicted; each flow has two.
        let in_table = table_entries.div_ceil(2);
        Ok(Self {
            evicted_flows: connects.saturating_sub(closed).saturating_sub(in_table),
            counters: totals,
            live_flows,
            table_entries,
            table_capacity_flows: capacity / 2,
            log_reader: log_reader_present(pins)?,
        })
    }
}
