//! `zkbench disk`: how close a write comes to the disk's own limit.
//!
//! A write is acknowledged only once it is on disk, so no server can answer
//! a single outstanding write faster than its disk completes a sync. This
//! measures that floor first, on the file system the servers' data dirs
//! are on: appends each followed by `fdatasync`, of 8 KiB (the way etcd's
//! hardware guide measures a disk with fio) and of 1 KiB (about what one
//! of the requests below appends to a server's log). Then, for each server
//! in turn, with fsync on:
//!
//! - create and setData of 1 KiB with one request outstanding: p50 and
//!   p99, and the server's own overhead, p50 minus the 1 KiB sync's p50
//!   (what the server adds to the one sync it cannot avoid);
//! - setData with 256 outstanding on one connection: how many requests
//!   share each fsync (group commit), from the server's own count of its
//!   log's fsyncs (`mntr`'s `zk_cnt_fsynctime`, which both servers keep).

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use zookeeper_async::{Acl, CreateMode};

use crate::ops::{self, histogram, percentiles, record, Op};
use crate::scale::mntr;
use crate::servers::{free_port, start, Kind};

#[derive(clap::Args, Debug)]
pub struct DiskArgs {
    /// Appends of 8 KiB, each followed by fdatasync, for the disk's figure.
    #[arg(long, default_value_t = 2000)]
    syncs: usize,
    /// Seconds per server figure.
    #[arg(long, default_value_t = 5)]
    secs: u64,
}

/// The disk's own latency: `n` appends of `size` bytes to one file in
/// `dir`, each made durable with fdatasync before the next.
fn fdatasync_latency(dir: &Path, n: usize, size: usize) -> Result<Value> {
    let path = dir.join("fdatasync-probe");
    let file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
    let block = vec![0x5a_u8; size];
    let mut h = histogram();
    for i in 0..n {
        let t = Instant::now();
        file.write_all_at(&block, (i * block.len()) as u64)?;
        file.sync_data()?;
        record(&mut h, t.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(percentiles(&h))
}

/// One server: single-outstanding create and setData, then 256 setData
/// outstanding with the fsyncs they took.
async fn server_figures(kind: Kind, dir: &Path, secs: u64) -> Result<Value> {
    let (server, _) = start(kind, dir, free_port()?, "1g").await?;
    let name = kind.name();
    let zk = ops::connect(&server.addr).await?;
    for (path, data) in [("/bench", vec![]), ("/bench/target", vec![b'x'; 1024])] {
        zk.create(path, data, Acl::open_unsafe().clone(), CreateMode::Persistent)
            .await
            .map_err(|e| anyhow::anyhow!("create {path}: {e:?}"))?;
    }
    let _ = zk.close().await;
    let create = ops::cell(&server.addr, "/bench", Op::Create, 1, 1, secs).await?;
    let set = ops::cell(&server.addr, "/bench", Op::Set, 1, 1, secs).await?;
    eprintln!("{name:>11} disk: create {create}\n{name:>11} disk: setData {set}");
    let fsyncs_before = mntr(&server.addr, "zk_cnt_fsynctime").await?;
    let piled = ops::cell(&server.addr, "/bench", Op::Set, 256, 1, secs).await?;
    let fsyncs_after = mntr(&server.addr, "zk_cnt_fsynctime").await?;
    let writes = piled["ops_per_sec"].as_f64().unwrap_or(0.0) * secs as f64;
    let per_fsync = match (fsyncs_before, fsyncs_after) {
        (Some(b), Some(a)) if a > b => Some(writes / (a - b)),
        _ => None,
    };
    eprintln!("{name:>11} disk: setData x256 {piled}, {per_fsync:?} requests per fsync");
    Ok(json!({
        "server": name, "create_1": create, "set_1": set, "set_256": piled,
        "requests_per_fsync_at_256": per_fsync,
    }))
}

pub async fn run(args: DiskArgs) -> Result<()> {
    let scratch = std::env::temp_dir().join(testkit::unique("zkbench-disk"));
    std::fs::create_dir_all(&scratch)?;
    let disk = json!({
        "append_8k": fdatasync_latency(&scratch, args.syncs, 8192).context("the disk's fdatasync")?,
        "append_1k": fdatasync_latency(&scratch, args.syncs, 1024).context("the disk's fdatasync")?,
    });
    eprintln!("disk: append + fdatasync {disk}");
    let mut servers = Vec::new();
    for kind in [Kind::Coordinator, Kind::ZooKeeper] {
        let dir = scratch.join(kind.name());
        servers.push(server_figures(kind, &dir, args.secs).await.with_context(|| kind.name().to_string())?);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    println!("{}", markdown(&disk, &servers));
    let mut out = std::io::stdout();
    writeln!(out, "{}", serde_json::to_string_pretty(&json!({"fdatasync": disk, "servers": servers}))?)?;
    Ok(())
}

fn us(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

/// The table BENCHMARKS.md keeps: each server's single-outstanding write
/// as the disk's sync plus the server's own overhead, and group commit.
fn markdown(disk: &Value, servers: &[Value]) -> String {
    let (big, small) = (&disk["append_8k"], &disk["append_1k"]);
    let sync = us(small, "p50_us");
    let mut s = format!(
        "append + fdatasync on the data dirs' file system ({} syncs each): 8 KiB p50 {:.0} µs, p99 {:.0} µs; \
         1 KiB p50 {sync:.0} µs, p99 {:.0} µs\n\n\
         | server | create p50 (µs) | overhead over the 1 KiB sync | setData p50 (µs) | overhead over the 1 KiB sync | \
         requests per fsync at 256 outstanding |\n|---|---|---|---|---|---|\n",
        big["samples"],
        us(big, "p50_us"),
        us(big, "p99_us"),
        us(small, "p99_us"),
    );
    for v in servers {
        let (c, st) = (us(&v["create_1"], "p50_us"), us(&v["set_1"], "p50_us"));
        let shared = v["requests_per_fsync_at_256"].as_f64().map(|r| format!("{r:.1}")).unwrap_or_else(|| "n/a".into());
        s.push_str(&format!(
            "| {} | {c:.0} | {:.0} µs | {st:.0} | {:.0} µs | {shared} |\n",
            v["server"].as_str().unwrap_or("?"),
            c - sync,
            st - sync
        ));
    }
    s
}
