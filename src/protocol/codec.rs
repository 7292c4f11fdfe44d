//! Framing of post-startup messages: a 1-byte tag and a 4-byte big-endian
//! length that counts itself (protocol docs, "Message Formats").
//!
//! The forwarding path never builds message objects. [`FrameScanner`] walks
//! a read buffer in place, validates each header against a cap *before* any
//! body is read, tells a [`FrameSink`] about each frame, and returns how
//! many leading bytes may be written to the peer as they are. Bodies the
//! sink does not need are passed through in pieces as they arrive, so a
//! 100 MB DataRow costs no more memory than the read buffer.

/// Tag byte plus length word.
pub const HEADER_LEN: usize = 5;

/// What a sink wants done at a frame boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Forward this frame and keep scanning.
    Continue,
    /// Forward this frame, then stop: the caller acts before reading on.
    StopAfter,
    /// Do not forward this frame (nor anything after it) yet; the caller
    /// acts first. The frame stays at the front of the unforwarded bytes
    /// and is presented again by the next scan.
    StopBefore,
    /// Drop this frame (it must be whole in `frame`), then stop: the
    /// caller writes what precedes it and discards `Scan::skip` bytes.
    Skip,
}

/// Body bytes a sink needs to see: the whole body.
pub const WHOLE_BODY: usize = usize::MAX;

/// Receives the frames a scan walks over.
pub trait FrameSink {
    /// How many body bytes must be in the buffer before `on_frame` is
    /// called for `tag`: 0 for the header only, [`WHOLE_BODY`] for all of
    /// it, or a prefix length (fewer if the body is shorter). Bodies
    /// beyond that are streamed through as they arrive.
    fn body_needed(&self, tag: u8) -> usize;
    /// Frames of this tag are forwarded without `on_frame` (nor a look at
    /// their bodies): the bulk of a result, rows, costs one header check
    /// each. Asked after the header is validated.
    fn passes(&self, _tag: u8) -> bool {
        false
    }
    /// Called once per frame (again after a `StopBefore`). `frame` holds
    /// the header and the body bytes asked for; `frame_len` is the whole
    /// frame's length.
    fn on_frame(&mut self, tag: u8, frame: &[u8], frame_len: usize) -> Step;
}

/// Why a stream of frames cannot be followed any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength { tag: char, len: i32 },
    #[error("message of type {tag:?} is {len} bytes, over the limit of {max}")]
    TooLarge { tag: char, len: usize, max: usize },
}

/// Result of one scan over a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Leading bytes that may be forwarded now.
    pub forward: usize,
    /// The sink asked to stop (`StopAfter`, `StopBefore` or `Skip`).
    pub stopped: bool,
    /// Bytes after `forward` to discard (a skipped frame).
    pub skip: usize,
}

/// Walks frames across successive reads. Between calls it remembers how
/// much of the current frame's body is still to come.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    /// Body bytes of the current frame not yet seen.
    remaining: usize,
    /// Largest allowed frame length (the length word's value).
    max_len: usize,
}

impl FrameScanner {
    pub fn new(max_len: usize) -> FrameScanner {
        FrameScanner {
            remaining: 0,
            max_len,
        }
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Body bytes of the current frame not yet seen (0 between frames).
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// True between frames (not inside a body).
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Scans `buf` (bytes not yet forwarded, starting where the last
    /// forwarded byte ended). Bytes after `Scan::forward` must be kept and
    /// presented again, followed by newly read bytes.
    pub fn scan(&mut self, buf: &[u8], sink: &mut impl FrameSink) -> Result<Scan, FrameError> {
        let done = |forward, stopped, skip| {
            Ok(Scan {
                forward,
                stopped,
                skip,
            })
        };
        let mut pos = 0;
        loop {
            if self.remaining > 0 {
                let take = self.remaining.min(buf.len() - pos);
                pos += take;
                self.remaining -= take;
                if self.remaining > 0 {
                    return done(pos, false, 0);
                }
            }
            let rest = &buf[pos..];
            let Some(header) = parse_header(rest, self.max_len)? else {
                return done(pos, false, 0);
            };
            let frame_len = header.len + 1;
            if sink.passes(header.tag) {
                let take = frame_len.min(rest.len());
                pos += take;
                self.remaining = frame_len - take;
                continue;
            }
            let need = HEADER_LEN + sink.body_needed(header.tag).min(header.len - 4);
            if rest.len() < need {
                return done(pos, false, 0);
            }
            let frame = &rest[..need];
            match sink.on_frame(header.tag, frame, frame_len) {
                Step::StopBefore => return done(pos, true, 0),
                Step::Skip if need == frame_len => return done(pos, true, frame_len),
                step => {
                    pos += need;
                    self.remaining = frame_len - need;
                    if step == Step::StopAfter {
                        let take = self.remaining.min(buf.len() - pos);
                        pos += take;
                        self.remaining -= take;
                        return done(pos, true, 0);
                    }
                }
            }
        }
    }
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// The length word: body length plus 4.
    pub len: usize,
}

/// Reads a header from the front of `buf`: `Ok(None)` if fewer than five
/// bytes are there, an error if the length is below 4 or over `max_len`.
pub fn parse_header(buf: &[u8], max_len: usize) -> Result<Option<Header>, FrameError> {
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let tag = h[0];
    let len = i32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    if len < 4 {
        return Err(FrameError::BadLength {
            tag: tag as char,
            len,
        });
    }
    let len = len as usize;
    if len > max_len {
        return Err(FrameError::TooLarge {
            tag: tag as char,
            len,
            max: max_len,
        });
    }
    Ok(Some(Header { tag, len }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records tags; stops at a chosen tag.
    struct Rec {
        tags: Vec<u8>,
        stop_after: Option<u8>,
        stop_before: Option<u8>,
        skip: Option<u8>,
        body_for: Option<u8>,
        bodies: Vec<Vec<u8>>,
        passes: Option<u8>,
    }

    impl Rec {
        fn new() -> Rec {
            Rec {
                tags: vec![],
                stop_after: None,
                stop_before: None,
                skip: None,
                body_for: None,
                bodies: vec![],
                passes: None,
            }
        }
    }

    impl FrameSink for Rec {
        fn body_needed(&self, tag: u8) -> usize {
            if Some(tag) == self.body_for {
                WHOLE_BODY
            } else {
                0
            }
        }
        fn passes(&self, tag: u8) -> bool {
            Some(tag) == self.passes
        }
        fn on_frame(&mut self, tag: u8, frame: &[u8], _len: usize) -> Step {
            if Some(tag) == self.stop_before {
                return Step::StopBefore;
            }
            if Some(tag) == self.skip {
                return Step::Skip;
            }
            self.tags.push(tag);
            if Some(tag) == self.body_for {
                self.bodies.push(frame[HEADER_LEN..].to_vec());
            }
            if Some(tag) == self.stop_after {
                Step::StopAfter
            } else {
                Step::Continue
            }
        }
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn forwards_complete_frames_and_keeps_partial_headers() {
        let mut buf = msg(b'Q', b"select 1\0");
        buf.extend_from_slice(&msg(b'S', b""));
        buf.extend_from_slice(&[b'Q', 0, 0]); // partial header
        let mut s = FrameScanner::new(1 << 20);
        let mut r = Rec::new();
        let scan = s.scan(&buf, &mut r).expect("valid");
        assert_eq!(scan.forward, buf.len() - 3);
        assert_eq!(r.tags, b"QS");
        assert!(s.at_boundary());
    }

    #[test]
    fn streams_bodies_across_reads() {
        let big = msg(b'D', &[7u8; 1000]);
        let mut s = FrameScanner::new(1 << 20);
        let mut r = Rec::new();
        let scan = s.scan(&big[..100], &mut r).expect("valid");
        assert_eq!(scan.forward, 100);
        assert!(!s.at_boundary());
        let scan = s.scan(&big[100..], &mut r).expect("valid");
        assert_eq!(scan.forward, 905);
        assert!(s.at_boundary());
        assert_eq!(r.tags, b"D");
    }

    #[test]
    fn passed_frames_are_forwarded_unseen_in_any_pieces() {
        let mut buf = msg(b'T', b"row description");
        buf.extend_from_slice(&msg(b'D', &[9u8; 300]));
        buf.extend_from_slice(&msg(b'D', b"short"));
        buf.extend_from_slice(&msg(b'C', b"SELECT 2\0"));
        buf.extend_from_slice(&msg(b'Z', b"I"));
        // Every split of the stream into two reads gives the same result.
        for cut in 0..=buf.len() {
            let mut s = FrameScanner::new(1 << 20);
            let mut r = Rec::new();
            r.passes = Some(b'D');
            r.body_for = Some(b'Z');
            let first = s.scan(&buf[..cut], &mut r).expect("valid");
            let second = s.scan(&buf[first.forward..], &mut r).expect("valid");
            assert_eq!(first.forward + second.forward, buf.len(), "cut at {cut}");
            assert_eq!(r.tags, b"TCZ", "cut at {cut}");
            assert_eq!(r.bodies, vec![b"I".to_vec()]);
            assert!(s.at_boundary());
        }
    }

    #[test]
    fn waits_for_bodies_it_wants() {
        let z = msg(b'Z', b"I");
        let mut s = FrameScanner::new(1 << 20);
        let mut r = Rec::new();
        r.body_for = Some(b'Z');
        assert_eq!(s.scan(&z[..5], &mut r).expect("valid").forward, 0);
        assert!(r.tags.is_empty());
        assert_eq!(s.scan(&z, &mut r).expect("valid").forward, 6);
        assert_eq!(r.bodies, vec![b"I".to_vec()]);
    }

    #[test]
    fn stop_after_and_before() {
        let mut buf = msg(b'C', b"SELECT 1\0");
        buf.extend_from_slice(&msg(b'Z', b"I"));
        buf.extend_from_slice(&msg(b'N', b"x\0"));
        let mut s = FrameScanner::new(1 << 20);
        let mut r = Rec::new();
        r.stop_after = Some(b'Z');
        let scan = s.scan(&buf, &mut r).expect("valid");
        assert!(scan.stopped);
        assert_eq!(scan.forward, 14 + 6);

        let mut s = FrameScanner::new(1 << 20);
        let mut r = Rec::new();
        r.stop_before = Some(b'Z');
        let scan = s.scan(&buf, &mut r).expect("valid");
        assert!(scan.stopped);
        assert_eq!(scan.forward, 14);
    }

    #[test]
    fn skips_whole_frames_and_reads_prefixes() {
        let mut buf = msg(b'2', b"");
        buf.extend_from_slice(&msg(b'1', b""));
        buf.extend_from_slice(&msg(b'Z', b"I"));
        let mut s = FrameScanner::new(1 << 20);
        let mut r = Rec::new();
        r.skip = Some(b'1');
        let scan = s.scan(&buf, &mut r).expect("valid");
        assert_eq!((scan.forward, scan.stopped, scan.skip), (5, true, 5));

        struct Prefix(Vec<usize>);
        impl FrameSink for Prefix {
            fn body_needed(&self, _tag: u8) -> usize {
                3
            }
            fn on_frame(&mut self, _tag: u8, frame: &[u8], len: usize) -> Step {
                self.0.push(frame.len());
                self.0.push(len);
                Step::Continue
            }
        }
        let mut buf = msg(b'B', b"p\0s1\0rest of a long bind");
        buf.extend_from_slice(&msg(b'S', b""));
        let mut p = Prefix(vec![]);
        let scan = FrameScanner::new(1 << 20)
            .scan(&buf[..8], &mut p)
            .expect("valid");
        assert_eq!(scan.forward, 8);
        assert_eq!(p.0, vec![8, 29]);
        let scan = FrameScanner::new(1 << 20)
            .scan(&buf, &mut Prefix(vec![]))
            .expect("valid");
        assert_eq!(scan.forward, buf.len());
    }

    #[test]
    fn rejects_bad_and_oversized_lengths() {
        let mut s = FrameScanner::new(1000);
        let mut r = Rec::new();
        assert!(matches!(
            s.scan(&[b'Q', 0, 0, 0, 3], &mut r),
            Err(FrameError::BadLength { len: 3, .. })
        ));
        assert!(matches!(
            s.scan(&[b'Q', 0xff, 0xff, 0xff, 0xff], &mut r),
            Err(FrameError::BadLength { len: -1, .. })
        ));
        assert!(matches!(
            s.scan(&[b'Q', 0, 0, 0x10, 0], &mut r),
            Err(FrameError::TooLarge { len: 4096, .. })
        ));
    }
}
