//! A worker process: reads its [`Job`] from stdin, runs one [`Engine`] per thread, relays the
//! coordinator's commands, reports progress each second and its [`Outcome`] at the end, all as
//! JSON lines on stdout. It ignores SIGINT (a terminal's Ctrl-C reaches the whole process group):
//! the coordinator decides when to stop, and EOF on stdin (a coordinator that died) stops it too.

use std::io::{self, BufRead, Write};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use c100k::net::mailbox::Mailbox;

use crate::engine::{Cmd, Engine, Live, WAKER};
use crate::job::{Command, Job, Progress, Report};
use crate::stats::Outcome;

/// Entry point of `bench-client __worker`.
pub fn main() -> Result<(), String> {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    #[allow(unsafe_code)] // installing SIG_IGN (no handler code runs)
    unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGINT, nix::sys::signal::SigHandler::SigIgn) }
        .map_err(|e| format!("ignoring SIGINT: {e}"))?;
    let (tx, rx) = mpsc::channel::<Option<Command>>();
    let mut first = String::new();
    io::stdin().read_line(&mut first).map_err(|e| e.to_string())?;
    let job: Job = serde_json::from_str(&first).map_err(|e| format!("bad job on stdin: {e}"))?;
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines().map_while(Result::ok) {
            match serde_json::from_str::<Command>(&line) {
                Ok(c) => {
                    let _ = tx.send(Some(c));
                }
                Err(e) => log::error!("worker: bad command {line:?}: {e}"),
            }
        }
        let _ = tx.send(None); // EOF: the coordinator is gone
    });
    match run(job, rx) {
        Ok(outcome) => emit(&Report::Result(Box::new(outcome))),
        Err(e) => {
            let _ = emit(&Report::Fatal { error: e.clone() });
            Err(e)
        }
    }
}

fn run(job: Job, commands: mpsc::Receiver<Option<Command>>) -> Result<Outcome, String> {
    let limit = c100k::net::limits::raise_nofile(u64::from(job.count) + 256).map_err(|e| e.to_string())?;
    if !limit.is_enough() {
        log::warn!("worker: {}", limit.describe("connections"));
    }
    let job = Arc::new(job);
    let threads = job.threads.max(1);
    let mut handles = Vec::new();
    let mut mailboxes = Vec::new();
    let mut lives = Vec::new();
    for tid in 0..threads {
        let poll = mio::Poll::new().map_err(|e| e.to_string())?;
        let mailbox = Arc::new(Mailbox::new(mio::Waker::new(poll.registry(), WAKER).map_err(|e| e.to_string())?));
        let live = Arc::new(Live::default());
        let engine = Engine::new(tid, job.clone(), live.clone(), poll, mailbox.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("bench-{tid}"))
                .spawn(move || engine.run())
                .map_err(|e| e.to_string())?,
        );
        mailboxes.push(mailbox);
        lives.push(live);
    }

    let broadcast = |c: Cmd| mailboxes.iter().for_each(|m| m.send(c));
    let mut ready_sent = false;
    let mut stopped = false;
    // Five reports a second: the coordinator's lines are then at most 0.2 s behind.
    const PROGRESS_EVERY: Duration = Duration::from_millis(200);
    let mut next_progress = Instant::now() + PROGRESS_EVERY;
    while handles.iter().any(|h| !h.is_finished()) {
        let cmd = match commands.recv_timeout(Duration::from_millis(50)) {
            Ok(Some(c)) => Some(c),
            // EOF on stdin: the coordinator is gone, so stop.
            Ok(None) => Some(Command::Stop),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(50));
                Some(Command::Stop)
            }
        };
        match cmd {
            Some(Command::Start { t0 }) => broadcast(Cmd::Start { t0 }),
            Some(Command::Stop) if !stopped => {
                stopped = true;
                broadcast(Cmd::Stop);
            }
            _ => {}
        }
        if !ready_sent && lives.iter().all(|l| l.settled.get() == 1) {
            ready_sent = true;
            emit(&Report::Progress(progress(&lives)))?;
            emit(&Report::Ready)?;
        }
        if Instant::now() >= next_progress {
            next_progress += PROGRESS_EVERY;
            emit(&Report::Progress(progress(&lives)))?;
        }
    }
    // The last interval's counts, so the coordinator's lines add up to the whole run.
    emit(&Report::Progress(progress(&lives)))?;
    let mut total = Outcome::default();
    for h in handles {
        let o = h.join().map_err(|_| "an engine thread panicked".to_string())?;
        total.merge(&o);
    }
    Ok(total)
}

fn progress(lives: &[Arc<Live>]) -> Progress {
    let mut p = Progress::default();
    for l in lives {
        p.add(&Progress {
            established: l.established.get(),
            failed: l.failed.get(),
            dropped: l.dropped.get(),
            sent: l.sent.get(),
            received: l.received.get(),
            inflight: l.inflight.get(),
        });
    }
    p
}

/// One report line on stdout.
fn emit(r: &Report) -> Result<(), String> {
    let mut line = serde_json::to_string(r).map_err(|e| e.to_string())?;
    line.push('\n');
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes()).and_then(|_| out.flush()).map_err(|e| format!("stdout: {e}"))
}
