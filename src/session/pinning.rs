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

/// Searches `sql` for the keywords above. One pass over identifier-like
/// tokens; only tokens of a keyword's length and first letter are
/// compared, so ordinary queries cost a few nanoseconds per token.
///
/// Also notes settings: `set_config(` anywhere sets `Mentions::settings`,
/// and the names of custom (dotted, placeholder) settings written after
/// SET or as `set_config`'s first argument are passed to `custom`, since
/// `pg_settings` does not list those.
pub fn scan(sql: &[u8], mut custom: impl FnMut(&[u8])) -> Mentions {
    let mut m = Mentions::default();
    let mut after_set = false;
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
        let word = &sql[start..i];
        let is = |k: &[u8]| word.eq_ignore_ascii_case(k);
        let was_after_set = std::mem::take(&mut after_set);
        if was_after_set && sql.get(i) == Some(&b'.') {
            // SET [SESSION] a.b
            let mut j = i + 1;
            while j < sql.len() && is_ident(sql[j]) {
                j += 1;
            }
            if j > i + 1 {
                custom(&sql[start..j]);
            }
            i = j;
            continue;
        }
        match (word.len(), word[0] | 0x20) {
            (3, b's') if is(b"set") => after_set = true,
            (7, b's') if was_after_set && is(b"session") => after_set = true,
            (10, b's') if is(b"set_config") => {
                m.settings = true;
                if let Some(name) = first_string_argument(&sql[i..])
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
            // pg_advisory_lock, pg_try_advisory_lock_shared, ...
            (13.., _) => {
                let (state, release) = advisory(word);
                m.state |= state;
                m.release |= release;
            }
            _ => {}
        }
    }
    m
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
