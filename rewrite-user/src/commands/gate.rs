//! `rewrite gate ...`: what each gate command does (the grammar is in `cli`).

use anyhow::Context as _;
use rewrite_user::{
    bounce,
    cli::{FollowArgs, GateCommand},
    dataplane::pins::PinLayout,
    gate::{ClientPorts, GateTable, Mode, PortSpec, Sample, follow_samples, parse_allow},
};

use crate::commands::stats::{deadline, print_records};

pub fn run(pins: &PinLayout, command: GateCommand) -> anyhow::Result<()> {
    let open = || GateTable::open(pins).context("cannot open the gate's maps");
    let specs = |texts: &[String]| texts.iter().map(|text| PortSpec::parse(text)).collect::<Result<Vec<_>, _>>();
    // The ports replies to this host's own traffic arrive at: never protected.
    let client = || -> anyhow::Result<ClientPorts> { Ok(ClientPorts::of_host(bounce::source_port_ranges(pins)?)?) };
    match command {
        GateCommand::Mode { mode } => {
            let mode = Mode::parse(&mode)?;
            open()?.set_mode(mode)?;
            println!("gate mode {}", mode.name());
        }
        GateCommand::Protect { ports } => {
            let changed = open()?.protect(&specs(&ports)?, &client()?, true)?;
            println!("protected {} ({changed} ports changed)", ports.join(" "));
        }
        GateCommand::Unprotect { ports } => {
            let changed = open()?.protect(&specs(&ports)?, &client()?, false)?;
            println!("unprotected {} ({changed} ports changed)", ports.join(" "));
        }
        GateCommand::Allow { prefixes } => change_allow(pins, &prefixes, true)?,
        GateCommand::Disallow { prefixes } => change_allow(pins, &prefixes, false)?,
        GateCommand::Management { ports, none } => {
            let management = if none { Vec::new() } else { specs(&ports)? };
            open()?.set_management(&management, &client()?)?;
            if none {
                println!("no management ports: the gate may close ssh");
            } else {
                println!("management ports {}", ports.join(" "));
            }
        }
        GateCommand::Show { json } => {
            let view = open()?.view()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                let list = |items: &[String]| if items.is_empty() { "-".to_owned() } else { items.join(" ") };
                println!("mode        {}", view.mode.name());
                println!("protected   {}", list(&view.protected));
                println!("management  {}", list(&view.management));
                println!("allow       {}", list(&view.allow));
            }
        }
        GateCommand::Log(FollowArgs { json, count, timeout }) => {
            follow_samples(pins, deadline(timeout), print_records::<Sample>(json, count))
                .context("cannot follow the gate's samples")?;
        }
        GateCommand::Stats { json } => {
            let counters = open()?.counters()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&counters)?);
            } else {
                for (name, value) in counters {
                    println!("{name:<22} {value}");
                }
            }
        }
    }
    Ok(())
}

/// Adds (`on`) or removes allow prefixes, all checked before the first is written.
fn change_allow(pins: &PinLayout, prefixes: &[String], on: bool) -> anyhow::Result<()> {
    let parsed = prefixes.iter().map(|text| parse_allow(text)).collect::<Result<Vec<_>, _>>()?;
    let mut table = GateTable::open(pins).context("cannot open the gate's maps")?;
    for prefix in parsed {
        table.allow(prefix, on)?;
    }
    println!("{} {}", if on { "allowed" } else { "disallowed" }, prefixes.join(" "));
    Ok(())
}
