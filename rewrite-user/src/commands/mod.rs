//! What each command does. Every command is a short-lived process: the dataplane lives
//! in pinned BPF objects, so no daemon is needed and any later process sees the same
//! state.

use std::{net::IpAddr, path::Path};

use anyhow::{Context as _, bail};
use clap::CommandFactory as _;
use rewrite_common::{
    maps::DEFAULT_MAX_MAPPINGS,
    spec::{MappingSpec, Side},
    validate::AddPlan,
};
use rewrite_user::{
    agent,
    bounce::plan::BouncePlan,
    cli::{Cli, Command, MapCommand},
    config::{self, apply},
    dataplane::{attach, iface, objects, pins::PinLayout, status, upgrade},
    gate::GatePlan,
    table::{
        admission::{Capacity, DesiredTable, Source},
        live::{MappingTable, Removed},
        plan::{Plan, live_specs},
    },
};

mod bounce;
mod fleet;
mod gate;
mod stats;
mod trace;

use self::stats::{DEFAULT_TOP, Reading};

/// How a command that did not fail ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Done,
    /// `apply --dry-run` found a difference to apply (exit status 2).
    ChangesPending,
}

pub fn run(cli: Cli) -> anyhow::Result<Status> {
    // The fleet table lives in etcd: editing it needs no pins, and no root.
    if let Command::Fleet { store, command } = cli.command {
        return fleet::run(&store, command).map(|()| Status::Done);
    }
    // Checking a file, and describing the command line, need neither.
    match &cli.command {
        Command::Check { file } => {
            let config = config::load(file)?;
            println!("{}: valid ({} mappings)", file.display(), config.table.len());
            return Ok(Status::Done);
        }
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "rewrite", &mut std::io::stdout());
            return Ok(Status::Done);
        }
        Command::Manpages { dir } => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), dir)
                .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
            return Ok(Status::Done);
        }
        _ => {}
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "rewrite must run as root: its pins are root-only, and loading programs and editing \
             their maps needs CAP_BPF and CAP_NET_ADMIN"
        );
    }
    let pins = PinLayout::new(cli.pin_dir);
    pins.check_root_only()?;
    // One writer at a time: an agent keeps its dataplane alone (but for upgrades), and
    // commands wait for each other.
    let _write_lock = if cli.command.writes() {
        if !matches!(cli.command, Command::Upgrade { .. }) {
            agent::refuse_if_running(&pins)?;
        }
        let holder = std::env::args().collect::<Vec<_>>().join(" ");
        Some(rewrite_user::dataplane::lock::WriteLock::take(&pins, &holder, rewrite_user::dataplane::lock::WAIT)?)
    } else {
        None
    };
    match cli.command {
        Command::Attach { iface, ingress, tc_attach, max_mappings } => {
            let attachment = attach::attach(&pins, &iface, ingress, tc_attach, max_mappings)
                .with_context(|| format!("cannot attach to {iface}"))?;
            println!("attached to {} (ingress: {}, egress: tc)", attachment.iface, attachment.ingress);
        }
        Command::Detach { iface } => {
            attach::detach(&pins, &iface).with_context(|| format!("cannot detach from {iface}"))?;
            println!("detached from {iface}");
        }
        Command::Map(command) => run_map(&pins, command)?,
        Command::Status { json } => print_status(&pins, json)?,
        Command::Upgrade { object } => {
            let bytes = match &object {
                Some(path) => std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
                None => objects::EBPF_OBJECT.to_vec(),
            };
            let upgraded = upgrade::upgrade(&pins, &bytes).context("upgrade refused; the running programs stay")?;
            if upgraded.is_empty() {
                println!("no interface attached; nothing to upgrade");
            }
            for change in &upgraded {
                println!("{}: {} id {} -> {}", change.iface, change.program, change.old_id, change.new_id);
            }
            println!("programs now at version {}", objects::object_version(&bytes));
        }
        Command::Down => {
            // An agent would attach it all again: refused above, with the agent named.
            for iface in attach::down(&pins)? {
                println!("detached from {iface}");
            }
            println!("removed {}", pins.root().display());
        }
        Command::Apply { file, dry_run, json, quiet } => {
            return apply_config(&pins, &file, ApplyOutput { dry_run, json, quiet });
        }
        Command::Export => print!("{}", export(&pins)?),
        Command::Agent { config, metrics, metrics_mappings, store, node, etcd_retry_max, etcd_watch, zone } => {
            let fleet = store.options().map(|mut store| {
                store.watch_endpoints = etcd_watch;
                store
            });
            if let Some(node) = node.options() {
                node.check().map_err(|why| anyhow::anyhow!("--release-claim-after: {why}"))?;
            }
            let fleet = fleet.map(|store| rewrite_user::fleet::FleetSettings {
                store,
                node: node.options(),
                retry_max: std::time::Duration::from_secs(etcd_retry_max),
                zone,
            });
            let filter = tracing_subscriber::EnvFilter::try_from_env("REWRITE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init();
            agent::run(agent::AgentOptions { config, metrics, metrics_mappings, pins, fleet })?;
        }
        Command::Fleet { .. } | Command::Check { .. } | Command::Completions { .. } | Command::Manpages { .. } => {
            unreachable!("handled before the root check")
        }
        Command::Bounce(command) => bounce::run(&pins, command)?,
        Command::Gate(command) => gate::run(&pins, command)?,
        Command::Trace { iface, hook, count, timeout, rate, json, filter } => {
            trace::run(&pins, trace::TraceArgs { iface, hook, count, timeout, rate, json, filter })?;
        }
        Command::Stats { json, top, watch, interval, count } => {
            let top = top.or((!json).then_some(DEFAULT_TOP));
            let mut previous = Reading::take(&pins)?;
            previous.print(None, json, top);
            let mut printed = 1;
            while watch && count.is_none_or(|count| printed < count) {
                std::thread::sleep(std::time::Duration::from_secs_f64(interval));
                let current = Reading::take(&pins)?;
                current.print(Some((&previous, interval)), json, top);
                previous = current;
                printed += 1;
            }
        }
    }
    Ok(Status::Done)
}

/// How `rewrite apply` reports.
#[derive(Clone, Copy, Debug)]
struct ApplyOutput {
    dry_run: bool,
    json: bool,
    quiet: bool,
}

/// `apply --json`: the difference, and what was done about it.
#[derive(Debug, serde::Serialize)]
struct ApplyReport<'a> {
    file: &'a Path,
    dry_run: bool,
    /// Whether the live state differs from the file (before this apply).
    pending: bool,
    attach: Vec<&'a str>,
    added: &'a [MappingSpec],
    removed: &'a [MappingSpec],
    changed: Vec<ChangedMapping<'a>>,
    half_applied_removed: usize,
    bounce: Vec<String>,
    gate: Vec<String>,
    /// Attached interfaces the file does not name, left as they are.
    unlisted: &'a [String],
    applied: bool,
    seconds: Option<f64>,
}

#[derive(Debug, serde::Serialize)]
struct ChangedMapping<'a> {
    from: &'a MappingSpec,
    to: &'a MappingSpec,
}

/// `rewrite apply`: validate, attach what is missing, then apply the difference. With
/// `--dry-run`, [`Status::ChangesPending`] if there is a difference.
fn apply_config(pins: &PinLayout, file: &Path, output: ApplyOutput) -> anyhow::Result<Status> {
    let config = config::load(file)?;
    let prepared = apply::prepare(pins, file, &config)?;
    let bounce_lines = prepared.bounce.as_ref().map(BouncePlan::lines).unwrap_or_default();
    let gate_lines = prepared.gate.as_ref().map(GatePlan::lines).unwrap_or_default();
    let plan = &prepared.plan;
    let pending =
        !(prepared.to_attach.is_empty() && plan.is_empty() && bounce_lines.is_empty() && gate_lines.is_empty());
    let mut report = ApplyReport {
        file,
        dry_run: output.dry_run,
        pending,
        attach: prepared.to_attach.iter().map(|interface| interface.name.as_str()).collect(),
        added: &plan.added,
        removed: &plan.removed,
        changed: plan.changed.iter().map(|(from, to)| ChangedMapping { from, to }).collect(),
        half_applied_removed: plan.orphans.len(),
        bounce: bounce_lines.clone(),
        gate: gate_lines.clone(),
        unlisted: &prepared.unlisted,
        applied: false,
        seconds: None,
    };
    if !output.json {
        let prefix = if output.dry_run { "would be " } else { "" };
        if !output.quiet {
            for interface in &prepared.to_attach {
                println!("{prefix}attached {} (ingress: {:?})", interface.name, interface.ingress);
            }
            for line in plan.lines().iter().chain(&bounce_lines).chain(&gate_lines) {
                println!("{prefix}{line}");
            }
        }
        for name in &prepared.unlisted {
            eprintln!(
                "note: {name} is attached but not in {}; left as it is (`rewrite detach --iface {name}`)",
                file.display()
            );
        }
    }
    if output.dry_run {
        if output.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "dry run: nothing changed; {}",
                if pending { summary(plan, &bounce_lines, &gate_lines) } else { "nothing to change".to_owned() }
            );
        }
        return Ok(if pending { Status::ChangesPending } else { Status::Done });
    }
    let started = std::time::Instant::now();
    apply::execute(pins, &prepared)?;
    let seconds = started.elapsed().as_secs_f64();
    if output.json {
        report.applied = true;
        report.seconds = Some(seconds);
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("applied: {} in {seconds:.3} s", summary(plan, &bounce_lines, &gate_lines));
    }
    Ok(Status::Done)
}

/// "N added, N removed, N changed[; N bounce changes][; N gate changes]".
fn summary(plan: &Plan, bounce_lines: &[String], gate_lines: &[String]) -> String {
    format!(
        "{} added, {} removed, {} changed{}{}",
        plan.added.len(),
        plan.removed.len() + plan.orphans.len(),
        plan.changed.len(),
        if bounce_lines.is_empty() { String::new() } else { format!("; {} bounce changes", bounce_lines.len()) },
        if gate_lines.is_empty() { String::new() } else { format!("; {} gate changes", gate_lines.len()) },
    )
}

/// `status --json`.
#[derive(Debug, serde::Serialize)]
struct StatusJson<'a> {
    pin_dir: &'a Path,
    version: &'a str,
    agent: AgentJson,
    interfaces: Vec<InterfaceJson<'a>>,
    /// `None` before the table exists.
    table: Option<TableJson>,
}

#[derive(Debug, serde::Serialize)]
struct AgentJson {
    running: bool,
    pid: Option<u32>,
    /// What the agent last recorded of its fleet table, as it wrote it.
    fleet: Option<serde_json::Value>,
}

#[derive(Debug, serde::Serialize)]
struct InterfaceJson<'a> {
    name: &'a str,
    ingress: String,
    version: Option<String>,
    programs: &'a [status::AttachedProgram],
    stale: Option<&'static str>,
}

#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
enum TableJson {
    Read {
        capacity: u32,
        address_entries: usize,
        port_entries: u64,
        prefix_entries: usize,
        prefix_capacity: u32,
        /// Kernel memory of all the pinned maps (their `memlock`), in bytes.
        kernel_memory_bytes: u64,
    },
    Unreadable {
        error: String,
    },
}

/// `rewrite status`.
fn print_status(pins: &PinLayout, json: bool) -> anyhow::Result<()> {
    let mut interfaces = Vec::new();
    for attachment in status::attached(pins)? {
        let programs = status::attached_programs(pins, &attachment.iface)?;
        let stale = status::staleness(pins, &attachment.iface)?;
        interfaces.push((attachment, programs, stale));
    }
    // The table is read apart: status must still show the programs when it cannot be.
    let table = pins.maps_dir().exists().then(|| {
        let table = MappingTable::open(pins)?;
        let listing = table.list()?;
        let ports: u64 = listing.port_mappings.iter().map(|mapping| u64::from(mapping.count)).sum();
        let memory = status::maps_memory(pins)?;
        Ok::<_, rewrite_user::Error>((table.capacity(), listing.mappings.len(), ports, listing.prefixes.len(), memory))
    });
    let agent = agent::running_agent(pins);
    let fleet: Option<serde_json::Value> =
        std::fs::read_to_string(agent::fleet_record(pins)).ok().and_then(|text| serde_json::from_str(&text).ok());
    let version = objects::object_version(objects::EBPF_OBJECT);
    if json {
        let status = StatusJson {
            pin_dir: pins.root(),
            version: &version,
            agent: AgentJson { running: agent.is_some(), pid: agent, fleet: agent.and(fleet.clone()) },
            interfaces: interfaces
                .iter()
                .map(|(attachment, programs, stale)| InterfaceJson {
                    name: &attachment.iface,
                    ingress: attachment.ingress.to_string(),
                    version: pins.recorded_version(&attachment.iface),
                    programs,
                    stale: *stale,
                })
                .collect(),
            table: table.map(|table| match table {
                Ok((capacity, address_entries, port_entries, prefix_entries, kernel_memory_bytes)) => TableJson::Read {
                    capacity,
                    address_entries,
                    port_entries,
                    prefix_entries,
                    prefix_capacity: rewrite_common::maps::MAX_PREFIX_MAPPINGS,
                    kernel_memory_bytes,
                },
                Err(error) => TableJson::Unreadable { error: format!("{error:#}") },
            }),
        };
        println!("{}", serde_json::to_string(&status)?);
        return Ok(());
    }
    if interfaces.is_empty() {
        println!("no interface attached (pins in {})", pins.root().display());
    }
    for (attachment, programs, stale) in &interfaces {
        let version = pins.recorded_version(&attachment.iface).unwrap_or_else(|| "unknown".into());
        println!("{}\tingress: {}\tegress: tc\tversion: {version}", attachment.iface, attachment.ingress);
        if let Some(why) = stale {
            println!(
                "  STALE: {why}; nothing is rewritten on it: `rewrite attach --iface {}` attaches it again",
                attachment.iface
            );
        }
        for program in programs {
            println!("  {}\tid {}\ttag {}\t{}", program.pin, program.id, program.tag, program.attached);
        }
    }
    match table {
        Some(Err(error)) => println!("table: cannot be read: {error}"),
        Some(Ok((capacity, addresses, ports, prefixes, memory))) => println!(
            "table: {addresses} address and {ports} port entries of {capacity} each, {prefixes} prefixes of {}; \
             kernel memory {:.1} MiB (`attach --max-mappings` sizes a new table)",
            rewrite_common::maps::MAX_PREFIX_MAPPINGS,
            memory as f64 / f64::from(1 << 20)
        ),
        None => println!("table: none"),
    }
    match agent {
        Some(pid) => println!("agent: running (pid {pid})"),
        None => println!("agent: not running"),
    }
    if let Some(fleet) = agent.and(fleet) {
        let flag = |name: &str| fleet[name].as_bool().unwrap_or(false);
        println!(
            "fleet: {}, revision {}{}",
            if flag("connected") { "connected" } else { "etcd unreachable" },
            fleet["revision"],
            if flag("stale") { ", stale: the maps keep the last fleet state known until etcd answers" } else { "" }
        );
    }
    println!("this binary carries programs version {version}");
    Ok(())
}

/// The live state as a config file.
fn export(pins: &PinLayout) -> anyhow::Result<String> {
    let interfaces = status::attached(pins)?
        .into_iter()
        .map(|attachment| config::InterfaceConfig { name: attachment.iface, ingress: attachment.ingress.mode() })
        .collect();
    let (max_mappings, table) = if pins.maps_dir().exists() {
        let live = MappingTable::open(pins)?;
        let mut table = DesiredTable::new(Capacity::of_table(live.capacity()));
        for spec in live_specs(&live.list()?) {
            table.admit(spec, None, Source::Local).with_context(|| format!("the live table holds {spec}"))?;
        }
        (Some(live.capacity()), table)
    } else {
        (None, DesiredTable::new(Capacity::of_table(DEFAULT_MAX_MAPPINGS)))
    };
    let bounce = if objects::bounce_enabled(pins) {
        Some(rewrite_user::bounce::BounceTable::open(pins)?.config()?)
    } else {
        None
    };
    let gate = if pins.map(rewrite_common::gate::MAP_GATE_SETTINGS).exists() {
        Some(rewrite_user::gate::GateTable::open(pins)?.config()?)
    } else {
        None
    };
    Ok(config::render(&config::Config { max_mappings, interfaces, table, fleet: None, bounce, gate }))
}

fn run_map(pins: &PinLayout, command: MapCommand) -> anyhow::Result<()> {
    let mut table = MappingTable::open(pins)?;
    match command {
        MapCommand::Add { virtual_side, real_side } => {
            let spec = MappingSpec::new(virtual_side, real_side)?;
            match table.add(&spec)? {
                AddPlan::Unchanged => println!("unchanged {spec}"),
                AddPlan::Insert => println!("added {spec}"),
                AddPlan::Replace { old_real } => println!("changed {spec} (was {old_real})"),
            }
            if !matches!(spec, MappingSpec::Prefix(_)) {
                warn_if_own_virtual_missing(spec.virtual_side().addr(), spec.real_addr());
            }
        }
        MapCommand::Del { virtual_side } => match virtual_side {
            Side::Address(virtual_addr) => match table.remove_mapping(virtual_addr)? {
                Removed::Mapping(real_addr) => println!("deleted {virtual_addr} -> {real_addr}"),
                Removed::Orphan(real_addr) => {
                    println!("deleted the half-applied reverse entry {real_addr} -> {virtual_addr}");
                }
            },
            Side::Prefix(prefix) => {
                let real_net = table.remove_prefix(prefix.net(), prefix.len())?;
                println!("deleted {prefix} -> {real_net}/{}", prefix.len());
            }
            Side::Service { addr, ports, protocol } => {
                let removed = table.remove_ports(protocol, addr, ports)?;
                println!("deleted {removed} mapped port(s) of {virtual_side}");
            }
        },
        MapCommand::List { json } => {
            let listing = table.list()?;
            for orphan in &listing.orphans {
                eprintln!(
                    "warning: half-applied entry: ingress rewrites REAL {} to {} but no mapping sends \
                     {} anywhere (an earlier command was interrupted); `rewrite map del {}` removes it",
                    orphan.real_addr, orphan.virtual_addr, orphan.virtual_addr, orphan.virtual_addr
                );
            }
            let rows = listing.rows();
            if json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                for row in rows {
                    println!("{} -> {}", row.virtual_side, row.real_side);
                }
            }
        }
    }
    Ok(())
}

/// When REAL is this host, ingress packets to REAL are delivered to VIRTUAL, which the
/// stack drops unless VIRTUAL is a local address too.
fn warn_if_own_virtual_missing(virtual_addr: IpAddr, real_addr: IpAddr) {
    let Ok(local) = iface::local_addresses() else {
        eprintln!("warning: could not list local addresses to check {real_addr}");
        return;
    };
    if local.contains(&real_addr) && !local.contains(&virtual_addr) {
        let host_prefix = if virtual_addr.is_ipv4() { 32 } else { 128 };
        eprintln!(
            "warning: REAL {real_addr} is an address of this host, but VIRTUAL {virtual_addr} is not \
             configured on any local interface: ingress packets to {real_addr} will be delivered to \
             {virtual_addr} and dropped. Add it, for example: ip addr add {virtual_addr}/{host_prefix} dev lo"
        );
    }
}
