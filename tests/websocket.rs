//! The WebSocket contract on /echo over real sockets: echo (tungstenite client), fragmentation,
//! the size limit, and the close code for every violation (raw frames).

mod common;

use std::net::TcpStream;

use c100k::proto::ws::frame::{write_header, Control, Data, OpCode};
use common::*;
use tungstenite::{Message, WebSocket};

fn tungstenite_client(addr: std::net::SocketAddr, path: &str) -> WebSocket<TcpStream> {
    let stream = tcp(addr);
    let (ws, resp) = tungstenite::client(format!("ws://{addr}{path}"), stream).expect("handshake");
    assert_eq!(resp.status(), 101);
    ws
}

#[test]
fn echoes_text_and_binary_with_tungstenite() {
    let srv = server(|_| {});
    let mut ws = tungstenite_client(srv.local_addr(), "/echo");
    for i in 0..50 {
        ws.send(Message::text(format!("hello {i} κόσμε"))).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(format!("hello {i} κόσμε")));
        let bin: Vec<u8> = (0..i * 37).map(|b| b as u8).collect();
        ws.send(Message::binary(bin.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::binary(bin));
    }
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let m = srv.metrics();
    assert_eq!(m.messages_received_total, 100);
    assert_eq!(m.messages_sent_total, 100);
}

#[test]
fn echo_up_to_the_max_size_and_1009_beyond() {
    let max = 256 * 1024;
    let srv = server(|c| c.max_message_size = max);
    let mut ws = tungstenite_client(srv.local_addr(), "/echo");
    let big: Vec<u8> = (0..max).map(|i| (i * 7) as u8).collect();
    ws.send(Message::binary(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(big));

    // One byte over, announced in the header: refused before the payload is buffered.
    let mut raw = RawWs::connect(srv.local_addr(), "/echo");
    let mut hdr = Vec::new();
    write_header(&mut hdr, true, OpCode::Data(Data::Binary), max as u64 + 1, Some([1, 2, 3, 4]));
    raw.raw(&hdr); // no payload at all
    assert_eq!(raw.expect_close(), Some(1009));
    raw.expect_eof();

    // Fragments that only together pass the limit.
    let mut raw = RawWs::connect(srv.local_addr(), "/echo");
    let half = vec![b'a'; max / 2 + 1];
    let mut frames = Vec::new();
    frag(&mut frames, 0x01, &half);
    frag(&mut frames, 0x80, &half);
    raw.raw(&frames);
    assert_eq!(raw.expect_close(), Some(1009));
}

/// Append a masked frame with an explicit first byte (FIN/RSV/opcode).
fn frag(out: &mut Vec<u8>, first: u8, payload: &[u8]) {
    let start = out.len();
    c100k::proto::ws::frame::write_masked_frame(out, OpCode::from(first & 0x0f), payload, [0x11, 0x22, 0x33, 0x44]);
    out[start] = first;
}

#[test]
fn fragmented_messages_are_reassembled_with_control_frames_between() {
    let srv = server(|_| {});
    let mut raw = RawWs::connect(srv.local_addr(), "/echo");
    let mut f = Vec::new();
    frag(&mut f, 0x01, "fragmented ".as_bytes());
    frag(&mut f, 0x89, b"mid"); // ping inside the message
    frag(&mut f, 0x00, "κόσ".as_bytes());
    frag(&mut f, 0x80, "με".as_bytes());
    frag(&mut f, 0x02, &[1, 2]);
    frag(&mut f, 0x80, &[3]);
    raw.raw(&f);
    assert_eq!(raw.recv(), Some(Msg::Pong(b"mid".to_vec())));
    assert_eq!(raw.recv(), Some(Msg::Text("fragmented κόσμε".into())));
    assert_eq!(raw.recv(), Some(Msg::Binary(vec![1, 2, 3])));
}

#[test]
fn ping_gets_pong_with_the_same_payload() {
    let srv = server(|_| {});
    let mut raw = RawWs::connect(srv.local_addr(), "/echo");
    raw.ping(b"are you there?");
    assert_eq!(raw.recv(), Some(Msg::Pong(b"are you there?".to_vec())));
}

#[test]
fn client_close_is_echoed_then_tcp_closed() {
    let srv = server(|_| {});
    for code in [1000u16, 1001, 3000, 4999] {
        let mut raw = RawWs::connect(srv.local_addr(), "/echo");
        raw.close(code);
        assert_eq!(raw.expect_close(), Some(code));
        raw.expect_eof();
    }
    wait_for("connections closed", std::time::Duration::from_secs(5), || srv.metrics().connections_open == 0);
}

/// Each violation must get its close code, then the server closes TCP.
#[test]
fn violations_get_the_right_close_code() {
    let srv = server(|_| {});
    let unmasked = vec![0x81, 0x02, b'h', b'i'];
    let mut rsv = Vec::new();
    frag(&mut rsv, 0xc1, b"x");
    let mut reserved_data = Vec::new();
    frag(&mut reserved_data, 0x83, b"");
    let mut reserved_ctrl = Vec::new();
    frag(&mut reserved_ctrl, 0x8b, b"");
    let mut big_ping = Vec::new();
    frag(&mut big_ping, 0x89, &[0; 126]);
    let mut frag_ping = Vec::new();
    frag(&mut frag_ping, 0x09, b"");
    let mut orphan = Vec::new();
    frag(&mut orphan, 0x80, b"x");
    let mut bad_utf8 = Vec::new();
    frag(&mut bad_utf8, 0x81, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80");
    let mut bad_close = Vec::new();
    frag(&mut bad_close, 0x88, &[0x03]);
    let mut bad_close_code = Vec::new();
    frag(&mut bad_close_code, 0x88, &1005u16.to_be_bytes());
    let mut bad_close_utf8 = Vec::new();
    frag(&mut bad_close_utf8, 0x88, &[0x03, 0xe8, 0xff]);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", unmasked, 1002),
        ("RSV1 without extension", rsv, 1002),
        ("reserved data opcode", reserved_data, 1002),
        ("reserved control opcode", reserved_ctrl, 1002),
        ("control frame over 125 bytes", big_ping, 1002),
        ("fragmented control frame", frag_ping, 1002),
        ("continuation without a message", orphan, 1002),
        ("invalid UTF-8", bad_utf8, 1007),
        ("one-byte close payload", bad_close, 1002),
        ("close code 1005 on the wire", bad_close_code, 1002),
        ("close reason not UTF-8", bad_close_utf8, 1007),
    ];
    for (what, bytes, code) in cases {
        let mut raw = RawWs::connect(srv.local_addr(), "/echo");
        raw.raw(&bytes);
        assert_eq!(raw.expect_close(), Some(code), "{what}");
        raw.expect_eof();
    }
    wait_for("connections closed", std::time::Duration::from_secs(5), || srv.metrics().connections_open == 0);
    assert!(srv.metrics().protocol_errors_total >= 11);
}

#[test]
fn invalid_utf8_fails_fast_before_the_final_fragment() {
    let srv = server(|_| {});
    let mut raw = RawWs::connect(srv.local_addr(), "/echo");
    let mut f = Vec::new();
    frag(&mut f, 0x01, "κόσμε".as_bytes());
    frag(&mut f, 0x00, b"\xf4\x90\x80\x80"); // invalid, and the message is not finished
    raw.raw(&f);
    assert_eq!(raw.expect_close(), Some(1007));
}

#[test]
fn close_in_the_middle_of_a_fragmented_message_is_normal() {
    let srv = server(|_| {});
    let mut raw = RawWs::connect(srv.local_addr(), "/echo");
    let mut f = Vec::new();
    frag(&mut f, 0x01, b"fragment1");
    frag(&mut f, 0x88, &1000u16.to_be_bytes());
    frag(&mut f, 0x80, b"fragment2");
    raw.raw(&f);
    assert_eq!(raw.expect_close(), Some(1000));
    raw.expect_eof();
}

#[test]
fn pong_and_unsolicited_pongs_are_ignored() {
    let srv = server(|_| {});
    let mut raw = RawWs::connect(srv.local_addr(), "/echo");
    raw.send_frame(OpCode::Control(Control::Pong), b"unsolicited");
    raw.text("still here");
    assert_eq!(raw.recv(), Some(Msg::Text("still here".into())));
}
