//! The `c100k` binary: parse flags, raise the open-file limit, run the loops, drain on a signal.

use std::process::ExitCode;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

use c100k::cli::Args;
use c100k::limits;
use c100k::server::Server;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();

    // Block SIGINT/SIGTERM before any thread starts (threads inherit the mask); the main thread
    // then waits for them synchronously, with no async-signal-safety concerns.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if let Err(e) = signals.thread_block() {
        log::error!("cannot block signals: {e}");
        return ExitCode::FAILURE;
    }

    let wanted = args.max_connections.map_or(0, |n| n as u64) + limits::RESERVED_FDS;
    let fd_capacity = match limits::raise_nofile(wanted) {
        Ok(l) => {
            let line = l.describe("connections");
            if l.is_enough() {
                log::info!("{line}");
            } else {
                log::warn!("{line}");
            }
            l.usable() as usize
        }
        Err(e) => {
            log::warn!("cannot read or raise the open-file limit: {e}");
            1024
        }
    };
    let cfg = args.to_config(fd_capacity);
    let (threads, ping, max) = (cfg.threads, cfg.ping_interval, cfg.max_connections);
    let server = match Server::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!(
        "c100k listening on {} with {threads} event loops (ping every {:?}, up to {max} connections); \
         routes: /echo, /ws?room=NAME, /healthz, /metrics",
        server.local_addr(),
        ping
    );

    match signals.wait() {
        Ok(sig) => log::info!("{sig:?} received: closing connections with 1001 and draining"),
        Err(e) => log::error!("waiting for signals failed: {e}"),
    }
    server.shutdown();
    // A second signal while draining exits at once.
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            log::warn!("second signal: exiting without waiting for the drain");
            std::process::exit(1);
        }
    });
    server.wait();
    log::info!("drained; bye");
    ExitCode::SUCCESS
}
