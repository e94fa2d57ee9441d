//! Counters and gauges per event loop, summed over loops for `/metrics` (Prometheus text format).
//!
//! Each loop writes only its own block (padded to its own cache lines), so updates are plain
//! load+store on relaxed atomics: no locked instructions and no sharing on the hot path. A scrape
//! reads every block.

pub use crate::net::cell::Cell;
use std::fmt::Write as _;

macro_rules! metrics {
    ($( $field:ident : $kind:literal, $help:literal; )*) => {
        /// One loop's metrics. `repr(C)`: worker processes share these blocks in memory.
        #[derive(Debug, Default)]
        #[repr(C, align(128))]
        pub struct LoopMetrics {
            $( #[doc = $help] pub $field: Cell, )*
        }

        /// A point-in-time copy (possibly summed over loops or processes).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Snapshot {
            $( #[doc = $help] pub $field: u64, )*
        }

        impl LoopMetrics {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $( $field: self.$field.get(), )* }
            }

            /// Zero every gauge (its process is gone or starting over); counters keep counting.
            pub fn reset_gauges(&self) {
                $( if $kind == "gauge" { self.$field.set(0); } )*
            }
        }

        impl Snapshot {
            /// Add another snapshot field by field.
            pub fn add(&mut self, o: &Snapshot) {
                $( self.$field = self.$field.wrapping_add(o.$field); )*
            }

            /// (name without prefix, kind, help, value) for every metric.
            pub fn entries(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
                vec![ $( (stringify!($field), $kind, $help, self.$field), )* ]
            }

        }
    };
}

metrics! {
    loops_listening: "gauge", "Event loops accepting connections (drops to 0 while draining).";
    connections_open: "gauge", "TCP connections open (handshaking, open or closing).";
    websockets_open: "gauge", "Connections past the opening handshake and not yet closed.";
    sse_streams_open: "gauge", "Server-Sent Events streams open (/sse).";
    polls_waiting: "gauge", "Long polls (/poll) waiting for their room.";
    connections_accepted_total: "counter", "TCP connections accepted.";
    handshakes_total: "counter", "Opening handshakes completed (101 sent).";
    deflate_handshakes_total: "counter", "Opening handshakes that negotiated permessage-deflate.";
    tls_handshakes_total: "counter", "TLS handshakes completed (with --tls-cert).";
    tls_handshake_failures_total: "counter", "Connections dropped before their TLS handshake completed: not TLS (plain HTTP is answered 400 first), a ClientHello rustls refused, a handshake timeout, or a reset.";
    tls_errors_total: "counter", "TLS connections dropped after the handshake for a bad record or a fatal alert.";
    h2_connections_total: "counter", "HTTP/2 connections started (ALPN h2, or the prior-knowledge preface on a plain port).";
    h2_connections_open: "gauge", "HTTP/2 connections open.";
    h2_streams_total: "counter", "HTTP/2 streams accepted (WebSockets by extended CONNECT, and requests).";
    h2_streams_open: "gauge", "HTTP/2 streams open with a connection of their own (each also counts as a WebSocket, event stream or request).";
    h2_websockets_total: "counter", "WebSockets opened over HTTP/2 (RFC 8441 extended CONNECT answered 200).";
    h2_connections_with_websockets: "gauge", "HTTP/2 connections carrying at least one open WebSocket.";
    h2_stream_resets_total: "counter", "HTTP/2 streams reset by the client (RST_STREAM).";
    h2_refused_streams_total: "counter", "HTTP/2 streams answered by the multiplexer itself (a request that does not translate, a body too large, no room).";
    h2_errors_total: "counter", "HTTP/2 connections ended by a protocol error (ours or the client's GOAWAY), including the flood and rapid-reset bounds.";
    handshake_failures_total: "counter", "Connections that ended before a WebSocket handshake completed (rejected requests, timeouts, resets), not counting /healthz and /metrics.";
    http_requests_total: "counter", "Plain HTTP answers (health, metrics, API, errors to non-WebSocket requests).";
    messages_received_total: "counter", "WebSocket data messages received.";
    messages_sent_total: "counter", "WebSocket data messages sent (each recipient counts once).";
    bytes_received_total: "counter", "Bytes read from sockets.";
    bytes_sent_total: "counter", "Bytes written to sockets.";
    invalid_json_total: "counter", "Room text messages rejected as invalid JSON.";
    protocol_errors_total: "counter", "Connections failed for a protocol violation (close 1002, 1007 or 1009).";
    pings_sent_total: "counter", "Heartbeat pings sent.";
    heartbeat_timeouts_total: "counter", "Connections dropped because a ping went unanswered.";
    slow_consumer_closes_total: "counter", "Connections closed with 1008 because their outbound queue passed --max-backlog.";
    accept_errors_total: "counter", "accept() failures (EMFILE/ENFILE pause accepting for a while).";
    accept_pauses_total: "counter", "Times accepting was paused (descriptor limit, or --max-connections and its overflow reserve full).";
    overflow_refusals_total: "counter", "Connections answered 503 because the server was at --max-connections.";
    per_ip_refusals_total: "counter", "Connections answered 429 because their address was at --max-connections-per-ip.";
    outbound_queued_bytes: "gauge", "Memory held by outbound queues of connections whose socket refused bytes (their bytes and bookkeeping).";
    outbound_budget_closes_total: "counter", "Slowest consumers closed with 1008 because outbound queues passed --max-outbound-memory.";
    inbound_buffered_bytes: "gauge", "Memory held for incomplete input (messages, frames and requests not yet complete).";
    input_pauses_total: "counter", "Times a connection was not read because buffered input passed --max-buffered-input.";
    message_timeouts_total: "counter", "Connections closed with 1008 for a message not completed within --message-timeout.";
    rooms: "gauge", "Rooms with members on this server (counted once per loop holding members).";
    cross_loop_deliveries_total: "counter", "Room messages fanned out by a loop other than the publisher's.";
    joins_total: "counter", "Room joins completed (seed-mode members included).";
    publishes_total: "counter", "Messages published into rooms by this server's WebSocket clients.";
    messages_recovered_total: "counter", "Messages replayed from history to members that joined with since.";
    presence_events_sent_total: "counter", "presence_join/presence_leave events sent (each recipient counts once).";
    rate_limited_total: "counter", "Publishes refused by --max-publish-rate.";
    room_rate_limited_total: "counter", "Publishes refused by --max-room-rate (the room's own limit).";
    flood_closes_total: "counter", "Connections closed with 1008 for publishing over the rate again and again.";
    v1_errors_total: "counter", "v1 error replies sent.";
    auth_failures_total: "counter", "Requests refused with 401 (missing, malformed, wrongly signed or expired token; wrong API key).";
    origin_rejections_total: "counter", "WebSocket handshakes refused with 403 for their Origin.";
    api_requests_total: "counter", "Server API requests answered (/api/...).";
    sse_streams_total: "counter", "Server-Sent Events streams started.";
    polls_total: "counter", "Long polls answered (with messages, empty at --poll-timeout, or recovered: false).";
    posts_total: "counter", "Messages published with POST /rooms/R/messages.";
    history_messages: "gauge", "Room messages held in history by this server's broker.";
    history_bytes: "gauge", "Bytes of room history held by this server's broker.";
    broker_rooms: "gauge", "Rooms this server's broker holds state for (members, presence or history).";
    redis_errors_total: "counter", "Redis requests that failed (each answered `unavailable` or retried).";
    redis_down: "gauge", "Worker processes that cannot reach Redis now (0: all can; always 0 without --redis).";
    redis_in_flight: "gauge", "Redis calls in flight (a join counting each joiner); at most --redis-in-flight per worker process when it is set.";
    redis_waiting: "gauge", "Redis calls waiting in the server for their turn (a join counting each joiner).";
    redis_shed_total: "counter", "Joins answered unavailable because they waited --redis-join-wait for their turn toward Redis (never sent).";
}

/// Render a snapshot in the Prometheus text exposition format (version 0.0.4).
pub fn render(s: &Snapshot, extra: &[(&str, &str, &str, u64)]) -> String {
    let mut out = String::with_capacity(4096);
    for (name, kind, help, v) in s.entries().into_iter().chain(extra.iter().copied()) {
        let _ = writeln!(out, "# HELP c100k_{name} {help}\n# TYPE c100k_{name} {kind}\nc100k_{name} {v}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_sums_and_types() {
        let m = LoopMetrics::default();
        m.connections_open.add(3);
        m.bytes_sent_total.add(1000);
        m.connections_open.sub(1);
        let mut total = m.snapshot();
        total.add(&m.snapshot());
        let text = render(&total, &[]);
        assert!(text.contains("# TYPE c100k_connections_open gauge\nc100k_connections_open 4\n"));
        assert!(text.contains("c100k_bytes_sent_total 2000\n"));
    }

    #[test]
    fn blocks_do_not_share_cache_lines() {
        assert!(std::mem::align_of::<LoopMetrics>() >= 128);
    }
}
