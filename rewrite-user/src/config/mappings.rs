//! The config file's `[[mapping]]` entries: each read in the written form `map add`
//! takes and admitted into one table with the others (the one admission, see
//! `table::admission`), so every problem is found before anything is applied and
//! reported at the value it is about; and written back.

use std::collections::HashMap;

use rewrite_common::spec::{MappingKey, MappingSpec, Side};
use serde::Deserialize;
use toml::Spanned;

use crate::{
    located::{Locator, Problem, quoted},
    table::admission::{Capacity, DesiredTable, Refusal, Source},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMapping {
    #[serde(rename = "virtual")]
    virtual_side: Spanned<String>,
    #[serde(rename = "real")]
    real_side: Spanned<String>,
    label: Option<String>,
}

/// Reads every mapping and admits it into a table of `capacity`, in file order; each
/// problem goes to `problems` at the value it is about (the VIRTUAL, or the REAL), and
/// the mapping is left out.
pub(crate) fn mappings(
    raw: &[RawMapping],
    capacity: Capacity,
    locate: &Locator,
    problems: &mut Vec<Problem>,
) -> DesiredTable {
    let mut table = DesiredTable::new(capacity);
    let mut lines: HashMap<MappingKey, usize> = HashMap::new();
    for mapping in raw {
        let (virtual_at, real_at) = (mapping.virtual_side.span().start, mapping.real_side.span().start);
        let sides = (
            mapping.virtual_side.get_ref().parse::<Side>().map_err(|error| (virtual_at, error)),
            mapping.real_side.get_ref().parse::<Side>().map_err(|error| (real_at, error)),
        );
        let spec = match sides {
            (Err((at, error)), _) | (_, Err((at, error))) => {
                problems.push(locate.problem(at, error.to_string()));
                continue;
            }
            // Two sides that do not match: the REAL must follow the VIRTUAL.
            (Ok(virtual_side), Ok(real_side)) => match MappingSpec::new(virtual_side, real_side) {
                Ok(spec) => spec,
                Err(error) => {
                    problems.push(locate.problem(real_at, error.to_string()));
                    continue;
                }
            },
        };
        // A VIRTUAL written twice is the same key: the table would take it as a change.
        if let Some(first) = lines.get(&spec.key()) {
            let message = format!("VIRTUAL {} is already mapped on line {first}", mapping.virtual_side.get_ref());
            problems.push(locate.problem(virtual_at, message));
            continue;
        }
        match table.admit(spec, mapping.label.clone(), Source::Local) {
            Ok(_) => {
                lines.insert(spec.key(), locate.line(virtual_at));
            }
            Err(Refusal::Overlaps { other, .. }) => {
                let first = lines.get(&other).copied().unwrap_or_default();
                let message = format!("VIRTUAL {} is already mapped on line {first}", mapping.virtual_side.get_ref());
                problems.push(locate.problem(virtual_at, message));
            }
            Err(Refusal::Conflict { conflict, .. }) => {
                let at = if conflict.is_about_real(&spec) { real_at } else { virtual_at };
                problems.push(locate.problem(at, conflict.to_string()));
            }
            Err(Refusal::Full { table, capacity, .. }) => {
                let message = format!(
                    "the {table} table would overflow here: it holds {capacity} entries (max_mappings) and this \
                     mapping needs more"
                );
                problems.push(locate.problem(virtual_at, message));
            }
            Err(refusal @ Refusal::LocalWins { .. }) => problems.push(locate.problem(virtual_at, refusal.to_string())),
        }
    }
    table
}

/// The `[[mapping]]` entries of `table`, in key order, as [`mappings`] reads them.
pub(crate) fn render_mappings(table: &DesiredTable) -> String {
    let mut out = String::new();
    for mapping in table.iter() {
        let (virtual_side, real_side) = (mapping.spec.virtual_side(), mapping.spec.real_side());
        out.push_str(&format!(
            "\n[[mapping]]\nvirtual = {}\nreal = {}\n",
            quoted(&virtual_side.to_string()),
            quoted(&real_side.to_string())
        ));
        if let Some(label) = &mapping.label {
            out.push_str(&format!("label = {}\n", quoted(label)));
        }
    }
    out
}
