//! `rewrite trace`: what the command prints (the grammar is in `cli`, the work in
//! `rewrite_user::trace`).

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use rewrite_common::trace::{ALL_HOOKS, HOOK_TC_EGRESS, HOOK_TC_INGRESS, HOOK_XDP};
use rewrite_user::{
    dataplane::pins::PinLayout,
    trace::{TraceLine, TraceRequest, follow, parse_filter},
};

use crate::commands::stats::{deadline, print_records};

/// The command's arguments, as `cli::Command::Trace` holds them.
pub struct TraceArgs {
    pub iface: Option<String>,
    pub hook: Vec<String>,
    pub count: Option<u64>,
    pub timeout: Option<f64>,
    pub rate: u32,
    pub json: bool,
    pub filter: Vec<String>,
}

pub fn run(pins: &PinLayout, args: TraceArgs) -> anyhow::Result<()> {
    let filter = parse_filter(&args.filter)?;
    let hooks = if args.hook.is_empty() {
        ALL_HOOKS
    } else {
        args.hook.iter().map(|hook| hook_bit(hook)).try_fold(0, |hooks, bit| bit.map(|bit| hooks | u32::from(bit)))?
    };
    let request = TraceRequest { filter, hooks, iface: args.iface, per_cpu_per_second: args.rate };
    let json = args.json;
    stop_on_signals()?;
    let summary = follow(
        pins,
        &request,
        deadline(args.timeout),
        &STOP,
        print_records::<TraceLine>(json, args.count),
        |dropped| report_dropped(json, dropped, args.rate),
    )
    .context("cannot trace")?;
    // On stderr, so that the records on stdout stay one kind of line.
    if json {
        eprintln!("{}", serde_json::json!({ "records": summary.records, "dropped": summary.dropped }));
    } else {
        eprintln!("trace: {} records, {} selected packets not recorded", summary.records, summary.dropped);
    }
    Ok(())
}

/// Set by SIGINT or SIGTERM: the trace stops, gives its lease up and prints its summary.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn stop_on_signals() -> anyhow::Result<()> {
    let action = SigAction::new(SigHandler::Handler(request_stop), SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("cannot handle {signal}"))?;
    }
    Ok(())
}

fn hook_bit(hook: &str) -> anyhow::Result<u8> {
    match hook {
        "xdp" => Ok(HOOK_XDP),
        "tc-ingress" => Ok(HOOK_TC_INGRESS),
        "tc-egress" => Ok(HOOK_TC_EGRESS),
        other => anyhow::bail!("--hook {other:?}: xdp, tc-ingress or tc-egress"),
    }
}

fn report_dropped(json: bool, dropped: u64, rate: u32) {
    if json {
        eprintln!("{}", serde_json::json!({ "dropped": dropped }));
    } else {
        eprintln!(
            "trace: {dropped} selected packets not recorded so far (over {rate} per second per CPU, or the ring was full)"
        );
    }
}
