//! The `c100k` binary: parse flags, raise the open-file limit, run the loops (or, with
//! `--processes N`, supervise N worker processes), drain on a signal.
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

use c100k::cli::Args;
use c100k::net::limits;
use c100k::server::Server;
use c100k::supervisor;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    let role = match supervisor::worker_role() {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            eprintln!("c100k worker: {e}");
            return ExitCode::FAILURE;
        }
        None => None,
    };
    init_logging(role.as_ref().map(|r| r.index));

    let wanted = args.max_connections.map_or(0, |n| n as u64) + limits::RESERVED_FDS;
    let fd_limit = limits::raise_nofile(wanted);
    if role.is_none() && args.processes > 1 {
        let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if let Ok(l) = &fd_limit {
            log::info!(
                "{} per worker; {} workers can hold about {} connections",
                l.describe("connections"),
                args.processes,
                l.usable() * u64::from(args.processes)
            );
        }
        let backlog = args.backlog.unwrap_or_else(|| c100k::server::Config::default().backlog);
        return supervisor::run(supervisor::Plan {
            listen: args.listen,
            processes: usize::from(args.processes),
            threads: threads.max(1),
            drain: args.drain_timeout,
            backlog,
            steer_by_source_ip: args.reuseport_steer == c100k::cli::Steer::SourceIp,
            redis: args.redis_target().is_some(),
        });
    }

    // Block SIGINT/SIGTERM before any thread starts (threads inherit the mask); the main thread
    // then waits for them synchronously, with no async-signal-safety concerns.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGHUP);
    if let Err(e) = signals.thread_block() {
        log::error!("cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    let fd_capacity = match fd_limit {
        Ok(l) => {
            let line = l.describe("connections");
            match (l.is_enough(), role.is_some()) {
                (false, _) => log::warn!("{line}"),
                (true, false) => log::info!("{line}"),
                (true, true) => log::debug!("{line}"),
            }
            l.usable() as usize
        }
        Err(e) => {
            log::warn!("cannot read or raise the open-file limit: {e}");
            1024
        }
    };
    let mut cfg = args.to_config(fd_capacity);
    match args.jwt_secret() {
        Ok(secret) => cfg.jwt_secret = secret,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    }
    let (threads, ping, max) = (cfg.threads, cfg.ping_interval, cfg.max_connections);
    let first_worker = role.as_ref().is_none_or(|r| r.index == 0);
    let started = match role {
        Some(r) => {
            cfg.listen = r.listen;
            cfg.threads = r.listeners.len().max(1);
            Server::start_inherited(cfg, r.metrics, r.listeners)
        }
        None => Server::start(cfg),
    };
    let server = match started {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!(
        "c100k {} {} with {threads} event loops (ping every {:?}, up to {max} connections); \
         routes: /echo, /ws?room=NAME, /ws (c100k.v1), /healthz, /metrics{}",
        if args.processes > 1 { "worker serving" } else { "listening on" },
        server.local_addr(),
        ping,
        if args.api_key.is_some() { ", /api/..." } else { "" }
    );
    if first_worker {
        if let (Some(cert), true) = (&args.tls_cert, server.is_tls()) {
            log::info!("TLS on every route (wss://, https://) with {}; SIGHUP reloads it", cert.display());
        }
        log_exposure(&args, server.local_addr());
        match args.redis_target() {
            Some(c100k::server::RedisTarget::Single(u)) => {
                log::info!("rooms in Redis at {u}: shared with every process and node using it")
            }
            Some(c100k::server::RedisTarget::Cluster(n)) => log::info!(
                "rooms in the Redis Cluster at {} (sharded pub/sub): shared with every process and node using it",
                n.join(",")
            ),
            None if args.processes > 1 => {}
            None => log::info!("rooms in memory (this process only; --redis shares them across processes and nodes)"),
        }
    }

    loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) if server.is_tls() => match server.reload_tls() {
                Ok(()) => log::info!("SIGHUP: TLS certificate and key reloaded; new handshakes use them"),
                Err(e) => log::error!("SIGHUP: TLS reload failed, still using the previous pair: {e}"),
            },
            Ok(Signal::SIGHUP) => log::info!("SIGHUP: nothing to reload (no --tls-cert)"),
            Ok(sig) => {
                log::info!("{sig:?} received: closing connections with 1001 and draining");
                break;
            }
            Err(e) => {
                log::error!("waiting for signals failed: {e}");
                break;
            }
        }
    }
    server.shutdown();
    // A second signal while draining exits at once.
    std::thread::spawn(move || {
        while let Ok(sig) = signals.wait() {
            if sig != Signal::SIGHUP {
                log::warn!("second signal: exiting without waiting for the drain");
                std::process::exit(1);
            }
        }
    });
    server.wait();
    log::info!("drained; bye");
    ExitCode::SUCCESS
}

/// Say once what the server lets anyone do, and how to restrict it.
fn log_exposure(args: &Args, addr: std::net::SocketAddr) {
    let open = args.jwt_secret.is_none() && args.jwt_secret_file.is_none();
    if open {
        let reach = if addr.ip().is_loopback() { "this host" } else { "anyone who can reach this address" };
        log::warn!(
            "no --jwt-secret: the server is open, {reach} may connect, join any room and publish; \
             restrict it with --listen 127.0.0.1:PORT, --jwt-secret, --allowed-origins"
        );
    } else if args.allowed_origins.is_none() {
        log::info!("tokens required; any browser origin allowed (restrict with --allowed-origins)");
    }
}

/// Log to stderr at `info` (RUST_LOG overrides); workers tag their lines with their index.
fn init_logging(worker: Option<usize>) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Some(i) = worker {
        b.format(move |f, r| writeln!(f, "[{} {:<5} c100k worker {i}] {}", f.timestamp_seconds(), r.level(), r.args()));
    }
    b.init();
}
