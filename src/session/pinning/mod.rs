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

mod last_text;
mod masks;

pub use last_text::LastText;
use masks::{block_mask, is_ident};

/// How much of a Query/Parse body is searched for keywords. A longer text
/// is not searched past this: its lease counts as having unknown state
/// (probed, then reset before anyone else gets the connection).
pub const TEXT_PREFIX: usize = 64 * 1024;

// Keywords, matched case-insensitively in `scan`: whole words TEMP,
// TEMPORARY, LISTEN, PREPARE, HOLD may create state; UNLISTEN, DEALLOCATE,
// DISCARD, CLOSE, DROP may release it (a pinned client is then re-probed).
// The substrings advisory_lock / advisory_unlock catch session-level
// advisory locks (pg_advisory_xact_lock does not match). Code the scan
// cannot see into makes the state unknown: a DO block (DO followed by its
// code string), CALL of a procedure, and U&"..." identifiers (which can
// spell any name, set_config included).

/// Command tags that create state whatever the text looked like.
pub fn state_tag(tag_body: &[u8]) -> bool {
    tag_body.starts_with(b"LISTEN\0")
        || tag_body.starts_with(b"PREPARE\0")
        || tag_body.starts_with(b"DECLARE CURSOR\0")
}

/// Command tags of statements that run code the scan cannot see into.
pub fn unknown_tag(tag_body: &[u8]) -> bool {
    tag_body == b"DO\0" || tag_body == b"CALL\0"
}

/// Keyword classes found in SQL text.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Mentions {
    pub state: bool,
    pub release: bool,
    /// `set_config(` was called: settings may have changed without a SET.
    pub settings: bool,
    /// Code the scan cannot look into (DO, CALL, U&"" names): any session
    /// state may have been created.
    pub unknown: bool,
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
            (2, b'd') if is(b"do") && code_string_follows(&sql[end..]) => m.unknown = true,
            (4, b'c') if is(b"call") && procedure_follows(&sql[end..]) => m.unknown = true,
            (1, b'u') if sql[end..].starts_with(b"&\"") => m.unknown = true,
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
            // pg_advisory_lock, pg_try_advisory_lock_shared, ...
            // (`advisory` looks only at underscores past the 8th byte).
            (13.., _) => {
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
    t[b'u' as usize] = 1 << 1 | 1 << 8; // U&"...", unlisten
    t[b'd' as usize] = 1 << 2 | 1 << 4 | 1 << 7 | 1 << 10; // do, drop, discard, deallocate
    t[b'c' as usize] = 1 << 4 | 1 << 5; // call, close
    t
};

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

/// Skips white space and comments (`-- ...` to the end of the line,
/// nested `/* ... */`), as PostgreSQL's lexer does between tokens.
fn skip_blank(mut s: &[u8]) -> &[u8] {
    loop {
        s = trim_start(s);
        if let Some(rest) = s.strip_prefix(b"--") {
            let eol = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |p| p + 1);
            s = &rest[eol..];
        } else if s.starts_with(b"/*") {
            let mut depth = 0usize;
            let mut i = 0;
            while i < s.len() {
                if s[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if s[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            s = &s[i..];
        } else {
            return s;
        }
    }
}

/// After the word DO: a DO statement's code string (`$$`, `$tag$`, `'`,
/// `E'`, `U&'`) or its LANGUAGE clause, and not `ON CONFLICT DO NOTHING`.
fn code_string_follows(rest: &[u8]) -> bool {
    let s = skip_blank(rest);
    match s.first().map(|b| b | 0x20) {
        Some(b'$') | Some(b'\'') => true,
        Some(b'e') => s.get(1) == Some(&b'\'') || starts_word(s, b"language"),
        Some(b'u') => s.get(1) == Some(&b'&'),
        Some(b'l') => starts_word(s, b"language"),
        // The end of what was scanned: a longer text counts as unknown
        // anyway; a short one cut here would be a syntax error.
        None => true,
        _ => false,
    }
}

/// After the word CALL: a procedure name and its argument list (`CALL
/// p(...)`), not a column named `call`.
fn procedure_follows(rest: &[u8]) -> bool {
    let s = skip_blank(rest);
    let name_len = s
        .iter()
        .take_while(|&&b| is_ident(b) || b == b'.' || b == b'"')
        .count();
    if name_len == 0 {
        return false;
    }
    let word = &s[..name_len];
    const NOT_NAMES: [&[u8]; 8] = [
        b"from", b"as", b"in", b"on", b"and", b"or", b"where", b"exists",
    ];
    if NOT_NAMES.iter().any(|k| word.eq_ignore_ascii_case(k)) {
        return false;
    }
    skip_blank(&s[name_len..]).first() == Some(&b'(')
}

fn starts_word(s: &[u8], word: &[u8]) -> bool {
    s.len() >= word.len()
        && s[..word.len()].eq_ignore_ascii_case(word)
        && !s.get(word.len()).copied().is_some_and(is_ident)
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
    fn unknown_code_makes_state_unknown() {
        for sql in [
            &b"DO $$BEGIN EXECUTE 'LIS'||'TEN x'; END$$"[..],
            b"do/* x /* nested */ */ $body$ select 1 $body$",
            b"DO -- comment\n 'BEGIN NULL; END'",
            b"DO LANGUAGE plpgsql $$ $$",
            b"do E'begin null; end'",
            b"CALL p(1)",
            b"call  public.\"Proc\" ( )",
            b"SELECT U&\"\\0073et_config\"('search_path', 'x', false)",
            b"SELECT 1; DO",
        ] {
            assert!(scan_(sql).unknown, "{}", String::from_utf8_lossy(sql));
        }
        for sql in [
            &b"INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING"[..],
            b"INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET x = 1",
            b"SELECT call FROM calls WHERE call = 1",
            b"SELECT call FROM (SELECT 1 AS call) s",
            b"SELECT U&'\\0041'",
        ] {
            assert!(!scan_(sql).unknown, "{}", String::from_utf8_lossy(sql));
        }
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
    fn state_tags() {
        assert!(state_tag(b"LISTEN\0") && !state_tag(b"SELECT 1\0"));
    }
}
