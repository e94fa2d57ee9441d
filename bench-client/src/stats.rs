//! What a run measured: latency histograms (HdrHistogram, microseconds) and counters, mergeable
//! across threads and processes. Histograms cross process boundaries in HdrHistogram's V2
//! (deflate) serialization, so merging is exact: the merged histogram is the histogram of all
//! samples.

use std::collections::BTreeMap;

use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency recorded: one hour in microseconds (larger values saturate).
pub const MAX_US: u64 = 3_600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// Record a duration in nanoseconds as microseconds (at least 1).
pub fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record((ns / 1000).max(1));
}

/// The histograms of a run, by name, in the order reports list them.
pub const HISTOGRAMS: [&str; N_HIST] = ["connect", "handshake", "rtt", "delivery", "resume", "send_lag"];
const N_HIST: usize = 6;
/// Indices into [`Outcome::hist`].
pub const H_CONNECT: usize = 0;
pub const H_HANDSHAKE: usize = 1;
pub const H_RTT: usize = 2;
pub const H_DELIVERY: usize = 3;
pub const H_RESUME: usize = 4;
pub const H_SEND_LAG: usize = 5;

/// Everything one thread, one process or the whole run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// TCP connect latency, handshake latency (TCP established → 101), echo round trip,
    /// broadcast delivery (intended send → receipt), resume (dropped → rejoined, v1), and how
    /// late open-loop sends left the generator (actual − intended send time: a late generator
    /// shows here, not only in the latency). Serialized as hex V2-deflate.
    #[serde(with = "histograms")]
    pub hist: Hists,
    pub attempted: u64,
    pub established: u64,
    /// Failed attempts by cause.
    pub failures: BTreeMap<String, u64>,
    /// Established connections lost before the run ended, by cause.
    pub drops: BTreeMap<String, u64>,
    pub sent: u64,
    /// Messages received that count toward the expected total.
    pub received: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Payloads that were not ours (could not be parsed).
    pub corrupt: u64,
    /// Broadcast deliveries back to their own sender.
    pub self_deliveries: u64,
    /// Broadcast: messages sent per room; members established per room at the start.
    pub sent_by_room: BTreeMap<u32, u64>,
    pub members_by_room: BTreeMap<u32, u64>,
    /// v1: per-room sums that give the exact expected deliveries from the server's seqs.
    pub v1_rooms: crate::v1::RoomSums,
    /// v1: error replies from the server (rate limits and the like).
    pub v1_errors: u64,
    /// v1: of those, the ones a sender got for a publish. Their outcome is unknown when the
    /// server's broker timed out: the message may have been published all the same, and the
    /// server never sends a sender its own messages, so each may count once as lost.
    pub publish_errors: u64,
    /// v1 resume: reconnects, how many got `recovered: true` / `false`, and the messages
    /// replayed to them.
    pub resumes: u64,
    pub resumes_recovered: u64,
    pub resumes_unrecovered: u64,
    pub recovered_messages: u64,
    /// CLOCK_MONOTONIC ns: first connect attempt, last handshake completed.
    pub ramp_start: u64,
    pub ramp_end: u64,
    /// The measured window.
    pub run_start: u64,
    pub run_end: u64,
}

/// The run's histograms (see [`HISTOGRAMS`] for their order), all with the same bounds.
#[derive(Debug, Clone)]
pub struct Hists(pub [Histogram<u64>; N_HIST]);

impl Default for Hists {
    fn default() -> Self {
        Hists(std::array::from_fn(|_| new_histogram()))
    }
}

impl std::ops::Deref for Hists {
    type Target = [Histogram<u64>; N_HIST];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Hists {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

fn merge_map<K: Ord + Clone>(into: &mut BTreeMap<K, u64>, from: &BTreeMap<K, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// Earliest non-zero time.
fn min_time(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (x, y) => x.min(y),
    }
}

impl Outcome {
    pub fn merge(&mut self, o: &Outcome) {
        for (mine, theirs) in self.hist.iter_mut().zip(o.hist.iter()) {
            mine.add(theirs).expect("histograms share bounds");
        }
        self.attempted += o.attempted;
        self.established += o.established;
        merge_map(&mut self.failures, &o.failures);
        merge_map(&mut self.drops, &o.drops);
        self.sent += o.sent;
        self.received += o.received;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.corrupt += o.corrupt;
        self.self_deliveries += o.self_deliveries;
        merge_map(&mut self.sent_by_room, &o.sent_by_room);
        merge_map(&mut self.members_by_room, &o.members_by_room);
        self.v1_rooms.merge(&o.v1_rooms);
        self.v1_errors += o.v1_errors;
        self.publish_errors += o.publish_errors;
        self.resumes += o.resumes;
        self.resumes_recovered += o.resumes_recovered;
        self.resumes_unrecovered += o.resumes_unrecovered;
        self.recovered_messages += o.recovered_messages;
        self.ramp_start = min_time(self.ramp_start, o.ramp_start);
        self.ramp_end = self.ramp_end.max(o.ramp_end);
        self.run_start = min_time(self.run_start, o.run_start);
        self.run_end = self.run_end.max(o.run_end);
    }

    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    pub fn dropped(&self) -> u64 {
        self.drops.values().sum()
    }

    pub fn hist(&self, name: &str) -> &Histogram<u64> {
        &self.hist[HISTOGRAMS.iter().position(|n| *n == name).expect("known histogram")]
    }
}

/// Serialize histograms as hex strings of HdrHistogram V2-deflate encodings.
mod histograms {
    use super::*;
    use serde::de::Error as _;
    use serde::ser::Error as _;

    pub fn serialize<S: serde::Serializer>(h: &Hists, s: S) -> Result<S::Ok, S::Error> {
        let mut out = Vec::with_capacity(h.len());
        for one in h.iter() {
            let mut buf = Vec::new();
            V2DeflateSerializer::new().serialize(one, &mut buf).map_err(|e| S::Error::custom(format!("{e:?}")))?;
            out.push(hex(&buf));
        }
        out.serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Hists, D::Error> {
        let v: Vec<String> = Vec::deserialize(d)?;
        let mut hs: Vec<Histogram<u64>> = Vec::with_capacity(v.len());
        for s in &v {
            let bytes = unhex(s).ok_or_else(|| D::Error::custom("bad hex in histogram"))?;
            let h: Histogram<u64> =
                Deserializer::new().deserialize(&mut &bytes[..]).map_err(|e| D::Error::custom(format!("{e:?}")))?;
            // Deserialized histograms carry their own bounds; re-home them in ours for merging.
            let mut ours = new_histogram();
            ours.add(&h).map_err(|e| D::Error::custom(format!("{e:?}")))?;
            hs.push(ours);
        }
        hs.try_into().map(Hists).map_err(|_| D::Error::custom(format!("expected {N_HIST} histograms")))
    }

    fn hex(b: &[u8]) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(b.len() * 2);
        for x in b {
            let _ = write!(s, "{x:02x}");
        }
        s
    }

    fn unhex(s: &str) -> Option<Vec<u8>> {
        if s.len() % 2 != 0 {
            return None;
        }
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_across_a_process_boundary_is_exact() {
        // Two "workers" record disjoint halves; after a JSON round trip each (as between
        // processes) and a merge, the result equals one histogram of all samples.
        let mut whole = new_histogram();
        let mut a = Outcome::default();
        let mut b = Outcome::default();
        for i in 1..=20_000u64 {
            let v = (i * 7919) % 500_000 + 1;
            whole.record(v).unwrap();
            if i % 2 == 0 {
                a.hist[H_RTT].record(v).unwrap()
            } else {
                b.hist[H_RTT].record(v).unwrap()
            }
        }
        a.received = 10_000;
        b.received = 10_000;
        let a: Outcome = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        let b: Outcome = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        let mut merged = Outcome::default();
        merged.merge(&a);
        merged.merge(&b);
        let m = merged.hist("rtt");
        assert_eq!(m.len(), whole.len());
        assert_eq!(merged.received, 20_000);
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(m.value_at_quantile(q), whole.value_at_quantile(q), "q {q}");
        }
        assert_eq!(m.max(), whole.max());
        assert_eq!(m.min(), whole.min());
    }

    #[test]
    fn counters_and_maps_merge() {
        let mut a = Outcome::default();
        a.failures.insert("refused".into(), 2);
        a.sent_by_room.insert(1, 10);
        a.ramp_start = 50;
        let mut b = Outcome::default();
        b.failures.insert("refused".into(), 3);
        b.failures.insert("timeout".into(), 1);
        b.sent_by_room.insert(1, 5);
        b.ramp_start = 40;
        a.merge(&b);
        assert_eq!(a.failed(), 6);
        assert_eq!(a.sent_by_room[&1], 15);
        assert_eq!(a.ramp_start, 40);
    }
}
