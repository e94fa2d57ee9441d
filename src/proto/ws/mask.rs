//! RFC 6455 §5.3 payload masking (XOR with a 4-byte key), in place.
//!
//! tungstenite keeps its `apply_mask` private, so the data path owns this. Masking is symmetric:
//! the same call masks (client) and unmasks (server).

/// XOR `buf` with `key`, starting at byte `phase` (0..4) of the key, so a payload that arrives in
/// several reads can be unmasked piece by piece. Returns the phase for the next piece.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) -> usize {
    let phase = phase & 3;
    let rotated = rotate_key(key, phase);
    // Head: bytes before the first 8-byte-aligned address.
    let (head, body, tail) = split_aligned(buf);
    let mut k = rotated;
    for (i, b) in head.iter_mut().enumerate() {
        *b ^= k[i & 3];
    }
    k = rotate_key(k, head.len());
    let wide = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    for chunk in body.chunks_exact_mut(8) {
        let word: [u8; 8] = (&*chunk).try_into().expect("chunks_exact yields 8 bytes");
        let v = u64::from_ne_bytes(word) ^ wide;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in tail.iter_mut().enumerate() {
        *b ^= k[i & 3];
    }
    (phase + buf.len()) & 3
}

/// A fresh 4-byte masking key for a client frame.
///
/// RFC 6455 §5.3 wants keys an intermediary cannot predict; a per-thread xorshift64* generator
/// seeded from the clock and thread identity is enough for that purpose and costs a few cycles
/// (a load generator masks millions of frames per second).
pub fn random_key() -> [u8; 4] {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        ((x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32).to_ne_bytes()
    })
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish() | 1
}

/// The key as seen from byte `by` of its cycle.
#[inline]
fn rotate_key(key: [u8; 4], by: usize) -> [u8; 4] {
    let by = by & 3;
    [key[by], key[(by + 1) & 3], key[(by + 2) & 3], key[(by + 3) & 3]]
}

/// Split into an unaligned head (< 8 bytes), a body that is a multiple of 8 bytes, and a tail.
/// The body is processed in 8-byte words; alignment only matters for speed, not correctness.
#[inline]
fn split_aligned(buf: &mut [u8]) -> (&mut [u8], &mut [u8], &mut [u8]) {
    let addr = buf.as_ptr() as usize;
    let head_len = ((8 - (addr & 7)) & 7).min(buf.len());
    let (head, rest) = buf.split_at_mut(head_len);
    let body_len = rest.len() & !7;
    let (body, tail) = rest.split_at_mut(body_len);
    (head, body, tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(buf: &mut [u8], key: [u8; 4], phase: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(i + phase) & 3];
        }
    }

    #[test]
    fn matches_naive_for_all_offsets_lengths_and_phases() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let src: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        for start in 0..9 {
            for len in 0..64 {
                for phase in 0..4 {
                    let mut a = src.clone();
                    let mut b = src.clone();
                    let next = apply_mask(&mut a[start..start + len], key, phase);
                    naive(&mut b[start..start + len], key, phase);
                    assert_eq!(a, b, "start {start} len {len} phase {phase}");
                    assert_eq!(next, (phase + len) % 4);
                }
            }
        }
    }

    #[test]
    fn piecewise_equals_whole() {
        let key = [1, 2, 3, 4];
        let mut whole: Vec<u8> = (0..=255).collect();
        let mut pieces = whole.clone();
        apply_mask(&mut whole, key, 0);
        let mut phase = 0;
        for chunk in pieces.chunks_mut(7) {
            phase = apply_mask(chunk, key, phase);
        }
        assert_eq!(whole, pieces);
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 §5.7: masked "Hello" with key 37 fa 21 3d.
        let mut masked = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut masked, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&masked, b"Hello");
    }
}
