//! PNGs: latency against load, per operation, both servers; and the scale
//! figures (`zkbench scale`), one image per family, a panel per figure.
//!
//! Drawn with plotters' pure-Rust bitmap backend; text is rendered with
//! ab_glyph from a TrueType font read at run time (DejaVu Sans, Debian's
//! `fonts-dejavu-core`), so nothing here needs a system font library.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use serde_json::Value;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> Result<()> {
    let font = std::fs::read(FONT).with_context(|| format!("{FONT} (Debian package fonts-dejavu-core)"))?;
    // plotters keeps registered fonts for the life of the process.
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
        .map_err(|_| anyhow!("{FONT} is not a usable TrueType font"))
}

pub fn latency_against_load(results: &[Value], out: &Path) -> Result<()> {
    register_font()?;

    let root = BitMapBackend::new(out, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (title, body) = root.split_vertically(50);
    title
        .titled(
            "Latency against outstanding requests on one connection (log-log; fsync on; same client)",
            ("sans-serif", 22),
        )
        .map_err(|e| anyhow!("{e}"))?;
    let ops = ["create", "setData", "getData", "exists"];
    for (area, op) in body.split_evenly((2, 2)).iter().zip(ops) {
        let mut chart = ChartBuilder::on(area)
            .caption(op, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d((1.0f64..300.0).log_scale(), (5.0f64..500_000.0).log_scale())
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("outstanding requests")
            .y_desc("latency (µs)")
            .x_labels(6)
            .y_labels(8)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for r in results {
            let server = r["server"].as_str().unwrap_or("?");
            let colour = if server == "coordinator" { BLUE } else { RED };
            for (quantile, dashed) in [("p50_us", false), ("p99_us", true)] {
                let points: Vec<(f64, f64)> = r["cells"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["op"] == op && c["connections"] == 1)
                    .filter_map(|c| Some((c["outstanding"].as_f64()?, c[quantile].as_f64()?)))
                    .collect();
                let style = if dashed { colour.mix(0.5).stroke_width(2) } else { colour.stroke_width(3) };
                chart
                    .draw_series(LineSeries::new(points.clone(), style))
                    .map_err(|e| anyhow!("{e}"))?
                    .label(format!("{server} {}", &quantile[..3]))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
                chart
                    .draw_series(points.into_iter().map(|p| Circle::new(p, 4, colour.filled())))
                    .map_err(|e| anyhow!("{e}"))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// One line of a panel.
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    colour: RGBColor,
    dashed: bool,
}

struct Panel {
    title: String,
    x: &'static str,
    y: String,
    log_x: bool,
    log_y: bool,
    series: Vec<Series>,
}

const SERVERS: [(&str, RGBColor); 2] = [("coordinator", BLUE), ("zookeeper", RED)];

/// For each server, the points (x, y) of `y` against `x` over `points`.
fn per_server(points: &[Value], x: &str, y: impl Fn(&Value) -> Option<f64>) -> Vec<Series> {
    SERVERS
        .iter()
        .map(|(server, colour)| Series {
            label: server.to_string(),
            points: points.iter().filter_map(|p| Some((p[x].as_f64()?, y(&p[*server])?))).collect(),
            colour: *colour,
            dashed: false,
        })
        .collect()
}

/// `series` and, dashed, ZooKeeper's live JVM heap for the same figure
/// (what its data needs, where RSS is what the JVM has grown to).
fn with_live_heap(mut series: Vec<Series>, points: &[Value], x: &str, field: &str) -> Vec<Series> {
    series.push(Series {
        label: "zookeeper live heap".into(),
        points: points.iter().filter_map(|p| Some((p[x].as_f64()?, p["zookeeper"][field].as_f64()?))).collect(),
        colour: RED,
        dashed: true,
    });
    series
}

fn panel(title: &str, x: &'static str, y: &str, series: Vec<Series>) -> Panel {
    Panel { title: title.into(), x, y: y.into(), log_x: true, log_y: false, series }
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().fold(v, |v, p| &v[*p]).as_f64()
}

/// The scale figures: `scale-<family>.png` in `dir` for each family in
/// `saved` (the JSON `zkbench scale` writes).
pub fn scale(saved: &Value, dir: &Path) -> Result<()> {
    register_font()?;
    let pts = |f: &str| saved[f]["points"].as_array().cloned().unwrap_or_default();
    let s = pts("sessions");
    if !s.is_empty() {
        let x = "sessions";
        draw(
            &dir.join("scale-sessions.png"),
            "Sessions: cost against concurrent sessions (each pinging every 3.3 s)",
            vec![
                panel(
                    "RSS per session",
                    x,
                    "KiB",
                    with_live_heap(
                        per_server(&s, x, |v| num(v, &["rss_per_session_kib"])),
                        &s,
                        x,
                        "live_heap_per_session_kib",
                    ),
                ),
                panel(
                    "CPU while the sessions idle",
                    x,
                    "% of one core",
                    per_server(&s, x, |v| num(v, &["idle_cpu_pct"])),
                ),
                panel("getData p99 meanwhile", x, "µs", per_server(&s, x, |v| num(v, &["get_data", "p99_us"]))),
                panel("1,000 more connect at once", x, "ms to the last", per_server(&s, x, |v| num(v, &["storm_ms"]))),
                panel(
                    "all expire: first → last deletion event",
                    x,
                    "ms",
                    per_server(&s, x, |v| num(v, &["expiry_first_to_last_ms"])),
                ),
                panel(
                    "all expire: last deadline → last event",
                    x,
                    "ms",
                    per_server(&s, x, |v| num(v, &["expiry_last_deadline_to_last_ms"])),
                ),
            ],
        )?;
    }
    let w = pts("watches");
    if !w.is_empty() {
        let x = "watches";
        let mut fan = Vec::new();
        for (server, colour) in SERVERS {
            for (k, p) in w.iter().enumerate() {
                let points = p[server]["fan_out"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| Some((f["watchers"].as_f64()?, f["last_event_ms"].as_f64()?)))
                    .collect();
                let label = format!("{server}, {} watches set", p[x]);
                fan.push(Series { label, points, colour, dashed: k + 1 < w.len() });
            }
        }
        draw(
            &dir.join("scale-watches.png"),
            "Watches: cost against data watches set (over 10,000 sessions)",
            vec![
                panel(
                    "RSS per watch",
                    x,
                    "bytes",
                    with_live_heap(
                        per_server(&w, x, |v| num(v, &["rss_per_watch_bytes"])),
                        &w,
                        x,
                        "live_heap_per_watch_bytes",
                    ),
                ),
                panel("time to set them all", x, "s", per_server(&w, x, |v| num(v, &["arm_secs"]))),
                panel("wchs (4lw)", x, "ms", per_server(&w, x, |v| num(v, &["wchs_ms"]))),
                Panel {
                    title: "one setData → last watcher's event".into(),
                    x: "watchers of the node",
                    y: "ms from the send".into(),
                    log_x: true,
                    log_y: true,
                    series: fan,
                },
            ],
        )?;
    }
    let z = pts("znodes");
    if !z.is_empty() {
        let x = "znodes";
        draw(
            &dir.join("scale-znodes.png"),
            "Znodes (100 B each): cost against the tree's size",
            vec![
                panel(
                    "RSS",
                    x,
                    "MiB",
                    with_live_heap(per_server(&z, x, |v| num(v, &["rss_mib"])), &z, x, "jvm_live_heap_mib"),
                ),
                panel("load (16 conns × 64 in flight)", x, "s", per_server(&z, x, |v| num(v, &["load_secs"]))),
                panel(
                    "snapshot of the whole tree",
                    x,
                    "s",
                    per_server(&z, x, |v| Some(num(v, &["snapshot_ms"])? / 1000.0)),
                ),
                panel("snapshot size", x, "MiB", per_server(&z, x, |v| Some(num(v, &["snapshot_bytes"])? / 1048576.0))),
                panel(
                    "recovery to the first answer",
                    x,
                    "s",
                    per_server(&z, x, |v| Some(num(v, &["recovery_ms"])? / 1000.0)),
                ),
                panel(
                    "getChildren of 100,000 children, p50",
                    x,
                    "ms",
                    per_server(&z, x, |v| Some(num(v, &["get_children", "p50_us"])? / 1000.0)),
                ),
            ],
        )?;
    }
    let o = pts("overload");
    if let Some(o) = o.first() {
        let mut rss = Vec::new();
        let mut stage_panels: Vec<(&str, &str, Vec<Series>)> = vec![
            ("throughput per stage", "ops/s", vec![]),
            ("latency per stage (p99 solid, p50 dashed)", "ms", vec![]),
        ];
        for (server, colour) in SERVERS {
            let points = o[server]["rss_series"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)));
            rss.push(Series { label: server.into(), points: points.collect(), colour, dashed: false });
            let stages: Vec<&Value> = o[server]["stages"].as_array().into_iter().flatten().collect();
            let at = |f: &dyn Fn(&Value) -> Option<f64>| -> Vec<(f64, f64)> {
                stages.iter().enumerate().filter_map(|(i, s)| Some(((i + 1) as f64, f(s)?))).collect()
            };
            stage_panels[0].2.push(Series {
                label: server.into(),
                points: at(&|s| num(s, &["ops_per_sec"])),
                colour,
                dashed: false,
            });
            stage_panels[1].2.push(Series {
                label: format!("{server} p99"),
                points: at(&|s| Some(num(s, &["p99_us"])? / 1000.0)),
                colour,
                dashed: false,
            });
            stage_panels[1].2.push(Series {
                label: format!("{server} p50"),
                points: at(&|s| Some(num(s, &["p50_us"])? / 1000.0)),
                colour,
                dashed: true,
            });
        }
        let mut panels = vec![Panel {
            title: "RSS over the run (stages: 256 in flight, 2,048 in flight, open-loop 2×)".into(),
            x: "seconds",
            y: "MiB".into(),
            log_x: false,
            log_y: false,
            series: rss,
        }];
        for (title, y, series) in stage_panels {
            panels.push(Panel {
                title: title.into(),
                x: "stage: 1 closed 256, 2 closed 2,048, 3 open-loop 2×",
                y: y.into(),
                log_x: false,
                log_y: title.starts_with("latency"),
                series,
            });
        }
        draw(&dir.join("scale-overload.png"), "Overload: setData 1 KiB beyond what the server sustains", panels)?;
    }
    Ok(())
}

fn bounds(panel: &Panel, x: bool) -> (f64, f64) {
    let vals = panel.series.iter().flat_map(|s| s.points.iter().map(|p| if x { p.0 } else { p.1 }));
    let (lo, hi) = vals.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (1.0, 10.0);
    }
    let log = if x { panel.log_x } else { panel.log_y };
    if log {
        (lo.max(1e-3) / 1.5, hi.max(1e-3) * 1.5)
    } else if x {
        (lo.min(0.0), hi + (hi - lo).max(1.0) * 0.05)
    } else {
        (0.0, hi * 1.15 + 1e-9)
    }
}

fn draw(out: &Path, title: &str, panels: Vec<Panel>) -> Result<()> {
    let cols = if panels.len() > 4 { 3 } else { 2 };
    let rows = panels.len().div_ceil(cols);
    let root = BitMapBackend::new(out, (560 * cols as u32, 420 * rows as u32 + 50)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (head, body) = root.split_vertically(50);
    head.titled(title, ("sans-serif", 22)).map_err(|e| anyhow!("{e}"))?;
    for (area, p) in body.split_evenly((rows, cols)).iter().zip(&panels) {
        let (x, y) = (bounds(p, true), bounds(p, false));
        match (p.log_x, p.log_y) {
            (true, true) => chart(area, p, (x.0..x.1).log_scale(), (y.0..y.1).log_scale())?,
            (true, false) => chart(area, p, (x.0..x.1).log_scale(), y.0..y.1)?,
            (false, true) => chart(area, p, x.0..x.1, (y.0..y.1).log_scale())?,
            (false, false) => chart(area, p, x.0..x.1, y.0..y.1)?,
        }
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn chart<X, Y>(area: &DrawingArea<BitMapBackend, plotters::coord::Shift>, p: &Panel, x: X, y: Y) -> Result<()>
where
    X: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    X::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
    Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc(p.x)
        .y_desc(p.y.as_str())
        .x_labels(6)
        .y_labels(8)
        .x_label_formatter(&|v| short(*v))
        .y_label_formatter(&|v| short(*v))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for s in &p.series {
        let style = if s.dashed { s.colour.mix(0.5).stroke_width(2) } else { s.colour.stroke_width(3) };
        chart
            .draw_series(LineSeries::new(s.points.clone(), style))
            .map_err(|e| anyhow!("{e}"))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        let colour = s.colour;
        chart.draw_series(s.points.iter().map(|p| Circle::new(*p, 4, colour.filled()))).map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// 1500 → "1.5k", 2000000 → "2M", 0.25 → "0.25".
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}
