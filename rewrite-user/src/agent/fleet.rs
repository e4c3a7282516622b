//! The agent and the fleet table: a full sync at each snapshot, single changes from the
//! watch (a few map writes each), and the refused keys tried again as others change.

use std::{collections::BTreeMap, net::IpAddr, time::Instant};

use rewrite_common::spec::MappingKey;

use crate::{
    agent::dataplane::{Dataplane, empty_config, log_applied, refuse_etcd_capture, release_freed_memory},
    dataplane::{
        iface,
        lock::{WAIT, WriteLock},
    },
    fleet::{
        FleetMapping,
        watch::{KeyChange, Update},
    },
    table::{
        admission::{Change, DesiredTable, Source, is_own},
        live::MappingTable,
        plan::apply_change,
    },
};

impl Dataplane {
    pub(super) fn log_refusals(&self, refused: &BTreeMap<String, String>) {
        for (key, why) in refused.iter().filter(|(key, _)| !self.refused.contains_key(*key)) {
            tracing::warn!(key = %key, %why, "fleet mapping not applied");
        }
    }

    pub(super) fn publish_fleet_counts(&self) {
        let (mappings, refused, own) =
            (self.fleet.as_ref().map_or(0, BTreeMap::len), self.refused.len(), self.own.len());
        self.fleet_status(|fleet| {
            fleet.mappings = mappings;
            fleet.refused = refused;
            fleet.own = own;
        });
    }

    pub(super) fn fleet_update(&mut self, update: Update) {
        match update {
            Update::Snapshot { revision, entries, reason } => {
                let started = Instant::now();
                self.fleet = Some(entries.into_iter().map(|(key, entry)| (key, self.in_zone(entry))).collect());
                self.full_sync(reason, revision, started);
                self.record_fleet_status();
            }
            Update::Changes { revision, changes } => self.apply_changes(revision, changes),
            Update::Disconnected { error } => {
                tracing::warn!(%error, "lost the fleet table; the dataplane keeps the last state it knew, retrying");
                self.fleet_status(|fleet| {
                    if fleet.connected {
                        fleet.disconnects += 1;
                    }
                    fleet.connected = false;
                    fleet.stale = true;
                });
                self.record_fleet_status();
            }
            Update::Registered { pairs } => {
                for (real, virtual_addr) in &pairs {
                    tracing::info!(%real, %virtual_addr, "registered in the fleet table");
                    // Ingress restores packets to REAL to this VIRTUAL: the host must own it.
                    match iface::ensure_loopback_address(*virtual_addr) {
                        Ok(true) => tracing::info!(%virtual_addr, "added the claimed VIRTUAL to lo"),
                        Ok(false) => {}
                        Err(error) => tracing::error!(%virtual_addr, %error, "cannot add the claimed VIRTUAL to lo"),
                    }
                }
                self.fleet_status(|fleet| fleet.registered = Some(true));
            }
            Update::RegistrationFailed { error } => {
                tracing::error!(%error, "fleet registration failed; retrying");
                self.fleet_status(|fleet| fleet.registered = Some(false));
            }
        }
    }

    /// A fleet entry as this node's zone applies it: from here on, a mapping with a
    /// REAL per zone is the one of this zone.
    fn in_zone(&self, entry: Result<FleetMapping, String>) -> Result<FleetMapping, String> {
        entry.map(|mapping| mapping.in_zone(self.zone.as_deref()))
    }

    pub(super) fn full_sync(&mut self, reason: &'static str, revision: i64, started: Instant) {
        self.fleet_status(|fleet| {
            fleet.connected = true;
            *fleet.resyncs.entry(reason).or_default() += 1;
        });
        if !self.ready_for_fleet() {
            tracing::warn!("fleet table read, but the config is not valid yet: waiting for it before syncing");
            return;
        }
        let local = self.local.clone().unwrap_or_else(empty_config);
        match self.sync(&local) {
            Ok(prepared) => {
                log_applied(&prepared, reason, "fleet table", started);
                let seconds = started.elapsed().as_secs_f64();
                drop(prepared);
                release_freed_memory();
                self.fleet_status(|fleet| {
                    fleet.revision = revision;
                    fleet.last_sync_seconds = seconds;
                    fleet.stale = false;
                });
            }
            Err(error) => tracing::error!(reason, %error, "fleet sync failed; the dataplane keeps its state"),
        }
    }

    /// Applies single changes from the watch: a few map writes each. A change the table
    /// refuses is logged and counted, and a mapping it replaces is taken out (the maps
    /// never keep a mapping the table no longer has). Refused keys are tried again after
    /// every change, since a change can free what they need.
    pub(super) fn apply_changes(&mut self, revision: i64, changes: Vec<KeyChange>) {
        let changes: Vec<KeyChange> =
            changes.into_iter().map(|(key, entry)| (key, entry.map(|entry| self.in_zone(entry)))).collect();
        let Some(fleet) = self.fleet.as_mut() else { return };
        for (key, entry) in &changes {
            match entry {
                Some(entry) => fleet.insert(key.clone(), entry.clone()),
                None => fleet.remove(key),
            };
        }
        if !self.ready_for_fleet() || self.desired.is_none() {
            return;
        }
        let writing = WriteLock::take(&self.pins, "rewrite agent", WAIT);
        let table = writing.and_then(|writing| MappingTable::open(&self.pins).map(|table| (writing, table)));
        let result = table.and_then(|(_writing, mut table)| {
            let local_addrs = iface::local_addresses()?;
            let mut writes = Vec::new();
            for (key, entry) in changes {
                writes.push(self.admit_change(&key, entry, &local_addrs));
            }
            let retry: Vec<String> = self.refused.keys().cloned().collect();
            for key in retry {
                if let Some(Ok(mapping)) = self.fleet.as_ref().and_then(|fleet| fleet.get(&key)).cloned() {
                    writes.push(self.admit_change(&key, Some(Ok(mapping)), &local_addrs));
                }
            }
            for change in &writes {
                apply_change(&mut table, change)?;
            }
            Ok(writes.len())
        });
        self.publish_fleet_counts();
        match result {
            Ok(count) => {
                tracing::debug!(revision, count, "applied fleet changes");
                self.fleet_status(|fleet| {
                    fleet.revision = revision;
                    fleet.changes += 1;
                });
            }
            Err(error) => {
                // The maps may now differ from what was admitted: start again from the table.
                tracing::error!(revision, %error, "a fleet change could not be written; syncing the whole table again");
                self.full_sync("repair", revision, Instant::now());
            }
        }
    }

    /// Admits one key's new state into the desired table and says what the maps must do.
    pub(super) fn admit_change(
        &mut self,
        key: &str,
        entry: Option<Result<FleetMapping, String>>,
        local: &[IpAddr],
    ) -> Change {
        let Some(desired) = self.desired.as_mut() else { return Change::Unchanged };
        self.own.remove(key);
        let refusal = match entry {
            None => {
                self.refused.remove(key);
                return remove_fleet_key(desired, key);
            }
            Some(Ok(mapping)) if is_own(&mapping.spec, local) => {
                self.refused.remove(key);
                self.own.insert(key.to_owned());
                return remove_fleet_key(desired, key);
            }
            Some(Ok(mapping)) => match refuse_etcd_capture(&mapping.spec, &self.etcd_addrs) {
                Err(refusal) => refusal,
                Ok(()) => match desired.admit(mapping.spec, mapping.label, Source::Fleet) {
                    Ok(change) => {
                        self.refused.remove(key);
                        return change;
                    }
                    Err(refusal) => refusal.to_string(),
                },
            },
            Some(Err(why)) => why,
        };
        if self.refused.insert(key.to_owned(), refusal.clone()).is_none() {
            tracing::warn!(key, why = %refusal, "fleet mapping not applied");
        }
        remove_fleet_key(desired, key)
    }
}

/// Takes the fleet's mapping under etcd key `key` (its VIRTUAL as written) out of the
/// table; a key that names no VIRTUAL holds nothing there.
fn remove_fleet_key(desired: &mut DesiredTable, key: &str) -> Change {
    key.parse::<MappingKey>().map_or(Change::Unchanged, |key| desired.remove(&key, Source::Fleet))
}
