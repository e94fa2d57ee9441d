//! The process users run: splits the connections over worker processes (one process cannot hold
//! more sockets than its open-file limit), steers them through ramp → run → stop, prints one
//! progress line per second, merges their outcomes exactly and writes the report. Ctrl-C stops
//! the run early and still writes the report of what was measured.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::clock::now_ns;
use crate::job::{Command, Job, Load, Progress, Report, Scenario};
use crate::net::{Failure, Target};
use crate::report;
use crate::stats::Outcome;

/// Everything about a run, decided from the command line.
#[derive(Debug, Clone)]
pub struct Run {
    pub name: &'static str,
    pub scenario: Scenario,
    /// How members receive (senders always use WebSockets).
    pub transport: crate::http_member::Transport,
    /// Offer permessage-deflate.
    pub deflate: bool,
    /// Text padding in payloads (`--payload words`).
    pub words: bool,
    /// `--h2`: WebSockets per HTTP/2 connection.
    pub h2: Option<u32>,
    /// Certificate checks for wss:// and https://.
    pub tls: crate::tls::TlsOptions,
    /// The URLs connections are spread over (connection i → URL i mod n).
    pub targets: Vec<Target>,
    pub conns: u32,
    pub procs: usize,
    pub threads: usize,
    pub sources: Vec<IpAddr>,
    pub connect_rate: f64,
    pub concurrency: usize,
    pub reconnect_concurrency: usize,
    pub connect_timeout: Duration,
    pub drain: Duration,
    /// Hold (idle) or duration (echo, broadcast).
    pub duration: Duration,
    pub out: Option<PathBuf>,
    pub quiet: bool,
    /// Fewer established connections than this is a failed run (default: all of them).
    pub min_established: Option<u32>,
    /// The parameters as given, for the report.
    pub parameters: Value,
}

enum Msg {
    Report(usize, Report),
    Exited(usize),
}

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    progress: Progress,
    ready: bool,
    outcome: Option<Outcome>,
    exited: bool,
    error: Option<String>,
}

impl Worker {
    fn send(&mut self, c: &Command) {
        if let Some(stdin) = self.stdin.as_mut() {
            let line = serde_json::to_string(c).expect("commands serialize") + "\n";
            if stdin.write_all(line.as_bytes()).and_then(|_| stdin.flush()).is_err() {
                self.stdin = None;
            }
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct Ended {
    /// Why it is not clean (empty: it is).
    pub problems: Vec<String>,
    pub interrupted: bool,
}

/// Run, write the report, print the table.
pub fn run(r: Run, interrupted: Arc<AtomicBool>) -> Result<Ended, String> {
    let (started_utc, stamp) = report::utc_now();
    let command = shell_words(std::env::args());
    let machine = crate::machine::describe();
    let (tx, rx) = mpsc::channel::<Msg>();
    let mut workers = spawn(&r, &tx)?;
    drop(tx);
    let mut printer = ProgressLine::new(r.quiet, r.conns);

    // Ramp: wait until every worker has attempted and settled all its connections.
    while !workers.iter().all(|w| w.ready || w.exited) && !interrupted.load(Ordering::Relaxed) {
        pump(&rx, &mut workers, Duration::from_millis(100));
        printer.tick(&workers, "ramp");
    }
    // Run: every worker starts at the same instant.
    let mut measured = false;
    if !interrupted.load(Ordering::Relaxed) && workers.iter().any(|w| !w.exited) {
        let t0 = now_ns() + 50_000_000;
        for w in workers.iter_mut() {
            w.send(&Command::Start { t0 });
        }
        measured = true;
        let end = Instant::now() + Duration::from_millis(50) + r.duration;
        while Instant::now() < end && !interrupted.load(Ordering::Relaxed) && workers.iter().any(|w| !w.exited) {
            pump(&rx, &mut workers, Duration::from_millis(100).min(end.saturating_duration_since(Instant::now())));
            printer.tick(&workers, "run");
            let p = total_progress(&workers);
            if p.established > 0 && p.dropped >= p.established {
                eprintln!("bench-client: every connection has dropped; stopping early");
                break;
            }
        }
    }
    // Stop: drain, close, report.
    for w in workers.iter_mut() {
        w.send(&Command::Stop);
    }
    // Closing takes time at scale: a million connections closed by one core (both ends) took
    // over 20 s here, so the deadline grows by a second per 10,000 connections.
    let deadline = Instant::now() + r.drain + Duration::from_secs(15) + Duration::from_millis(r.conns as u64 / 10);
    while workers.iter().any(|w| !w.exited && w.outcome.is_none()) && Instant::now() < deadline {
        pump(&rx, &mut workers, Duration::from_millis(100));
        printer.tick(&workers, "stop");
    }
    printer.finish(&workers);
    let mut total = Outcome::default();
    let mut missing = Vec::new();
    for (i, w) in workers.iter_mut().enumerate() {
        match &w.outcome {
            Some(o) => total.merge(o),
            None => missing.push(format!("worker {i}: {}", w.error.clone().unwrap_or_else(|| "no result".into()))),
        }
        w.stdin = None;
        let _ = w.child.wait();
    }
    if !measured {
        total.run_start = total.ramp_end;
        total.run_end = total.ramp_end;
    }

    let includes_sender = matches!(r.scenario, Scenario::Broadcast { includes_sender: true, .. });
    let v1 = matches!(r.scenario, Scenario::Broadcast { v1: true, .. });
    let fig = report::figures(&total, r.name, includes_sender, v1);
    let was_interrupted = interrupted.load(Ordering::Relaxed);
    let min_established = r.min_established.unwrap_or(r.conns);
    let problems = report::verdict(&total, &fig, u64::from(min_established), was_interrupted, r.name);
    let info = report::RunInfo {
        scenario: r.name.to_string(),
        command,
        started_utc,
        parameters: r.parameters.clone(),
        machine,
        target: u64::from(r.conns),
        interrupted: was_interrupted,
        problems: problems.clone(),
    };
    let mut summary = report::summary(&info, &total, &fig);
    summary["parameters"]["procs"] = r.procs.into();
    summary["parameters"]["threads_per_proc"] = r.threads.into();
    if !missing.is_empty() {
        summary["worker_errors"] = missing.clone().into();
    }
    let dir = r.out.clone().unwrap_or_else(|| PathBuf::from("bench-results").join(format!("{stamp}-{}", r.name)));
    report::write_all(&dir, &summary, &total, &plot_title(&r))?;
    println!("{}", report::table(&summary));
    for name in total.failures.keys().chain(total.drops.keys()) {
        if let Some(h) = hint_for(name) {
            println!("  hint ({name}): {h}");
        }
    }
    println!("  report: {}", dir.display());
    if !missing.is_empty() {
        return Err(format!("some workers did not report: {}", missing.join("; ")));
    }
    if problems.is_empty() {
        println!("  verdict: ok");
    } else {
        println!("  verdict: NOT OK: {}", problems.join("; "));
    }
    Ok(Ended { problems, interrupted: was_interrupted })
}

fn hint_for(name: &str) -> Option<&'static str> {
    [Failure::AddrNotAvail, Failure::Emfile, Failure::Refused, Failure::Timeout]
        .into_iter()
        .find(|f| f.name() == name)
        .and_then(|f| f.hint())
}

/// Start the worker processes, each with its slice of connection indices.
fn spawn(r: &Run, tx: &mpsc::Sender<Msg>) -> Result<Vec<Worker>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
    let salt = now_ns();
    let mut workers = Vec::with_capacity(r.procs);
    for w in 0..r.procs {
        let first = (u64::from(r.conns) * w as u64 / r.procs as u64) as u32;
        let next = (u64::from(r.conns) * (w as u64 + 1) / r.procs as u64) as u32;
        let count = next - first;
        let share = f64::from(count) / f64::from(r.conns.max(1));
        let scenario = match &r.scenario {
            Scenario::Echo { size, load: Load::Rate(rate), binary } => {
                Scenario::Echo { size: *size, load: Load::Rate(rate * share), binary: *binary }
            }
            s => s.clone(),
        };
        let job = Job {
            scenario,
            transport: r.transport,
            deflate: r.deflate,
            words: r.words,
            h2: r.h2,
            targets: r.targets.clone(),
            first,
            count,
            total: r.conns,
            sources: r.sources.clone(),
            threads: r.threads,
            connect_rate: r.connect_rate * share,
            concurrency: ((r.concurrency as f64 * share).ceil() as usize).max(1),
            reconnect_concurrency: ((r.reconnect_concurrency as f64 * share).ceil() as usize).max(1),
            connect_timeout_ms: r.connect_timeout.as_millis() as u64,
            drain_ms: r.drain.as_millis() as u64,
            salt: salt ^ (w as u64) << 48,
            tls: r.tls.clone(),
        };
        let mut child = Process::new(&exe)
            .arg("__worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start worker process: {e}"))?;
        let mut stdin = child.stdin.take();
        let line = serde_json::to_string(&job).map_err(|e| e.to_string())? + "\n";
        if let Some(s) = stdin.as_mut() {
            s.write_all(line.as_bytes()).map_err(|e| format!("worker {w}: {e}"))?;
        }
        let stdout = child.stdout.take().expect("piped stdout");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Report>(&line) {
                    Ok(rep) => {
                        let _ = tx.send(Msg::Report(w, rep));
                    }
                    Err(e) => log::error!("worker {w}: unreadable report ({e}): {line:.200}"),
                }
            }
            let _ = tx.send(Msg::Exited(w));
        });
        workers.push(Worker {
            child,
            stdin,
            progress: Progress::default(),
            ready: false,
            outcome: None,
            exited: false,
            error: None,
        });
    }
    Ok(workers)
}

/// Handle worker messages for up to `wait`.
fn pump(rx: &mpsc::Receiver<Msg>, workers: &mut [Worker], wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Msg::Report(w, rep)) => match rep {
                Report::Progress(p) => workers[w].progress = p,
                Report::Ready => workers[w].ready = true,
                Report::Result(o) => workers[w].outcome = Some(*o),
                Report::Fatal { error } => {
                    log::error!("worker {w}: {error}");
                    workers[w].error = Some(error);
                }
            },
            Ok(Msg::Exited(w)) => workers[w].exited = true,
            Err(_) => return,
        }
        if left.is_zero() {
            return;
        }
    }
}

fn total_progress(workers: &[Worker]) -> Progress {
    let mut p = Progress::default();
    for w in workers {
        p.add(&w.progress);
    }
    p
}

/// One progress line per second on stderr, each saying what happened in its own interval (the
/// workers report five times a second, so a line is at most 0.2 s behind), and a last line for
/// the final partial interval.
struct ProgressLine {
    quiet: bool,
    target: u32,
    start: Instant,
    /// When the last line was printed, and the totals then.
    last_at: Instant,
    last: Progress,
}

impl ProgressLine {
    fn new(quiet: bool, target: u32) -> Self {
        let now = Instant::now();
        ProgressLine { quiet, target, start: now, last_at: now, last: Progress::default() }
    }

    fn tick(&mut self, workers: &[Worker], phase: &str) {
        if self.last_at.elapsed() >= Duration::from_secs(1) {
            self.print(workers, phase);
        }
    }

    /// The last, partial interval.
    fn finish(&mut self, workers: &[Worker]) {
        if self.last_at.elapsed() >= Duration::from_millis(50) {
            self.print(workers, "end");
        }
    }

    fn print(&mut self, workers: &[Worker], phase: &str) {
        let now = Instant::now();
        let p = total_progress(workers);
        let dt = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        let rate = |now: u64, before: u64| (now.saturating_sub(before) as f64 / dt).round() as u64;
        if !self.quiet {
            eprintln!(
                "[{:>6.1}s] {phase:<4} open {}/{} (+{}/s) inflight {} failed {} dropped {} | sent {}/s recv {}/s",
                now.duration_since(self.start).as_secs_f64(),
                p.established - p.dropped.min(p.established),
                self.target,
                rate(p.established, self.last.established),
                p.inflight,
                p.failed,
                p.dropped,
                rate(p.sent, self.last.sent),
                rate(p.received, self.last.received),
            );
        }
        self.last = p;
        self.last_at = now;
    }
}

/// What tells two plots apart: the scenario, its load, and the server.
fn plot_title(r: &Run) -> String {
    let p = &r.parameters;
    let mut t = format!("{}: {} connections", r.name, r.conns);
    for (key, label) in [("rooms", "rooms"), ("senders", "senders")] {
        if let Some(v) = p[key].as_u64() {
            t.push_str(&format!(", {v} {label}"));
        }
    }
    if let Some(rate) = p["rate"].as_f64() {
        t.push_str(&format!(", {rate} msgs/s"));
    } else if let Some(w) = p["window"].as_u64() {
        t.push_str(&format!(", window {w}"));
    }
    if let Some(size) = p["size"].as_u64() {
        t.push_str(&format!(", {size} B"));
    }
    if p["protocol"] == "v1" {
        t.push_str(", v1");
    }
    let t0 = &r.targets[0];
    let more = if r.targets.len() > 1 { format!(" (+{} more)", r.targets.len() - 1) } else { String::new() };
    format!("{t} — {}{}{more}", t0.host, t0.path)
}

/// The command line, quoted for a shell where needed.
fn shell_words(args: impl Iterator<Item = String>) -> String {
    args.enumerate()
        .map(|(i, a)| {
            let a = if i == 0 { "bench-client".to_string() } else { a };
            if a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c)) {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
