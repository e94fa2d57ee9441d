//! The open-file limit (RLIMIT_NOFILE): every socket is a file descriptor, so this limit is the
//! ceiling on connections per process. Raised at start-up and explained in one log line.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Connections a full server still accepts past `--max-connections`, to answer them at once
/// (503, or `/healthz` and `/metrics`) instead of leaving them unanswered in the backlog.
pub const OVERFLOW_CONNS: u64 = 32;

/// File descriptors kept aside for listeners, the poller, wakers, logs and the like, and for
/// the overflow connections.
pub const RESERVED_FDS: u64 = 64 + OVERFLOW_CONNS;

/// The limit after raising, and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
    /// The descriptors the caller asked for.
    pub wanted: u64,
}

impl FdLimit {
    /// Sockets this process can hold, after the reserve.
    pub fn usable(&self) -> u64 {
        self.soft.saturating_sub(RESERVED_FDS)
    }

    pub fn is_enough(&self) -> bool {
        self.soft >= self.wanted
    }

    /// One line for the log: the effective limit, what it allows, and how to raise it if short.
    pub fn describe(&self, what: &str) -> String {
        let mut s = format!(
            "open-file limit: {} (hard {}), so this process can hold about {} {what}",
            self.soft,
            self.hard,
            self.usable()
        );
        if !self.is_enough() {
            s.push_str(&format!(
                "; {} descriptors were wanted. To raise it: apply sysctl/ (fs.nr_open, fs.file-max) with \
                 scripts/apply-sysctl.sh, set nofile in /etc/security/limits.d/ (see sysctl/limits.d-c100k.conf) \
                 or LimitNOFILE= in the systemd unit, or spread the load over several processes \
                 (c100k --processes N, bench-client --procs N)",
                self.wanted
            ));
        }
        s
    }
}

/// Raise the soft limit to the hard limit, and try to raise both to `wanted` (which needs
/// CAP_SYS_RESOURCE and is capped by fs.nr_open). Never lowers anything.
pub fn raise_nofile(wanted: u64) -> std::io::Result<FdLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if wanted > hard {
        let target = wanted.min(nr_open().unwrap_or(wanted));
        if target > hard && setrlimit(Resource::RLIMIT_NOFILE, target, target).is_ok() {
            return Ok(FdLimit { soft: target, hard: target, wanted });
        }
    }
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(FdLimit { soft, hard, wanted })
}

/// The kernel's ceiling for any process's limit.
fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_at_least_the_hard_limit() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let l = raise_nofile(1024).unwrap();
        assert_eq!(l.soft, l.hard);
        assert!(l.hard >= hard);
        assert!(l.is_enough());
        assert!(!l.describe("connections").contains("To raise it"));
    }

    #[test]
    fn a_short_limit_says_how_to_raise_it() {
        let l = FdLimit { soft: 20_000, hard: 20_000, wanted: 100_064 };
        let line = l.describe("connections");
        assert!(line.contains(&format!("about {} connections", 20_000 - RESERVED_FDS)), "{line}");
        assert!(line.contains("LimitNOFILE"), "{line}");
        assert!(line.contains("--processes"), "{line}");
    }
}
