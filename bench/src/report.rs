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
    path.iter().fold(r, |v, p| &v[*p]).as_f64()
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
