//! permessage-deflate over real sockets: negotiation (always without context takeover), echo of
//! compressed and plain messages, the size limit applied to the inflated size, rooms whose deflate
//! members get one compressed frame and whose other members get the plain one.

mod common;

use std::time::Duration;

use c100k::proto::ws::frame::{Data, OpCode};
use common::*;
use serde_json::json;

const OFFER: &str = "permessage-deflate; client_max_window_bits";

#[test]
fn deflate_is_negotiated_without_context_takeover_or_declined() {
    let srv = server(|_| {});
    let a = srv.local_addr();
    let (mut req, _) = upgrade_request(a, "/echo");
    req.truncate(req.len() - 2);
    req.extend_from_slice(format!("Sec-WebSocket-Extensions: {OFFER}\r\n\r\n").as_bytes());
    let (status, head) = upgrade_answer(a, &req);
    assert_eq!(status, 101);
    assert!(
        head.contains(
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ),
        "{head}"
    );
    assert!(RawWs::offering(a, "/echo", None, OFFER).deflate);
    // An offer we cannot honour (a smaller server window) is declined: a plain WebSocket.
    assert!(!RawWs::offering(a, "/echo", None, "permessage-deflate; server_max_window_bits=9").deflate);
    assert!(
        RawWs::offering(a, "/echo", None, "permessage-deflate; server_max_window_bits=9, permessage-deflate").deflate
    );
    assert!(!RawWs::connect(a, "/echo").deflate, "no offer, no extension");
    let off = server(|c| c.deflate = false);
    assert!(!RawWs::offering(off.local_addr(), "/echo", None, OFFER).deflate, "--deflate off");
}

#[test]
fn compressed_and_plain_messages_echo_and_large_replies_are_compressed() {
    let srv = server(|c| c.deflate_min_size = 256);
    let mut ws = RawWs::offering(srv.local_addr(), "/echo", None, OFFER);
    assert!(ws.deflate);
    let big = "compress me ".repeat(200);
    ws.send_compressed(OpCode::Data(Data::Text), big.as_bytes());
    assert_eq!(ws.recv(), Some(Msg::Text(big.clone())));
    assert_eq!(ws.compressed, 1, "a reply over --deflate-min-size goes compressed");
    ws.send_compressed(OpCode::Data(Data::Text), b"tiny");
    assert_eq!(ws.recv(), Some(Msg::Text("tiny".into())));
    ws.text("plain but long enough to be compressed on the way back to the client side");
    assert_eq!(
        ws.recv(),
        Some(Msg::Text("plain but long enough to be compressed on the way back to the client side".into()))
    );
    assert_eq!(ws.compressed, 1, "small replies go plain (RSV1 clear)");
    ws.send_compressed(OpCode::Data(Data::Binary), &[0u8; 5000]);
    assert_eq!(ws.recv(), Some(Msg::Binary(vec![0u8; 5000])));
    assert_eq!(ws.compressed, 2);
    ws.close(1000);
    assert_eq!(ws.expect_close(), Some(1000));
}

#[test]
fn a_zip_bomb_gets_1009_and_bad_compressed_data_1007() {
    let srv = server(|c| c.max_message_size = 64 * 1024);
    let a = srv.local_addr();
    let mut ws = RawWs::offering(a, "/echo", None, OFFER);
    // 10 MB of zeros compressed to ~40 KB: under the limit on the wire, far over it inflated.
    ws.send_compressed(OpCode::Data(Data::Binary), &vec![0u8; 10 << 20]);
    assert_eq!(ws.expect_close(), Some(1009));
    let mut ws = RawWs::offering(a, "/echo", None, OFFER);
    let mut frame = Vec::new();
    c100k::proto::ws::frame::write_masked_frame(&mut frame, OpCode::Data(Data::Text), &[0xff; 8], [1, 2, 3, 4]);
    frame[0] |= 0x40;
    ws.raw(&frame);
    assert_eq!(ws.expect_close(), Some(1007));
    // Compressed text that inflates to invalid UTF-8.
    let mut ws = RawWs::offering(a, "/echo", None, OFFER);
    ws.send_compressed(OpCode::Data(Data::Text), &[0xc3, 0x28, 0xa0, 0xa1]);
    assert_eq!(ws.expect_close(), Some(1007));
    // RSV1 where it may not be: on a continuation frame.
    let mut ws = RawWs::offering(a, "/echo", None, OFFER);
    let mut f = Vec::new();
    c100k::proto::ws::frame::write_masked_frame(&mut f, OpCode::Data(Data::Text), b"a", [1, 2, 3, 4]);
    f[0] &= 0x7f; // not final
    let mut g = Vec::new();
    c100k::proto::ws::frame::write_masked_frame(&mut g, OpCode::Data(Data::Continue), b"b", [1, 2, 3, 4]);
    g[0] |= 0x40;
    f.extend_from_slice(&g);
    ws.raw(&f);
    assert_eq!(ws.expect_close(), Some(1002));
    wait_for("all closed", Duration::from_secs(5), || srv.metrics().websockets_open == 0);
}

#[test]
fn room_members_get_one_compressed_frame_or_the_plain_one() {
    let srv = server(|c| c.deflate_min_size = 256);
    let a = srv.local_addr();
    let mut z1 = RawWs::offering(a, "/ws?user=z1", Some("c100k.v1"), OFFER);
    let mut z2 = RawWs::offering(a, "/ws?user=z2", Some("c100k.v1"), OFFER);
    let mut plain = RawWs::v1(a, "?user=p");
    let mut sender = RawWs::v1(a, "?user=s");
    for ws in [&mut z1, &mut z2, &mut plain, &mut sender] {
        assert_eq!(ws.call(json!({"op":"join","id":"j","room":"zr"}))["op"], "joined");
    }
    let text = "a room message worth compressing ".repeat(20);
    sender.call(json!({"op":"publish","id":"p","room":"zr","data":{"text": text}}));
    for ws in [&mut z1, &mut z2, &mut plain] {
        assert_eq!(ws.recv_op("msg")["data"]["text"], text);
    }
    assert_eq!((z1.compressed, z2.compressed, plain.compressed), (1, 1, 0));
    // A small message goes plain to everyone.
    sender.call(json!({"op":"publish","id":"q","room":"zr","data":"hi"}));
    assert_eq!(z1.recv_op("msg")["data"], "hi");
    assert_eq!(z1.compressed, 1);
    // Seed-mode members too.
    let mut raw_z = RawWs::offering(a, "/ws?room=seed", None, OFFER);
    let mut raw_s = RawWs::connect(a, "/ws?room=seed");
    wait_for("both in", Duration::from_secs(5), || srv.metrics().joins_total >= 6);
    let payload = json!({ "blob": "x".repeat(1000) }).to_string();
    raw_s.text(&payload);
    assert_eq!(raw_z.recv(), Some(Msg::Text(payload)));
    assert_eq!(raw_z.compressed, 1);
}
