//! `gate log`: samples of the packets the gate denied, from its event ring.

use std::{fmt, net::IpAddr, time::Instant};

use rewrite_common::{
    gate::{GateSample, MAP_GATE_LOG, MAP_GATE_LOG_LEASE},
    protocol::Protocol,
};
use serde::Serialize;

use crate::{
    Error,
    dataplane::{
        pins::PinLayout,
        ring::{self, Clock},
    },
};

/// A denied packet as `gate log` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Unix time, seconds.
    pub time: f64,
    /// `dropped` (enforce) or `would_drop` (monitor).
    pub verdict: &'static str,
    pub protocol: Protocol,
    pub source: IpAddr,
    pub port: u16,
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3} {} {} {} -> port {}", self.time, self.verdict, self.protocol, self.source, self.port)
    }
}

/// Follows the sampled denied packets (at most one per CPU per 10 ms, and only while
/// this reader is there) until `sink` returns false or `deadline` passes. One reader
/// at a time.
pub fn follow_samples(
    pins: &PinLayout,
    deadline: Option<Instant>,
    mut sink: impl FnMut(Sample) -> bool,
) -> Result<(), Error> {
    let clock = Clock::now();
    ring::follow::<GateSample>(pins, MAP_GATE_LOG, MAP_GATE_LOG_LEASE, deadline, |raw| {
        sink(Sample {
            time: clock.to_unix(raw.time_ns),
            verdict: if raw.dropped != 0 { "dropped" } else { "would_drop" },
            protocol: Protocol::from_number(raw.protocol).unwrap_or(Protocol::Tcp),
            source: IpAddr::from(raw.src),
            port: raw.dst_port,
        })
    })
}

/// Whether a `gate log` reader is following the samples now.
pub fn log_reader_present(pins: &PinLayout) -> Result<bool, Error> {
    ring::reader_present(pins, MAP_GATE_LOG_LEASE)
}
