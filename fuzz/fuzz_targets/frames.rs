//! The frame scanner, fed the way the pump feeds it (unforwarded bytes
//! carried over to the next read, stops acted on and rescanned).
//! Two checks, mirroring tests/decoders_prop.rs:
//! - arbitrary reads: no panic, every byte forwarded, skipped or kept at
//!   most once;
//! - well-formed frames split at arbitrary points: exactly their tags, in
//!   order, every byte forwarded exactly once (or dropped exactly once for
//!   frames the sink skips), each frame showing the body prefix asked for.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use pgtenant::protocol::codec::{
    FrameError, FrameScanner, FrameSink, HEADER_LEN, Step, WHOLE_BODY,
};

#[derive(Debug, Arbitrary)]
struct Input {
    max: u8,
    /// Per tag: 0 header only, 1 whole body, else a prefix of `n` bytes.
    needs: Vec<(u8, u8, u16)>,
    skip: Vec<u8>,
    stop_after: Vec<u8>,
    stop_before: Vec<u8>,
    /// Raw reads.
    chunks: Vec<Vec<u8>>,
    /// Well-formed frames, and where to cut their concatenation.
    frames: Vec<(u8, Vec<u8>)>,
    cuts: Vec<u16>,
}

#[derive(Default)]
struct Recorder {
    needs: Vec<(u8, usize)>,
    skip: Vec<u8>,
    stop_after: Vec<u8>,
    stop_before: Vec<u8>,
    stopped_before_current: bool,
    tags: Vec<u8>,
    /// Index, bytes shown, skipped.
    seen: Vec<(usize, Vec<u8>, bool)>,
}

impl Recorder {
    fn need(&self, tag: u8) -> usize {
        self.needs
            .iter()
            .find(|(t, _)| *t == tag)
            .map_or(0, |(_, n)| *n)
    }
}

impl FrameSink for Recorder {
    fn body_needed(&self, tag: u8) -> usize {
        self.need(tag)
    }

    fn on_frame(&mut self, tag: u8, frame: &[u8], frame_len: usize) -> Step {
        assert_eq!(frame[0], tag);
        assert!(frame.len() >= HEADER_LEN && frame.len() <= frame_len);
        let len = i32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]);
        assert_eq!(frame_len, len as usize + 1);
        assert_eq!(
            frame.len() - HEADER_LEN,
            self.need(tag).min(frame_len - HEADER_LEN)
        );
        if self.stop_before.contains(&tag) && !self.stopped_before_current {
            self.stopped_before_current = true;
            return Step::StopBefore;
        }
        self.stopped_before_current = false;
        let skip = frame.len() == frame_len && self.skip.contains(&tag);
        self.seen.push((self.tags.len(), frame.to_vec(), skip));
        self.tags.push(tag);
        if skip {
            Step::Skip
        } else if self.stop_after.contains(&tag) {
            Step::StopAfter
        } else {
            Step::Continue
        }
    }
}

type Fed = (Vec<u8>, Vec<u8>, Vec<u8>, Option<FrameError>);

/// As the pump: carry unforwarded bytes over, drop skipped ones, rescan
/// after a stop. Returns forwarded, skipped, kept bytes and the error.
fn feed(scanner: &mut FrameScanner, sink: &mut Recorder, chunks: &[Vec<u8>]) -> Fed {
    let mut forwarded = Vec::new();
    let mut skipped = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    for chunk in chunks {
        pending.extend_from_slice(chunk);
        for _ in 0..1_000_000 {
            let scan = match scanner.scan(&pending, sink) {
                Ok(s) => s,
                Err(e) => return (forwarded, skipped, pending, Some(e)),
            };
            assert!(scan.forward + scan.skip <= pending.len());
            assert!(scan.skip == 0 || scan.stopped);
            forwarded.extend(pending.drain(..scan.forward));
            skipped.extend(pending.drain(..scan.skip));
            if scan.forward == 0 && scan.skip == 0 && !scan.stopped {
                break;
            }
        }
    }
    (forwarded, skipped, pending, None)
}

fn sink(input: &Input) -> Recorder {
    Recorder {
        needs: input
            .needs
            .iter()
            .map(|&(t, kind, n)| {
                let need = match kind % 3 {
                    0 => 0,
                    1 => WHOLE_BODY,
                    _ => n as usize,
                };
                (t, need)
            })
            .collect(),
        skip: input.skip.clone(),
        stop_after: input.stop_after.clone(),
        stop_before: input.stop_before.clone(),
        ..Recorder::default()
    }
}

fuzz_target!(|input: Input| {
    // Arbitrary reads.
    let max = match input.max % 4 {
        0 => 4,
        1 => 64,
        2 => 1 << 20,
        _ => usize::MAX,
    };
    let mut scanner = FrameScanner::new(max);
    let mut rec = sink(&input);
    let all = input.chunks.concat();
    let (forwarded, skipped, pending, err) = feed(&mut scanner, &mut rec, &input.chunks);
    let accounted = forwarded.len() + skipped.len() + pending.len();
    assert!(accounted <= all.len());
    if err.is_none() {
        assert_eq!(accounted, all.len());
    }

    // Well-formed frames, split.
    let mut stream = Vec::new();
    let mut encoded = Vec::new();
    for (tag, body) in &input.frames {
        let mut f = vec![*tag];
        f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        f.extend_from_slice(body);
        stream.extend_from_slice(&f);
        encoded.push(f);
    }
    let mut cuts: Vec<usize> = input
        .cuts
        .iter()
        .map(|&c| c as usize % (stream.len() + 1))
        .collect();
    cuts.push(0);
    cuts.push(stream.len());
    cuts.sort_unstable();
    cuts.dedup();
    let chunks: Vec<Vec<u8>> = cuts
        .windows(2)
        .map(|w| stream[w[0]..w[1]].to_vec())
        .collect();
    let mut scanner = FrameScanner::new(1 << 30);
    let mut rec = sink(&input);
    let (forwarded, skipped, pending, err) = feed(&mut scanner, &mut rec, &chunks);
    assert!(err.is_none(), "{err:?}");
    assert!(pending.is_empty());
    assert!(scanner.at_boundary());
    let tags: Vec<u8> = input.frames.iter().map(|(t, _)| *t).collect();
    assert_eq!(rec.tags, tags);
    assert_eq!(rec.seen.len(), encoded.len());
    let mut want_forwarded = Vec::new();
    let mut want_skipped = Vec::new();
    for (i, shown, was_skipped) in &rec.seen {
        assert_eq!(&shown[..], &encoded[*i][..shown.len()]);
        if *was_skipped {
            want_skipped.extend_from_slice(&encoded[*i]);
        } else {
            want_forwarded.extend_from_slice(&encoded[*i]);
        }
    }
    assert!(forwarded == want_forwarded);
    assert!(skipped == want_skipped);
});
