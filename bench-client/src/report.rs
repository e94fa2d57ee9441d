//! The report of a run: `summary.json` (schema in README.md), one `.hgrm` file per histogram in
//! HdrHistogram's percentile-distribution text format (what the HdrHistogram plotter loads), an
//! SVG of latency by percentile, and a human summary table.

use std::io::Write;
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::stats::{Outcome, HISTOGRAMS};

/// Derived figures of a merged outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    pub expected: u64,
    pub lost: i64,
    pub run_secs: f64,
    pub ramp_secs: f64,
    pub connect_rate: f64,
    pub recv_per_sec: f64,
    pub sent_per_sec: f64,
}

/// Expected deliveries, loss and rates. `v1`: expected comes from the server's seqs.
pub fn figures(o: &Outcome, scenario: &str, includes_sender: bool, v1: bool) -> Figures {
    let expected = match scenario {
        "broadcast" | "resume" if v1 => o.v1_rooms.expected(),
        "broadcast" => o
            .sent_by_room
            .iter()
            .map(|(room, sent)| {
                let members = o.members_by_room.get(room).copied().unwrap_or(0);
                let others = if includes_sender { members } else { members.saturating_sub(1) };
                sent * others
            })
            .sum(),
        "echo" => o.sent,
        _ => 0,
    };
    let unique = o.received.saturating_sub(o.duplicated);
    let run_secs = o.run_end.saturating_sub(o.run_start) as f64 / 1e9;
    let ramp_secs = o.ramp_end.saturating_sub(o.ramp_start) as f64 / 1e9;
    let per = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    Figures {
        expected,
        lost: expected as i64 - unique as i64,
        run_secs,
        ramp_secs,
        connect_rate: per(o.established, ramp_secs),
        recv_per_sec: per(o.received, run_secs),
        sent_per_sec: per(o.sent, run_secs),
    }
}

fn percentiles(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.5),
        "p90": h.value_at_quantile(0.9),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

/// What describes a run apart from its measurements.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub scenario: String,
    pub command: String,
    pub started_utc: String,
    pub parameters: Value,
    pub machine: Value,
    /// Connections asked for.
    pub target: u64,
    pub interrupted: bool,
}

/// The summary.json document.
pub fn summary(info: &RunInfo, o: &Outcome, f: &Figures) -> Value {
    let mut histograms = serde_json::Map::new();
    for name in HISTOGRAMS {
        let h = o.hist(name);
        if !h.is_empty() {
            histograms.insert(name.to_string(), percentiles(h));
        }
    }
    json!({
        "scenario": info.scenario,
        "command": info.command,
        "started_utc": info.started_utc,
        "interrupted": info.interrupted,
        "parameters": info.parameters,
        "machine": info.machine,
        "connections": {
            "target": info.target,
            "attempted": o.attempted,
            "established": o.established,
            "failed": o.failed(),
            "dropped": o.dropped(),
            "failures": o.failures,
            "drops": o.drops,
            "ramp_seconds": (f.ramp_secs * 1000.0).round() / 1000.0,
            "per_second": f.connect_rate.round() as u64,
        },
        "messages": {
            "sent": o.sent,
            "received": o.received,
            "expected": f.expected,
            "lost": f.lost,
            "duplicated": o.duplicated,
            "out_of_order": o.out_of_order,
            "corrupt": o.corrupt,
            "self_deliveries": o.self_deliveries,
            "sent_per_second": f.sent_per_sec.round() as u64,
            "received_per_second": f.recv_per_sec.round() as u64,
            "server_errors": o.v1_errors,
        },
        "resume": {
            "reconnects": o.resumes,
            "recovered": o.resumes_recovered,
            "unrecovered": o.resumes_unrecovered,
            "messages_recovered": o.recovered_messages,
        },
        "duration_seconds": (f.run_secs * 1000.0).round() / 1000.0,
        "histograms": histograms,
        "histogram_unit": "microseconds",
    })
}

/// Write `h` (microseconds) as an `.hgrm` percentile distribution in milliseconds, the layout of
/// HdrHistogram's `outputPercentileDistribution` (5 ticks per half-distance).
pub fn write_hgrm(h: &Histogram<u64>, mut w: impl Write) -> std::io::Result<()> {
    const SCALE: f64 = 1000.0;
    writeln!(w, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)")?;
    let mut total = 0;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64 / SCALE;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            writeln!(w, "{value:12.3} {q:2.12} {total:10} {:14.2}", 1.0 / (1.0 - q))?;
        } else {
            writeln!(w, "{value:12.3} {q:2.12} {total:10}")?;
        }
    }
    writeln!(w, "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]", h.mean() / SCALE, h.stdev() / SCALE)?;
    writeln!(w, "#[Max     = {:12.3}, Total count    = {:12}]", h.max() as f64 / SCALE, h.len())?;
    // Java's SubBuckets: the power of two holding 2 * 10^digits values.
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    writeln!(w, "#[Buckets = {:12}, SubBuckets     = {:12}]", h.buckets(), sub_buckets)?;
    Ok(())
}

/// Latency (ms) by percentile for every non-empty histogram, on the usual log "1/(1-p)" axis.
pub fn write_svg(o: &Outcome, title: &str, path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    let series: Vec<(&str, Vec<(f64, f64)>)> = HISTOGRAMS
        .iter()
        .filter(|n| !o.hist(n).is_empty())
        .map(|n| {
            let h = o.hist(n);
            let pts = h
                .iter_quantiles(5)
                .filter(|v| v.quantile_iterated_to() < 1.0)
                .map(|v| (1.0 / (1.0 - v.quantile_iterated_to()), v.value_iterated_to() as f64 / 1000.0))
                .chain(std::iter::once((1e6, h.max() as f64 / 1000.0)))
                .collect();
            (*n, pts)
        })
        .collect();
    if series.is_empty() {
        return Ok(());
    }
    let ymax = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.1)).fold(0.001, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0f64..1e6).log_scale(), 0.0..ymax)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 1.0 / x);
            if p < 99.0 {
                format!("{p:.0}%")
            } else {
                format!("{}%", trim_float(p))
            }
        })
        .draw()
        .map_err(|e| e.to_string())?;
    let colors = [BLUE, RED, GREEN, MAGENTA];
    for (i, (name, pts)) in series.into_iter().enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

fn trim_float(p: f64) -> String {
    let s = format!("{p:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Write summary.json, the .hgrm files and the SVG into `dir`.
pub fn write_all(dir: &Path, summary: &Value, o: &Outcome, title: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let text = serde_json::to_string_pretty(summary).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("summary.json"), text + "\n").map_err(|e| e.to_string())?;
    for name in HISTOGRAMS {
        let h = o.hist(name);
        if !h.is_empty() {
            let f = std::fs::File::create(dir.join(format!("{name}.hgrm"))).map_err(|e| e.to_string())?;
            write_hgrm(h, std::io::BufWriter::new(f)).map_err(|e| e.to_string())?;
        }
    }
    write_svg(o, title, &dir.join("latency.svg"))
}

/// The human summary table.
pub fn table(summary: &Value) -> String {
    let mut s = String::new();
    let c = &summary["connections"];
    let m = &summary["messages"];
    let line = |s: &mut String, k: &str, v: String| s.push_str(&format!("  {k:<22} {v}\n"));
    s.push_str(&format!(
        "{} — {}\n",
        summary["scenario"].as_str().unwrap_or(""),
        summary["command"].as_str().unwrap_or("")
    ));
    line(
        &mut s,
        "connections",
        format!(
            "{} established of {} ({} failed, {} dropped) in {:.2}s, {}/s",
            c["established"],
            c["target"],
            c["failed"],
            c["dropped"],
            c["ramp_seconds"].as_f64().unwrap_or(0.0),
            c["per_second"]
        ),
    );
    for (k, v) in c["failures"].as_object().into_iter().flatten() {
        line(&mut s, &format!("  failed: {k}"), v.to_string());
    }
    for (k, v) in c["drops"].as_object().into_iter().flatten() {
        line(&mut s, &format!("  dropped: {k}"), v.to_string());
    }
    if m["sent"].as_u64().unwrap_or(0) > 0 || m["received"].as_u64().unwrap_or(0) > 0 {
        line(
            &mut s,
            "messages",
            format!(
                "sent {} ({}/s), received {} ({}/s) over {:.2}s",
                m["sent"],
                m["sent_per_second"],
                m["received"],
                m["received_per_second"],
                summary["duration_seconds"].as_f64().unwrap_or(0.0)
            ),
        );
        line(
            &mut s,
            "integrity",
            format!(
                "expected {}, lost {}, duplicated {}, out of order {}, corrupt {}",
                m["expected"], m["lost"], m["duplicated"], m["out_of_order"], m["corrupt"]
            ),
        );
    }
    let r = &summary["resume"];
    if r["reconnects"].as_u64().unwrap_or(0) > 0 {
        line(
            &mut s,
            "resume",
            format!(
                "{} reconnects: {} recovered, {} not; {} messages replayed",
                r["reconnects"], r["recovered"], r["unrecovered"], r["messages_recovered"]
            ),
        );
    }
    s.push_str(&format!(
        "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}\n",
        "latency (µs)", "p50", "p90", "p99", "p99.9", "max", "count"
    ));
    for (name, h) in summary["histograms"].as_object().into_iter().flatten() {
        let v = |k: &str| h[k].to_string();
        s.push_str(&format!(
            "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}\n",
            name,
            v("p50"),
            v("p90"),
            v("p99"),
            v("p999"),
            v("max"),
            v("count")
        ));
    }
    s
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ` (and a path-friendly form).
pub fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (hh, mm, ss) = (rem / 3600, rem / 60 % 60, rem % 60);
    (format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z"), format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    #[test]
    fn hgrm_has_the_percentile_distribution_layout() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let mut out = Vec::new();
        write_hgrm(&h, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        assert_eq!(lines.next().unwrap(), "");
        let rows: Vec<Vec<&str>> =
            text.lines().skip(2).filter(|l| !l.starts_with('#')).map(|l| l.split_whitespace().collect()).collect();
        assert!(rows.len() > 20);
        let last = rows.last().unwrap();
        assert_eq!(last.len(), 3, "the 100% row has no 1/(1-p) column");
        assert_eq!(last[2], "10000");
        // Max is the highest value equivalent to the largest sample at 3 significant digits.
        assert!(text.contains("#[Max     =       10.007, Total count    =        10000]"), "{text}");
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
    }

    #[test]
    fn broadcast_loss_is_expected_minus_unique_deliveries() {
        let mut o = Outcome::default();
        o.sent_by_room.insert(0, 10);
        o.sent_by_room.insert(1, 4);
        o.members_by_room.insert(0, 5);
        o.members_by_room.insert(1, 3);
        o.received = 10 * 4 + 4 * 2 - 3 + 2; // three lost, two duplicates
        o.duplicated = 2;
        let f = figures(&o, "broadcast", false, false);
        assert_eq!(f.expected, 48);
        assert_eq!(f.lost, 3);
        assert_eq!(figures(&o, "broadcast", true, false).expected, 10 * 5 + 4 * 3);
    }

    #[test]
    fn utc_dates() {
        let (iso, compact) = utc_now();
        assert_eq!(iso.len(), 20);
        assert!(compact.ends_with('Z') && !compact.contains(':'));
    }
}
