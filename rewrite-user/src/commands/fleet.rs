//! `rewrite fleet`: the fleet table in etcd, edited directly. Needs no pins and no root.

use anyhow::Context as _;
use rewrite_common::spec::{MappingSpec, Side};
use rewrite_user::{
    cli::{FleetCommand, PoolCommand, StoreArgs},
    config::written,
    desired::{Change, key_of},
    fleet::{FleetMapping, Store},
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
            FleetCommand::Add { virtual_side, real_side, label } => {
                let spec = MappingSpec::new(virtual_side, real_side)?;
                let change = store.add(FleetMapping { spec, label, node: None }).await?;
                let (virtual_text, real_text) = written(&spec);
                match change {
                    Change::Unchanged => println!("unchanged {virtual_text} -> {real_text}"),
                    Change::Changed { old, .. } => {
                        println!("changed {virtual_text} -> {real_text} (was {})", written(&old).1)
                    }
                    _ => println!("added {virtual_text} -> {real_text}"),
                }
                Ok(())
            }
            FleetCommand::Del { virtual_side } => {
                let key = virtual_key(virtual_side);
                let removed = store.delete(&key).await?;
                let (virtual_text, real_text) = written(&removed.spec);
                println!("deleted {virtual_text} -> {real_text}");
                Ok(())
            }
            FleetCommand::Pool(command) => pool(&mut store, command).await,
        }
    })
}

/// The key of a VIRTUAL side: as `map add` writes it (a mapping of that side would be
/// stored under the same key).
fn virtual_key(side: Side) -> String {
    match MappingSpec::new(side, side) {
        Ok(spec) => key_of(&spec),
        Err(_) => side.to_string(),
    }
}

async fn list(store: &mut Store, json: bool) -> anyhow::Result<()> {
    let snapshot = store.snapshot().await?;
    let (_, refused) = snapshot.admitted();
    let refused: std::collections::BTreeMap<String, String> = refused.into_iter().collect();
    if json {
        let rows: Vec<serde_json::Value> = snapshot
            .entries
            .iter()
            .map(|(key, entry)| match entry {
                Ok(mapping) => {
                    let (virtual_text, real_text) = written(&mapping.spec);
                    serde_json::json!({
                        "virtual": virtual_text, "real": real_text, "label": mapping.label, "node": mapping.node,
                        "refused": refused.get(key),
                    })
                }
                Err(why) => serde_json::json!({ "key": key, "refused": why }),
            })
            .collect();
        println!("{}", serde_json::json!({ "revision": snapshot.revision, "mappings": rows }));
        return Ok(());
    }
    for (key, entry) in &snapshot.entries {
        match entry {
            Ok(mapping) => {
                let (virtual_text, real_text) = written(&mapping.spec);
                let label = mapping.label.as_deref().map(|label| format!("  # {label}")).unwrap_or_default();
                let refusal = refused.get(key).map(|why| format!("  (refused: {why})")).unwrap_or_default();
                println!("{virtual_text} -> {real_text}{label}{refusal}");
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
