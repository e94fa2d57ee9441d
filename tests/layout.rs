//! The per-connection slab entry is the server's whole user-space cost per idle connection
//! (besides a timer entry and a room seat), so its size is held to a budget.

use c100k::server::conn::{Conn, SIZE_BUDGET};

#[test]
fn slab_entry_fits_the_budget() {
    // mio's TcpStream is a bare 4-byte descriptor in release builds; with debug assertions it
    // also carries a selector id for registration checks. Only that difference is allowed.
    let stream_overhead = std::mem::size_of::<mio::net::TcpStream>() - std::mem::size_of::<std::os::fd::RawFd>();
    let budget = SIZE_BUDGET + stream_overhead.next_multiple_of(8);
    let conn = std::mem::size_of::<Conn>();
    assert!(conn <= budget, "Conn is {conn} bytes, budget {budget}");
    let slot = std::mem::size_of::<Option<Conn>>();
    assert!(slot <= budget, "a slab slot (Conn plus its tag) is {slot} bytes, budget {budget}");
    println!("size_of::<Conn>() = {conn}, Option<Conn> = {slot}, budget {budget}");
}
