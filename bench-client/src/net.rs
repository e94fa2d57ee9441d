//! Addresses and sockets: the target URL, the source-address list (`--src`), non-blocking
//! connects bound to a source IP with IP_BIND_ADDRESS_NO_PORT, and the classification of every
//! way a connection attempt can fail.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};

/// A parsed `ws://` or `wss://` URL (a `{room}` placeholder in the path is kept for
/// substitution).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub addr: SocketAddr,
    /// The Host header value.
    pub host: String,
    /// Path and query, possibly with `{room}`.
    pub path: String,
    /// `wss://` or `https://`.
    #[serde(default)]
    pub tls: bool,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        // http:// names the same server (SSE and long-poll members use plain HTTP on it).
        let (rest, tls) = match (
            url.strip_prefix("ws://").or_else(|| url.strip_prefix("http://")),
            url.strip_prefix("wss://").or_else(|| url.strip_prefix("https://")),
        ) {
            (Some(r), _) => (r, false),
            (None, Some(r)) => (r, true),
            (None, None) => {
                return Err(format!("'{url}': only ws://, wss://, http:// and https:// URLs are supported"))
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("'{url}': missing host"));
        }
        let with_port = if authority.ends_with(']') || !authority.contains(':') {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        } else {
            authority.to_string()
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("'{url}': cannot resolve {authority}: {e}"))?
            .next()
            .ok_or_else(|| format!("'{url}': {authority} has no address"))?;
        Ok(Target { addr, host: authority.to_string(), path: path.to_string(), tls })
    }

    /// The request target for room `room` (replaces `{room}`).
    pub fn path_for(&self, room: Option<u32>) -> String {
        match room {
            Some(r) => self.path.replace("{room}", &r.to_string()),
            None => self.path.clone(),
        }
    }
}

/// Parse `--src`: a range `127.0.0.2-127.0.0.60`, a comma list, or one address.
pub fn parse_sources(spec: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a.trim().parse().map_err(|_| format!("bad address '{a}' in --src"))?;
            let b: Ipv4Addr = b.trim().parse().map_err(|_| format!("bad address '{b}' in --src"))?;
            let (lo, hi) = (u32::from(a), u32::from(b));
            if hi < lo || hi - lo > 65_535 {
                return Err(format!("--src range {part} is empty or too large"));
            }
            out.extend((lo..=hi).map(|v| IpAddr::V4(Ipv4Addr::from(v))));
        } else {
            out.push(part.parse().map_err(|_| format!("bad address '{part}' in --src"))?);
        }
    }
    Ok(out)
}

/// Start a non-blocking connect to `dst`, bound to `src` if given. IP_BIND_ADDRESS_NO_PORT
/// defers the port choice to connect(), so each (source IP, destination) pair gets its own
/// ephemeral port space instead of all sources sharing one.
pub fn start_connect(src: Option<IpAddr>, dst: SocketAddr) -> io::Result<mio::net::TcpStream> {
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    sock.set_tcp_nodelay(true)?;
    if let Some(ip) = src {
        if ip.is_ipv4() {
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
                .map_err(io::Error::from)?;
        }
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match sock.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(sock.into()))
}

/// Why a connection attempt failed or an established connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Failure {
    Refused,
    Timeout,
    Reset,
    /// The server answered the upgrade with this HTTP status.
    Http(u16),
    /// Sec-WebSocket-Accept did not match.
    BadAccept,
    /// The response was not HTTP (or its head was absurdly long).
    BadResponse,
    /// The server did not choose the subprotocol asked for (`c100k.v1`).
    BadProtocol,
    /// The server violated the WebSocket protocol.
    Protocol,
    /// No free (source address, port) pair: add source addresses.
    AddrNotAvail,
    /// Out of file descriptors: more processes or higher limits.
    Emfile,
    /// The TLS handshake failed (certificate not trusted, alert, not TLS).
    Tls,
    /// The server answered the v1 join with an error (`unavailable`: its broker is busy).
    JoinRefused,
    /// Anything else, by errno.
    Os(i32),
}

impl Failure {
    pub fn from_io(e: &io::Error) -> Failure {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => Failure::Refused,
            Some(libc::ETIMEDOUT) => Failure::Timeout,
            Some(libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED) => Failure::Reset,
            Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => Failure::AddrNotAvail,
            Some(libc::EMFILE | libc::ENFILE) => Failure::Emfile,
            Some(n) => Failure::Os(n),
            None => match e.kind() {
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Failure::Reset,
                io::ErrorKind::TimedOut => Failure::Timeout,
                // What the TLS layer reports (rustls errors).
                io::ErrorKind::InvalidData => Failure::Tls,
                _ => Failure::Os(0),
            },
        }
    }

    /// A short stable name for reports.
    pub fn name(&self) -> String {
        match self {
            Failure::Refused => "refused".into(),
            Failure::Timeout => "timeout".into(),
            Failure::Reset => "reset".into(),
            Failure::Http(s) => format!("http_{s}"),
            Failure::BadAccept => "bad_accept".into(),
            Failure::BadResponse => "bad_response".into(),
            Failure::BadProtocol => "bad_subprotocol".into(),
            Failure::Protocol => "protocol_error".into(),
            Failure::AddrNotAvail => "eaddrnotavail".into(),
            Failure::Emfile => "emfile".into(),
            Failure::Tls => "tls".into(),
            Failure::JoinRefused => "join_refused".into(),
            Failure::Os(n) => format!("os_error_{n}"),
        }
    }

    /// What to do about it, where there is something to do.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Failure::AddrNotAvail => Some(
                "out of source ports: add source addresses (--src 127.0.0.2-127.0.0.60) or widen \
                 net.ipv4.ip_local_port_range (scripts/apply-sysctl.sh)",
            ),
            Failure::Tls => Some(
                "the TLS handshake failed: give the server's certificate (or its CA) with --ca FILE, \
                 or --insecure; run with RUST_LOG=debug to see rustls' reason",
            ),
            Failure::Emfile => Some(
                "out of file descriptors: use more processes (--procs) or raise the open-file limit \
                 (sysctl/limits.d-c100k.conf, fs.nr_open)",
            ),
            Failure::Refused => Some("nothing is listening, or the server's accept backlog overflowed"),
            Failure::Timeout => Some(
                "the server did not complete the handshake in time: lower --connect-rate or \
                 --concurrency, or check the server's accept backlog (somaxconn)",
            ),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("ws://127.0.0.1:9001/ws?room={room}").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:9001");
        assert_eq!(t.path_for(Some(7)), "/ws?room=7");
        assert_eq!(Target::parse("ws://127.0.0.1").unwrap().addr.port(), 80);
        assert_eq!(Target::parse("ws://[::1]:8080/echo").unwrap().addr, "[::1]:8080".parse().unwrap());
        let t = Target::parse("wss://127.0.0.1/ws").unwrap();
        assert_eq!((t.addr.port(), t.tls), (443, true));
        assert!(Target::parse("https://127.0.0.1:8443/sse").unwrap().tls);
        assert!(!Target::parse("http://127.0.0.1:8080/sse").unwrap().tls);
        assert!(Target::parse("ftp://x/").is_err());
    }

    #[test]
    fn source_lists() {
        let v = parse_sources("127.0.0.2-127.0.0.4,127.0.0.9").unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[0], "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(v[3], "127.0.0.9".parse::<IpAddr>().unwrap());
        assert!(parse_sources("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_sources("nope").is_err());
    }

    #[test]
    fn failures_are_classified_with_hints() {
        let e = io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        assert_eq!(Failure::from_io(&e), Failure::AddrNotAvail);
        assert!(Failure::AddrNotAvail.hint().unwrap().contains("--src"));
        assert!(Failure::Emfile.hint().unwrap().contains("--procs"));
        assert_eq!(Failure::from_io(&io::Error::from_raw_os_error(libc::ECONNREFUSED)), Failure::Refused);
        assert_eq!(Failure::Http(404).name(), "http_404");
    }

    #[test]
    fn connects_from_a_chosen_source_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = start_connect(Some("127.0.0.7".parse().unwrap()), l.local_addr().unwrap()).unwrap();
        let (_, peer) = l.accept().unwrap();
        assert_eq!(peer.ip(), "127.0.0.7".parse::<IpAddr>().unwrap());
        drop(s);
    }
}
