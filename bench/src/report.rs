//! The results as Markdown tables, coordinator beside ZooKeeper with the
//! ratio, ready to paste into BENCHMARKS.md.

use std::fmt::Write;

use serde_json::Value;

fn find<'a>(results: &'a [Value], server: &str) -> Option<&'a Value> {
    results.iter().find(|r| r["server"] == server)
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn fmt(v: Option<f64>) -> String {
    match v {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
        None => "–".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

/// `| name | a | b | a/b |`
fn row(out: &mut String, name: impl std::fmt::Display, a: Option<f64>, b: Option<f64>) {
    let _ = writeln!(out, "| {name} | {} | {} | {} |", fmt(a), fmt(b), ratio(a, b));
}

/// The number at `path` inside `r`.
fn at(r: &Value, path: &[&str]) -> Option<f64> {
    // A numeric step indexes an array (the scale figures' stages).
    path.iter()
        .fold(r, |v, p| match p.parse::<usize>() {
            Ok(i) if v.is_array() => &v[i],
            _ => &v[*p],
        })
        .as_f64()
}

fn lat(v: &Value) -> String {
    format!("{} / {} / {}", fmt(num(&v["p50_us"])), fmt(num(&v["p99_us"])), fmt(num(&v["p999_us"])))
}

pub fn markdown(results: &[Value]) -> String {
    let (c, z) = (find(results, "coordinator"), find(results, "zookeeper"));
    let null = Value::Null;
    let (c, z) = (c.unwrap_or(&null), z.unwrap_or(&null));
    let mut out = String::new();

    let _ = writeln!(out, "### Throughput and latency (1 KiB data; latency p50 / p99 / p999 in µs)\n");
    let _ = writeln!(
        out,
        "| op | outstanding | conns | coordinator ops/s | ZooKeeper ops/s | ratio | coordinator latency | ZooKeeper latency |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for cell in c["cells"].as_array().or(z["cells"].as_array()).into_iter().flatten() {
        let same = |r: &Value| -> Value {
            r["cells"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| {
                    x["op"] == cell["op"]
                        && x["outstanding"] == cell["outstanding"]
                        && x["connections"] == cell["connections"]
                })
                .cloned()
                .unwrap_or(Value::Null)
        };
        let (a, b) = (same(c), same(z));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | **{}** | {} | {} |",
            cell["op"].as_str().unwrap_or("?"),
            cell["outstanding"],
            cell["connections"],
            fmt(num(&a["ops_per_sec"])),
            fmt(num(&b["ops_per_sec"])),
            ratio(num(&a["ops_per_sec"]), num(&b["ops_per_sec"])),
            lat(&a),
            lat(&b),
        );
    }

    let _ =
        writeln!(out, "\n### Watches, memory, start-up, recovery (ratio: coordinator / ZooKeeper; lower is better)\n");
    let _ = writeln!(out, "| figure | coordinator | ZooKeeper | ratio |");
    let _ = writeln!(out, "|---|---|---|---|");
    for q in ["p50_us", "p99_us"] {
        row(
            &mut out,
            format!("watch latency, setData → event at another session, {} µs", &q[..3]),
            at(c, &["watch_latency", q]),
            at(z, &["watch_latency", q]),
        );
    }
    row(
        &mut out,
        "fan-out: one child change → last of 50 sessions' watches, µs",
        at(c, &["fan_out", "one_change_to_last_event_us"]),
        at(z, &["fan_out", "one_change_to_last_event_us"]),
    );
    row(
        &mut out,
        format!("fan-out: {} exists-watches fired by their creates → last event, ms", c["fan_out"]["watchers"]),
        at(c, &["fan_out", "create_all_to_last_event_ms"]),
        at(z, &["fan_out", "create_all_to_last_event_ms"]),
    );
    row(&mut out, "RSS empty, MiB", at(c, &["memory", "rss_empty_mib"]), at(z, &["memory", "rss_empty_mib"]));
    row(
        &mut out,
        format!("RSS after {} znodes of 100 B, MiB", c["memory"]["nodes"]),
        at(c, &["memory", "rss_mib"]),
        at(z, &["memory", "rss_mib"]),
    );
    row(
        &mut out,
        "ZooKeeper's live JVM heap after a full GC, MiB (coordinator: RSS)",
        at(c, &["memory", "rss_mib"]),
        at(z, &["memory", "jvm_live_heap_mib"]),
    );
    row(
        &mut out,
        "time to load those znodes (256 outstanding), s",
        at(c, &["memory", "load_secs"]),
        at(z, &["memory", "load_secs"]),
    );
    row(
        &mut out,
        "start-up to first served request, empty data dir, ms",
        at(c, &["startup_ms"]),
        at(z, &["startup_ms"]),
    );
    row(
        &mut out,
        "recovery to first served request with those znodes, ms",
        at(c, &["recovery_ms"]),
        at(z, &["recovery_ms"]),
    );

    let _ = writeln!(out, "\n### Scenarios (the same recipes and services on each server)\n");
    let _ = writeln!(out, "| figure | coordinator | ZooKeeper | ratio |");
    let _ = writeln!(out, "|---|---|---|---|");
    for q in ["p50_us", "p99_us"] {
        row(
            &mut out,
            format!("A→B→A round trip, one at a time, {} µs", &q[..3]),
            at(c, &["scenarios", "round_trip", "one_at_a_time", q]),
            at(z, &["scenarios", "round_trip", "one_at_a_time", q]),
        );
    }
    row(
        &mut out,
        "A→B→A, 32 in flight, tasks/s",
        at(c, &["scenarios", "round_trip", "concurrent", "tasks_per_sec"]),
        at(z, &["scenarios", "round_trip", "concurrent", "tasks_per_sec"]),
    );
    row(
        &mut out,
        "A→B→A, 32 in flight, p99 µs",
        at(c, &["scenarios", "round_trip", "concurrent", "p99_us"]),
        at(z, &["scenarios", "round_trip", "concurrent", "p99_us"]),
    );
    let locks = |r: &Value| r["scenarios"]["lock"].as_array().cloned().unwrap_or_default();
    for (a, b) in locks(c).iter().zip(locks(z).iter()) {
        let n = &a["contenders"];
        row(
            &mut out,
            format!("lock, {n} contenders: acquisitions/s"),
            num(&a["acquisitions_per_sec"]),
            num(&b["acquisitions_per_sec"]),
        );
        row(
            &mut out,
            format!("lock, {n} contenders: handoff p50 µs"),
            num(&a["handoff"]["p50_us"]),
            num(&b["handoff"]["p50_us"]),
        );
        row(
            &mut out,
            format!("lock, {n} contenders: handoff p99 µs"),
            num(&a["handoff"]["p99_us"]),
            num(&b["handoff"]["p99_us"]),
        );
        row(
            &mut out,
            format!("lock, {n} contenders: watch events per release"),
            num(&a["watch_events_per_release"]),
            num(&b["watch_events_per_release"]),
        );
    }
    row(
        &mut out,
        "ha-worker failover on SIGTERM (mean), ms",
        at(c, &["scenarios", "failover", "sigterm_mean_ms"]),
        at(z, &["scenarios", "failover", "sigterm_mean_ms"]),
    );
    row(
        &mut out,
        format!(
            "ha-worker failover on kill -9 (mean; session {} ms), ms",
            c["scenarios"]["failover"]["session_timeout_ms"]
        ),
        at(c, &["scenarios", "failover", "kill9_mean_ms"]),
        at(z, &["scenarios", "failover", "kill9_mean_ms"]),
    );
    out
}

/// A table per scale family: one row per figure and point, coordinator
/// beside ZooKeeper with the ratio (coordinator / ZooKeeper).
pub fn scale_markdown(saved: &Value) -> String {
    let mut out = String::new();
    let head = |out: &mut String, title: &str, first: &str| {
        let _ = writeln!(out, "\n### {title}\n");
        let _ = writeln!(out, "| {first} | figure | coordinator | ZooKeeper | ratio |");
        let _ = writeln!(out, "|---|---|---|---|---|");
    };
    let line = |out: &mut String, point: &str, name: &str, p: &Value, path: &[&str], scale: f64| {
        let a = at(&p["coordinator"], path).map(|v| v * scale);
        let b = at(&p["zookeeper"], path).map(|v| v * scale);
        let _ = writeln!(out, "| {point} | {name} | {} | {} | {} |", fmt(a), fmt(b), ratio(a, b));
    };
    let points = |f: &str| saved[f]["points"].as_array().cloned().unwrap_or_default();

    let s = points("sessions");
    if !s.is_empty() {
        head(&mut out, "Sessions (each pinging every 3.3 s; 10 s session timeout)", "sessions");
        for p in &s {
            let n = p["sessions"].to_string();
            line(&mut out, &n, "RSS, MiB", p, &["rss_mib"], 1.0);
            line(&mut out, &n, "RSS per session, KiB", p, &["rss_per_session_kib"], 1.0);
            line(
                &mut out,
                &n,
                "ZooKeeper's live heap per session, KiB (coordinator: RSS)",
                p,
                &["live_heap_per_session_kib"],
                1.0,
            );
            line(&mut out, &n, "open them, 200 at a time, s", p, &["open_secs"], 1.0);
            line(&mut out, &n, "CPU while they idle, % of one core", p, &["idle_cpu_pct"], 1.0);
            line(&mut out, &n, "getData meanwhile, p50 µs", p, &["get_data", "p50_us"], 1.0);
            line(&mut out, &n, "getData meanwhile, p99 µs", p, &["get_data", "p99_us"], 1.0);
            line(&mut out, &n, "1,000 more connect at once: last handshake, ms", p, &["storm_ms"], 1.0);
            line(&mut out, &n, "… one connect's p50, ms", p, &["storm_each", "p50_us"], 1e-3);
            line(&mut out, &n, "… connects that took over 0.9 s (a SYN retried)", p, &["storm_over_900ms"], 1.0);
            line(&mut out, &n, "… listen-queue overflows (kernel count)", p, &["storm_listen_overflows"], 1.0);
            line(
                &mut out,
                &n,
                "all expire: sockets dropped → first deletion event, ms",
                p,
                &["expiry_kill_to_first_ms"],
                1.0,
            );
            line(&mut out, &n, "all expire: first → last deletion event, ms", p, &["expiry_first_to_last_ms"], 1.0);
        }
    }
    let w = points("watches");
    if !w.is_empty() {
        head(&mut out, "Data watches over 10,000 sessions", "watches");
        for p in &w {
            let n = p["watches"].to_string();
            line(&mut out, &n, "RSS growth per watch, bytes", p, &["rss_per_watch_bytes"], 1.0);
            line(
                &mut out,
                &n,
                "ZooKeeper's live heap per watch, bytes (coordinator: RSS)",
                p,
                &["live_heap_per_watch_bytes"],
                1.0,
            );
            line(&mut out, &n, "RSS, MiB", p, &["rss_mib"], 1.0);
            line(&mut out, &n, "set them (getData with a watch, 64 sessions at a time), s", p, &["arm_secs"], 1.0);
            line(&mut out, &n, "wchs, ms", p, &["wchs_ms"], 1.0);
            let fans = p["coordinator"]["fan_out"].as_array().or(p["zookeeper"]["fan_out"].as_array()).cloned();
            for (i, f) in fans.unwrap_or_default().iter().enumerate() {
                let k = i.to_string();
                let name = format!("setData → last of {} watchers' events, ms", f["watchers"]);
                line(&mut out, &n, &name, p, &["fan_out", &k, "last_event_ms"], 1.0);
            }
        }
        let _ = writeln!(out, "\n(`fan_out` rows index the JSON array: 1, 100, then every session's watcher.)");
    }
    let z = points("znodes");
    if !z.is_empty() {
        head(&mut out, "Znodes of 100 B", "znodes");
        for p in &z {
            let n = p["znodes"].to_string();
            line(&mut out, &n, "RSS, MiB", p, &["rss_mib"], 1.0);
            line(&mut out, &n, "RSS per znode, bytes", p, &["rss_per_znode_bytes"], 1.0);
            line(&mut out, &n, "ZooKeeper's live heap, MiB (coordinator: RSS)", p, &["jvm_live_heap_mib"], 1.0);
            line(&mut out, &n, "load, 16 connections × 64 in flight, s", p, &["load_secs"], 1.0);
            line(&mut out, &n, "snapshot of the whole tree, ms", p, &["snapshot_ms"], 1.0);
            line(&mut out, &n, "snapshot size, MiB", p, &["snapshot_bytes"], 1.0 / 1048576.0);
            line(&mut out, &n, "recovery to the first answer, ms", p, &["recovery_ms"], 1.0);
            line(&mut out, &n, "RSS after recovery, MiB", p, &["rss_recovered_mib"], 1.0);
            line(&mut out, &n, "getChildren of /z/p0, p50 ms", p, &["get_children", "p50_us"], 1e-3);
            line(&mut out, &n, "getChildren of /z/p0, max ms", p, &["get_children", "max_us"], 1e-3);
        }
    }
    let o = points("overload");
    if let Some(p) = o.first() {
        head(&mut out, "Overload: setData of 1 KiB", "stage");
        let stages = p["coordinator"]["stages"].as_array().or(p["zookeeper"]["stages"].as_array()).cloned();
        for (i, s) in stages.unwrap_or_default().iter().enumerate() {
            let k = i.to_string();
            let name = s["stage"].as_str().unwrap_or("?").to_string();
            let stage = |f: &str| vec!["stages", k.as_str(), f].into_iter().map(String::from).collect::<Vec<_>>();
            for (figure, field, scale) in [
                ("offered (open loop), ops/s", "offered_per_sec", 1.0),
                ("sent, ops/s", "sent_per_sec", 1.0),
                ("throughput, ops/s", "ops_per_sec", 1.0),
                ("p50, ms", "p50_us", 1e-3),
                ("p99, ms", "p99_us", 1e-3),
                ("p999, ms", "p999_us", 1e-3),
                ("peak RSS, MiB", "rss_peak_mib", 1.0),
                ("requests in flight at most (client side)", "peak_in_flight", 1.0),
                ("sent, never answered", "unanswered", 1.0),
                ("connections lost", "disconnected", 1.0),
                ("error replies", "errors", 1.0),
            ] {
                let path = stage(field);
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                line(&mut out, &name, figure, p, &path, scale);
            }
        }
        line(&mut out, "after", "RSS 5 s after the last stage, MiB", p, &["rss_after_5s_mib"], 1.0);
    }
    out
}
