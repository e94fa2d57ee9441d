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
        "broadcast" | "resume" | "failover" | "reconnect" if v1 => o.v1_rooms.expected(),
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

/// Whether a run is clean, and if not, why: fewer connections than asked, messages lost,
/// duplicated, out of order or corrupted, server errors, or an interrupted run.
pub fn verdict(o: &Outcome, f: &Figures, min_established: u64, interrupted: bool, scenario: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if o.established < min_established {
        problems.push(format!("{} of the {} connections asked for were established", o.established, min_established));
    }
    let checks_messages = matches!(scenario, "echo" | "broadcast" | "resume" | "failover" | "reconnect");
    if checks_messages && f.lost > 0 {
        let unknown = if o.publish_errors > 0 {
            format!(
                " (of which up to {} may be publishes answered with an error that ran all the same)",
                o.publish_errors
            )
        } else {
            String::new()
        };
        problems.push(format!("{} messages lost{unknown}", f.lost));
    }
    if checks_messages && f.lost < 0 {
        problems.push(format!("{} more messages than expected", -f.lost));
    }
    for (n, what) in [(o.duplicated, "duplicated"), (o.out_of_order, "out of order"), (o.corrupt, "corrupt")] {
        if n > 0 {
            problems.push(format!("{n} messages {what}"));
        }
    }
    if o.v1_errors > 0 {
        problems.push(format!("{} error replies from the server", o.v1_errors));
    }
    if interrupted {
        problems.push("interrupted before the end".into());
    }
    problems
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
    /// Why the run is not clean (empty: it is).
    pub problems: Vec<String>,
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
        "verdict": { "ok": info.problems.is_empty(), "problems": info.problems },
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
            "publish_errors": o.publish_errors,
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

/// Write `h` as an `.hgrm` percentile distribution, the layout of HdrHistogram's
/// `outputPercentileDistribution` (5 ticks per half-distance), values in microseconds like every
/// other latency bench-client reports (load it in the HdrHistogram plotter with that unit).
pub fn write_hgrm(h: &Histogram<u64>, mut w: impl Write) -> std::io::Result<()> {
    writeln!(w, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)")?;
    let mut total = 0;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            writeln!(w, "{value:12.3} {q:2.12} {total:10} {:14.2}", 1.0 / (1.0 - q))?;
        } else {
            writeln!(w, "{value:12.3} {q:2.12} {total:10}")?;
        }
    }
    writeln!(w, "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]", h.mean(), h.stdev())?;
    writeln!(w, "#[Max     = {:12.3}, Total count    = {:12}]", h.max() as f64, h.len())?;
    // Java's SubBuckets: the power of two holding 2 * 10^digits values.
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    writeln!(w, "#[Buckets = {:12}, SubBuckets     = {:12}]", h.buckets(), sub_buckets)?;
    Ok(())
}

/// The percentile axis runs to `1 - 1/n` for n samples: a histogram of 100 samples says
/// nothing about the 99.99th percentile, so its curve stops at 99%.
fn percentile_extent(count: u64) -> f64 {
    (count as f64).clamp(10.0, 1e6)
}

/// A percentile axis label for position `x` = 1/(1-p).
fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    if p < 99.0 {
        format!("{p:.0}%")
    } else {
        format!("{}%", trim_float(p))
    }
}

/// Latency (µs, log scale) by percentile (the usual log "1/(1-p)" axis) for every non-empty
/// histogram; the legend sits beside the plot, the title names the run.
pub fn write_svg(o: &Outcome, title: &str, path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    let series: Vec<(&str, Vec<(f64, f64)>)> = HISTOGRAMS
        .iter()
        .filter(|n| !o.hist(n).is_empty())
        .map(|n| {
            let h = o.hist(n);
            let end = percentile_extent(h.len());
            let pts = h
                .iter_quantiles(5)
                .map(|v| (1.0 / (1.0 - v.quantile_iterated_to()).max(1e-12), v.value_iterated_to().max(1) as f64))
                .filter(|(x, _)| *x < end)
                .chain(std::iter::once((end, h.max().max(1) as f64)))
                .collect();
            (*n, pts)
        })
        .collect();
    if series.is_empty() {
        return Ok(());
    }
    let xmax = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.0)).fold(10.0, f64::max);
    let ymax = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.1)).fold(10.0, f64::max) * 2.0;
    let ymin = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.1)).fold(f64::MAX, f64::min).max(1.0) / 2.0;
    let root = SVGBackend::new(path, (1040, 580)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (plot, side) = root.split_horizontally(860);
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, ("sans-serif", 16))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0f64..xmax).log_scale(), (ymin..ymax).log_scale())
        .map_err(|e| e.to_string())?;
    let ticks: Vec<f64> = [1.0, 2.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6].into_iter().filter(|t| *t <= xmax).collect();
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_labels(ticks.len())
        .x_label_formatter(&|x| {
            // Label the decades only (1/(1-p) = 10^k); plotters may offer other positions.
            let nearest = ticks.iter().copied().min_by(|a, b| (a - x).abs().total_cmp(&(b - x).abs())).unwrap_or(*x);
            if (nearest - x).abs() / nearest < 0.01 {
                percentile_label(nearest)
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(|e| e.to_string())?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (_, pts)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2))).map_err(|e| e.to_string())?;
    }
    // The legend, beside the plot so it never hides a curve.
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let y = 60 + 28 * i as i32;
        side.draw(&PathElement::new(vec![(10, y), (40, y)], c.stroke_width(3))).map_err(|e| e.to_string())?;
        let max = pts.last().map_or(0.0, |p| p.1);
        side.draw(&Text::new(format!("{name} (max {max:.0} µs)"), (48, y - 7), ("sans-serif", 13)))
            .map_err(|e| e.to_string())?;
    }
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
    for name in HISTOGRAMS {
        let h = &summary["histograms"][name];
        if h.is_null() {
            continue;
        }
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
        assert!(text.contains("#[Max     =    10007.000, Total count    =        10000]"), "{text}");
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
    }

    #[test]
    fn the_percentile_axis_stops_where_the_samples_do() {
        assert_eq!(percentile_extent(100), 100.0, "100 samples: up to 99%");
        assert_eq!(percentile_extent(5), 10.0);
        assert_eq!(percentile_extent(10_000_000), 1e6);
        assert_eq!(percentile_label(1e6), "99.9999%");
        assert_eq!(percentile_label(1e3), "99.9%");
        assert_eq!(percentile_label(2.0), "50%");
        let mut o = Outcome::default();
        for v in 1..=100u64 {
            o.hist[crate::stats::H_RTT].record(v * 10).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        write_svg(&o, "echo: 1 conns", &dir.path().join("l.svg")).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("l.svg")).unwrap();
        assert!(svg.contains("latency (µs)") && svg.contains("echo: 1 conns") && svg.contains("rtt (max 1000 µs)"));
        assert!(!svg.contains("99.99%"), "no ticks past the samples");
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
