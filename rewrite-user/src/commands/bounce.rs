//! `rewrite bounce ...`: what each bounce command does (the grammar is in `cli`).

use std::time::Duration;

use anyhow::Context as _;
use rewrite_user::{
    bounce::{
        Added, BounceStats, BounceTable, Event, ServiceSpec, check_gate_leaves_open, enable::enable_bounce,
        follow_events, service::parse_listen,
    },
    cli::{BounceCommand, FollowArgs},
    dataplane::pins::PinLayout,
};

use crate::commands::stats::{deadline, print_records};

pub fn run(pins: &PinLayout, command: BounceCommand) -> anyhow::Result<()> {
    match command {
        BounceCommand::Add { listen, target, source, ports, max_flows } => {
            let spec = ServiceSpec::new(&listen, &target, source, ports)?;
            // Everything is checked before bounce mode starts, so a refused service
            // changes nothing.
            let resolved = spec.resolve()?;
            check_gate_leaves_open(pins, &resolved)?;
            for iface in enable_bounce(pins, max_flows).context("cannot start bounce mode")? {
                println!("bounce program attached to {iface}");
            }
            let mut table = open(pins)?;
            let verb = match table.add(&resolved)? {
                Added::New => "added",
                Added::Changed => "changed",
                Added::Unchanged => "unchanged",
            };
            println!("{verb} bounce {}/{} -> {}", spec.listen, spec.protocol, spec.target);
        }
        BounceCommand::Del { listen } => {
            let (listen, protocol) = parse_listen(&listen)?;
            let flows = open(pins)?.remove(listen, protocol)?;
            println!("deleted bounce {listen}/{protocol} ({flows} open flows dropped)");
        }
        BounceCommand::List { json } => {
            let rows = open(pins)?.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:<28} {:<28} {:<18} {:<13} {:>10}", "LISTEN", "TARGET", "SOURCE", "PORTS", "LIVE FLOWS");
                for row in rows {
                    println!(
                        "{:<28} {:<28} {:<18} {:<13} {:>10}",
                        format!("{}/{}", row.listen, row.protocol),
                        row.target.to_string(),
                        row.source.to_string(),
                        row.ports.to_string(),
                        row.live_flows
                    );
                }
            }
        }
        BounceCommand::Stats { json } => {
            let stats = BounceStats::read(pins).context("cannot read the bounce counters")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                for (name, value) in &stats.counters {
                    println!("{name:<16} {value}");
                }
                println!("{:<16} {}", "live_flows", stats.live_flows);
                println!(
                    "{:<16} {} of {} entries",
                    "table",
                    stats.table_entries,
                    u64::from(stats.table_capacity_flows) * 2
                );
                println!("{:<16} {}", "evicted_flows", stats.evicted_flows);
                // Events are only written while a reader follows them.
                println!("{:<16} {}", "log_reader", if stats.log_reader { "present" } else { "none" });
            }
        }
        BounceCommand::Log(FollowArgs { json, count, timeout }) => {
            follow_events(pins, deadline(timeout), print_records::<Event>(json, count))?;
        }
        BounceCommand::Timeouts { udp, tcp, unreplied } => {
            let mut table = open(pins)?;
            let seconds = |value: Option<f64>| value.map(Duration::from_secs_f64);
            table.set_timeouts(seconds(udp), seconds(tcp), seconds(unreplied))?;
            let timeouts = table.timeouts()?;
            println!(
                "idle timeouts: udp {} s, tcp {} s; flows the target never answered: {} s",
                timeouts.udp.as_secs_f64(),
                timeouts.tcp.as_secs_f64(),
                timeouts.unreplied.as_secs_f64()
            );
        }
    }
    Ok(())
}

fn open(pins: &PinLayout) -> anyhow::Result<BounceTable> {
    BounceTable::open(pins).context("bounce mode is not in use here: `rewrite bounce add` starts it")
}
