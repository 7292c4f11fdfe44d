//! Reuse of the keyword scan's result for a text of the last one's shape
//! (see `LastText`).

use super::masks::{common_prefix, digit_run};
use super::{Mentions, scan};

/// Longest text kept for comparison.
const KEEP_MAX: usize = 4096;

/// Custom setting names noted per lease at most (as many as a session
/// follows: `params::MAX_CUSTOM_SETTINGS`).
const MAX_CUSTOM_NAMES: usize = crate::session::params::MAX_CUSTOM_SETTINGS;

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
    /// `scan(sql)`, adding the custom setting names it finds to `custom`
    /// (each once, at most `MAX_CUSTOM_NAMES`; past that the state counts
    /// as unknown, so a flood of names costs no memory and loses nothing
    /// silently).
    pub fn scan(&mut self, sql: &[u8], custom: &mut Vec<Vec<u8>>) -> Mentions {
        if same_shape(&self.text, sql) {
            return self.mentions;
        }
        let mut named = false;
        let mut overflow = false;
        let mut m = scan(sql, |n| {
            named = true;
            if custom.iter().any(|c| c.eq_ignore_ascii_case(n)) {
                return;
            }
            if custom.len() >= MAX_CUSTOM_NAMES {
                overflow = true;
                return;
            }
            custom.push(n.to_vec());
        });
        m.unknown |= overflow;
        self.text.clear();
        self.mentions = Mentions::default(); // what the empty text mentions
        // Long texts are scanned each time: keeping one would let every
        // client hold a copy of its longest statement.
        if !named && sql.len() <= KEEP_MAX {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_(sql: &[u8]) -> Mentions {
        scan(sql, |_| {})
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
        /// changed or deleted (a digit for a letter, a run split, joined
        /// or gone, ...) either changes the shape or changes nothing the
        /// scan sees.
        #[test]
        fn same_shape_accepts_only_texts_that_scan_alike(
            sql in "((?i:set|temp|listen|hold|close|drop|temp1|hold22)|[a-z_ .;]|[0-9]{1,3}){1,12}",
            at in 0usize..1000,
            on_digit in proptest::bool::ANY,
            delete in proptest::bool::ANY,
            byte in proptest::sample::select(b"09az_ .;".to_vec()),
        ) {
            let a = sql.as_bytes();
            // Half the time the changed byte is a digit: the edge of a run.
            let digits: Vec<usize> = (0..a.len()).filter(|&i| a[i].is_ascii_digit()).collect();
            let i = match digits.len() {
                n if on_digit && n > 0 => digits[at % n],
                _ => at % a.len(),
            };
            let mut b = a.to_vec();
            if delete {
                b.remove(i);
            } else {
                b[i] = byte;
            }
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
}
