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
    /// acts first. The frame stays at the front of the unforwarded bytes.
    StopBefore,
}

/// Receives the frames a scan walks over.
pub trait FrameSink {
    /// Whether the whole frame must be in the buffer before `on_frame`
    /// (for the few messages whose body the proxy reads). Bodies of other
    /// frames are streamed through.
    fn wants_body(&self, tag: u8) -> bool;
    /// Called once per frame. `frame` holds the header and, if
    /// `wants_body(tag)`, the whole body.
    fn on_frame(&mut self, tag: u8, frame: &[u8]) -> Step;
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
    /// The sink asked to stop (`StopAfter` or `StopBefore`).
    pub stopped: bool,
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

    /// True between frames (not inside a body).
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Scans `buf` (bytes not yet forwarded, starting where the last
    /// forwarded byte ended). Bytes after `Scan::forward` must be kept and
    /// presented again, followed by newly read bytes.
    pub fn scan(&mut self, buf: &[u8], sink: &mut impl FrameSink) -> Result<Scan, FrameError> {
        let mut pos = 0;
        loop {
            if self.remaining > 0 {
                let take = self.remaining.min(buf.len() - pos);
                pos += take;
                self.remaining -= take;
                if self.remaining > 0 {
                    return Ok(Scan {
                        forward: pos,
                        stopped: false,
                    });
                }
            }
            let rest = &buf[pos..];
            let Some(header) = parse_header(rest, self.max_len)? else {
                return Ok(Scan {
                    forward: pos,
                    stopped: false,
                });
            };
            let frame_len = header.len + 1;
            let frame = if sink.wants_body(header.tag) {
                if rest.len() < frame_len {
                    return Ok(Scan {
                        forward: pos,
                        stopped: false,
                    });
                }
                &rest[..frame_len]
            } else {
                &rest[..HEADER_LEN]
            };
            match sink.on_frame(header.tag, frame) {
                Step::StopBefore => {
                    return Ok(Scan {
                        forward: pos,
                        stopped: true,
                    });
                }
                step => {
                    let have = frame.len();
                    pos += have;
                    self.remaining = frame_len - have;
                    if step == Step::StopAfter {
                        let take = self.remaining.min(buf.len() - pos);
                        pos += take;
                        self.remaining -= take;
                        return Ok(Scan {
                            forward: pos,
                            stopped: true,
                        });
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
        body_for: Option<u8>,
        bodies: Vec<Vec<u8>>,
    }

    impl Rec {
        fn new() -> Rec {
            Rec {
                tags: vec![],
                stop_after: None,
                stop_before: None,
                body_for: None,
                bodies: vec![],
            }
        }
    }

    impl FrameSink for Rec {
        fn wants_body(&self, tag: u8) -> bool {
            Some(tag) == self.body_for
        }
        fn on_frame(&mut self, tag: u8, frame: &[u8]) -> Step {
            if Some(tag) == self.stop_before {
                return Step::StopBefore;
            }
            self.tags.push(tag);
            if self.wants_body(tag) {
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
