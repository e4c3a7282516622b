//! Prometheus metrics, read from the maps at each scrape: per-mapping packets and
//! bytes, the outcome counters, how full each map is, and the result of the agent's
//! last apply. Served over HTTP by the agent (`/metrics`, 127.0.0.1:9464 by default).

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use rewrite_common::{
    counters::{DIRECTION_NAMES, OUTCOME_NAMES},
    maps::MAX_PREFIX_MAPPINGS,
};

use crate::{Error, dataplane::pins::PinLayout, table::counters::Counters, table::live::MappingTable};

type Labels = Vec<(String, String)>;

/// What the agent last did, for the metrics.
#[derive(Clone, Debug, Default)]
pub struct ApplyStatus {
    /// Seconds since the epoch of the last apply attempt; 0 before the first.
    pub timestamp: f64,
    pub succeeded: bool,
    pub attempts_succeeded: u64,
    pub attempts_failed: u64,
    /// The fleet table's state, if the agent follows one.
    pub fleet: Option<FleetStatus>,
}

/// What the agent knows of its fleet table, for the metrics.
#[derive(Clone, Debug, Default)]
pub struct FleetStatus {
    pub connected: bool,
    /// Whether the maps may lag the fleet table: no copy of it read since the agent
    /// started, or etcd unreachable now. The maps keep the last state known meanwhile.
    pub stale: bool,
    /// The etcd revision the maps reflect.
    pub revision: i64,
    /// Full reads of the table, by reason (start, reconnect, compaction, config, repair).
    pub resyncs: std::collections::BTreeMap<&'static str, u64>,
    pub disconnects: u64,
    /// Single changes applied from the watch.
    pub changes: u64,
    /// Mappings of the table, and those of them not applied (refused), now.
    pub mappings: usize,
    pub refused: usize,
    /// Mappings of the table whose REAL is this host, not applied here.
    pub own: usize,
    /// Seconds the last full sync took.
    pub last_sync_seconds: f64,
    /// Whether this node's registration is current (None: the agent registers none).
    pub registered: Option<bool>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
}

/// The gatekeeper's mode and per-reason counters.
fn register_gate(registry: &mut Registry, pins: &PinLayout) -> Result<(), Error> {
    let table = crate::gate::GateTable::open(pins)?;
    let counters = Family::<Labels, Counter>::default();
    for (name, value) in table.counters()? {
        counters.get_or_create(&labels(&[("reason", name)])).inc_by(value);
    }
    registry.register(
        "gate",
        "Packets to protected ports by what the gate did: passed (member, allowed_prefix, management), \
         would_drop (monitor mode), dropped (enforce mode)",
        counters,
    );
    let mode = Family::<Labels, Gauge>::default();
    let current = table.mode()?;
    for candidate in [crate::gate::Mode::Off, crate::gate::Mode::Monitor, crate::gate::Mode::Enforce] {
        mode.get_or_create(&labels(&[("mode", candidate.name())])).set(i64::from(candidate == current));
    }
    registry.register("gate_mode", "1 for the gate's current mode", mode);
    Ok(())
}

/// Bounce mode's counters, flows and services.
fn register_bounce(registry: &mut Registry, pins: &PinLayout) -> Result<(), Error> {
    let stats = crate::bounce::BounceStats::read(pins)?;
    let counters = Family::<Labels, Counter>::default();
    for (name, value) in &stats.counters {
        counters.get_or_create(&labels(&[("counter", name)])).inc_by(*value);
    }
    registry.register(
        "bounce",
        "Bounce mode's counters: flows opened (connects) and closed by reason, packets forwarded, new flows \
         refused (port_exhausted, unroutable, no_flow), events lost, helper errors",
        counters,
    );
    let gauge = |value: u64| {
        let gauge = Gauge::<i64>::default();
        gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        gauge
    };
    registry.register("bounce_live_flows", "Flows in the table that are not idle", gauge(stats.live_flows));
    registry.register(
        "bounce_flow_capacity",
        "Flows the table has room for",
        gauge(u64::from(stats.table_capacity_flows)),
    );
    registry.register(
        "bounce_evicted_flows",
        "Flows evicted from a full table (opened, minus closed, minus still in the table)",
        gauge(stats.evicted_flows),
    );
    let per_service = Family::<Labels, Gauge>::default();
    for row in crate::bounce::BounceTable::open(pins)?.list()? {
        let listen = format!("{}/{}", row.listen, row.protocol);
        let key = labels(&[("listen", &listen), ("target", &row.target.to_string())]);
        per_service.get_or_create(&key).set(i64::try_from(row.live_flows).unwrap_or(i64::MAX));
    }
    registry.register("bounce_service_live_flows", "Live flows per bounce service", per_service);
    Ok(())
}

/// Which mappings get series of their own (`--metrics-mappings`): four per mapping
/// (packets and bytes, each way) add up to 400,000 series at 100,000 mappings, more
/// than a Prometheus server wants from one target, so the default is a bounded top.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MappingSeries {
    None,
    /// The N mappings with the most packets (both ways) at the scrape.
    Top(usize),
    All,
}

impl MappingSeries {
    pub const DEFAULT: Self = Self::Top(100);
}

impl Default for MappingSeries {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl std::str::FromStr for MappingSeries {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "none" => Ok(Self::None),
            "all" => Ok(Self::All),
            _ => text
                .strip_prefix("top:")
                .and_then(|count| count.parse().ok())
                .filter(|count| *count > 0)
                .map(Self::Top)
                .ok_or_else(|| format!("{text:?} is not none, all or top:N (N > 0)")),
        }
    }
}

impl std::fmt::Display for MappingSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => write!(f, "none"),
            Self::Top(count) => write!(f, "top:{count}"),
            Self::All => write!(f, "all"),
        }
    }
}

/// The metrics text for the dataplane pinned at `pins`, in the Prometheus text format.
/// A part that cannot be read (a map gone or unreadable) is left out and counted in
/// `rewrite_metrics_read_errors{section}`; the rest is served.
pub fn render(pins: &PinLayout, apply: &ApplyStatus, series: MappingSeries) -> Result<String, Error> {
    let mut registry = Registry::with_prefix("rewrite");

    let build = Family::<Labels, Gauge>::default();
    let programs = crate::dataplane::objects::object_version(crate::dataplane::objects::EBPF_OBJECT);
    build.get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION")), ("programs", &programs)])).set(1);
    registry.register("build_info", "This build of rewrite: its version and its programs' version", build);

    let last_timestamp = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    last_timestamp.set(apply.timestamp);
    registry.register(
        "last_apply_timestamp_seconds",
        "When the agent last applied (or tried to apply) its config",
        last_timestamp,
    );
    let last_success = Gauge::<i64>::default();
    last_success.set(i64::from(apply.succeeded));
    registry.register("last_apply_success", "1 if the last apply succeeded, 0 if it was refused", last_success);
    let applies = Family::<Labels, Counter>::default();
    applies.get_or_create(&labels(&[("result", "success")])).inc_by(apply.attempts_succeeded);
    applies.get_or_create(&labels(&[("result", "failure")])).inc_by(apply.attempts_failed);
    registry.register("applies", "Config applies by result", applies);
    if let Some(fleet) = &apply.fleet {
        register_fleet(&mut registry, fleet);
    }

    let errors = Family::<Labels, Gauge>::default();
    let section = |name: &str, result: Result<(), Error>| {
        if let Err(error) = result {
            tracing::warn!(section = name, %error, "cannot read this part of the metrics; serving the rest");
            errors.get_or_create(&labels(&[("section", name)])).set(1);
        }
    };
    if pins.maps_dir().exists() {
        section("table", register_table(&mut registry, pins, series));
    }
    if crate::dataplane::objects::bounce_enabled(pins) {
        section("bounce", register_bounce(&mut registry, pins));
    }
    // A dataplane loaded before the gate existed has no gate maps until `upgrade`.
    if pins.map(rewrite_common::gate::MAP_GATE_SETTINGS).exists() {
        section("gate", register_gate(&mut registry, pins));
    }
    registry.register(
        "metrics_read_errors",
        "1 for each part of these metrics that could not be read at this scrape (and is missing)",
        errors,
    );

    let mut text = String::new();
    encode(&mut text, &registry).map_err(|_| Error::MetricsEncoding)?;
    Ok(text)
}

/// The mapping table: outcome counters, per-mapping series as `series` says, fill.
fn register_table(registry: &mut Registry, pins: &PinLayout, series: MappingSeries) -> Result<(), Error> {
    let table = MappingTable::open(pins)?;
    let listing = table.list()?;

    let outcomes = Family::<Labels, Counter>::default();
    let counters = Counters::read(pins)?;
    for (direction, row) in counters.values.iter().enumerate() {
        for (outcome, value) in row.iter().enumerate() {
            let key = labels(&[("direction", DIRECTION_NAMES[direction]), ("outcome", OUTCOME_NAMES[outcome])]);
            outcomes.get_or_create(&key).inc_by(*value);
        }
    }
    registry.register("packets", "Packets seen by the programs, by direction and outcome", outcomes);

    let mut rows = if series == MappingSeries::None { Vec::new() } else { table.counters(&listing)? };
    let total = listing.mappings.len() + listing.port_mappings.len() + listing.prefixes.len();
    if let MappingSeries::Top(count) = series {
        rows.sort_by_key(|(_, stats)| std::cmp::Reverse(stats.packets.iter().sum::<u64>()));
        rows.truncate(count);
    }
    let (packets, bytes) = (Family::<Labels, Counter>::default(), Family::<Labels, Counter>::default());
    for (row, stats) in &rows {
        for (direction, name) in DIRECTION_NAMES.iter().enumerate() {
            let key = labels(&[
                ("virtual", &row.virtual_side),
                ("real", &row.real_side),
                ("kind", row.kind),
                ("direction", name),
            ]);
            packets.get_or_create(&key).inc_by(stats.packets[direction]);
            bytes.get_or_create(&key).inc_by(stats.bytes[direction]);
        }
    }
    registry.register("mapping_packets", "Packets rewritten by each mapping, by direction", packets);
    registry.register("mapping_bytes", "Bytes (whole frames) rewritten by each mapping, by direction", bytes);
    gauge(
        registry,
        "mappings_without_series",
        "Mappings with no series of their own at this scrape (--metrics-mappings)",
        i64::try_from(total.saturating_sub(rows.len())).unwrap_or(i64::MAX),
    );

    let capacity = u64::from(table.capacity());
    let port_entries: u64 = listing.port_mappings.iter().map(|mapping| u64::from(mapping.count)).sum();
    let address_entries = (listing.mappings.len() + listing.orphans.len()) as u64;
    let fill = [
        ("address", address_entries, capacity),
        ("port", port_entries, capacity),
        ("prefix", listing.prefixes.len() as u64, u64::from(MAX_PREFIX_MAPPINGS)),
    ];
    let (entries, capacities, ratios) = (
        Family::<Labels, Gauge>::default(),
        Family::<Labels, Gauge>::default(),
        Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default(),
    );
    for (table_name, used, holds) in fill {
        let key = labels(&[("table", table_name)]);
        entries.get_or_create(&key).set(i64::try_from(used).unwrap_or(i64::MAX));
        capacities.get_or_create(&key).set(i64::try_from(holds).unwrap_or(i64::MAX));
        ratios.get_or_create(&key).set(used as f64 / holds as f64);
    }
    registry.register("map_entries", "Mappings (reverse entries) in each table", entries);
    registry.register("map_capacity", "Room in each table", capacities);
    registry.register("map_fill_ratio", "Entries divided by capacity, per table", ratios);
    Ok(())
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let gauge = Gauge::<i64>::default();
    gauge.set(value);
    registry.register(name, help, gauge);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let counter = Counter::<u64>::default();
    counter.inc_by(value);
    registry.register(name, help, counter);
}

fn register_fleet(registry: &mut Registry, fleet: &FleetStatus) {
    let count = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
    gauge(
        registry,
        "fleet_connected",
        "1 while the agent is connected to etcd and watching the fleet table",
        i64::from(fleet.connected),
    );
    gauge(
        registry,
        "fleet_stale",
        "1 while the maps may lag the fleet table (no copy read since the agent started, or etcd unreachable): \
         they keep the last state known",
        i64::from(fleet.stale),
    );
    gauge(registry, "fleet_revision", "The etcd revision of the fleet table the maps reflect", fleet.revision);
    gauge(registry, "fleet_mappings", "Mappings in the fleet table", count(fleet.mappings));
    gauge(
        registry,
        "fleet_refused_mappings",
        "Fleet mappings not applied because they conflict or are malformed (see the log)",
        count(fleet.refused),
    );
    gauge(
        registry,
        "fleet_own_mappings",
        "Fleet mappings whose REAL is this host: not applied here, since a host does not rewrite traffic to itself",
        count(fleet.own),
    );
    counter(registry, "fleet_disconnects", "Connections to etcd lost", fleet.disconnects);
    counter(registry, "fleet_changes", "Fleet table changes applied from the watch", fleet.changes);
    let resyncs = Family::<Labels, Counter>::default();
    for (reason, value) in &fleet.resyncs {
        resyncs.get_or_create(&labels(&[("reason", reason)])).inc_by(*value);
    }
    registry.register("fleet_resyncs", "Full reads of the fleet table, by reason", resyncs);
    let seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    seconds.set(fleet.last_sync_seconds);
    registry.register("fleet_last_sync_seconds", "How long the last full sync of the fleet table took", seconds);
    if let Some(registered) = fleet.registered {
        gauge(
            registry,
            "fleet_registered",
            "1 while this node's registration in the fleet table is current",
            i64::from(registered),
        );
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped. `status` is read at
/// each scrape.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pins: Arc<PinLayout>,
    status: Arc<std::sync::Mutex<ApplyStatus>>,
    series: MappingSeries,
) -> Result<(), Error> {
    let renders = Arc::new(Renders { series, ..Renders::default() });
    loop {
        let (stream, _) =
            listener.accept().await.map_err(|error| Error::io("accepting on", "metrics socket", error))?;
        let (pins, status, renders) = (pins.clone(), status.clone(), renders.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (pins, status, renders) = (pins.clone(), status.clone(), renders.clone());
                async move { Ok::<_, Infallible>(respond(pins, status, &renders, &request).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(error) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
        });
    }
}

/// The metrics rendering, shared by concurrent scrapes: rendering walks every map, so it
/// runs on a thread of its own (never on the agent's, which renews the fleet lease and
/// applies changes), one at a time, and scrapes that arrive while one runs take its
/// result. However many scrapes come at once, one rendering serves them.
#[derive(Debug, Default)]
struct Renders {
    series: MappingSeries,
    /// When the last rendering finished, and what it gave.
    last: tokio::sync::Mutex<Option<(std::time::Instant, Result<String, String>)>>,
}

impl Renders {
    async fn get(&self, pins: Arc<PinLayout>, status: Arc<std::sync::Mutex<ApplyStatus>>) -> Result<String, String> {
        let series = self.series;
        self.get_with(move || {
            let apply = status.lock().map(|status| status.clone()).unwrap_or_default();
            render(&pins, &apply, series).map_err(|error| error.to_string())
        })
        .await
    }

    /// [`Renders::get`] with the rendering given (the tests give a slow one).
    async fn get_with(
        &self,
        rendering: impl FnOnce() -> Result<String, String> + Send + 'static,
    ) -> Result<String, String> {
        let arrived = std::time::Instant::now();
        // Held across the rendering: a scrape that comes meanwhile waits for it.
        let mut last = self.last.lock().await;
        if let Some((finished, rendered)) = last.as_ref()
            && *finished >= arrived
        {
            return rendered.clone();
        }
        let rendered = tokio::task::spawn_blocking(rendering)
            .await
            .unwrap_or_else(|error| Err(format!("the metrics rendering failed: {error}")));
        *last = Some((std::time::Instant::now(), rendered.clone()));
        rendered
    }
}

async fn respond(
    pins: Arc<PinLayout>,
    status: Arc<std::sync::Mutex<ApplyStatus>>,
    renders: &Renders,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = code;
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    if request.method() != hyper::Method::GET || request.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "only GET /metrics is served here\n".into());
    }
    match renders.get(pins, status).await {
        Ok(text) => reply(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", text),
        Err(error) => {
            tracing::warn!(%error, "cannot read the maps for /metrics");
            reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{error}\n"))
        }
    }
}

/// Where the metrics listen unless `--metrics` says otherwise: loopback only.
pub fn default_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicU32, Ordering},
        time::{Duration, Instant},
    };

    use super::*;

    /// A slow rendering (a walk of a million mappings) under a scrape storm neither
    /// stalls the agent's thread (where the lease renewals run) nor runs once per scrape.
    #[test]
    fn a_scrape_storm_neither_stalls_the_agents_thread_nor_renders_per_scrape() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async {
            // What the agent's thread does meanwhile: a tick every 10 ms, like a lease
            // renewal waiting for its turn, for as long as the scrapes take.
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let ticker = {
                let done = done.clone();
                tokio::spawn(async move {
                    let mut longest_gap = Duration::ZERO;
                    let mut last = Instant::now();
                    while !done.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        longest_gap = longest_gap.max(last.elapsed());
                        last = Instant::now();
                    }
                    longest_gap
                })
            };
            // The ticker runs before the first scrape arrives.
            tokio::time::sleep(Duration::from_millis(30)).await;
            let renders = Arc::new(Renders::default());
            let renderings = Arc::new(AtomicU32::new(0));
            let scrapes: Vec<_> = (0..16)
                .map(|_| {
                    let (renders, renderings) = (renders.clone(), renderings.clone());
                    tokio::spawn(async move {
                        renders
                            .get_with(move || {
                                renderings.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(Duration::from_millis(300));
                                Ok("rendered".into())
                            })
                            .await
                    })
                })
                .collect();
            let started = Instant::now();
            for scrape in scrapes {
                assert_eq!(scrape.await.expect("the scrape task").as_deref(), Ok("rendered"));
            }
            assert!(started.elapsed() >= Duration::from_millis(300), "the scrapes rendered at least once");
            done.store(true, Ordering::SeqCst);
            let longest_gap = ticker.await.expect("the ticker");
            assert!(longest_gap < Duration::from_millis(150), "the agent's thread stalled for {longest_gap:?}");
            let renderings = renderings.load(Ordering::SeqCst);
            assert!(renderings <= 2, "16 concurrent scrapes took {renderings} renderings");
        });
    }
}
