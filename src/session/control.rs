//! The proxy's own queries on a client's server connection: the
//! session-state probe and the settings read. They run right after the
//! client's SQL, on the client's session, so they are written to be immune
//! to it: every function, operator and type is schema-qualified (neither
//! the client's `search_path` nor operators it created can change their
//! answers), and they run in a transaction of their own with the timeouts
//! a client may have set switched off, so `statement_timeout = '1ms'`
//! cannot make them fail.

use crate::pool::{ServerConn, ServerError};
use bytes::BytesMut;
use postgres_protocol::escape::escape_literal;

/// Timeouts switched off (`SET LOCAL`) inside a control query. Their
/// session values are read before that, since inside they show the local
/// value.
const NEUTRALISED: [&str; 2] = ["statement_timeout", "lock_timeout"];

/// Attempts at a control query. Only `BEGIN` and the `SET LOCAL`s run
/// under the client's own timeouts (microseconds each), so a retry after a
/// timeout that hit them succeeds.
const ATTEMPTS: usize = 3;

/// One round trip that lists the session state a server connection holds,
/// as (kind, count) rows. Temporary objects other than relations (a
/// function in `pg_temp`) count too.
const PROBE: &str = "\
SELECT 'LISTEN', pg_catalog.count(*)::pg_catalog.text FROM pg_catalog.pg_listening_channels() \
UNION ALL SELECT 'advisory lock', pg_catalog.count(*)::pg_catalog.text FROM pg_catalog.pg_locks \
 WHERE locktype OPERATOR(pg_catalog.=) 'advisory' \
 AND pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid() \
UNION ALL SELECT 'temporary table', pg_catalog.count(*)::pg_catalog.text FROM pg_catalog.pg_class \
 WHERE relpersistence OPERATOR(pg_catalog.=) 't' \
 AND relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema() \
UNION ALL SELECT 'temporary function', pg_catalog.count(*)::pg_catalog.text FROM pg_catalog.pg_proc \
 WHERE pronamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema() \
UNION ALL SELECT 'WITH HOLD cursor', pg_catalog.count(*)::pg_catalog.text FROM pg_catalog.pg_cursors \
 WHERE is_holdable \
UNION ALL SELECT 'SQL PREPARE', pg_catalog.count(*)::pg_catalog.text \
 FROM pg_catalog.pg_prepared_statements WHERE from_sql";

/// Runs the probe; the kinds of state present.
pub async fn probe(
    conn: &mut ServerConn,
    notifications: &mut BytesMut,
    client_pid: i32,
) -> Result<Vec<String>, ServerError> {
    let rows = run(conn, None, PROBE, notifications, client_pid).await?;
    Ok(rows
        .into_iter()
        .filter(|(_, n)| n.parse::<u64>().is_ok_and(|n| n > 0))
        .map(|(k, _)| k)
        .collect())
}

/// Reads the settings a server connection has at session level (what
/// SET, RESET and the proxy's own syncs left), plus the role a client set
/// (`role` is not listed in `pg_settings`) and the custom (placeholder)
/// settings named, which `pg_settings` does not list either. Never
/// `context_setting`, the setting a placement keeps its tenant context in:
/// `pgtenant.enter()` sets it, not the client.
pub async fn read_settings(
    conn: &mut ServerConn,
    custom: &[String],
    context_setting: Option<&str>,
    notifications: &mut BytesMut,
    client_pid: i32,
) -> Result<Vec<(String, String)>, ServerError> {
    let (before, body) = settings_sql(custom, context_setting);
    let rows = run(conn, Some(&before), &body, notifications, client_pid).await?;
    Ok(settings_from_rows(rows))
}

fn settings_sql(custom: &[String], context_setting: Option<&str>) -> (String, String) {
    let pairs = |prefix: &str| {
        NEUTRALISED
            .iter()
            .map(|n| format!("('{prefix}{n}', '{n}')"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let before = format!(
        "SELECT v.k, pg_catalog.current_setting(v.n) FROM (VALUES {}) AS v(k, n)",
        pairs("now.")
    );
    let mut body = String::from(
        "SELECT name, setting FROM pg_catalog.pg_settings \
         WHERE source OPERATOR(pg_catalog.=) 'session'",
    );
    for n in NEUTRALISED {
        body.push_str(&format!(" AND name OPERATOR(pg_catalog.<>) '{n}'"));
    }
    if let Some(n) = context_setting {
        body.push_str(&format!(
            " AND name OPERATOR(pg_catalog.<>) {}",
            escape_literal(n)
        ));
    }
    body.push_str(&format!(
        " UNION ALL SELECT v.k, s.reset_val FROM pg_catalog.pg_settings AS s, (VALUES {}) AS v(k, n) \
         WHERE s.name OPERATOR(pg_catalog.=) v.n",
        pairs("reset.")
    ));
    body.push_str(
        " UNION ALL SELECT 'role', pg_catalog.current_setting('role') \
         WHERE pg_catalog.current_setting('role') OPERATOR(pg_catalog.<>) 'none'",
    );
    if !custom.is_empty() {
        let names: Vec<String> = custom
            .iter()
            .map(|n| format!("({})", escape_literal(n)))
            .collect();
        body.push_str(&format!(
            " UNION ALL SELECT v.n, pg_catalog.current_setting(v.n, true) FROM (VALUES {}) AS v(n) \
             WHERE pg_catalog.current_setting(v.n, true) IS NOT NULL",
            names.join(", ")
        ));
    }
    (before, body)
}

/// The session settings from the read's rows: a neutralised timeout
/// counts when its value before the read differs from its reset value.
fn settings_from_rows(rows: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(rows.len());
    let mut now = Vec::new();
    let mut reset = Vec::new();
    for (k, v) in rows {
        if let Some(n) = k.strip_prefix("now.") {
            now.push((n.to_string(), v));
        } else if let Some(n) = k.strip_prefix("reset.") {
            reset.push((n.to_string(), v));
        } else {
            out.push((k, v));
        }
    }
    for (n, v) in now {
        let default = reset.iter().any(|(r, rv)| *r == n && *rv == v);
        if !default {
            out.push((n, v));
        }
    }
    out
}

/// `BEGIN`, the session values of the neutralised timeouts (`before`),
/// the timeouts off, `body`, `COMMIT`: one round trip. Retried after an
/// error, once the transaction it left is rolled back.
async fn run(
    conn: &mut ServerConn,
    before: Option<&str>,
    body: &str,
    notifications: &mut BytesMut,
    client_pid: i32,
) -> Result<Vec<(String, String)>, ServerError> {
    let mut sql = String::from("BEGIN ISOLATION LEVEL READ COMMITTED;");
    if let Some(b) = before {
        sql.push_str(b);
        sql.push(';');
    }
    for n in NEUTRALISED {
        sql.push_str(&format!("SET LOCAL {n} = 0;"));
    }
    sql.push_str(body);
    sql.push_str(";COMMIT");
    let mut failure = None;
    for _ in 0..ATTEMPTS {
        match conn.query_pairs(&sql, notifications, client_pid).await {
            Ok((rows, b'I')) => return Ok(rows),
            Ok(_) => {
                return Err(ServerError::Protocol(
                    "a control query left a transaction open".into(),
                ));
            }
            Err(e @ ServerError::Rejected { .. }) => {
                if conn.simple_query("ROLLBACK").await? != b'I' {
                    return Err(ServerError::Protocol(
                        "ROLLBACK after a control query left a transaction open".into(),
                    ));
                }
                failure = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(failure.unwrap_or(ServerError::Protocol("control query failed".into())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::params::tests::s;

    #[test]
    fn neutralised_timeouts_count_only_when_set() {
        let rows = s(&[
            ("now.statement_timeout", "1ms"),
            ("now.lock_timeout", "0"),
            ("work_mem", "13312"),
            ("reset.statement_timeout", "0"),
            ("reset.lock_timeout", "0"),
            ("role", "reader"),
        ]);
        assert_eq!(
            settings_from_rows(rows),
            s(&[
                ("work_mem", "13312"),
                ("role", "reader"),
                ("statement_timeout", "1ms")
            ])
        );
    }

    #[test]
    fn control_sql_names_only_qualified_operators() {
        let (before, body) = settings_sql(&["app.x".to_string()], Some("backtrace_functions"));
        assert!(body.contains("<>) 'backtrace_functions'"), "{body}");
        for sql in [before.as_str(), body.as_str(), PROBE] {
            // Every comparison goes through OPERATOR(pg_catalog.x).
            let bare = sql
                .replace("OPERATOR(pg_catalog.=)", "")
                .replace("OPERATOR(pg_catalog.<>)", "");
            assert!(!bare.contains(" = ") && !bare.contains("<>"), "{sql}");
            assert!(!bare.contains("::text"), "{sql}");
        }
    }
}
