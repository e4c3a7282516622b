//! Event rings the programs fill only while a reader holds a lease (a pinned `u64`:
//! the `bpf_ktime_get_ns` time until which a reader is there), so that a ring nobody
//! reads costs nothing and does not count every event as lost. The reader renews the
//! lease every half second and gives it up when it stops; one that dies stops the
//! events within `LOG_LEASE_NS`.

use std::{
    os::fd::AsRawFd as _,
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{Array, MapData, RingBuf};
use rewrite_common::maps::LOG_LEASE_NS;

use crate::{Error, dataplane::objects::open_pinned, dataplane::pins::PinLayout};

/// A reader's presence, held while it follows a ring.
struct LogLease {
    map: Array<MapData, u64>,
    name: &'static str,
}

impl LogLease {
    fn open(pins: &PinLayout, name: &'static str) -> Result<Self, Error> {
        let map = Array::try_from(open_pinned(pins, name)?).map_err(|source| Error::map(name, source))?;
        Ok(Self { map, name })
    }

    fn renew(&mut self) -> Result<(), Error> {
        self.map.set(0, monotonic_ns() + LOG_LEASE_NS, 0).map_err(|source| Error::map(self.name, source))
    }
}

impl Drop for LogLease {
    fn drop(&mut self) {
        let _ = self.map.set(0, 0, 0);
    }
}

/// Whether a reader holds the lease `lease_map` now.
pub fn reader_present(pins: &PinLayout, lease_map: &'static str) -> Result<bool, Error> {
    let map: Array<MapData, u64> =
        Array::try_from(open_pinned(pins, lease_map)?).map_err(|source| Error::map(lease_map, source))?;
    let until = map.get(&0, 0).map_err(|source| Error::map(lease_map, source))?;
    Ok(monotonic_ns() < until)
}

/// Holds the lease `lease_map` and hands each record of the ring `ring_map` (a plain
/// `T` the programs write whole) to `sink`, until `sink` returns false or `deadline`
/// passes. Records left from an earlier reader's time are skipped.
pub fn follow<T: Copy>(
    pins: &PinLayout,
    ring_map: &'static str,
    lease_map: &'static str,
    deadline: Option<Instant>,
    sink: impl FnMut(T) -> bool,
) -> Result<(), Error> {
    follow_with(pins, ring_map, lease_map, deadline, sink, || Ok(true))
}

/// [`follow`], calling `tick` at least every half second (for a reader that also
/// watches counters beside the ring, or stops on a signal): it returns whether to go
/// on.
pub fn follow_with<T: Copy>(
    pins: &PinLayout,
    ring_map: &'static str,
    lease_map: &'static str,
    deadline: Option<Instant>,
    mut sink: impl FnMut(T) -> bool,
    mut tick: impl FnMut() -> Result<bool, Error>,
) -> Result<(), Error> {
    let mut ring: RingBuf<MapData> =
        RingBuf::try_from(open_pinned(pins, ring_map)?).map_err(|source| Error::map(ring_map, source))?;
    let mut lease = LogLease::open(pins, lease_map)?;
    while ring.next().is_some() {}
    loop {
        lease.renew()?;
        if !tick()? {
            return Ok(());
        }
        while let Some(item) = ring.next() {
            if item.len() < size_of::<T>() {
                continue;
            }
            // SAFETY: the programs write whole `T`s, plain integers and byte arrays;
            // read_unaligned copies one out of the ring's memory, whatever its
            // alignment.
            let record = unsafe { item.as_ptr().cast::<T>().read_unaligned() };
            drop(item);
            if !sink(record) {
                return Ok(());
            }
        }
        let timeout = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(());
                }
                left.min(Duration::from_millis(500))
            }
            None => Duration::from_millis(500),
        };
        wait_readable(ring.as_raw_fd(), timeout);
    }
}

/// Waits until `fd` is readable or `timeout` passes (an interrupted wait returns
/// early, which only means one more look at the ring).
fn wait_readable(fd: i32, timeout: Duration) {
    let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&raw mut poll, 1, millis) };
}

/// Converts the programs' `bpf_ktime_get_ns` (CLOCK_MONOTONIC) to wall-clock time.
pub(crate) struct Clock {
    pub(crate) unix_at_start: f64,
    pub(crate) monotonic_at_start: u64,
}

impl Clock {
    pub(crate) fn now() -> Self {
        let unix_at_start =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64());
        Self { unix_at_start, monotonic_at_start: monotonic_ns() }
    }

    pub(crate) fn to_unix(&self, monotonic_ns: u64) -> f64 {
        self.unix_at_start + (monotonic_ns as f64 - self.monotonic_at_start as f64) / 1e9
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which lives across the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut time) };
    u64::try_from(time.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(time.tv_nsec).unwrap_or(0))
}
