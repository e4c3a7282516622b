//! `rewrite stats`: readings of the counters and how they are printed.

use std::collections::{BTreeMap, HashMap};

use rewrite_common::{
    counters::{DIRECTION_NAMES, EGRESS, INGRESS, OUTCOME_NAMES},
    maps::MappingStats,
};
use rewrite_user::{
    dataplane::pins::PinLayout,
    table::counters::{Counters, MappingCounters},
    table::live::MappingTable,
};

/// `stats --json`: the outcome counters per direction, their rates when watching, and
/// the mappings shown.
#[derive(Debug, serde::Serialize)]
struct StatsJson<'a> {
    #[serde(flatten)]
    outcomes: PerDirection<BTreeMap<&'static str, u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_second: Option<PerDirection<BTreeMap<&'static str, f64>>>,
    mappings: Vec<MappingJson<'a>>,
}

#[derive(Debug, serde::Serialize)]
struct PerDirection<T> {
    ingress: T,
    egress: T,
}

/// `values[INGRESS]`, `values[EGRESS]` as named fields.
fn per_direction<T>(mut value: impl FnMut(usize) -> T) -> PerDirection<T> {
    PerDirection { ingress: value(INGRESS as usize), egress: value(EGRESS as usize) }
}

#[derive(Debug, serde::Serialize)]
struct MappingJson<'a> {
    mapping: &'a str,
    kind: &'a str,
    ingress: Traffic<u64>,
    egress: Traffic<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_second: Option<PerDirection<Traffic<f64>>>,
}

#[derive(Debug, serde::Serialize)]
struct Traffic<T> {
    packets: T,
    bytes: T,
}

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
            let outcome_rates = since.map(|(earlier, seconds)| {
                per_direction(|direction| {
                    OUTCOME_NAMES
                        .iter()
                        .enumerate()
                        .map(|(outcome, name)| {
                            let now = self.outcomes.values[direction][outcome];
                            (*name, now.saturating_sub(earlier.outcomes.values[direction][outcome]) as f64 / seconds)
                        })
                        .collect()
                })
            });
            let mappings = shown
                .iter()
                .map(|mapping| MappingJson {
                    mapping: &mapping.mapping,
                    kind: mapping.kind,
                    ingress: Traffic { packets: mapping.stats.packets[0], bytes: mapping.stats.bytes[0] },
                    egress: Traffic { packets: mapping.stats.packets[1], bytes: mapping.stats.bytes[1] },
                    per_second: since.map(|_| {
                        let (packets, bytes) = rates(mapping).unwrap_or(([0.0; 2], [0.0; 2]));
                        per_direction(|direction| Traffic { packets: packets[direction], bytes: bytes[direction] })
                    }),
                })
                .collect();
            let reading = StatsJson {
                outcomes: per_direction(|direction| {
                    OUTCOME_NAMES.iter().copied().zip(self.outcomes.values[direction].iter().copied()).collect()
                }),
                per_second: outcome_rates,
                mappings,
            };
            println!("{}", serde_json::to_string(&reading).unwrap_or_default());
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
