//! `bounce log`: the connect and disconnect events of bounced flows, from their ring.

use std::{fmt, net::SocketAddr, time::Instant};

use rewrite_common::{
    bounce::{BounceEvent, EVENT_CONNECT, MAP_BOUNCE_EVENTS, MAP_BOUNCE_LOG_LEASE, REASON_NAMES},
    protocol::Protocol,
};
use serde::Serialize;

use crate::{
    Error,
    bounce::service::socket_of,
    dataplane::{
        pins::PinLayout,
        ring::{self, Clock},
    },
};

/// A connect or disconnect event as `bounce log` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub time: f64,
    /// `connect` or `disconnect`.
    pub event: &'static str,
    /// For a disconnect: `fin`, `rst`, `idle` or `evicted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub protocol: &'static str,
    pub client: SocketAddr,
    pub listen: SocketAddr,
    pub source: SocketAddr,
    pub target: SocketAddr,
    /// For a disconnect: client -> target, then target -> client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packets: Option<[u64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<[u64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
}

impl Event {
    pub(crate) fn from_raw(raw: &BounceEvent, clock: &Clock) -> Self {
        let connect = raw.kind == EVENT_CONNECT;
        Self {
            time: clock.to_unix(raw.time_ns),
            event: if connect { "connect" } else { "disconnect" },
            reason: (!connect).then(|| REASON_NAMES.get(raw.reason as usize).copied().unwrap_or("unknown")),
            protocol: Protocol::from_number(raw.client.protocol).map_or("?", Protocol::name),
            client: socket_of(&raw.client.src, raw.client.src_port),
            listen: socket_of(&raw.client.dst, raw.client.dst_port),
            source: socket_of(&raw.target.src, raw.target.src_port),
            target: socket_of(&raw.target.dst, raw.target.dst_port),
            packets: (!connect).then_some(raw.packets),
            bytes: (!connect).then_some(raw.bytes),
            duration_seconds: (!connect).then(|| raw.duration_ns as f64 / 1e9),
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.3} {} {} {} -> {} via {} -> {}",
            self.time, self.event, self.protocol, self.client, self.listen, self.source, self.target
        )?;
        if let (Some(reason), Some(packets), Some(bytes), Some(duration)) =
            (self.reason, self.packets, self.bytes, self.duration_seconds)
        {
            write!(
                f,
                " {reason} after {duration:.3} s, {} packets/{} bytes out, {} packets/{} bytes back",
                packets[0], bytes[0], packets[1], bytes[1]
            )?;
        }
        Ok(())
    }
}

/// Reads events from the pinned ring buffer and hands each to `sink` until `sink`
/// returns false or `deadline` passes. The ring buffer has one reader: two `bounce log`
/// processes would each see part of the events.
pub fn follow_events(
    pins: &PinLayout,
    deadline: Option<Instant>,
    mut sink: impl FnMut(Event) -> bool,
) -> Result<(), Error> {
    let clock = Clock::now();
    ring::follow::<BounceEvent>(pins, MAP_BOUNCE_EVENTS, MAP_BOUNCE_LOG_LEASE, deadline, |raw| {
        sink(Event::from_raw(&raw, &clock))
    })
}

/// Whether a `bounce log` reader is following the events now.
pub fn log_reader_present(pins: &PinLayout) -> Result<bool, Error> {
    ring::reader_present(pins, MAP_BOUNCE_LOG_LEASE)
}
