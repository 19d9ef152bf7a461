//! `zkbench brokers`: the A→B→A round trip on four brokers, one after the
//! other in one run, with the same services, coordinator and load: classic
//! and quorum queues, on one node (the broker `AMQP_URL` names) and on a
//! 3-node cluster the benchmark starts (`testkit::broker_cluster`). What
//! replication costs is the difference between the rows.
//!
//! On the cluster every service is given the nodes starting from the first,
//! where the definitions are imported and so where each queue's leader (a
//! classic queue's only copy) lives: the figure is the queue's own cost
//! (Raft to two followers for a quorum queue), not the hop of a client
//! connected to a node that does not hold the queue.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use testkit::broker::BrokerUsers;
use testkit::broker_cluster::BrokerCluster;

use crate::scenarios::round_trip_on;
use crate::servers::{free_port, start, Kind};

#[derive(clap::Args, Debug)]
pub struct BrokersArgs {
    /// Seconds of 32 tasks in flight per broker.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Tasks one at a time per broker (after 10 to warm up).
    #[arg(long, default_value_t = 300)]
    sequential: usize,
}

/// The previous release's queues: classic, dead-lettering at most once.
fn as_classic(definitions: &Path) -> Result<()> {
    let text = std::fs::read_to_string(definitions)?;
    let mut defs: Value = serde_json::from_str(&text)?;
    for q in defs["queues"].as_array_mut().context("queues")? {
        let dlx = q["arguments"].get("x-dead-letter-exchange").cloned();
        q["arguments"] = match dlx {
            Some(dlx) => json!({"x-dead-letter-exchange": dlx}),
            None => json!({}),
        };
    }
    std::fs::write(definitions, serde_json::to_string_pretty(&defs)?)?;
    Ok(())
}

pub async fn run(args: BrokersArgs) -> Result<()> {
    let scratch = std::env::temp_dir().join(testkit::unique("zkbench-brokers"));
    std::fs::create_dir_all(&scratch)?;
    let (server, _) = start(Kind::Coordinator, &scratch.join("coordinator"), free_port()?, "").await?;
    let cluster = tokio::task::block_in_place(|| BrokerCluster::start(&scratch));
    let single_url = testkit::broker::service_url();
    let mut rows = Vec::new();
    for (nodes, kind) in [(1, "classic"), (1, "quorum"), (3, "classic"), (3, "quorum")] {
        let queue = testkit::broker::queue_name("bench-brokers");
        let (users, urls): (BrokerUsers, String) = if nodes == 1 {
            let dir = scratch.join(&queue);
            testkit::broker::write_set(&dir, &queue)?;
            let users = BrokerUsers { queue: queue.clone(), dir };
            if kind == "classic" {
                as_classic(&users.definitions())?;
            }
            tokio::task::block_in_place(|| testkit::broker::import_definitions(&users.definitions()))?;
            (users, single_url.clone())
        } else {
            let users = cluster.users(&queue);
            if kind == "classic" {
                as_classic(&users.definitions())?;
            }
            tokio::task::block_in_place(|| cluster.import(&users.definitions()));
            (users, cluster.urls(0))
        };
        let (a, b) = (users.flags_at("system-a", &urls), users.flags_at("system-b", &urls));
        let rt = round_trip_on(&server.addr, &scratch, args.sequential, args.secs, &queue, a, b)
            .await
            .with_context(|| format!("A→B→A on {nodes} node(s), {kind} queues"))?;
        eprintln!("{nodes} node(s), {kind}: {rt}");
        rows.push((nodes, kind, rt));
    }
    drop(cluster);
    println!("| broker | queues | one at a time p50 | p99 | 32 in flight: tasks/s | p50 | p99 |");
    println!("|---|---|---|---|---|---|---|");
    let ms = |v: &Value| format!("{:.1} ms", v.as_f64().unwrap_or(0.0) / 1000.0);
    for (nodes, kind, rt) in &rows {
        let (one, many) = (&rt["one_at_a_time"], &rt["concurrent"]);
        println!(
            "| {} | {kind} | {} | {} | {} | {} | {} |",
            if *nodes == 1 { "1 node" } else { "3-node cluster" },
            ms(&one["p50_us"]),
            ms(&one["p99_us"]),
            many["tasks_per_sec"],
            ms(&many["p50_us"]),
            ms(&many["p99_us"]),
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
