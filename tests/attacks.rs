//! Bounded under attack: each test reproduces a way for one client to take memory or service
//! from everyone else, against the real binary (so its memory can be read from /proc), and
//! asserts the bound from RSS or the gauges.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use c100k::proto::ws::frame::{write_masked_frame, Data, OpCode};
use common::*;

fn rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap()
}

/// A connection with a small receive buffer, so a peer that does not read fills up quickly.
fn small_window(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_nodelay(true).unwrap();
    s
}

/// Peak RSS (kB) and peak of a gauge while `work` runs, sampled every 20 ms.
fn peaks(bin: &Binary, gauge: &'static str, work: impl FnOnce()) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let (pid, addr, stop2) = (bin.pid(), bin.addr, stop.clone());
    let sampler = std::thread::spawn(move || {
        let (mut rss, mut g) = (0, 0);
        while !stop2.load(Ordering::Relaxed) {
            rss = rss.max(rss_kb(pid));
            g = g.max(metric(addr, gauge));
            std::thread::sleep(Duration::from_millis(20)); // sampling period, not synchronisation
        }
        (rss.max(rss_kb(pid)), g.max(metric(addr, gauge)))
    });
    work();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap()
}

fn frames(n: usize, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(n * (payload.len() + 14));
    for _ in 0..n {
        write_masked_frame(&mut v, opcode, payload, [1, 2, 3, 4]);
    }
    v
}

#[test]
fn outbound_queues_count_what_they_really_cost() {
    // 20 members that never read, one client flooding 1-byte JSON messages: each queued frame is
    // 3 bytes, and a handle per frame would cost ten times that. Memory must stay within what
    // the gauge says, and the gauge within members × --max-backlog.
    const MEMBERS: u64 = 20;
    const BACKLOG: u64 = 256 * 1024;
    let bin = Binary::start(&[
        "--threads",
        "1",
        "--max-publish-rate",
        "0",
        "--max-room-rate",
        "0",
        "--ping-interval",
        "0",
        "--max-backlog",
        "262144",
        "--history-size",
        "10",
    ]);
    let members: Vec<RawWs> =
        (0..MEMBERS).map(|_| RawWs::over(small_window(bin.addr), bin.addr, "/ws?room=flood")).collect();
    let mut sender = RawWs::connect(bin.addr, "/ws?room=flood");
    wait_for("members joined", Duration::from_secs(10), || metric(bin.addr, "c100k_joins_total") == MEMBERS + 1);
    let before = rss_kb(bin.pid());
    let burst = frames(20_000, OpCode::Data(Data::Text), b"1");
    let (rss, gauge) = peaks(&bin, "c100k_outbound_queued_bytes", || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric(bin.addr, "c100k_slow_consumer_closes_total") < MEMBERS {
            assert!(Instant::now() < deadline, "members never filled their backlog");
            sender.stream.write_all(&burst).unwrap();
        }
    });
    let grew = (rss - before) * 1024;
    println!("RSS {before} -> {rss} kB (+{grew} B), gauge peak {gauge} B");
    let entry = c100k::net::outq::ENTRY_COST as u64;
    assert!(gauge <= MEMBERS * (BACKLOG + 4096 + 2 * entry), "gauge {gauge} over members × backlog");
    // Allocator caches and one read's worth of messages in flight (about 9,000 here) come on top
    // of the queues; a handle per queued frame (the bug this guards against) gives 115 MB.
    assert!(grew <= 2 * gauge + (24 << 20), "RSS grew {grew} B, the gauge said {gauge} B");
    wait_for("queues released", Duration::from_secs(10), || metric(bin.addr, "c100k_outbound_queued_bytes") == 0);
    drop(members);
}

#[test]
fn a_process_wide_budget_closes_the_slowest_consumers_first() {
    // 100 members that never read, with a 1 MiB backlog each (100 MiB allowed), but a 16 MiB
    // budget for the process: the largest queues are closed first and the total stays near it.
    const BUDGET: u64 = 16 << 20;
    let bin = Binary::start(&[
        "--threads",
        "1",
        "--max-publish-rate",
        "0",
        "--max-room-rate",
        "0",
        "--ping-interval",
        "0",
        "--max-outbound-memory",
        "16777216",
        "--history-size",
        "10",
    ]);
    let members: Vec<RawWs> = (0..100).map(|_| RawWs::over(small_window(bin.addr), bin.addr, "/ws?room=b")).collect();
    let mut sender = RawWs::connect(bin.addr, "/ws?room=b");
    wait_for("members joined", Duration::from_secs(10), || metric(bin.addr, "c100k_joins_total") == 101);
    let burst = frames(100, OpCode::Data(Data::Binary), &[7u8; 4096]);
    let (_, gauge) = peaks(&bin, "c100k_outbound_queued_bytes", || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut sent = 0;
        while metric(bin.addr, "c100k_outbound_budget_closes_total") < 50 {
            assert!(Instant::now() < deadline, "the budget never bit");
            sender.stream.write_all(&burst).unwrap();
            // Paced on the server: with the kernel's socket buffers as large as they are now
            // (tcp_rmem up to 32 MiB), bursts sent ahead of it pile up unread, and the few members
            // the budget leaves reach --max-backlog on the backlog before it is checked again.
            sent += 100;
            wait_for("the burst read", Duration::from_secs(10), || {
                metric(bin.addr, "c100k_messages_received_total") >= sent
            });
        }
    });
    println!("gauge peak {gauge} B, budget {BUDGET} B");
    // One iteration's worth of fan-out can pass the budget before it is enforced.
    assert!(gauge <= BUDGET + (8 << 20), "outbound memory peaked at {gauge} B");
    assert_eq!(
        metric(bin.addr, "c100k_slow_consumer_closes_total"),
        metric(bin.addr, "c100k_outbound_budget_closes_total")
    );
    drop(members);
}

#[test]
fn unfinished_messages_are_bounded_by_the_input_budget_and_nothing_is_lost() {
    // 60 connections each send all but the last byte of a 1 MiB message: 60 MiB of incomplete
    // input asked for, 8 MiB allowed. Past the budget they are not read (TCP pushes back), the
    // server keeps serving others, and once they finish, every message arrives whole.
    const N: usize = 60;
    const SIZE: usize = 1 << 20;
    let bin = Binary::start(&["--threads", "1", "--max-buffered-input", "8388608", "--ping-interval", "0"]);
    let payload = vec![9u8; SIZE];
    let mut frame = Vec::new();
    write_masked_frame(&mut frame, OpCode::Data(Data::Binary), &payload, [5, 6, 7, 8]);
    let before = rss_kb(bin.pid());
    let mut attackers: Vec<RawWs> = (0..N).map(|_| RawWs::connect(bin.addr, "/echo")).collect();
    let (rss, gauge) = peaks(&bin, "c100k_inbound_buffered_bytes", || {
        // Writing blocks once the server stops reading: each writer on its own thread.
        let writers: Vec<_> = attackers
            .iter()
            .map(|a| {
                let mut s = a.stream.try_clone().unwrap();
                let f = frame[..frame.len() - 1].to_vec();
                std::thread::spawn(move || s.write_all(&f).unwrap())
            })
            .collect();
        wait_for("the budget bit", Duration::from_secs(30), || metric(bin.addr, "c100k_input_pauses_total") > 0);
        // Meanwhile the server answers everyone else.
        let mut other = RawWs::connect(bin.addr, "/echo");
        other.text("still here");
        assert_eq!(other.recv(), Some(Msg::Text("still here".into())));
        // The attackers finish their messages; the paused ones are read as memory frees.
        for (a, w) in attackers.iter_mut().zip(writers) {
            w.join().unwrap();
            a.raw(&frame[frame.len() - 1..]);
        }
        for a in attackers.iter_mut() {
            assert_eq!(a.recv(), Some(Msg::Binary(payload.clone())), "every message arrives whole");
        }
    });
    let grew = (rss - before) * 1024;
    println!("inbound gauge peak {gauge} B, RSS +{grew} B");
    // The budget, plus at most one read (64 KiB) for each connection that began a message just
    // as the budget was reached, plus the messages of the few admitted to go on reading.
    let bound = (8 << 20) + N as u64 * (64 << 10) + 4 * SIZE as u64 + (64 << 10);
    assert!(gauge <= bound, "inbound peaked at {gauge} B, bound {bound} B");
    assert!(metric(bin.addr, "c100k_input_pauses_total") > 0);
    assert_eq!(metric(bin.addr, "c100k_protocol_errors_total"), 0);
}

#[test]
fn a_message_trickled_a_byte_at_a_time_times_out_with_1008() {
    let bin = Binary::start(&["--message-timeout", "0.6", "--ping-interval", "0.2", "--pong-timeout", "5"]);
    let mut trickler = RawWs::connect(bin.addr, "/echo");
    let mut frame = Vec::new();
    write_masked_frame(&mut frame, OpCode::Data(Data::Binary), &[1u8; 1000], [1, 2, 3, 4]);
    trickler.raw(&frame[..100]);
    let started = Instant::now();
    // One byte every 50 ms: the heartbeat sees traffic, the message never completes in time.
    let stop = Arc::new(AtomicBool::new(false));
    let (mut w, stop2, bytes) = (trickler.stream.try_clone().unwrap(), stop.clone(), frame[100..].to_vec());
    let drip = std::thread::spawn(move || {
        for b in bytes {
            if stop2.load(Ordering::Relaxed) || w.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50)); // the attack's own pacing
        }
    });
    assert_eq!(trickler.expect_close(), Some(1008));
    stop.store(true, Ordering::Relaxed);
    drip.join().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500), "closed after {:?}", started.elapsed());
    assert_eq!(metric(bin.addr, "c100k_message_timeouts_total"), 1);
    assert_eq!(metric(bin.addr, "c100k_heartbeat_timeouts_total"), 0);
    // A silent holder (no heartbeat at all) is caught by the timer.
    let bin = Binary::start(&["--message-timeout", "0.3", "--ping-interval", "0"]);
    let mut silent = RawWs::connect(bin.addr, "/echo");
    silent.raw(&frame[..500]);
    assert_eq!(silent.expect_close(), Some(1008));
}

#[test]
fn replies_to_a_flood_obey_the_read_pause() {
    // Clients that never read flood invalid JSON (each 7-byte message asks for an ~80-byte error
    // reply): once the kernel's buffers are full, what is queued for each stays near the 64 KiB
    // read pause, not a read's worth of replies (one 64 KiB read can ask for 700 KiB of them).
    const N: u64 = 10;
    let bin = Binary::start(&["--threads", "1", "--ping-interval", "0"]);
    let flood = frames(150_000, OpCode::Data(Data::Text), b"{");
    let floods: Vec<_> = (0..N)
        .map(|_| {
            let ws = RawWs::over(small_window(bin.addr), bin.addr, "/ws?room=f");
            let mut s = ws.stream.try_clone().unwrap();
            let f = flood.clone();
            // Blocks for good once the server stops reading it; ends with the test.
            std::thread::spawn(move || {
                let _ = s.write_all(&f);
            });
            ws
        })
        .collect();
    let (_, gauge) = peaks(&bin, "c100k_outbound_queued_bytes", || {
        wait_for("every flooder stopped at its pause", Duration::from_secs(60), || {
            metric(bin.addr, "c100k_outbound_queued_bytes") >= N * (60 << 10)
        });
        std::thread::sleep(Duration::from_millis(300)); // let any runaway queue show in the samples
    });
    println!("outbound peak {gauge} B for {N} flooders");
    assert!(gauge <= N * ((64 << 10) + 8192), "queued {gauge} B for {N} non-reading flooders");
    assert!(metric(bin.addr, "c100k_invalid_json_total") < N * 150_000, "their input waits in TCP");
    drop(floods);
}

#[test]
fn one_publisher_cannot_amplify_past_the_rate_limits() {
    // A member publishing as fast as it can into a room of 100 that reads: by default its
    // publishes are capped at --max-publish-rate (then it is closed for flooding), and the room
    // accepts at most --max-room-rate from everyone together; every refusal is counted.
    let bin = Binary::start(&["--threads", "1", "--max-publish-rate", "100", "--max-room-rate", "150"]);
    let readers: Vec<_> = (0..99)
        .map(|_| {
            let mut ws = RawWs::connect(bin.addr, "/ws?room=amp");
            std::thread::spawn(move || while ws.recv().is_some() {})
        })
        .collect();
    wait_for("members joined", Duration::from_secs(10), || metric(bin.addr, "c100k_joins_total") == 99);
    // Two flooders, each far over its own limit; together over the room's.
    let started = Instant::now();
    let flood = frames(2_000, OpCode::Data(Data::Text), b"{\"x\":1}");
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            let mut ws = RawWs::connect(bin.addr, "/ws?room=amp");
            let f = flood.clone();
            std::thread::spawn(move || {
                let _ = ws.stream.write_all(&f); // closed for flooding part way: fine
                while ws.recv().is_some() {}
            })
        })
        .collect();
    for f in flooders {
        f.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let published = metric(bin.addr, "c100k_publishes_total");
    let numbered = metric(bin.addr, "c100k_history_messages").max(1);
    let room_refused = metric(bin.addr, "c100k_room_rate_limited_total");
    let conn_refused = metric(bin.addr, "c100k_rate_limited_total");
    println!("{elapsed:.2}s: {published} published by clients, {room_refused} refused by the room, {conn_refused} by the connection limit, history {numbered}");
    // Each flooder: a burst of 100, then 100/s, then closed for flooding.
    assert!(published <= 2 * (100 + (100.0 * elapsed) as u64 + 1), "{published} published in {elapsed:.2}s");
    assert!(conn_refused > 0 && room_refused > 0, "both limits refused some");
    assert_eq!(metric(bin.addr, "c100k_flood_closes_total"), 2, "both flooders were closed with 1008");
    let delivered = metric(bin.addr, "c100k_messages_sent_total");
    let accepted = published - room_refused;
    assert!(delivered <= accepted * 100, "{delivered} deliveries for {accepted} accepted messages");
    assert_eq!(metric(bin.addr, "c100k_slow_consumer_closes_total"), 0, "the readers kept up");
    drop(readers);
}

#[test]
fn connections_per_address_can_be_capped() {
    let srv = server(|c| c.max_connections_per_ip = 3);
    let from = |src: &str| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&format!("{src}:0").parse::<SocketAddr>().unwrap().into()).unwrap();
        s.connect(&srv.local_addr().into()).unwrap();
        let s: TcpStream = s.into();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    };
    let mut three: Vec<RawWs> = (0..3).map(|_| RawWs::over(from("127.0.0.40"), srv.local_addr(), "/echo")).collect();
    let (req, _) = upgrade_request(srv.local_addr(), "/echo");
    let mut s = from("127.0.0.40");
    s.write_all(&req).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut s, &mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 429 ") && text.contains("Retry-After: 1"), "{text}");
    assert_eq!(srv.metrics().per_ip_refusals_total, 1);
    // Another address is not affected; a freed slot is usable again.
    let mut other = RawWs::over(from("127.0.0.41"), srv.local_addr(), "/echo");
    other.text("fine");
    assert_eq!(other.recv(), Some(Msg::Text("fine".into())));
    let mut gone = three.pop().unwrap();
    gone.close(1000);
    gone.expect_eof();
    wait_for("slot freed", Duration::from_secs(5), || srv.metrics().websockets_open == 3);
    let mut again = RawWs::over(from("127.0.0.40"), srv.local_addr(), "/echo");
    again.text("again");
    assert_eq!(again.recv(), Some(Msg::Text("again".into())));
}

#[test]
fn metrics_can_be_served_on_another_address() {
    let srv = server(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap()));
    let admin = srv.metrics_addr().expect("a metrics address");
    let (status, _, body) = get(admin, "/metrics");
    assert_eq!(status, 200);
    assert!(String::from_utf8(body).unwrap().contains("c100k_connections_open"));
    assert_eq!(get(admin, "/healthz").0, 200);
    let (req, _) = upgrade_request(admin, "/echo");
    assert_eq!(upgrade_answer(admin, &req).0, 404, "no WebSockets on the metrics address");
    assert_eq!(get(srv.local_addr(), "/metrics").0, 200, "the main port still serves them too");
}

#[test]
fn pipelined_requests_whose_answers_are_not_read_are_held_to_the_read_pause() {
    // One write of 10,000 tiny pipelined requests (each answered with a few hundred bytes of
    // metrics or health), never reading: the answers queued stay near the read pause.
    let bin = Binary::start(&["--threads", "1"]);
    let mut s = small_window(bin.addr);
    let one = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
    let many: Vec<u8> = one.iter().copied().cycle().take(one.len() * 10_000).collect();
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = w.write_all(&many); // blocks once the server stops reading; ends with the test
    });
    let (_, gauge) = peaks(&bin, "c100k_outbound_queued_bytes", || {
        wait_for("answers queued", Duration::from_secs(30), || metric(bin.addr, "c100k_outbound_queued_bytes") > 0);
        std::thread::sleep(Duration::from_millis(300)); // let any runaway queue show in the samples
    });
    println!("outbound peak {gauge} B");
    // The pause, one metrics answer past it, and the (small) scrapes of the sampler itself.
    assert!(gauge <= (64 << 10) + (32 << 10), "queued {gauge} B");
    assert!(metric(bin.addr, "c100k_http_requests_total") < 10_000, "the rest waits in TCP");
    let _ = s.flush();
}

#[test]
fn a_length_in_a_longer_encoding_than_it_needs_fails_with_1002() {
    let srv = server(|_| {});
    let mut ws = RawWs::connect(srv.local_addr(), "/echo");
    // 126-form carrying 5 bytes, masked.
    ws.raw(&[0x82, 0xfe, 0, 5, 1, 2, 3, 4, 9, 9, 9, 9, 9]);
    assert_eq!(ws.expect_close(), Some(1002));
}
