//! `config-change`: a new config version for every service.
//!
//! Each service follows `/config/<service>` with a watch and applies what
//! it reads; each instance reports the version it applied in its
//! registration node (`config_version`, the write's mzxid). Promise: every
//! live instance applies the new version, and soon; how soon is measured
//! by the server's own clock (the config write's mtime against the
//! instance's report).

use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};
use servicekit::auth::{HA_WORKER, SYSTEM_A, SYSTEM_B};

use super::Ctx;
use crate::observe::until;

/// A valid new setting per service: toggled, so every run is a change.
fn next(service: &str, current: &Value) -> Value {
    let mut v = if current.is_object() { current.clone() } else { json!({}) };
    let (key, a, b) = match service {
        SYSTEM_A => ("timeout_ms", 10_000, 12_000),
        SYSTEM_B => ("work_ms", 200, 100),
        _ => ("interval_ms", 1000, 800),
    };
    v[key] = if v[key].as_u64() == Some(a) { b.into() } else { a.into() };
    v
}

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    for service in [SYSTEM_A, SYSTEM_B, HA_WORKER] {
        let path = ctx.obs.layout.config(service);
        let current = ctx.obs.get(&path).await?.map(|(d, _, _)| d).unwrap_or_default();
        let current: Value = serde_json::from_slice(&current).unwrap_or(Value::Null);
        let new = next(service, &current);
        let (version, written) = ctx.obs.set(&path, new.to_string().as_bytes()).await?;
        ctx.report.saw(format!("set {path} = {new}: version {version}"));
        let members =
            until(&format!("every {service} applying version {version}"), Duration::from_secs(20), || async {
                let members = ctx.obs.members(service).await?;
                Ok(members.iter().all(|m| m.config_version() >= Some(version)).then_some(members))
            })
            .await;
        match members {
            Ok(members) => {
                let took: Vec<String> =
                    members.iter().map(|m| format!("{} in {} ms", m.instance, (m.mtime - written).max(0))).collect();
                ctx.report.kept(format!(
                    "all {} live {service} instances applied version {version} ({})",
                    members.len(),
                    took.join(", ")
                ));
            }
            Err(e) => {
                let members = ctx.obs.members(service).await?;
                let behind: Vec<String> = members
                    .iter()
                    .filter(|m| m.config_version() < Some(version))
                    .map(|m| format!("{} runs {:?}", m.instance, m.config_version()))
                    .collect();
                ctx.report.broke(format!("{e}: {}", behind.join(", ")));
            }
        }
    }
    Ok(())
}
