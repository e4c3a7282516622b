//! `rewrite fleet`: the fleet table in etcd, edited directly. Needs no pins and no root.

use anyhow::Context as _;
use rewrite_common::spec::{MappingKey, MappingSpec};
use rewrite_user::{
    cli::{FleetCommand, PoolCommand, StoreArgs},
    fleet::{FleetMapping, Store},
    table::admission::Change,
};

pub fn run(store: &StoreArgs, command: FleetCommand) -> anyhow::Result<()> {
    let options = store
        .options()
        .context("`rewrite fleet` needs --etcd URL and --prefix PREFIX (or REWRITE_ETCD and REWRITE_FLEET_PREFIX)")?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start a runtime")?;
    runtime.block_on(async {
        let mut store = Store::connect(&options).await?;
        match command {
            FleetCommand::List { json } => list(&mut store, json).await,
            FleetCommand::Add { virtual_side, real_side, label, zones } => {
                let spec = MappingSpec::new(virtual_side, real_side)?;
                let mapping = zones
                    .into_iter()
                    .try_fold(FleetMapping::new(spec, label, None), |mapping, (zone, real)| {
                        mapping.with_zone(&zone, real)
                    })
                    .map_err(anyhow::Error::msg)?;
                let change = store.add(mapping).await?;
                match change {
                    Change::Unchanged => println!("unchanged {spec}"),
                    Change::Changed { old, .. } => println!("changed {spec} (was {})", old.real_side()),
                    _ => println!("added {spec}"),
                }
                Ok(())
            }
            FleetCommand::Del { virtual_side } => {
                let removed = store.delete(&MappingKey(virtual_side).to_string()).await?;
                println!("deleted {}", removed.spec);
                Ok(())
            }
            FleetCommand::Pool(command) => pool(&mut store, command).await,
        }
    })
}

/// `fleet list --json`.
#[derive(Debug, serde::Serialize)]
struct FleetListing<'a> {
    revision: i64,
    mappings: Vec<FleetRow<'a>>,
}

#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
enum FleetRow<'a> {
    Mapping {
        #[serde(rename = "virtual")]
        virtual_side: rewrite_common::spec::Side,
        #[serde(rename = "real")]
        real_side: rewrite_common::spec::Side,
        label: Option<&'a str>,
        node: Option<&'a str>,
        /// A REAL per zone, for agents in that zone.
        #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        zones: std::collections::BTreeMap<&'a str, rewrite_common::spec::Side>,
        refused: Option<&'a str>,
    },
    NotAMapping {
        key: &'a str,
        refused: &'a str,
    },
}

async fn list(store: &mut Store, json: bool) -> anyhow::Result<()> {
    let snapshot = store.snapshot().await?;
    let (_, refused) = snapshot.admitted();
    let refused: std::collections::BTreeMap<String, String> = refused.into_iter().collect();
    if json {
        let mappings = snapshot
            .entries
            .iter()
            .map(|(key, entry)| match entry {
                Ok(mapping) => FleetRow::Mapping {
                    virtual_side: mapping.spec.virtual_side(),
                    real_side: mapping.spec.real_side(),
                    label: mapping.label.as_deref(),
                    node: mapping.node.as_deref(),
                    zones: mapping.zones.iter().map(|(zone, spec)| (zone.as_str(), spec.real_side())).collect(),
                    refused: refused.get(key).map(String::as_str),
                },
                Err(why) => FleetRow::NotAMapping { key, refused: why },
            })
            .collect();
        println!("{}", serde_json::to_string(&FleetListing { revision: snapshot.revision, mappings })?);
        return Ok(());
    }
    for (key, entry) in &snapshot.entries {
        match entry {
            Ok(mapping) => {
                let label = mapping.label.as_deref().map(|label| format!("  # {label}")).unwrap_or_default();
                let refusal = refused.get(key).map(|why| format!("  (refused: {why})")).unwrap_or_default();
                let zones: Vec<String> =
                    mapping.zones.iter().map(|(zone, spec)| format!("{zone}: {}", spec.real_side())).collect();
                let zones = if zones.is_empty() { String::new() } else { format!("  [{}]", zones.join(", ")) };
                println!("{}{zones}{label}{refusal}", mapping.spec);
            }
            Err(why) => println!("{key}: not a mapping ({why})"),
        }
    }
    Ok(())
}

async fn pool(store: &mut Store, command: PoolCommand) -> anyhow::Result<()> {
    match command {
        PoolCommand::List { json } => {
            let pools = store.pools().await?;
            if json {
                println!("{}", serde_json::to_string(&pools)?);
            } else {
                for pool in pools {
                    println!(
                        "{}: {} ({} claimed of {})",
                        pool.name,
                        pool.prefixes.join(" "),
                        pool.claims.len(),
                        pool.size
                    );
                    for (address, claim) in &pool.claims {
                        println!("  {address} -> {} (node {})", claim.real, claim.node);
                    }
                }
            }
        }
        PoolCommand::Add { name, prefixes } => {
            store.pool_add(&name, &prefixes).await?;
            println!("added pool {name}: {}", prefixes.join(" "));
        }
        PoolCommand::Del { name } => {
            let released = store.pool_delete(&name).await?;
            println!("deleted pool {name} and its {released} claim(s)");
        }
        PoolCommand::Release { name, address } => {
            let claim = store.pool_release(&name, address).await?;
            println!("released {address} of pool {name} (was node {})", claim.node);
        }
    }
    Ok(())
}
