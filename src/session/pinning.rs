//! Session state that cannot move between server connections (LISTEN,
//! session advisory locks, temporary tables, WITH HOLD cursors, SQL-level
//! PREPARE) pins a transaction-mode client to its server connection until
//! the state is gone or the client leaves.
//!
//! Detection is two-staged so the common transaction pays nothing: the
//! client sink looks for a few keywords in the first bytes of each Query or
//! Parse (and the server sink for a few command tags); only a transaction
//! that mentions them gets one precise probe query at its end, which says
//! what state really exists.

/// How much of a Query/Parse body is searched for keywords.
pub const TEXT_PREFIX: usize = 4096;

// Keywords, matched case-insensitively in `scan`: whole words TEMP,
// TEMPORARY, LISTEN, PREPARE, HOLD may create state; UNLISTEN, DEALLOCATE,
// DISCARD, CLOSE, DROP may release it (a pinned client is then re-probed).
// The substrings advisory_lock / advisory_unlock catch session-level
// advisory locks (pg_advisory_xact_lock does not match).

/// Command tags that create state whatever the text looked like.
pub fn state_tag(tag_body: &[u8]) -> bool {
    tag_body.starts_with(b"LISTEN\0")
        || tag_body.starts_with(b"PREPARE\0")
        || tag_body.starts_with(b"DECLARE CURSOR\0")
}

/// Keyword classes found in SQL text.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Mentions {
    pub state: bool,
    pub release: bool,
    /// `set_config(` was called: settings may have changed without a SET.
    pub settings: bool,
}

/// Searches `sql` for the keywords above, word by word (a word being a
/// run of identifier bytes); only words of a keyword's length and first
/// letter are compared. This runs on every Query and Parse, so words are
/// found eight bytes at a time from a bit mask (see `ident_mask`) rather
/// than byte by byte: no branch per byte, one per word.
///
/// Also notes settings: `set_config(` anywhere sets `Mentions::settings`,
/// and the names of custom (dotted, placeholder) settings written after
/// SET or as `set_config`'s first argument are passed to `custom`, since
/// `pg_settings` does not list those.
pub fn scan(sql: &[u8], mut custom: impl FnMut(&[u8])) -> Mentions {
    let mut st = Words::default();
    // A word running past the end of a 64-byte block: where it started.
    let mut open: Option<usize> = None;
    for (b, block) in sql.chunks(64).enumerate() {
        let base = b * 64;
        let mut m = block_mask(block);
        if let Some(start) = open {
            let run = (!m).trailing_zeros() as usize;
            if run == 64 {
                continue; // the whole block continues the word
            }
            open = None;
            st.word(sql, start, base + run, &mut custom);
            m &= u64::MAX << run;
        }
        while m != 0 {
            let s = m.trailing_zeros() as usize;
            let len = (!(m >> s)).trailing_zeros() as usize;
            if s + len == 64 {
                open = Some(base + s);
                break;
            }
            st.word(sql, base + s, base + s + len, &mut custom);
            m &= !(((1u64 << len) - 1) << s);
        }
    }
    if let Some(start) = open {
        st.word(sql, start, sql.len(), &mut custom);
    }
    st.m
}

/// The last text scanned (of a Query, or of a Parse) and what it
/// mentioned. Drivers parse the same statement text again and again (an
/// unnamed statement per execution), and simple-protocol clients send the
/// same statement with other numbers in it (`... WHERE id = 42`);
/// comparing a text costs a fraction of scanning it.
///
/// A match is exact: `scan` gives the same result for two texts of the
/// same shape (`same_shape`: equal but for the digits of their runs of
/// digits). Digits are identifier bytes, so a run of them, whatever its
/// length, only lengthens or shortens the word it is part of, and both
/// texts split into words at the same places; no keyword contains a
/// digit, so a word with digits matches none in either text (whichever
/// checks its length would lead to), and words without digits are equal.
/// Texts that name custom settings are not kept: their names are
/// reported by every scan.
#[derive(Debug, Default)]
pub struct LastText {
    text: Vec<u8>,
    mentions: Mentions,
}

impl LastText {
    /// `scan(sql)`, pushing custom setting names to `custom`.
    pub fn scan(&mut self, sql: &[u8], custom: &mut Vec<Vec<u8>>) -> Mentions {
        if same_shape(&self.text, sql) {
            return self.mentions;
        }
        self.rescan(sql, custom)
    }

    /// Out of line: the scan inlined here would make every hit pay for
    /// its stack frame.
    #[inline(never)]
    fn rescan(&mut self, sql: &[u8], custom: &mut Vec<Vec<u8>>) -> Mentions {
        let named = custom.len();
        let m = scan(sql, |n| custom.push(n.to_vec()));
        self.text.clear();
        self.mentions = Mentions::default(); // what the empty text mentions
        if custom.len() == named {
            self.text.extend_from_slice(sql);
            self.mentions = m;
        }
        m
    }
}

/// `a` and `b` are equal but for their runs of ASCII digits, which may
/// differ in digits and length (see `LastText`): `aid = 7;` and
/// `aid = 123456;` have one shape, `t1` and `t` do not.
fn same_shape(mut a: &[u8], mut b: &[u8]) -> bool {
    let starts_digit = |s: &[u8]| s.first().is_some_and(u8::is_ascii_digit);
    // The byte before `a` and `b` (common to both) is a digit.
    let mut after_digit = false;
    loop {
        let n = common_prefix(a, b);
        if n > 0 {
            after_digit = a[n - 1].is_ascii_digit();
        }
        (a, b) = (&a[n..], &b[n..]);
        let (da, db) = (starts_digit(a), starts_digit(b));
        if !(da || db) {
            return a.is_empty() && b.is_empty();
        }
        // They differ here: only inside a run of digits both have.
        if !(after_digit || da && db) {
            return false;
        }
        (a, b) = (&a[digit_run(a)..], &b[digit_run(b)..]);
        after_digit = true;
    }
}

/// Length of the run of ASCII digits `s` starts with, eight bytes at a
/// time (see `ident_mask`).
fn digit_run(s: &[u8]) -> usize {
    let (words, _) = s.as_chunks::<8>();
    for (k, x) in words.iter().enumerate() {
        let v = u64::from_le_bytes(*x);
        let low = v & !HIGH; // below 0x80: the sums carry within a byte
        let ge_0 = low + ONES * u64::from(0x80 - b'0');
        let gt_9 = low + ONES * u64::from(0x7f - b'9');
        let digits = ge_0 & !gt_9 & !v & HIGH;
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
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
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

/// What `scan` has learnt so far.
#[derive(Default)]
struct Words {
    m: Mentions,
    /// The previous word was SET (or SET SESSION).
    after_set: bool,
    /// Words starting before this were consumed as part of a dotted name.
    skip_until: usize,
}

impl Words {
    /// Takes the word `sql[start..end]`. Most words can be no keyword by
    /// their length and first letter alone; they cost a table lookup.
    #[inline(always)]
    fn word(&mut self, sql: &[u8], start: usize, end: usize, custom: &mut impl FnMut(&[u8])) {
        let len = end - start;
        if !self.after_set {
            if len < 13 {
                if LENGTHS[usize::from(sql[start] | 0x20)] & (1 << len) == 0 {
                    return;
                }
            } else {
                // Long words matter only as `…advisory_lock…` (see
                // `check`), and table and column names are mostly long.
                // An inline loop: `contains` calls memchr, which costs
                // more than it saves on a few bytes.
                #[allow(clippy::manual_contains)]
                if !sql[start + 8..end].iter().any(|&b| b == b'_') {
                    return;
                }
            }
        }
        self.check(sql, start, end, custom);
    }

    fn check(&mut self, sql: &[u8], start: usize, end: usize, custom: &mut impl FnMut(&[u8])) {
        if start < self.skip_until {
            return;
        }
        let word = &sql[start..end];
        let is = |k: &[u8]| word.eq_ignore_ascii_case(k);
        let was_after_set = std::mem::take(&mut self.after_set);
        let m = &mut self.m;
        if was_after_set && sql.get(end) == Some(&b'.') {
            // SET [SESSION] a.b
            let j = end + 1 + sql[end + 1..].iter().take_while(|&&c| is_ident(c)).count();
            if j > end + 1 {
                custom(&sql[start..j]);
            }
            self.skip_until = j;
            return;
        }
        match (word.len(), word[0] | 0x20) {
            (3, b's') if is(b"set") => self.after_set = true,
            (7, b's') if was_after_set && is(b"session") => self.after_set = true,
            (10, b's') if is(b"set_config") => {
                m.settings = true;
                if let Some(name) = first_string_argument(&sql[end..])
                    && name.contains(&b'.')
                {
                    custom(name);
                }
            }
            (4, b't') => m.state |= is(b"temp"),
            (9, b't') => m.state |= is(b"temporary"),
            (6, b'l') => m.state |= is(b"listen"),
            (7, b'p') => m.state |= is(b"prepare"),
            (4, b'h') => m.state |= is(b"hold"),
            (8, b'u') => m.release |= is(b"unlisten"),
            (10, b'd') => m.release |= is(b"deallocate"),
            (7, b'd') => m.release |= is(b"discard"),
            (4, b'd') => m.release |= is(b"drop"),
            (5, b'c') => m.release |= is(b"close"),
            // pg_advisory_lock, pg_try_advisory_lock_shared, ...: an
            // underscore after 8 bytes at least.
            (13.., _) if word[8..].contains(&b'_') => {
                let (state, release) = advisory(word);
                m.state |= state;
                m.release |= release;
            }
            _ => {}
        }
    }
}

/// By first letter (lower case): bit n set if a keyword of length n
/// starts with it (`match` in `Words::check` has the list).
static LENGTHS: [u16; 256] = {
    let mut t = [0u16; 256];
    t[b's' as usize] = 1 << 3 | 1 << 10; // set, set_config (session: after SET)
    t[b't' as usize] = 1 << 4 | 1 << 9; // temp, temporary
    t[b'l' as usize] = 1 << 6; // listen
    t[b'p' as usize] = 1 << 7; // prepare
    t[b'h' as usize] = 1 << 4; // hold
    t[b'u' as usize] = 1 << 8; // unlisten
    t[b'd' as usize] = 1 << 4 | 1 << 7 | 1 << 10; // drop, discard, deallocate
    t[b'c' as usize] = 1 << 5; // close
    t
};

/// Bit i set: byte i of `block` (at most 64 bytes) continues an identifier.
/// Sixteen bytes per step with SSE2 (part of every x86-64 CPU).
#[cfg(target_arch = "x86_64")]
fn block_mask(block: &[u8]) -> u64 {
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
fn block_mask(block: &[u8]) -> u64 {
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
    let ascii = !v & HIGH;
    let x = v & !HIGH;
    // Each byte of x is below 0x80, so these sums never carry across bytes.
    let in_range = |x: u64, lo: u8, hi: u8| {
        let ge_lo = x + ONES * u64::from(0x80 - lo);
        let gt_hi = x + ONES * u64::from(0x7f - hi);
        ge_lo & !gt_hi & HIGH
    };
    let letters = in_range(x | (ONES * 0x20), b'a', b'z');
    let digits = in_range(x, b'0', b'9');
    let marks = in_range(x, b'_', b'_') | in_range(x, b'$', b'$');
    (letters | digits | marks) & ascii
}

/// Whether a long word names a session-level advisory lock function
/// (`…advisory_lock…`: state) or its unlock (`…advisory_unlock…`:
/// release). Only underscores are candidate anchors, so identifiers like
/// `pgbench_accounts` cost a byte compare each, not a window search.
fn advisory(word: &[u8]) -> (bool, bool) {
    let (mut state, mut release) = (false, false);
    for (p, _) in word.iter().enumerate().filter(|&(_, &b)| b == b'_') {
        if p < 8 || !word[p - 8..p].eq_ignore_ascii_case(b"advisory") {
            continue;
        }
        let rest = &word[p + 1..];
        let starts = |k: &[u8]| rest.len() >= k.len() && rest[..k.len()].eq_ignore_ascii_case(k);
        state |= starts(b"lock");
        release |= starts(b"unlock");
    }
    (state, release)
}

/// `( 'text'` at the start of `rest` (after optional spaces): the text.
fn first_string_argument(rest: &[u8]) -> Option<&[u8]> {
    let rest = trim_start(rest).strip_prefix(b"(")?;
    let rest = trim_start(rest).strip_prefix(b"'")?;
    let end = rest.iter().position(|&b| b == b'\'')?;
    Some(&rest[..end])
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
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

fn is_ident(b: u8) -> bool {
    IDENT[b as usize]
}

/// One round trip that lists the session state a server connection holds,
/// as (kind, count) rows.
pub const PROBE_SQL: &str = "\
SELECT 'LISTEN', count(*)::text FROM pg_catalog.pg_listening_channels() \
UNION ALL SELECT 'advisory lock', count(*)::text FROM pg_catalog.pg_locks \
 WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid() \
UNION ALL SELECT 'temporary table', count(*)::text FROM pg_catalog.pg_class \
 WHERE relpersistence = 't' AND relnamespace = pg_catalog.pg_my_temp_schema() \
UNION ALL SELECT 'WITH HOLD cursor', count(*)::text FROM pg_catalog.pg_cursors WHERE is_holdable \
UNION ALL SELECT 'SQL PREPARE', count(*)::text FROM pg_catalog.pg_prepared_statements WHERE from_sql";

/// The kinds of state present, from the probe's rows.
pub fn present(rows: &[(String, String)]) -> Vec<String> {
    rows.iter()
        .filter(|(_, n)| n.parse::<u64>().is_ok_and(|n| n > 0))
        .map(|(k, _)| k.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_(sql: &[u8]) -> Mentions {
        scan(sql, |_| {})
    }

    fn customs(sql: &[u8]) -> Vec<String> {
        let mut v = Vec::new();
        scan(sql, |n| v.push(String::from_utf8_lossy(n).into_owned()));
        v
    }

    #[test]
    fn notes_custom_settings() {
        assert_eq!(customs(b"SET app.user_id = 7"), vec!["app.user_id"]);
        assert_eq!(
            customs(b"set session app.tenant to 'x'; SET work_mem = 1"),
            vec!["app.tenant"]
        );
        assert_eq!(
            customs(b"SELECT set_config('app.x', '1', false)"),
            vec!["app.x"]
        );
        assert!(customs(b"SELECT set_config('search_path', 'a', false)").is_empty());
        assert!(scan_(b"SELECT set_config('search_path', 'a', false)").settings);
        assert!(customs(b"SELECT a.b FROM t").is_empty());
        assert!(customs(b"UPDATE t SET a.b = 1").len() == 1); // harmless extra read
    }

    #[test]
    fn finds_state_keywords_as_words() {
        assert!(scan_(b"CREATE TEMP TABLE t (x int)").state);
        assert!(scan_(b"create temporary table t()").state);
        assert!(scan_(b"LISTEN chan").state);
        assert!(scan_(b"DECLARE c CURSOR WITH HOLD FOR SELECT 1").state);
        assert!(scan_(b"prepare p as select 1").state);
        assert!(scan_(b"SELECT pg_advisory_lock(1)").state);
        assert!(scan_(b"SELECT pg_try_advisory_lock_shared(1)").state);
        // Not state: other words containing the letters, xact-level locks.
        assert!(!scan_(b"SELECT temperature, attempt, template FROM t").state);
        assert!(!scan_(b"SELECT pg_advisory_xact_lock(1)").state);
        assert!(!scan_(b"SELECT abalance FROM pgbench_accounts WHERE aid = 1").state);
        assert!(!scan_(b"SELECT listener, holder, prepared FROM x").state);
    }

    #[test]
    fn finds_release_keywords() {
        assert!(scan_(b"UNLISTEN *").release);
        assert!(scan_(b"DEALLOCATE p").release);
        assert!(scan_(b"SELECT pg_advisory_unlock_all()").release);
        assert!(scan_(b"DROP TABLE t").release);
        assert!(scan_(b"CLOSE c").release);
        assert!(!scan_(b"SELECT closed, dropped FROM x").release);
        // UNLISTEN is a release, and its "listen" is not a word of its own.
        assert!(!scan_(b"UNLISTEN *").state);
    }

    /// The byte-by-byte tokenizer `scan` must agree with.
    fn scan_bytewise(sql: &[u8], mut custom: impl FnMut(&[u8])) -> Mentions {
        let mut st = Words::default();
        let mut i = 0;
        while i < sql.len() {
            if !is_ident(sql[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < sql.len() && is_ident(sql[i]) {
                i += 1;
            }
            st.word(sql, start, i, &mut custom);
        }
        st.m
    }

    proptest::proptest! {
        /// Words found from bit masks are the words a byte loop finds,
        /// whatever their length and wherever the 8- and 64-byte blocks
        /// split them.
        #[test]
        fn mask_scan_agrees_with_a_byte_loop(
            sql in "((?i:set|session|set_config|temp|temporary|listen|unlisten|prepare|hold|deallocate|discard|drop|close|pg_advisory_lock|advisory_unlock_all)|[a-zA-Z_$.;()' 0-9\u{e9}\u{0}]|[a-z_]{50,80}){0,40}"
        ) {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let fast = scan(sql.as_bytes(), |n| a.push(n.to_vec()));
            let slow = scan_bytewise(sql.as_bytes(), |n| b.push(n.to_vec()));
            proptest::prop_assert_eq!(fast, slow);
            proptest::prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn last_text_repeats_the_scan_exactly() {
        let mut last = LastText::default();
        let mut names = Vec::new();
        let texts: [&[u8]; 6] = [
            b"SELECT 1",
            b"LISTEN x",
            b"LISTEN x",
            b"SET app.user = 1",
            b"SET app.user = 1",
            b"",
        ];
        for t in texts {
            names.clear();
            let mut want = Vec::new();
            assert_eq!(last.scan(t, &mut names), scan(t, |n| want.push(n.to_vec())));
            assert_eq!(names, want, "custom names of {t:?}");
        }
    }

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
    fn texts_of_one_shape_differ_only_in_runs_of_digits() {
        assert!(same_shape(b"", b""));
        assert!(same_shape(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 123456;\0",
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 7;\0"
        ));
        assert!(same_shape(b"SELECT t1.x FROM t1", b"SELECT t22.x FROM t9"));
        assert!(same_shape(b"WHERE aid = 12", b"WHERE aid = 123"));
        assert!(same_shape(b"1 x 2", b"333 x 4444"));
        assert!(!same_shape(b"WHERE aid = 12", b"WHERE aid = 1x"));
        assert!(!same_shape(b"SELECT t1", b"SELECT t"));
        // Why digits must not vanish: a word loses them and is a keyword.
        assert!(!same_shape(b"CREATE TEMP1 x", b"CREATE TEMP x"));
        assert_ne!(scan_(b"CREATE TEMP1 x"), scan_(b"CREATE TEMP x"));
        assert!(!same_shape(b"1 2", b"12"));
        assert!(!same_shape(b"SELECT 1 -- a", b"SELECT 1 -- b"));
        assert!(!same_shape(b"12345678abc", b"12345678abd"));
        assert!(!same_shape(b"x", b""));
        for n in 0..=20 {
            let a = [b"k".repeat(n), b"12x".to_vec()].concat();
            let b = [b"k".repeat(n), b"3x".to_vec()].concat();
            let c = [b"k".repeat(n), b"3y".to_vec()].concat();
            assert_eq!(common_prefix(&a, &c), n);
            assert!(same_shape(&a, &b) && !same_shape(&a, &c), "after {n} bytes");
        }
    }

    /// A text with each run of digits replaced by another, of any length.
    fn reshaped(sql: &str, mut k: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut in_run = false;
        for c in sql.bytes() {
            if !c.is_ascii_digit() {
                in_run = false;
                out.push(c);
            } else if !in_run {
                in_run = true;
                k = k
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let len = 1 + (k >> 61) as usize;
                out.extend((0..len).map(|i| b'0' + ((k >> (i * 4)) % 10) as u8));
            }
        }
        out
    }

    proptest::proptest! {
        /// What makes `LastText` exact: runs of digits swapped for other
        /// runs never change what a text mentions, nor whether it names
        /// custom settings.
        #[test]
        fn texts_of_one_shape_scan_alike(
            sql in "((?i:set|session|set_config|temp|temporary|listen|unlisten|prepare|hold|deallocate|discard|drop|close|pg_advisory_lock|advisory_unlock_all|app)|[a-zA-Z_$.;()' 0-9]|[0-9]{1,8}){0,40}",
            seed in 0u64..u64::MAX,
        ) {
            let other = reshaped(&sql, seed);
            proptest::prop_assert!(same_shape(sql.as_bytes(), &other));
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let first = scan(sql.as_bytes(), |n| a.push(n.to_vec()));
            let second = scan(&other, |n| b.push(n.to_vec()));
            proptest::prop_assert_eq!(first, second);
            proptest::prop_assert_eq!(a.is_empty(), b.is_empty());
        }

        /// And the other way round, near the edge of a shape: one byte
        /// changed (a digit for a letter, a run split or joined, ...)
        /// either changes the shape or changes nothing the scan sees.
        #[test]
        fn same_shape_accepts_only_texts_that_scan_alike(
            sql in "((?i:set|temp|listen|hold|close|drop|temp1|hold22)|[a-z_ .;]|[0-9]{1,3}){1,12}",
            at in 0usize..1000,
            byte in proptest::sample::select(b"09az_ .;".to_vec()),
        ) {
            let a = sql.as_bytes();
            let mut b = a.to_vec();
            b[at % a.len()] = byte;
            if same_shape(a, &b) {
                let (mut x, mut y) = (Vec::new(), Vec::new());
                proptest::prop_assert_eq!(
                    scan(a, |n| x.push(n.to_vec())),
                    scan(&b, |n| y.push(n.to_vec()))
                );
                proptest::prop_assert_eq!(x.is_empty(), y.is_empty());
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

    #[test]
    fn reads_probe_rows() {
        let rows = vec![
            ("LISTEN".to_string(), "1".to_string()),
            ("advisory lock".to_string(), "0".to_string()),
            ("temporary table".to_string(), "2".to_string()),
        ];
        assert_eq!(
            present(&rows),
            vec!["LISTEN".to_string(), "temporary table".to_string()]
        );
        assert!(state_tag(b"LISTEN\0") && !state_tag(b"SELECT 1\0"));
    }
}
