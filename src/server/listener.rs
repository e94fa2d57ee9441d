//! One listening socket per event loop, all bound to the same address with SO_REUSEPORT so the
//! kernel spreads incoming connections over the loops (and over processes, in multi-process mode)
//! without any shared accept queue or lock.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Bind a non-blocking SO_REUSEPORT listener on `addr` with the given accept backlog.
pub fn bind_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<mio::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into()).map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    sock.listen(backlog)?;
    Ok(mio::net::TcpListener::from_std(sock.into()))
}

/// The kernel's cap on listen backlogs (`net.core.somaxconn`), if readable.
pub fn somaxconn() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_listeners_share_one_port() {
        let a = bind_reuseport("127.0.0.1:0".parse().unwrap(), 128).unwrap();
        let port = a.local_addr().unwrap();
        let b = bind_reuseport(port, 128).unwrap();
        assert_eq!(b.local_addr().unwrap(), port);
    }
}
