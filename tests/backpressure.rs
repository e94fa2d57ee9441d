//! A member that stops reading is closed with 1008 once its queue passes --max-backlog; the
//! server's queued bytes stay bounded and the other members keep receiving everything.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const BACKLOG: usize = 256 * 1024;
const MSG: usize = 32 * 1024;
const COUNT: usize = 600; // ~19 MB: far more than the kernel buffers of the stalled socket hold

#[test]
fn slow_consumer_is_closed_with_1008_and_memory_stays_bounded() {
    let srv = Arc::new(server(|c| {
        c.max_backlog = BACKLOG;
        c.max_message_size = 1 << 20;
        c.close_timeout = Duration::from_secs(10);
    }));
    let mut slow = RawWs::connect(srv.local_addr(), "/ws?room=bp");
    let mut fast = RawWs::connect(srv.local_addr(), "/ws?room=bp");
    let mut sender = RawWs::connect(srv.local_addr(), "/ws?room=bp");

    // The fast member reads on its own thread and reports progress, until a 1-byte sentinel.
    let received = Arc::new(AtomicUsize::new(0));
    let r = received.clone();
    let reader = std::thread::spawn(move || loop {
        match fast.recv() {
            Some(Msg::Binary(b)) if b.len() == MSG => r.fetch_add(1, Ordering::Release),
            Some(Msg::Binary(b)) if b == [0] => return fast,
            other => panic!("fast member got {other:?}"),
        };
    });

    let payload = vec![7u8; MSG];
    let mut max_queued = 0u64;
    let mut sent = 0;
    while sent < COUNT && srv.metrics().slow_consumer_closes_total == 0 {
        // Keep the fast member within a few messages, so only the stalled one falls behind.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while received.load(Ordering::Acquire) + 4 < sent {
            assert!(std::time::Instant::now() < deadline, "fast member stopped receiving at {sent}");
            std::thread::yield_now();
        }
        sender.binary(&payload);
        sent += 1;
        max_queued = max_queued.max(srv.metrics().outbound_queued_bytes);
    }
    sender.binary(&[0]);
    let fast = reader.join().expect("fast member received every message sent");
    assert_eq!(received.load(Ordering::Acquire), sent, "the fast member lost nothing");
    wait_for("slow consumer closed", Duration::from_secs(10), || srv.metrics().slow_consumer_closes_total == 1);
    assert!(sent < COUNT, "cut off before the end");
    let bound = (BACKLOG + 8 * (MSG + 16)) as u64;
    assert!(max_queued <= bound, "queued bytes peaked at {max_queued}, bound {bound}");

    // The stalled member finally reads: whatever was in flight, then close 1008, then EOF.
    let mut got = 0;
    let code = loop {
        match slow.recv() {
            Some(Msg::Binary(b)) => {
                assert_eq!(b.len(), MSG, "whole messages only, never a cut one");
                got += 1;
            }
            Some(Msg::Close(code, _)) => break code,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, Some(1008));
    assert!(got < sent, "it was cut off ({got} of {sent} delivered)");
    slow.close(1008);
    slow.expect_eof();
    wait_for("queue released", Duration::from_secs(5), || srv.metrics().outbound_queued_bytes == 0);
    drop((fast, sender));
}

#[test]
fn echo_peer_that_does_not_read_is_throttled_not_buffered() {
    // An echo client that writes without reading: the server stops reading it (TCP flow control
    // pushes back on the client) instead of queueing its echoes without bound.
    let srv = server(|c| c.max_message_size = 1 << 20);
    let mut raw = RawWs::connect(srv.local_addr(), "/echo");
    raw.stream.set_nonblocking(true).unwrap();
    let payload = vec![1u8; 64 * 1024];
    let mut frame = Vec::new();
    c100k::proto::ws::frame::write_masked_frame(
        &mut frame,
        c100k::proto::ws::frame::OpCode::Data(c100k::proto::ws::frame::Data::Binary),
        &payload,
        [1, 2, 3, 4],
    );
    let mut sent = 0usize;
    let mut max_queued = 0;
    // Write until the client's own socket refuses more: the server has stopped reading.
    let mut stalled_rounds = 0;
    while stalled_rounds < 50 && sent < 512 << 20 {
        use std::io::Write;
        let off = sent % frame.len();
        match raw.stream.write(&frame[off..]) {
            Ok(n) => {
                sent += n;
                stalled_rounds = 0;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                stalled_rounds += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("{e}"),
        }
        max_queued = max_queued.max(srv.metrics().outbound_queued_bytes);
    }
    assert!(sent < 512 << 20, "the server kept reading without bound");
    assert!(max_queued <= 64 * 1024 + 2 * 65 * 1024 + (1 << 20), "queued {max_queued}");
    assert_eq!(srv.metrics().slow_consumer_closes_total, 0);
    assert_eq!(srv.metrics().protocol_errors_total, 0);
    // Once it reads, it gets its echoes back in order.
    raw.stream.set_nonblocking(false).unwrap();
    for _ in 0..3 {
        assert_eq!(raw.recv(), Some(Msg::Binary(payload.clone())));
    }
}

#[test]
fn a_fast_member_is_not_closed_by_a_burst_the_sender_blasts() {
    // 200 messages of 32 KiB in one TCP stream (6.4 MB): the server reads a megabyte of them per
    // loop iteration and corks them for the member, whose socket takes them as fast as it reads.
    // Corked bytes were never offered to the socket, so they must not make it a slow consumer.
    const N: usize = 200;
    const SIZE: usize = 32 * 1024;
    let srv = server(|c| c.max_publish_rate = 0);
    let mut member = RawWs::connect(srv.local_addr(), "/ws?room=burst");
    let mut sender = RawWs::connect(srv.local_addr(), "/ws?room=burst");
    assert_eq!(member.sync(), vec![]);
    let reader = std::thread::spawn(move || {
        let mut got = 0;
        while got < N {
            match member.recv() {
                Some(Msg::Binary(b)) => {
                    assert_eq!(b.len(), SIZE);
                    assert_eq!(b[0] as usize, got % 256, "in order");
                    got += 1;
                }
                other => panic!("after {got} messages: {other:?}"),
            }
        }
        got
    });
    let mut blast = Vec::with_capacity(N * (SIZE + 14));
    for i in 0..N {
        c100k::proto::ws::frame::write_masked_frame(
            &mut blast,
            c100k::proto::ws::frame::OpCode::Data(c100k::proto::ws::frame::Data::Binary),
            &vec![(i % 256) as u8; SIZE],
            [1, 2, 3, 4],
        );
    }
    sender.raw(&blast);
    assert_eq!(reader.join().expect("every message delivered"), N);
    assert_eq!(srv.metrics().slow_consumer_closes_total, 0);
}

#[test]
fn a_lagging_member_gets_1008_not_a_silent_heartbeat_drop() {
    // A member that reads nothing while 10 MB wait for it (more than loopback's socket buffers
    // take): its pongs go unanswered, but it is a consumer falling behind, so it is told with
    // 1008 before TCP closes.
    let srv = server(|c| {
        c.max_backlog = 32 << 20; // only the heartbeat path can close it
        c.ping_interval = Duration::from_millis(200);
        c.pong_timeout = Duration::from_millis(300);
        c.max_publish_rate = 0;
    });
    let mut lagging = RawWs::connect(srv.local_addr(), "/ws?room=lag");
    let mut sender = RawWs::connect(srv.local_addr(), "/ws?room=lag");
    let payload = vec![3u8; 32 * 1024];
    for _ in 0..320 {
        sender.binary(&payload);
    }
    // The sender keeps answering pings; the lagging member does not read at all.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while srv.metrics().slow_consumer_closes_total == 0 {
        assert!(std::time::Instant::now() < deadline, "never closed: {:?}", srv.metrics());
        sender.sync();
    }
    assert_eq!(srv.metrics().heartbeat_timeouts_total, 0, "not counted as a dead peer");
    let code = loop {
        match lagging.recv() {
            Some(Msg::Binary(b)) => assert_eq!(b.len(), payload.len()),
            Some(Msg::Ping(_)) => {}
            Some(Msg::Close(code, _)) => break code,
            other => panic!("expected data then a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, Some(1008));
}
