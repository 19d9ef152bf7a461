//! Reading a service's `/metrics` as Prometheus would: the end-to-end
//! tests check what a service counts, and `zkbench scenarios` reads where
//! each stage of a task spends its time from the services' own histograms.

use std::time::Duration;

/// `GET path` from the HTTP server at `addr` (HTTP/1.0, so the server
/// closes when done): the status code and the body. An error when nothing
/// answers there.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not an HTTP response: {raw:?}"));
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(bad)?;
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    Ok((code, body.to_string()))
}

/// The value of the sample `series` (a name with its labels, as exposed:
/// `system_a_submits_total{outcome="done"}`) in a `/metrics` body.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split_whitespace().next()?.parse().ok())
}

/// Each stage of the histogram family `name` (a `servicekit::metrics::`
/// `Stages`: one `stage` label) in a `/metrics` body, as (stage, seconds
/// in all, observations), in the order exposed.
pub fn stages(body: &str, name: &str) -> Vec<(String, f64, f64)> {
    let sum = format!("{name}_sum{{stage=\"");
    let count = format!("{name}_count{{stage=\"");
    let read = |line: &str, prefix: &str| {
        let rest = line.strip_prefix(prefix)?;
        let (stage, value) = rest.split_once("\"} ")?;
        Some((stage.to_string(), value.split_whitespace().next()?.parse::<f64>().ok()?))
    };
    let mut out: Vec<(String, f64, f64)> = Vec::new();
    for line in body.lines() {
        if let Some((stage, v)) = read(line, &sum) {
            match out.iter_mut().find(|s| s.0 == stage) {
                Some(s) => s.1 = v,
                None => out.push((stage, v, 0.0)),
            }
        } else if let Some((stage, v)) = read(line, &count) {
            match out.iter_mut().find(|s| s.0 == stage) {
                Some(s) => s.2 = v,
                None => out.push((stage, 0.0, v)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_read_with_their_sums_and_counts() {
        let body = "# TYPE system_b_stage_seconds histogram\n\
            system_b_stage_seconds_sum{stage=\"lock\"} 0.5\n\
            system_b_stage_seconds_count{stage=\"lock\"} 4\n\
            system_b_stage_seconds_bucket{le=\"0.0001\",stage=\"lock\"} 0\n\
            system_b_stage_seconds_sum{stage=\"store\"} 1.25\n\
            system_b_stage_seconds_count{stage=\"store\"} 5\n\
            system_a_stage_seconds_sum{stage=\"publish\"} 9\n";
        assert_eq!(
            stages(body, "system_b_stage_seconds"),
            vec![("lock".to_string(), 0.5, 4.0), ("store".to_string(), 1.25, 5.0)]
        );
        assert_eq!(sample(body, "system_b_stage_seconds_count{stage=\"store\"}"), Some(5.0));
    }
}
