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
}

/// Searches `sql` for the keywords above. One pass; a position is looked
/// at more closely only when its letter starts a keyword, and then only
/// against the keywords with that letter.
pub fn scan(sql: &[u8]) -> Mentions {
    let mut m = Mentions::default();
    for i in 0..sql.len() {
        let rest = &sql[i..];
        let word = i == 0 || !is_ident(sql[i - 1]);
        let (state, release): (&[&[u8]], &[&[u8]]) = match sql[i] | 0x20 {
            b't' if word => (&[b"temp", b"temporary"], &[]),
            b'l' if word => (&[b"listen"], &[]),
            b'p' if word => (&[b"prepare"], &[]),
            b'h' if word => (&[b"hold"], &[]),
            b'u' if word => (&[], &[b"unlisten"]),
            b'd' if word => (&[], &[b"deallocate", b"discard", b"drop"]),
            b'c' if word => (&[], &[b"close"]),
            b'a' => {
                // Substrings, not words: pg_advisory_lock, pg_try_advisory_lock...
                m.state |= starts_with_ci(rest, b"advisory_lock");
                m.release |= starts_with_ci(rest, b"advisory_unlock");
                continue;
            }
            _ => continue,
        };
        m.state |= state.iter().any(|w| word_at(rest, w));
        m.release |= release.iter().any(|w| word_at(rest, w));
        if m.state && m.release {
            break;
        }
    }
    m
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

fn starts_with_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.len() >= needle.len() && hay[..needle.len()].eq_ignore_ascii_case(needle)
}

fn word_at(hay: &[u8], word: &[u8]) -> bool {
    starts_with_ci(hay, word) && hay.get(word.len()).is_none_or(|&b| !is_ident(b))
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

    #[test]
    fn finds_state_keywords_as_words() {
        assert!(scan(b"CREATE TEMP TABLE t (x int)").state);
        assert!(scan(b"create temporary table t()").state);
        assert!(scan(b"LISTEN chan").state);
        assert!(scan(b"DECLARE c CURSOR WITH HOLD FOR SELECT 1").state);
        assert!(scan(b"prepare p as select 1").state);
        assert!(scan(b"SELECT pg_advisory_lock(1)").state);
        assert!(scan(b"SELECT pg_try_advisory_lock_shared(1)").state);
        // Not state: other words containing the letters, xact-level locks.
        assert!(!scan(b"SELECT temperature, attempt, template FROM t").state);
        assert!(!scan(b"SELECT pg_advisory_xact_lock(1)").state);
        assert!(!scan(b"SELECT abalance FROM pgbench_accounts WHERE aid = 1").state);
        assert!(!scan(b"SELECT listener, holder, prepared FROM x").state);
    }

    #[test]
    fn finds_release_keywords() {
        assert!(scan(b"UNLISTEN *").release);
        assert!(scan(b"DEALLOCATE p").release);
        assert!(scan(b"SELECT pg_advisory_unlock_all()").release);
        assert!(scan(b"DROP TABLE t").release);
        assert!(scan(b"CLOSE c").release);
        assert!(!scan(b"SELECT closed, dropped FROM x").release);
        // UNLISTEN is a release, and its "listen" is not a word of its own.
        assert!(!scan(b"UNLISTEN *").state);
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
