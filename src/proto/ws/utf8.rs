//! Incremental UTF-8 validation for text messages that arrive in pieces (fragments or partial
//! reads). RFC 6455 §8.1 lets an endpoint fail as soon as the bytes seen so far cannot be the
//! prefix of valid UTF-8; Autobahn 6.* checks that we do ("fail fast").
//!
//! The only state is the incomplete code point at the end of the last piece (at most 3 bytes), so
//! it fits inline in the per-message state.

/// Streaming validator state: an incomplete trailing code point from the previous piece.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Stream {
    pending: [u8; 4],
    pending_len: u8,
}

/// The bytes can never become valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Stream {
    /// Validate the next piece. Fails as soon as an invalid sequence is certain.
    pub fn feed(&mut self, mut piece: &[u8]) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            let have = self.pending_len as usize;
            let need = sequence_len(self.pending[0]).ok_or(InvalidUtf8)?;
            let take = (need - have).min(piece.len());
            self.pending[have..have + take].copy_from_slice(&piece[..take]);
            let now = have + take;
            match std::str::from_utf8(&self.pending[..now]) {
                Ok(_) => {
                    self.pending_len = 0;
                    piece = &piece[take..];
                }
                Err(e) if e.error_len().is_none() => {
                    // Still a valid prefix; the piece was too short to finish the code point.
                    self.pending_len = now as u8;
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
        }
        match std::str::from_utf8(piece) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &piece[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// The message ended: an incomplete code point left over is an error.
    pub fn finish(&self) -> Result<(), InvalidUtf8> {
        if self.pending_len == 0 {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }
}

/// Length of the UTF-8 sequence introduced by `lead`, or None for a byte that cannot start one.
fn sequence_len(lead: u8) -> Option<usize> {
    match lead {
        0x00..=0x7f => Some(1),
        0xc2..=0xdf => Some(2),
        0xe0..=0xef => Some(3),
        0xf0..=0xf4 => Some(4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_everywhere(bytes: &[u8]) -> Vec<Result<(), InvalidUtf8>> {
        (0..=bytes.len())
            .map(|cut| {
                let mut v = Utf8Stream::default();
                v.feed(&bytes[..cut])?;
                v.feed(&bytes[cut..])?;
                v.finish()
            })
            .collect()
    }

    #[test]
    fn valid_text_passes_at_every_split() {
        let text = "κόσμε — ascii, 日本語, emoji 😀, end".as_bytes();
        for r in split_everywhere(text) {
            assert_eq!(r, Ok(()));
        }
    }

    #[test]
    fn byte_by_byte_valid() {
        let text = "𝄞 music and ünïcödé".as_bytes();
        let mut v = Utf8Stream::default();
        for b in text {
            v.feed(std::slice::from_ref(b)).unwrap();
        }
        v.finish().unwrap();
    }

    #[test]
    fn invalid_sequences_fail_at_every_split() {
        let cases: &[&[u8]] = &[
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", // surrogate
            b"abc\xff",
            b"\xc0\xaf",         // overlong
            b"\xf4\x90\x80\x80", // above U+10FFFF
            b"\x80",             // lone continuation
        ];
        for c in cases {
            for r in split_everywhere(c) {
                assert_eq!(r, Err(InvalidUtf8), "{c:?}");
            }
        }
    }

    #[test]
    fn truncated_code_point_fails_only_at_finish() {
        let mut v = Utf8Stream::default();
        v.feed(b"ok \xe2\x82").unwrap(); // first two bytes of the euro sign
        assert_eq!(v.finish(), Err(InvalidUtf8));
        v.feed(b"\xac").unwrap();
        assert_eq!(v.finish(), Ok(()));
    }

    #[test]
    fn fails_fast_before_the_message_ends() {
        // Autobahn 6.4.x: the bad byte arrives in the middle; we must not wait for the end.
        let mut v = Utf8Stream::default();
        v.feed("κόσμε".as_bytes()).unwrap();
        assert_eq!(v.feed(b"\xf4\x90\x80\x80"), Err(InvalidUtf8));
        let mut w = Utf8Stream::default();
        assert_eq!(w.feed(b"\xf4"), Ok(()));
        assert_eq!(w.feed(b"\x90"), Err(InvalidUtf8));
    }
}
