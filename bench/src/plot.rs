//! One PNG: latency against load, per operation, both servers.
//!
//! Drawn with plotters' pure-Rust bitmap backend; text is rendered with
//! ab_glyph from a TrueType font read at run time (DejaVu Sans, Debian's
//! `fonts-dejavu-core`), so nothing here needs a system font library.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use serde_json::Value;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub fn latency_against_load(results: &[Value], out: &Path) -> Result<()> {
    let font = std::fs::read(FONT).with_context(|| format!("{FONT} (Debian package fonts-dejavu-core)"))?;
    // plotters keeps registered fonts for the life of the process.
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
        .map_err(|_| anyhow!("{FONT} is not a usable TrueType font"))?;

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
