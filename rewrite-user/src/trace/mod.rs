//! `rewrite trace`: why a packet was or was not rewritten, one line per packet, on
//! demand (see `rewrite_common::trace` for what the programs do). The reader writes
//! what it selects (hooks, interface, filter, rate) to the pinned control map, then
//! holds the lease that turns the records on, and gives it up when it stops; a reader
//! that dies stops the records within the lease's three seconds. Nothing of the
//! running dataplane changes, so a trace needs no change to an agent that keeps it.

mod filter;
mod record;

use std::{
    fs::File,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use aya::maps::{Array, MapData, PerCpuArray};
use nix::fcntl::Flock;
use rewrite_common::{
    maps::MAP_COUNTERS,
    trace::{
        MAP_TRACE_BUDGET, MAP_TRACE_CONTROL, MAP_TRACE_LEASE, MAP_TRACE_RING, TraceBudget, TraceControl, TraceFilter,
        TraceRecord,
    },
};

pub use self::{
    filter::{FilterError, parse_filter},
    record::{Flow, InterfaceNames, Matched, TraceLine, interface_name},
};
use crate::{
    Error,
    dataplane::{
        iface,
        lock::try_lock,
        objects::open_pinned,
        pins::PinLayout,
        ring::{self, Clock},
    },
};

/// Records each CPU writes at most per second unless `--rate` says otherwise: enough to
/// follow a handshake or a stream, too few to load a host that forwards millions.
pub const DEFAULT_RATE: u32 = 1_000;
/// The most `--rate` allows.
pub const MAX_RATE: u32 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("another `rewrite trace` is running here ({holder}); one trace at a time (lock {})", lock.display())]
    Busy { holder: String, lock: PathBuf },
    #[error(
        "the programs attached here predate `rewrite trace` ({} is missing): `rewrite upgrade` loads this binary's",
        map.display()
    )]
    NotTraceable { map: PathBuf },
    #[error("--rate {0}: records per second per CPU, from 1 to {MAX_RATE}")]
    Rate(u32),
}

/// What a trace selects.
#[derive(Clone, Debug)]
pub struct TraceRequest {
    pub filter: TraceFilter,
    /// `HOOK_*` bits.
    pub hooks: u32,
    /// Only this interface.
    pub iface: Option<String>,
    pub per_cpu_per_second: u32,
}

/// What a trace saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceSummary {
    pub records: u64,
    /// Selected packets the programs did not record: over the rate, or the ring was
    /// full.
    pub dropped: u64,
}

/// Follows the selected packets until `sink` returns false, `deadline` passes or `stop`
/// is set (within half a second); `on_dropped` hears the number of selected packets
/// not recorded so far, each time it grows. One trace at a time per pin directory.
pub fn follow(
    pins: &PinLayout,
    request: &TraceRequest,
    deadline: Option<Instant>,
    stop: &AtomicBool,
    mut sink: impl FnMut(TraceLine) -> bool,
    mut on_dropped: impl FnMut(u64),
) -> Result<TraceSummary, Error> {
    if !(1..=MAX_RATE).contains(&request.per_cpu_per_second) {
        return Err(TraceError::Rate(request.per_cpu_per_second).into());
    }
    let ifindex = request.iface.as_deref().map(iface::index).transpose()?.unwrap_or(0);
    if pins.map(MAP_COUNTERS).exists() && !pins.map(MAP_TRACE_CONTROL).exists() {
        return Err(TraceError::NotTraceable { map: pins.map(MAP_TRACE_CONTROL) }.into());
    }
    let _lock = TraceLock::take(pins)?;
    let mut control: Array<MapData, TraceControl> = Array::try_from(open_pinned(pins, MAP_TRACE_CONTROL)?)
        .map_err(|source| Error::map(MAP_TRACE_CONTROL, source))?;
    let selection = TraceControl {
        filter: request.filter,
        hooks: request.hooks,
        ifindex,
        per_cpu_per_second: request.per_cpu_per_second,
    };
    // Before the lease: the programs never see a half-written request.
    control.set(0, selection, 0).map_err(|source| Error::map(MAP_TRACE_CONTROL, source))?;
    let budget = Budget::open(pins)?;
    let dropped_before = budget.dropped()?;
    let clock = Clock::now();
    let mut names = InterfaceNames::default();
    let mut summary = TraceSummary::default();
    let mut reported = 0;
    let mut check_dropped = |summary: &mut TraceSummary| -> Result<bool, Error> {
        summary.dropped = budget.dropped()?.saturating_sub(dropped_before);
        if summary.dropped > reported {
            reported = summary.dropped;
            on_dropped(reported);
        }
        Ok(!stop.load(Ordering::Relaxed))
    };
    let mut records = 0;
    ring::follow_with::<TraceRecord>(
        pins,
        MAP_TRACE_RING,
        MAP_TRACE_LEASE,
        deadline,
        |raw| {
            records += 1;
            sink(TraceLine::of(&raw, &clock, &mut names)) && !stop.load(Ordering::Relaxed)
        },
        || check_dropped(&mut summary),
    )?;
    check_dropped(&mut summary)?;
    summary.records = records;
    Ok(summary)
}

/// Whether a trace reader holds the lease now.
pub fn reader_present(pins: &PinLayout) -> Result<bool, Error> {
    ring::reader_present(pins, MAP_TRACE_LEASE)
}

/// The per-CPU budgets, for what they dropped.
struct Budget {
    map: PerCpuArray<MapData, TraceBudget>,
}

impl Budget {
    fn open(pins: &PinLayout) -> Result<Self, Error> {
        let map = PerCpuArray::try_from(open_pinned(pins, MAP_TRACE_BUDGET)?)
            .map_err(|source| Error::map(MAP_TRACE_BUDGET, source))?;
        Ok(Self { map })
    }

    /// Selected packets not recorded since the map was created, over every CPU.
    fn dropped(&self) -> Result<u64, Error> {
        let values = self.map.get(&0, 0).map_err(|source| Error::map(MAP_TRACE_BUDGET, source))?;
        Ok(values.iter().map(|budget| budget.dropped).sum())
    }
}

/// The one-trace-at-a-time lock of a pin directory: an `flock`, gone with the process.
struct TraceLock {
    _lock: Flock<File>,
}

impl TraceLock {
    fn take(pins: &PinLayout) -> Result<Self, Error> {
        let path = pins.run_record("trace").with_extension("lock");
        match try_lock(&path, "rewrite trace")? {
            Ok(lock) => Ok(Self { _lock: lock }),
            Err(holder) => Err(TraceError::Busy { holder: format!("pid {holder}"), lock: path }.into()),
        }
    }
}
