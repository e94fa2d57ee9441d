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

/// Steer new connections by client IPv4 address instead of the kernel's 4-tuple hash: a classic
/// BPF program on the SO_REUSEPORT group picks socket `source address mod group`. Every
/// connection from one address then lands on the same listener, so in multi-process mode room
/// members that share an address share a process. `group` must be the number of sockets in the
/// group (processes × loops); when fewer are listening (a worker restarting) the kernel falls
/// back to its hash for the indices that do not exist.
pub fn steer_by_source_ip(l: &mio::net::TcpListener, group: usize) -> io::Result<()> {
    use libc::{sock_filter, sock_fprog, BPF_A, BPF_ABS, BPF_ALU, BPF_K, BPF_LD, BPF_MOD, BPF_RET, BPF_W};
    if group == 0 || group > u32::MAX as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "steering group size out of range"));
    }
    const SKF_NET_OFF: i32 = -0x100000; // classic BPF offsets relative to the network header
    let op = |code: u32, k: u32| sock_filter { code: code as u16, jt: 0, jf: 0, k };
    let mut code = [
        op(BPF_LD | BPF_W | BPF_ABS, (SKF_NET_OFF + 12) as u32), // IPv4 source address
        op(BPF_ALU | BPF_MOD | BPF_K, group as u32),
        op(BPF_RET | BPF_A, 0),
    ];
    let prog = sock_fprog { len: code.len() as u16, filter: code.as_mut_ptr() };
    nix::sys::socket::setsockopt(l, nix::sys::socket::sockopt::AttachReusePortCbpf, &prog).map_err(io::Error::from)
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

    #[test]
    fn source_ip_steering_sends_an_address_to_one_listener() {
        use std::io::ErrorKind::WouldBlock;
        let a = bind_reuseport("127.0.0.1:0".parse().unwrap(), 128).unwrap();
        let addr = a.local_addr().unwrap();
        let b = bind_reuseport(addr, 128).unwrap();
        steer_by_source_ip(&a, 2).unwrap();
        // 127.0.0.10 and 127.0.0.11 differ in the last bit: one listener each, every time.
        let mut clients = Vec::new();
        for round in 0..8 {
            for src in ["127.0.0.10", "127.0.0.11"] {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
                s.bind(&format!("{src}:0").parse::<SocketAddr>().unwrap().into()).unwrap();
                s.connect(&addr.into()).unwrap();
                clients.push((round, src, s));
            }
        }
        let drain = |l: &mio::net::TcpListener| {
            let mut ips = std::collections::BTreeSet::new();
            let mut n = 0;
            loop {
                match l.accept() {
                    Ok((_, peer)) => {
                        ips.insert(peer.ip());
                        n += 1;
                    }
                    Err(e) if e.kind() == WouldBlock => break (ips, n),
                    Err(e) => panic!("{e}"),
                }
            }
        };
        let (ia, na) = drain(&a);
        let (ib, nb) = drain(&b);
        assert_eq!(na + nb, 16);
        assert_eq!((ia.len(), ib.len()), (1, 1), "each listener saw one source address: {ia:?} {ib:?}");
        assert_ne!(ia, ib);
    }
}
