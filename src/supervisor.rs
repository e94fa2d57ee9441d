//! Multi-process mode (`--processes N`): one supervisor process starts N worker processes (this
//! same binary, recognised by environment variables), each running its own event loops on the
//! same port through SO_REUSEPORT. For hosts or containers whose per-process open-file limit is
//! below the connections wanted.
//!
//! The supervisor creates the whole SO_REUSEPORT group of listening sockets (processes ×
//! loops) and hands each worker its own; it keeps them open itself, so the group never changes
//! while it runs: a worker that dies and restarts gets the same sockets back, connections
//! steered to them meanwhile wait in their backlog, and `--reuseport-steer source-ip` keeps
//! sending an address to the same worker across restarts (the kernel reorders a group when a
//! socket leaves it). It shares a memfd of metric blocks with the workers so any of them
//! answers `/metrics` for the whole server, restarts a worker that dies (exponential backoff,
//! logged), and on SIGINT/SIGTERM forwards SIGTERM so every worker drains (close 1001), then
//! exits 0 once they all have. Workers run in their own process group (a terminal's Ctrl-C
//! reaches only the supervisor, which forwards it once) and die with the supervisor
//! (PR_SET_PDEATHSIG).
#![allow(unsafe_code)] // inherited descriptors (fcntl, from_raw_fd) and sigtimedwait

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::server::metrics_store::MetricsStore;

const ENV_INDEX: &str = "C100K_WORKER_INDEX";
const ENV_LISTEN: &str = "C100K_WORKER_LISTEN";
const ENV_METRICS_FD: &str = "C100K_WORKER_METRICS_FD";
const ENV_LISTEN_FDS: &str = "C100K_WORKER_LISTEN_FDS";
const ENV_PARENT: &str = "C100K_WORKER_PARENT";

/// First restart delay; doubles while a worker keeps dying young, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A worker that lived this long resets its backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// What a worker process learns from its supervisor.
#[derive(Debug)]
pub struct WorkerRole {
    pub index: usize,
    pub listen: SocketAddr,
    pub metrics: MetricsStore,
    /// This worker's listening sockets, from the supervisor's group.
    pub listeners: Vec<std::net::TcpListener>,
}

/// If this process is a worker started by a supervisor, attach to the shared metric blocks and
/// arrange to die with the supervisor. `None` for a standalone or supervisor process.
pub fn worker_role() -> Option<Result<WorkerRole, String>> {
    let index = std::env::var(ENV_INDEX).ok()?;
    Some((|| {
        let index: usize = index.parse().map_err(|_| "bad worker index")?;
        let listen: SocketAddr =
            std::env::var(ENV_LISTEN).ok().and_then(|v| v.parse().ok()).ok_or("bad worker listen address")?;
        let fd: RawFd =
            std::env::var(ENV_METRICS_FD).ok().and_then(|v| v.parse().ok()).ok_or("bad worker metrics fd")?;
        let parent: i32 = std::env::var(ENV_PARENT).ok().and_then(|v| v.parse().ok()).ok_or("bad parent pid")?;
        nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
        if nix::unistd::getppid().as_raw() != parent {
            return Err("the supervisor is already gone".to_string());
        }
        // The descriptor must be open (a worker started by hand with a stale environment would
        // otherwise map whatever file has that number).
        // SAFETY: F_GETFD on any number only reads the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(format!("metrics descriptor {fd} is not open"));
        }
        // SAFETY: the supervisor passed this descriptor (inherited across exec) for this purpose,
        // and it is open (checked above).
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let metrics = MetricsStore::attach(fd, index).map_err(|e| format!("metrics region: {e}"))?;
        let mut listeners = Vec::new();
        for v in std::env::var(ENV_LISTEN_FDS).map_err(|_| "no listening sockets")?.split(',') {
            let fd: RawFd = v.parse().map_err(|_| "bad listening socket")?;
            // SAFETY: F_GETFD on any number only reads the descriptor table.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(format!("listening socket {fd} is not open"));
            }
            // SAFETY: the supervisor passed this open listening socket for this worker alone;
            // nothing else in this process owns it.
            listeners.push(unsafe { std::net::TcpListener::from_raw_fd(fd) });
        }
        Ok(WorkerRole { index, listen, metrics, listeners })
    })())
}

struct Slot {
    child: Option<Child>,
    started: Instant,
    backoff: Duration,
    restart_at: Option<Instant>,
}

/// What the supervisor needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub listen: SocketAddr,
    pub processes: usize,
    pub threads: usize,
    pub drain: Duration,
    /// listen(2) backlog of each socket.
    pub backlog: i32,
    /// `--reuseport-steer source-ip`.
    pub steer_by_source_ip: bool,
    /// Rooms live in Redis, so they span every worker.
    pub redis: bool,
}

/// Run the supervisor until every worker has drained after SIGINT/SIGTERM.
pub fn run(plan: Plan) -> ExitCode {
    match supervise(plan) {
        Ok(code) => code,
        Err(e) => {
            log::error!("supervisor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn supervise(plan: Plan) -> Result<ExitCode, String> {
    let Plan { processes, threads, drain, redis: plan_rooms_shared, .. } = plan;
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGCHLD, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().map_err(|e| format!("blocking signals: {e}"))?;

    let (group, addr) = listeners(&plan)?;
    let (fd, store) = MetricsStore::create_shared(processes, threads).map_err(|e| format!("metrics region: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my executable: {e}"))?;
    let mut slots: Vec<Slot> = (0..processes)
        .map(|_| Slot { child: None, started: Instant::now(), backoff: FIRST_BACKOFF, restart_at: None })
        .collect();
    for (i, slot) in slots.iter_mut().enumerate() {
        slot.child = Some(
            spawn(&exe, i, addr, &fd, &group[i * threads..(i + 1) * threads])
                .map_err(|e| format!("starting worker {i}: {e}"))?,
        );
    }
    // Announce the address only once every worker's loops accept connections.
    let ready_by = Instant::now() + Duration::from_secs(30);
    let mut stopping: Option<Instant> = None;
    while stopping.is_none() && store.loops_listening() < (processes * threads) as u64 {
        if Instant::now() >= ready_by {
            kill_all(&slots, Signal::SIGKILL);
            return Err("the workers did not start listening within 30 s".into());
        }
        match wait_signal(&signals, Duration::from_millis(10)) {
            Some(Signal::SIGCHLD) => {
                kill_all(&slots, Signal::SIGKILL);
                return Err("a worker exited during start-up (see its log above)".into());
            }
            // Stopped while starting: drain like any other stop instead of losing the signal.
            Some(sig @ (Signal::SIGINT | Signal::SIGTERM)) => {
                log::info!("supervisor: {sig:?} during start-up: stopping the workers");
                stopping = Some(Instant::now() + drain + Duration::from_secs(5));
                kill_all(&slots, Signal::SIGTERM);
            }
            _ => {}
        }
    }
    if stopping.is_none() {
        log::info!(
            "c100k listening on {addr} with {processes} worker processes × {threads} event loops; \
             {}; /metrics on any worker reports the whole server",
            if plan_rooms_shared {
                "rooms span all worker processes (Redis)"
            } else {
                "rooms span one process (use --redis to share them)"
            }
        );
    }

    loop {
        let now = Instant::now();
        let next = slots.iter().filter_map(|s| s.restart_at).chain(stopping).min();
        let wait =
            next.map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now)).min(Duration::from_secs(1));
        match wait_signal(&signals, wait) {
            Some(Signal::SIGCHLD) => reap(&mut slots, &store, stopping.is_some()),
            Some(sig @ (Signal::SIGINT | Signal::SIGTERM)) => {
                if stopping.is_some() {
                    log::warn!("supervisor: second {sig:?}: killing the workers");
                    kill_all(&slots, Signal::SIGKILL);
                    return Ok(ExitCode::FAILURE);
                }
                log::info!("supervisor: {sig:?}: draining {processes} workers (each closes its connections with 1001)");
                stopping = Some(Instant::now() + drain + Duration::from_secs(5));
                for s in slots.iter_mut() {
                    s.restart_at = None;
                }
                kill_all(&slots, Signal::SIGTERM);
            }
            Some(Signal::SIGHUP) if stopping.is_none() => {
                log::info!("supervisor: SIGHUP: the workers reload their TLS certificates");
                kill_all(&slots, Signal::SIGHUP);
            }
            _ => {}
        }
        let now = Instant::now();
        if let Some(deadline) = stopping {
            if slots.iter().all(|s| s.child.is_none()) {
                drop(group);
                log::info!("supervisor: every worker has drained; bye");
                return Ok(ExitCode::SUCCESS);
            }
            if now >= deadline {
                log::warn!("supervisor: workers still running after the drain timeout; killing them");
                kill_all(&slots, Signal::SIGKILL);
                stopping = Some(now + Duration::from_secs(5));
            }
            continue;
        }
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.restart_at.is_some_and(|t| now >= t) {
                slot.restart_at = None;
                match spawn(&exe, i, addr, &fd, &group[i * threads..(i + 1) * threads]) {
                    Ok(c) => {
                        store.count_restart();
                        log::info!("supervisor: worker {i} restarted (pid {})", c.id());
                        slot.child = Some(c);
                        slot.started = now;
                    }
                    Err(e) => {
                        log::error!("supervisor: restarting worker {i} failed: {e}; retrying");
                        slot.restart_at = Some(now + slot.backoff);
                    }
                }
            }
        }
    }
}

/// The whole SO_REUSEPORT group: processes × threads listening sockets on one address (the
/// first picks the port for `:0`), with the source-address steering program attached.
fn listeners(plan: &Plan) -> Result<(Vec<mio::net::TcpListener>, SocketAddr), String> {
    let n = plan.processes * plan.threads;
    let first = crate::server::listener::bind_reuseport(plan.listen, plan.backlog).map_err(|e| e.to_string())?;
    let addr = first.local_addr().map_err(|e| e.to_string())?;
    let mut group = vec![first];
    for _ in 1..n {
        group.push(crate::server::listener::bind_reuseport(addr, plan.backlog).map_err(|e| e.to_string())?);
    }
    if plan.steer_by_source_ip {
        crate::server::listener::steer_by_source_ip(&group[0], n).map_err(|e| format!("steering: {e}"))?;
    }
    Ok((group, addr))
}

fn spawn(
    exe: &std::path::Path,
    index: usize,
    addr: SocketAddr,
    fd: &OwnedFd,
    listeners: &[mio::net::TcpListener],
) -> std::io::Result<Child> {
    let raw = fd.as_raw_fd();
    let lfds: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    let list = lfds.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(",");
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(ENV_INDEX, index.to_string())
        .env(ENV_LISTEN, addr.to_string())
        .env(ENV_METRICS_FD, raw.to_string())
        .env(ENV_LISTEN_FDS, list)
        .env(ENV_PARENT, std::process::id().to_string())
        .process_group(0);
    // SAFETY: between fork and exec only async-signal-safe calls: clear close-on-exec on the
    // metrics descriptor and this worker's listening sockets (the others' stay close-on-exec),
    // and unblock the signals the supervisor blocked for itself.
    unsafe {
        cmd.pre_exec(move || {
            for &f in std::iter::once(&raw).chain(lfds.iter()) {
                let flags = libc::fcntl(f, libc::F_GETFD);
                if flags < 0 || libc::fcntl(f, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(rc));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Collect exited workers; schedule restarts unless stopping.
fn reap(slots: &mut [Slot], store: &MetricsStore, stopping: bool) {
    loop {
        let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(s) => s,
        };
        let Some(pid) = status.pid() else { continue };
        let Some(i) = slots.iter().position(|s| s.child.as_ref().is_some_and(|c| c.id() as i32 == pid.as_raw())) else {
            continue;
        };
        let slot = &mut slots[i];
        slot.child = None;
        store.process_died(i);
        if stopping {
            match status {
                WaitStatus::Exited(_, 0) => log::info!("supervisor: worker {i} drained"),
                other => log::warn!("supervisor: worker {i} ended during shutdown: {other:?}"),
            }
            continue;
        }
        let lived = slot.started.elapsed();
        if lived >= HEALTHY_AFTER {
            slot.backoff = FIRST_BACKOFF;
        }
        let delay = slot.backoff;
        slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
        log::error!(
            "supervisor: worker {i} (pid {pid}) died after {:.1}s: {status:?}; restarting in {:.1}s",
            lived.as_secs_f64(),
            delay.as_secs_f64()
        );
        slot.restart_at = Some(Instant::now() + delay);
    }
}

fn kill_all(slots: &[Slot], sig: Signal) {
    for c in slots.iter().filter_map(|s| s.child.as_ref()) {
        let _ = nix::sys::signal::kill(Pid::from_raw(c.id() as i32), sig);
    }
}

/// Wait up to `timeout` for one of the blocked signals.
fn wait_signal(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as _ };
    // SAFETY: `set` is a valid sigset; a null siginfo pointer is allowed.
    let n = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    if n < 0 {
        None
    } else {
        Signal::try_from(n).ok()
    }
}
