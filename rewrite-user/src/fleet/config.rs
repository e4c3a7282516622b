//! The config file's `[fleet]` section (and `[fleet.node]`): read and written back.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    fleet::{FleetSettings, Layout, MappingExpiry, NodeOptions, StoreOptions, check_name},
    located::{Locator, Problem, quoted, seconds},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    etcd: Spanned<Vec<String>>,
    watch: Option<Spanned<Vec<String>>>,
    prefix: Spanned<String>,
    ca: Option<PathBuf>,
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    user: Option<String>,
    password_file: Option<PathBuf>,
    keepalive_seconds: Option<Spanned<u64>>,
    retry_max_seconds: Option<Spanned<u64>>,
    zone: Option<Spanned<String>>,
    node: Option<RawNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    id: Spanned<String>,
    real: Spanned<Vec<String>>,
    pool: Spanned<String>,
    lease_ttl_seconds: Option<Spanned<u64>>,
    expire_after: Option<Spanned<String>>,
    release_claim_after: Option<Spanned<String>>,
}

pub(crate) fn fleet_settings(raw: &RawFleet, locate: &Locator, problems: &mut Vec<Problem>) -> Option<FleetSettings> {
    let before = problems.len();
    if raw.etcd.get_ref().is_empty() {
        problems.push(locate.problem(raw.etcd.span().start, "etcd needs at least one endpoint URL".into()));
    }
    for list in std::iter::once(&raw.etcd).chain(raw.watch.as_ref()) {
        for endpoint in list.get_ref() {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                let message = format!("etcd endpoint {endpoint:?} must start with http:// or https://");
                problems.push(locate.problem(list.span().start, message));
            }
        }
    }
    if let Err(error) = Layout::new(raw.prefix.get_ref()) {
        problems.push(locate.problem(raw.prefix.span().start, error.to_string()));
    }
    match (&raw.cert, &raw.key) {
        (Some(_), Some(_)) | (None, None) => {}
        (Some(half), None) | (None, Some(half)) => {
            problems.push(locate.problem(half.span().start, "cert and key go together: give both or neither".into()));
        }
    }
    let mut store = StoreOptions::new(raw.etcd.get_ref().clone(), raw.prefix.get_ref().clone());
    store.watch_endpoints = raw.watch.as_ref().map(|watch| watch.get_ref().clone()).unwrap_or_default();
    store.ca = raw.ca.clone();
    store.cert = raw.cert.as_ref().map(|cert| cert.get_ref().clone());
    store.key = raw.key.as_ref().map(|key| key.get_ref().clone());
    store.user = raw.user.clone();
    store.password_file = raw.password_file.clone();
    store.keepalive = seconds(raw.keepalive_seconds.as_ref(), 10, 1..=600, "keepalive_seconds", locate, problems);
    let retry_max = seconds(raw.retry_max_seconds.as_ref(), 10, 1..=3600, "retry_max_seconds", locate, problems);
    if let Some(zone) = &raw.zone
        && let Err(error) = check_name("zone", zone.get_ref())
    {
        problems.push(locate.problem(zone.span().start, error.to_string()));
    }
    let zone = raw.zone.as_ref().map(|zone| zone.get_ref().clone());
    let node = raw.node.as_ref().map(|node| {
        if let Err(error) = check_name("node", node.id.get_ref()) {
            problems.push(locate.problem(node.id.span().start, error.to_string()));
        }
        if let Err(error) = check_name("pool", node.pool.get_ref()) {
            problems.push(locate.problem(node.pool.span().start, error.to_string()));
        }
        let mut reals = Vec::new();
        for text in node.real.get_ref() {
            match text.parse() {
                Ok(addr) => reals.push(addr),
                Err(_) => problems.push(locate.problem(node.real.span().start, format!("{text:?} is not an address"))),
            }
        }
        if node.real.get_ref().is_empty() {
            problems.push(locate.problem(node.real.span().start, "real needs at least one address".into()));
        }
        let lease_ttl = seconds(node.lease_ttl_seconds.as_ref(), 10, 2..=86400, "lease_ttl_seconds", locate, problems);
        let expiry = match &node.expire_after {
            None => MappingExpiry::WithLease,
            Some(text) => text.get_ref().parse().unwrap_or_else(|message| {
                problems.push(locate.problem(text.span().start, message));
                MappingExpiry::WithLease
            }),
        };
        let release_claim_after = node.release_claim_after.as_ref().and_then(|text| {
            crate::fleet::options::parse_release(text.get_ref()).unwrap_or_else(|message| {
                problems.push(locate.problem(text.span().start, message));
                None
            })
        });
        let options = NodeOptions {
            id: node.id.get_ref().clone(),
            reals,
            pool: node.pool.get_ref().clone(),
            lease_ttl,
            expiry,
            release_claim_after,
        };
        if let (Err(message), Some(text)) = (options.check(), &node.release_claim_after) {
            problems.push(locate.problem(text.span().start, message));
        }
        options
    });
    (problems.len() == before).then_some(FleetSettings { store, node, retry_max, zone })
}

/// The `[fleet]` section (and `[fleet.node]`), as [`parse`] reads it.
pub(crate) fn render_fleet(fleet: &FleetSettings) -> String {
    let list =
        |items: Vec<String>| format!("[{}]", items.iter().map(|item| quoted(item)).collect::<Vec<_>>().join(", "));
    let path = |path: &Path| quoted(&path.to_string_lossy());
    let store = &fleet.store;
    let mut out = format!("\n[fleet]\netcd = {}\n", list(store.endpoints.clone()));
    if !store.watch_endpoints.is_empty() {
        out.push_str(&format!("watch = {}\n", list(store.watch_endpoints.clone())));
    }
    out.push_str(&format!("prefix = {}\n", quoted(&store.prefix)));
    for (key, value) in
        [("ca", &store.ca), ("cert", &store.cert), ("key", &store.key), ("password_file", &store.password_file)]
    {
        if let Some(value) = value {
            out.push_str(&format!("{key} = {}\n", path(value)));
        }
    }
    if let Some(user) = &store.user {
        out.push_str(&format!("user = {}\n", quoted(user)));
    }
    out.push_str(&format!("keepalive_seconds = {}\n", store.keepalive.as_secs()));
    out.push_str(&format!("retry_max_seconds = {}\n", fleet.retry_max.as_secs()));
    if let Some(zone) = &fleet.zone {
        out.push_str(&format!("zone = {}\n", quoted(zone)));
    }
    if let Some(node) = &fleet.node {
        let expire_after = match node.expiry {
            MappingExpiry::WithLease => "lease".to_owned(),
            MappingExpiry::Never => "never".to_owned(),
            MappingExpiry::After(grace) => format!("{}s", grace.as_secs()),
        };
        out.push_str(&format!(
            "\n[fleet.node]\nid = {}\nreal = {}\npool = {}\nlease_ttl_seconds = {}\nexpire_after = {}\n\
             release_claim_after = {}\n",
            quoted(&node.id),
            list(node.reals.iter().map(ToString::to_string).collect()),
            quoted(&node.pool),
            node.lease_ttl.as_secs(),
            quoted(&expire_after),
            quoted(
                &node.release_claim_after.map_or_else(|| "never".to_owned(), |after| format!("{}s", after.as_secs()))
            )
        ));
    }
    out
}
