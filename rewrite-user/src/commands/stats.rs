//! `rewrite stats`: readings of the counters and how they are printed.

use std::collections::HashMap;

use rewrite_common::{
    counters::{DIRECTION_NAMES, OUTCOME_NAMES},
    maps::MappingStats,
};
use rewrite_user::{
    dataplane::pins::PinLayout,
    table::counters::{Counters, MappingCounters},
    table::live::MappingTable,
};

/// Mappings `stats` shows without `--top` or `--json`.
pub const DEFAULT_TOP: usize = 50;

/// The counters at one moment.
pub struct Reading {
    outcomes: Counters,
    mappings: Vec<MappingCounters>,
}

impl Reading {
    pub fn take(pins: &PinLayout) -> anyhow::Result<Self> {
        let outcomes = Counters::read(pins)?;
        let table = MappingTable::open(pins)?;
        let listing = table.list()?;
        let mappings = MappingCounters::read(&table, &listing)?;
        Ok(Self { outcomes, mappings })
    }

    /// Prints the reading, and with `since` the rates per second over the interval
    /// since the earlier reading.
    pub fn print(&self, since: Option<(&Reading, f64)>, json: bool, top: Option<usize>) {
        let earlier: HashMap<&str, &MappingStats> = since
            .map(|(earlier, _)| earlier.mappings.iter().map(|m| (m.mapping.as_str(), &m.stats)).collect())
            .unwrap_or_default();
        let seconds = since.map_or(1.0, |(_, seconds)| seconds);
        // Per-second packets and bytes per direction, for mappings that existed before.
        let rates = |mapping: &MappingCounters| {
            earlier.get(mapping.mapping.as_str()).map(|before| {
                let per_second = |now: u64, then: u64| now.saturating_sub(then) as f64 / seconds;
                let packets = [0, 1].map(|d| per_second(mapping.stats.packets[d], before.packets[d]));
                let bytes = [0, 1].map(|d| per_second(mapping.stats.bytes[d], before.bytes[d]));
                (packets, bytes)
            })
        };
        // Bytes so far, or bytes per second when watching.
        let busyness = |mapping: &MappingCounters| match (since, rates(mapping)) {
            (Some(_), Some((_, bytes))) => bytes[0] + bytes[1],
            (Some(_), None) => 0.0,
            (None, _) => mapping.stats.bytes[0].saturating_add(mapping.stats.bytes[1]) as f64,
        };
        let mut shown: Vec<&MappingCounters> = self.mappings.iter().collect();
        // Stable: equally busy mappings keep the listing's order.
        shown.sort_by(|a, b| busyness(b).total_cmp(&busyness(a)));
        shown.truncate(top.unwrap_or(usize::MAX));
        if json {
            let mut value = outcomes_json(&self.outcomes, since.map(|(earlier, s)| (&earlier.outcomes, s)));
            let mappings: Vec<serde_json::Value> = shown
                .iter()
                .map(|mapping| {
                    let mut object = mapping.to_json();
                    if since.is_some() {
                        let (packets, bytes) = rates(mapping).unwrap_or(([0.0; 2], [0.0; 2]));
                        let mut per_second = serde_json::Map::new();
                        for (direction, name) in DIRECTION_NAMES.iter().enumerate() {
                            per_second.insert(
                                (*name).to_owned(),
                                serde_json::json!({ "packets": packets[direction], "bytes": bytes[direction] }),
                            );
                        }
                        object["per_second"] = per_second.into();
                    }
                    object
                })
                .collect();
            value["mappings"] = mappings.into();
            println!("{value}");
            return;
        }
        print_outcomes(&self.outcomes, since.map(|(earlier, s)| (&earlier.outcomes, s)));
        if self.mappings.is_empty() {
            println!("\nno mappings");
            return;
        }
        let width = shown.iter().map(|mapping| mapping.mapping.len()).max().unwrap_or(0).max("mapping".len());
        println!();
        println!(
            "{:<width$}  {:>22}{:>22}{:>22}{:>22}",
            "mapping", "ingress packets", "ingress bytes", "egress packets", "egress bytes"
        );
        for mapping in &shown {
            let stats = &mapping.stats;
            let rate = rates(mapping).filter(|_| since.is_some());
            let cell = |value: u64, per_second: Option<f64>| match per_second {
                Some(per_second) => format!("{:>22}", format!("{value} ({per_second:.0}/s)")),
                None => format!("{value:>22}"),
            };
            println!(
                "{:<width$}  {}{}{}{}",
                mapping.mapping,
                cell(stats.packets[0], rate.map(|(packets, _)| packets[0])),
                cell(stats.bytes[0], rate.map(|(_, bytes)| bytes[0])),
                cell(stats.packets[1], rate.map(|(packets, _)| packets[1])),
                cell(stats.bytes[1], rate.map(|(_, bytes)| bytes[1])),
            );
        }
        if shown.len() < self.mappings.len() {
            println!("({} more mappings not shown; see --top or --json)", self.mappings.len() - shown.len());
        }
    }
}

/// The outcome counters as JSON, with their rates per second under "per_second" when
/// `since` gives an earlier reading.
fn outcomes_json(counters: &Counters, since: Option<(&Counters, f64)>) -> serde_json::Value {
    let mut value = counters.to_json();
    if let Some((earlier, seconds)) = since {
        let mut rates = serde_json::Map::new();
        for (direction, name) in DIRECTION_NAMES.iter().enumerate() {
            let row: serde_json::Map<String, serde_json::Value> = OUTCOME_NAMES
                .iter()
                .enumerate()
                .map(|(outcome, outcome_name)| {
                    let delta = counters.values[direction][outcome].saturating_sub(earlier.values[direction][outcome]);
                    ((*outcome_name).to_owned(), (delta as f64 / seconds).into())
                })
                .collect();
            rates.insert((*name).to_owned(), row.into());
        }
        value["per_second"] = rates.into();
    }
    value
}

/// Prints the outcome counters as a table, with rates when `since` is given.
fn print_outcomes(counters: &Counters, since: Option<(&Counters, f64)>) {
    let rate = |direction: usize, outcome: usize| {
        since.map(|(earlier, seconds)| {
            let delta = counters.values[direction][outcome].saturating_sub(earlier.values[direction][outcome]);
            delta as f64 / seconds
        })
    };
    println!("{:<10}{}", "", OUTCOME_NAMES.map(|name| format!("{name:>20}")).concat());
    for (direction, row) in counters.values.iter().enumerate() {
        let cells: String = row
            .iter()
            .enumerate()
            .map(|(outcome, value)| match rate(direction, outcome) {
                Some(rate) => format!("{:>20}", format!("{value} ({rate:.0}/s)")),
                None => format!("{value:>20}"),
            })
            .collect();
        println!("{:<10}{cells}", DIRECTION_NAMES[direction]);
    }
}

/// The sink for an event stream (`bounce log`, `gate log`): prints each record as a
/// line of text or of JSON, and asks for more until `count` records are out.
pub fn print_records<T: serde::Serialize + std::fmt::Display>(json: bool, count: Option<u64>) -> impl FnMut(T) -> bool {
    let mut printed = 0u64;
    move |record: T| {
        if json {
            println!("{}", serde_json::to_string(&record).unwrap_or_default());
        } else {
            println!("{record}");
        }
        printed += 1;
        count.is_none_or(|count| printed < count)
    }
}

/// When a stream given `--timeout SECONDS` ends.
pub fn deadline(timeout: Option<f64>) -> Option<std::time::Instant> {
    timeout.map(|seconds| std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds))
}
