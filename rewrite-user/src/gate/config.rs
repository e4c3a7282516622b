//! The config file's `[gate]` section: read (every port spec and prefix checked as the
//! CLI checks them) and written back.

use serde::Deserialize;
use toml::Spanned;

use crate::{
    gate::{GateConfig, Mode, PortSpec, parse_allow},
    located::{Locator, Problem, quoted},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGate {
    mode: Option<Spanned<String>>,
    #[serde(default)]
    protect: Vec<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    management: Option<Vec<Spanned<String>>>,
}

/// The `[gate]` section: the mode, and every port spec and prefix checked as the CLI
/// checks them. (Whether a port lies in the host's ephemeral range is checked when the
/// section is applied, against the host it is applied on.)
pub(crate) fn gate_config(raw: &RawGate, locate: &Locator, problems: &mut Vec<Problem>) -> GateConfig {
    let mode = match &raw.mode {
        None => Mode::Off,
        Some(text) => Mode::parse(text.get_ref()).unwrap_or_else(|error| {
            problems.push(locate.problem(text.span().start, error.to_string()));
            Mode::Off
        }),
    };
    let mut specs = |texts: &[Spanned<String>]| -> Vec<String> {
        texts
            .iter()
            .filter_map(|text| match PortSpec::parse(text.get_ref()) {
                Ok(_) => Some(text.get_ref().clone()),
                Err(error) => {
                    problems.push(locate.problem(text.span().start, error.to_string()));
                    None
                }
            })
            .collect()
    };
    let protect = specs(&raw.protect);
    let management = raw.management.as_deref().map(&mut specs);
    let allow = raw
        .allow
        .iter()
        .filter_map(|text| match parse_allow(text.get_ref()) {
            Ok(prefix) => Some(prefix),
            Err(error) => {
                problems.push(locate.problem(text.span().start, error.to_string()));
                None
            }
        })
        .collect();
    GateConfig { mode, protect, allow, management }
}

/// The `[gate]` section, as [`gate_config`] reads it.
pub(crate) fn render_gate(gate: &GateConfig) -> String {
    let list = |items: &[String]| format!("[{}]", items.iter().map(|item| quoted(item)).collect::<Vec<_>>().join(", "));
    let allow: Vec<String> = gate.allow.iter().map(ToString::to_string).collect();
    let mut out = format!(
        "\n[gate]\nmode = {}\nprotect = {}\nallow = {}\n",
        quoted(gate.mode.name()),
        list(&gate.protect),
        list(&allow)
    );
    if let Some(management) = &gate.management {
        out.push_str(&format!("management = {}\n", list(management)));
    }
    out
}
