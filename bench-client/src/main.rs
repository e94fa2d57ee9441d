//! bench-client: a load generator for 100K+ WebSocket connections with honest HDR latency
//! reports. The command users run is the coordinator; it re-executes itself as worker processes
//! (`bench-client __worker`, not for direct use) to hold more sockets than one process can.
#![deny(unsafe_code)]

use bench_client::http_member;

mod cli;
mod clock;
mod coordinator;
mod engine;
mod h2;
mod job;
mod machine;
mod net;
mod payload;
mod report;
mod stats;
mod tls;
mod v1;
mod worker;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if std::env::args().nth(1).as_deref() == Some("__worker") {
        return match worker::main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench-client worker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let run = match cli::Cli::parse().plan() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench-client: {e}");
            return ExitCode::from(2);
        }
    };
    // Ctrl-C: the first stops the run (the report is still written), a second exits at once.
    let interrupted = Arc::new(AtomicBool::new(false));
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if let Err(e) = signals.thread_block() {
        eprintln!("bench-client: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    let flag = interrupted.clone();
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            eprintln!("bench-client: interrupted, stopping and writing the report (again to quit now)");
            flag.store(true, Ordering::Relaxed);
        }
        if signals.wait().is_ok() {
            std::process::exit(130);
        }
    });
    // Exit status: 0 a clean run; 1 a run whose checks failed (the summary's verdict says why)
    // or that could not be carried out; 2 bad arguments; 130 interrupted (the report is written).
    match coordinator::run(run, interrupted) {
        Ok(e) if e.interrupted => ExitCode::from(130),
        Ok(e) if e.problems.is_empty() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench-client: {e}");
            ExitCode::FAILURE
        }
    }
}
