//! Byte classes of SQL text, many bytes at a time: which bytes continue
//! an identifier (a bit per byte of a 64-byte block, SSE2 on x86-64, SWAR
//! elsewhere), how long a run of digits is, how long two texts agree. The
//! keyword scan and `LastText` run these over every Query and Parse.

/// Bit i set: byte i of `block` (at most 64 bytes) continues an identifier.
/// Sixteen bytes per step with SSE2 (part of every x86-64 CPU).
#[cfg(target_arch = "x86_64")]
pub(super) fn block_mask(block: &[u8]) -> u64 {
    lane_masks(block, |v: [u8; 16]| u64::from(ident16(v)))
}

/// `block_mask` from `lanes`, which gives the identifier bits of N bytes:
/// whole lanes first; a short tail takes the last N bytes of the block
/// (zeros, not identifier bytes, shift in at the top) or, in a block
/// shorter than a lane, NUL padding.
fn lane_masks<const N: usize>(block: &[u8], lanes: impl Fn([u8; N]) -> u64) -> u64 {
    let mut mask = 0u64;
    let mut chunks = block.chunks_exact(N);
    let mut k = 0;
    for chunk in chunks.by_ref() {
        let mut lane = [0u8; N];
        lane.copy_from_slice(chunk); // fixed length: no call
        mask |= lanes(lane) << (N * k);
        k += 1;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut lane = [0u8; N];
        let m = if block.len() >= N {
            lane.copy_from_slice(&block[block.len() - N..]);
            lanes(lane) >> (N - tail.len())
        } else {
            lane[..tail.len()].copy_from_slice(tail);
            lanes(lane)
        };
        mask |= m << (N * k);
    }
    mask
}

/// Bit i set iff byte i of `v` is an identifier byte (ASCII letter,
/// digit, `_` or `$`).
#[cfg(target_arch = "x86_64")]
fn ident16(v: [u8; 16]) -> u32 {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is in the x86-64 baseline; the load reads the 16 bytes
    // of `v`. Unsigned ranges are tested as a wrapping add that moves the
    // range to the bottom of the signed bytes, then one signed compare.
    unsafe {
        let v = _mm_loadu_si128(v.as_ptr().cast());
        let in_range = |x: __m128i, lo: u8, n: u8| {
            let moved = _mm_add_epi8(x, _mm_set1_epi8(0x80u8.wrapping_sub(lo) as i8));
            _mm_cmplt_epi8(moved, _mm_set1_epi8(0x80u8.wrapping_add(n) as i8))
        };
        let letters = in_range(_mm_or_si128(v, _mm_set1_epi8(0x20)), b'a', 26);
        let digits = in_range(v, b'0', 10);
        let marks = _mm_or_si128(
            _mm_cmpeq_epi8(v, _mm_set1_epi8(b'_' as i8)),
            _mm_cmpeq_epi8(v, _mm_set1_epi8(b'$' as i8)),
        );
        let all = _mm_or_si128(_mm_or_si128(letters, digits), marks);
        _mm_movemask_epi8(all) as u32
    }
}

/// The same, eight bytes at a time in a u64, for other targets.
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn block_mask(block: &[u8]) -> u64 {
    swar_block_mask(block)
}

/// `block_mask` without SIMD: eight bytes per step in a u64.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn swar_block_mask(block: &[u8]) -> u64 {
    // The high bit of byte i moves to bit i of one byte.
    lane_masks(block, |v: [u8; 8]| {
        ((ident_mask(u64::from_le_bytes(v)) >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
    })
}

const HIGH: u64 = 0x8080_8080_8080_8080;
const ONES: u64 = 0x0101_0101_0101_0101;

/// The high bit of each byte of `v` set iff that byte is an identifier
/// byte (ASCII letter, digit, `_` or `$`), eight bytes at once.
fn ident_mask(v: u64) -> u64 {
    let x = v & !HIGH;
    let letters = in_range(x | (ONES * 0x20), b'a', b'z');
    let digits = in_range(x, b'0', b'9');
    let marks = in_range(x, b'_', b'_') | in_range(x, b'$', b'$');
    (letters | digits | marks) & !v & HIGH
}

/// The high bit of each byte of `x` set iff that byte is in `lo..=hi`.
/// Every byte of `x` must be below 0x80 (callers mask the high bits off
/// and treat those bytes as outside), so the sums never carry across
/// bytes.
fn in_range(x: u64, lo: u8, hi: u8) -> u64 {
    let ge_lo = x + ONES * u64::from(0x80 - lo);
    let gt_hi = x + ONES * u64::from(0x7f - hi);
    ge_lo & !gt_hi & HIGH
}

/// Bytes that continue an identifier-like token (letters, digits, `_`,
/// `$`), as a table: the scan runs over every byte of every query.
static IDENT: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'$';
        b += 1;
    }
    t
};

pub(super) fn is_ident(b: u8) -> bool {
    IDENT[b as usize]
}

/// Length of the run of ASCII digits `s` starts with, eight bytes at a
/// time.
pub(super) fn digit_run(s: &[u8]) -> usize {
    let (words, _) = s.as_chunks::<8>();
    for (k, x) in words.iter().enumerate() {
        let v = u64::from_le_bytes(*x);
        let digits = in_range(v & !HIGH, b'0', b'9') & !v;
        if digits != HIGH {
            return 8 * k + ((!digits & HIGH).trailing_zeros() / 8) as usize;
        }
    }
    let mut i = 8 * words.len();
    while s.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// Length of the common prefix of `a` and `b`, eight bytes at a time.
pub(super) fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let (wa, _) = a.as_chunks::<8>();
    let (wb, _) = b.as_chunks::<8>();
    for (k, (x, y)) in wa.iter().zip(wb).enumerate() {
        let d = u64::from_le_bytes(*x) ^ u64::from_le_bytes(*y);
        if d != 0 {
            return 8 * k + (d.trailing_zeros() / 8) as usize;
        }
    }
    let mut i = 8 * wa.len().min(wb.len());
    while let (Some(p), Some(q)) = (a.get(i), b.get(i))
        && p == q
    {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_runs_are_measured_exactly() {
        for b in 0..=255u8 {
            for at in 0..20 {
                let mut s = vec![b'7'; 20];
                s[at] = b;
                let want = s.iter().take_while(|c| c.is_ascii_digit()).count();
                assert_eq!(digit_run(&s), want, "byte {b:#x} at {at}");
                assert_eq!(digit_run(&s[..at]), at);
            }
        }
    }

    #[test]
    fn block_masks_match_the_table() {
        // Every byte value at every position of blocks of every length.
        for len in 0..=64usize {
            for b in 0..=255u8 {
                let block: Vec<u8> = (0..len)
                    .map(|i| if i % 3 == 0 { b } else { b"a _$9\x80(z"[i % 8] })
                    .collect();
                let want = block
                    .iter()
                    .enumerate()
                    .fold(0u64, |m, (i, &c)| m | (u64::from(is_ident(c)) << i));
                assert_eq!(block_mask(&block), want, "len {len}, byte {b:#x}");
                assert_eq!(swar_block_mask(&block), want, "len {len}, byte {b:#x}");
            }
        }
    }

    #[test]
    fn ident_mask_matches_the_table() {
        for b in 0..=255u8 {
            let v = u64::from_le_bytes([b'x', b, 0, b' ', b, b'9', 0x80, b]);
            let m = ident_mask(v);
            for (i, byte) in v.to_le_bytes().iter().enumerate() {
                assert_eq!(m >> (8 * i + 7) & 1 == 1, is_ident(*byte), "byte {byte:#x}");
            }
        }
    }
}
