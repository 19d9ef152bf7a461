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

/// A table per scale family: a row per figure, a column per point, each
/// cell "coordinator / ZooKeeper (ratio)".
pub fn scale_markdown(saved: &Value) -> String {
    let mut out = String::new();
    let points = |f: &str| saved[f]["points"].as_array().cloned().unwrap_or_default();
    let cell = |p: &Value, path: &[&str], scale: f64| {
        let a = at(&p["coordinator"], path).map(|v| v * scale);
        let b = at(&p["zookeeper"], path).map(|v| v * scale);
        format!("{} / {} ({})", fmt(a), fmt(b), ratio(a, b))
    };
    let table = |out: &mut String, title: &str, key: &str, pts: &[Value], rows: &[(&str, Vec<&str>, f64)]| {
        if pts.is_empty() {
            return;
        }
        let _ = writeln!(out, "\n### {title}\n\ncoordinator / ZooKeeper (ratio) at each point\n");
        let heads: Vec<String> = pts.iter().map(|p| format!("{} {key}", count(&p[key]))).collect();
        let _ = writeln!(out, "| figure | {} |", heads.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(pts.len()));
        for (name, path, scale) in rows {
            let cells: Vec<String> = pts.iter().map(|p| cell(p, path, *scale)).collect();
            let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
        }
    };
    table(
        &mut out,
        "Sessions (each pinging every 3.3 s; 10 s session timeout)",
        "sessions",
        &points("sessions"),
        &[
            ("RSS, MiB", vec!["rss_mib"], 1.0),
            ("RSS per session, KiB", vec!["rss_per_session_kib"], 1.0),
            ("ZooKeeper's live heap per session, KiB (coordinator: RSS)", vec!["live_heap_per_session_kib"], 1.0),
            ("open them, 200 at a time, s", vec!["open_secs"], 1.0),
            ("CPU while they idle, % of one core", vec!["idle_cpu_pct"], 1.0),
            ("getData meanwhile, p50 µs", vec!["get_data", "p50_us"], 1.0),
            ("getData meanwhile, p99 µs", vec!["get_data", "p99_us"], 1.0),
            ("1,000 more connect at once: last handshake, ms", vec!["storm_ms"], 1.0),
            ("… one connect, p50 ms", vec!["storm_each", "p50_us"], 1e-3),
            ("… connects over 0.9 s (SYN retried)", vec!["storm_over_900ms"], 1.0),
            ("… listen-queue overflows (kernel)", vec!["storm_listen_overflows"], 1.0),
            ("all expire: sockets dropped → first deletion event, ms", vec!["expiry_kill_to_first_ms"], 1.0),
            ("all expire: first → last deletion event, ms", vec!["expiry_first_to_last_ms"], 1.0),
            ("all expire: the last session's deadline → last event, ms", vec!["expiry_last_deadline_to_last_ms"], 1.0),
        ],
    );
    let w = points("watches");
    let mut rows: Vec<(&str, Vec<&str>, f64)> = vec![
        ("RSS, MiB", vec!["rss_mib"], 1.0),
        ("RSS growth per watch, bytes", vec!["rss_per_watch_bytes"], 1.0),
        ("ZooKeeper's live heap per watch, bytes (coordinator: RSS)", vec!["live_heap_per_watch_bytes"], 1.0),
        ("set them (getData + watch, 64 sessions at a time), s", vec!["arm_secs"], 1.0),
        ("wchs, ms", vec!["wchs_ms"], 1.0),
    ];
    let fans = [
        "setData → the 1 watcher's event, ms",
        "setData → last of 100 watchers' events, ms",
        "setData → last of 10,000 watchers' events, ms",
    ];
    for (i, name) in fans.iter().enumerate() {
        rows.push((name, vec!["fan_out", ["0", "1", "2"][i], "last_event_ms"], 1.0));
    }
    rows.push(("… the setData's own reply with 10,000 watchers, ms", vec!["fan_out", "2", "reply_ms"], 1.0));
    table(&mut out, "Data watches over 10,000 sessions", "watches", &w, &rows);
    table(
        &mut out,
        "Znodes of 100 B",
        "znodes",
        &points("znodes"),
        &[
            ("RSS, MiB", vec!["rss_mib"], 1.0),
            ("ZooKeeper's live heap, MiB (coordinator: RSS)", vec!["jvm_live_heap_mib"], 1.0),
            ("RSS per znode, bytes", vec!["rss_per_znode_bytes"], 1.0),
            ("load, 16 connections × 64 in flight, s", vec!["load_secs"], 1.0),
            ("snapshot of the whole tree, s", vec!["snapshot_ms"], 1e-3),
            ("snapshot size, MiB", vec!["snapshot_bytes"], 1.0 / 1048576.0),
            ("recovery to the first answer, s", vec!["recovery_ms"], 1e-3),
            ("RSS after recovery, MiB", vec!["rss_recovered_mib"], 1.0),
            ("getChildren of 100,000 children, p50 ms", vec!["get_children", "p50_us"], 1e-3),
            ("getChildren of 100,000 children, max ms", vec!["get_children", "max_us"], 1e-3),
        ],
    );
    if let Some(p) = points("overload").first() {
        let stages = p["coordinator"]["stages"].as_array().or(p["zookeeper"]["stages"].as_array()).cloned();
        let stages = stages.unwrap_or_default();
        let _ = writeln!(out, "\n### Overload: setData of 1 KiB\n\ncoordinator / ZooKeeper (ratio) at each stage\n");
        let heads: Vec<&str> = stages.iter().map(|s| s["stage"].as_str().unwrap_or("?")).collect();
        let _ = writeln!(out, "| figure | {} |", heads.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(stages.len()));
        for (figure, field, scale) in [
            ("offered (open loop), ops/s", "offered_per_sec", 1.0),
            ("sent, ops/s", "sent_per_sec", 1.0),
            ("throughput, ops/s", "ops_per_sec", 1.0),
            ("p50, ms", "p50_us", 1e-3),
            ("p99, ms", "p99_us", 1e-3),
            ("p999, ms", "p999_us", 1e-3),
            ("peak RSS, MiB", "rss_peak_mib", 1.0),
            ("requests in flight at most (client side)", "peak_in_flight", 1.0),
            ("connections lost", "disconnected", 1.0),
            ("error replies", "errors", 1.0),
        ] {
            let cells: Vec<String> =
                (0..stages.len()).map(|i| cell(p, &["stages", &i.to_string(), field], scale)).collect();
            let _ = writeln!(out, "| {figure} | {} |", cells.join(" | "));
        }
        let _ = writeln!(out, "\nRSS 5 s after the last stage, MiB: {}", cell(p, &["rss_after_5s_mib"], 1.0));
    }
    out
}

/// 1000000 → "1M", 5000 → "5k".
fn count(v: &Value) -> String {
    match v.as_u64() {
        Some(n) if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        Some(n) if n >= 1000 && n % 1000 == 0 => format!("{}k", n / 1000),
        Some(n) => n.to_string(),
        None => v.to_string(),
    }
}
