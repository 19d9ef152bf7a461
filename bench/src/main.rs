//! `zkbench`: the coordinator and Apache ZooKeeper, side by side, in one run,
//! with the same client (zookeeper-async, which pipelines concurrent
//! requests on one connection) and the same load.
//!
//! It starts both servers itself, each with its own fresh data dir, fsync
//! on and tickTime 2000 (see [`servers`]). Then, for each server in turn:
//!
//! - [`ops`]: create (1 KiB, sequential), setData, getData, exists at 1, 16
//!   and 256 outstanding requests on one connection and 256 over 16:
//!   throughput and p50/p99/p999 latency; watch latency; fan-out;
//! - [`scenarios`]: A→B→A through the real services and RabbitMQ, the lock
//!   (handoff, acquisitions/s, watch events per release), ha-worker failover;
//! - start-up to the first served request, RSS after loading `--nodes`
//!   znodes of 100 bytes, and recovery time from that data dir.
//!
//! Results: `--out` (JSON), a PNG of latency against load beside it, and
//! Markdown tables with ratios on stdout ([`report`]). Not a test: numbers
//! depend on the machine; BENCHMARKS.md records a run.
//!
//! `zkbench scale [sessions|watches|znodes|overload] [--quick]` ([`scale`])
//! measures instead how cost grows: 1k-10k sessions, 100k-1M watches,
//! 100k-5M znodes, and writes offered beyond what each server sustains.
//! `zkbench brokers` ([`brokers`]) runs A→B→A on classic and quorum queues,
//! one broker node and a cluster; `zkbench disk` ([`disk`]) puts a write's
//! latency beside the disk's own fdatasync; `zkbench pipeline`
//! ([`pipeline`]) runs A→B→A at scale and shows where its time goes.

mod brokers;
mod disk;
mod ops;
mod pipeline;
mod plot;
mod raw;
mod report;
mod scale;
mod scenarios;
mod servers;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use zookeeper_async::{Acl, CreateMode};

use crate::ops::Op;
use crate::servers::{free_port, repo_root, Kind, Server};

#[derive(Parser, Debug)]
#[command(name = "zkbench", about = "Benchmark the coordinator against Apache ZooKeeper, side by side")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Seconds per measured cell (and per lock and round-trip figure).
    #[arg(long, default_value_t = 3)]
    secs: u64,
    /// Znodes of 100 bytes loaded for the memory and recovery figures.
    #[arg(long, default_value_t = 200_000)]
    nodes: u64,
    /// Watchers for the fan-out figure.
    #[arg(long, default_value_t = 10_000)]
    watchers: usize,
    /// JVM heap for Apache ZooKeeper: big enough for `--nodes`.
    #[arg(long, default_value = "3g")]
    zk_heap: String,
    /// Where to write the JSON results; the plot goes beside it.
    #[arg(long, default_value = "docs/bench/results.json")]
    out: PathBuf,
    /// Run only against this server.
    #[arg(long, value_parser = ["coordinator", "zookeeper"])]
    only: Option<String>,
    /// Leave out the scenario figures (they need RabbitMQ).
    #[arg(long)]
    no_scenarios: bool,
    /// Only these throughput cells (comma-separated: create, setData,
    /// getData, exists), e.g. to profile one of them.
    #[arg(long, value_delimiter = ',', value_parser = ["create", "setData", "getData", "exists"])]
    ops: Vec<String>,
    /// Only the throughput cells: no watch, memory, recovery or scenario
    /// figures (with `--ops`, what `scripts/profile.sh` runs under perf).
    #[arg(long)]
    cells_only: bool,
    /// Keep the servers' data dirs and the coordinator's logs (printed at
    /// the end) instead of removing them.
    #[arg(long)]
    keep_data: bool,
    /// Measure nothing: redraw the plot and print the tables from `--out`.
    #[arg(long)]
    replot: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// How cost grows with sessions, watches, znodes and overload.
    Scale(scale::ScaleArgs),
    /// A→B→A on classic and quorum queues, one node and a 3-node cluster.
    Brokers(brokers::BrokersArgs),
    /// Single-outstanding writes against the disk's own fdatasync, and
    /// requests per fsync at 256 outstanding.
    Disk(disk::DiskArgs),
    /// A→B→A at 1-6 system-b and 32-512 in flight, stage by stage.
    Pipeline(pipeline::PipelineArgs),
}

/// Session timeout for the failover figure: the smallest both servers
/// grant at tickTime 2000 (2 ticks).
const HA_SESSION_MS: u64 = 4000;

async fn bench_server(server: &Server, startup: Duration, args: &Args, scratch: &Path) -> Result<Value> {
    let name = server.kind.name();
    let zk = ops::connect(&server.addr).await?;
    let base = "/bench";
    for (path, data) in [(base, vec![]), ("/bench/target", vec![b'x'; 1024])] {
        zk.create(path, data, Acl::open_unsafe().clone(), CreateMode::Persistent)
            .await
            .map_err(|e| anyhow::anyhow!("create {path}: {e:?}"))?;
    }
    let _ = zk.close().await;
    let mut cells = Vec::new();
    for op in Op::ALL.into_iter().filter(|op| args.ops.is_empty() || args.ops.iter().any(|o| o == op.name())) {
        for (outstanding, conns) in [(1, 1), (16, 1), (256, 1), (256, 16)] {
            let c = ops::cell(&server.addr, base, op, outstanding, conns, args.secs).await?;
            eprintln!("{name:>11} {c}");
            cells.push(c);
        }
    }
    if args.cells_only {
        return Ok(json!({"server": name, "startup_ms": startup.as_secs_f64() * 1000.0, "cells": cells}));
    }
    let watch = ops::watch_latency(&server.addr, base, 500).await?;
    eprintln!("{name:>11} watch {watch}");
    let fan = ops::fan_out(&server.addr, base, args.watchers).await?;
    eprintln!("{name:>11} fan-out {fan}");
    let mut out = json!({
        "server": name, "startup_ms": startup.as_secs_f64() * 1000.0, "cells": cells,
        "watch_latency": watch, "fan_out": fan,
    });
    if !args.no_scenarios {
        let rt = scenarios::round_trip(&server.addr, scratch, 300, args.secs).await.context("A→B→A")?;
        eprintln!("{name:>11} A→B→A {rt}");
        let mut locks = Vec::new();
        for n in [2, 8, 32] {
            let l = scenarios::lock(&server.addr, n, args.secs).await.context("lock")?;
            eprintln!("{name:>11} lock {l}");
            locks.push(l);
        }
        let ha = scenarios::failover(&server.addr, scratch, 3, HA_SESSION_MS).await.context("failover")?;
        eprintln!("{name:>11} failover {ha}");
        out["scenarios"] = json!({"round_trip": rt, "lock": locks, "failover": ha});
    }
    Ok(out)
}

/// Everything for one server: the figures on a fresh server, then memory
/// on another fresh one, then recovery on the data that one left.
async fn run(kind: Kind, args: &Args, tmp: &Path) -> Result<Value> {
    let port = free_port()?;
    let (dir, mem_dir, scratch) =
        (tmp.join(kind.name()), tmp.join(format!("{}-mem", kind.name())), tmp.join(format!("{}-scratch", kind.name())));
    std::fs::create_dir_all(&scratch)?;
    let (server, startup) = servers::start(kind, &dir, port, &args.zk_heap).await?;
    eprintln!("{:>11} answered {startup:.1?} after start", kind.name());
    let mut r = bench_server(&server, startup, args, &scratch).await?;
    drop(server);
    if args.cells_only {
        return Ok(r);
    }
    let (server, _) = servers::start(kind, &mem_dir, port, &args.zk_heap).await?;
    r["memory"] = ops::memory(&server, args.nodes).await?;
    drop(server);
    let (server, recovery) = servers::start(kind, &mem_dir, port, &args.zk_heap).await?;
    eprintln!("{:>11} recovered {} znodes in {recovery:.1?}", kind.name(), args.nodes);
    r["recovery_ms"] = json!(recovery.as_secs_f64() * 1000.0);
    drop(server);
    Ok(r)
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    std::env::set_current_dir(repo_root())?;
    match args.cmd.take() {
        Some(Cmd::Scale(scale)) => return scale::run(scale).await,
        Some(Cmd::Brokers(brokers)) => return brokers::run(brokers).await,
        Some(Cmd::Disk(disk)) => return disk::run(disk).await,
        Some(Cmd::Pipeline(p)) => return pipeline::run(p).await,
        None => {}
    }
    if args.replot {
        let text = std::fs::read_to_string(&args.out).with_context(|| args.out.display().to_string())?;
        let saved: Value = serde_json::from_str(&text).with_context(|| args.out.display().to_string())?;
        let results = saved["results"].as_array().cloned().unwrap_or_default();
        return write_report(&results, &args.out);
    }
    let tmp = std::env::temp_dir().join(format!("zkbench-{}", std::process::id()));
    let mut results = Vec::new();
    for kind in [Kind::Coordinator, Kind::ZooKeeper] {
        if args.only.as_deref().is_none_or(|o| o == kind.name()) {
            results.push(run(kind, &args, &tmp).await.with_context(|| kind.name())?);
        }
    }
    let out = json!({"secs_per_cell": args.secs, "results": results});
    save_json(&args.out, &out)?;
    drop_scratch(&tmp, args.keep_data);
    write_report(&results, &args.out)
}

/// Writes a run's results, making their directory if need be.
pub(crate) fn save_json(out: &Path, value: &Value) -> Result<()> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// Removes the servers' data dirs and logs, or says where they are kept.
pub(crate) fn drop_scratch(tmp: &Path, keep: bool) {
    if keep {
        eprintln!("data dirs and coordinator logs kept in {}", tmp.display());
    } else {
        let _ = std::fs::remove_dir_all(tmp);
    }
}

/// The plot beside the JSON, and the tables on stdout.
fn write_report(results: &[Value], json: &Path) -> Result<()> {
    let png = json.with_extension("png");
    plot::latency_against_load(results, &png)?;
    eprintln!("results in {}, plot in {}", json.display(), png.display());
    println!("{}", report::markdown(results));
    Ok(())
}
