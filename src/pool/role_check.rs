//! The backend role check: before a placement's pool hands out its first
//! connection, the role it logs in as must have no power beyond its own
//! database. PostgreSQL lets a role act on its own backends and objects in
//! every database of the cluster, so a role that is superuser, may create
//! databases or roles, bypasses row-level security, owns another database,
//! or can become another placement's role (or a predefined role such as
//! `pg_signal_backend`) lets that placement's tenants drop, lock out,
//! signal or watch other tenants. Such a placement is refused (its clients
//! get 08006) unless it says `trust_backend_role = true`.
//!
//! The query runs once per pool, on a fresh connection no client has
//! touched, with fully qualified names, so nothing a tenant can set (its
//! role's `search_path`, `statement_timeout`) changes its answer. A
//! passing role is remembered by the pool; a refused one is asked again
//! at the next connect attempt (the pool's backoff spaces them out), so
//! fixing the role needs no restart.

use super::server_conn::{ServerConn, ServerError};
use bytes::BytesMut;
use postgres_protocol::message::{backend, frontend};
use tokio::io::AsyncWriteExt;

/// What the check needs to know beyond the connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolePolicy {
    /// `trust_backend_role = true`: no check.
    pub trusted: bool,
    /// (login role, placement) of every other placement: being able to
    /// become one of them is being that placement.
    pub other_placements: Vec<(String, String)>,
    /// An `isolation = "rls"` placement: its role must not reach around
    /// row-level security either (`rls_check.rs`).
    pub rls: Option<super::rls_check::RlsPolicy>,
    /// (operator role, placement) of every rls placement's `operator_url`:
    /// a tenants' role that could become one would get what operators get.
    pub operator_roles: Vec<(String, String)>,
    /// The operators' pool of an rls placement: its role is checked only
    /// for what would exempt it from row-level security
    /// (`operator_check.rs`), whatever `trusted` says.
    pub operator: bool,
}

impl RolePolicy {
    /// No check (tests with stand-in servers, opted-out placements).
    pub fn trusted() -> RolePolicy {
        RolePolicy {
            trusted: true,
            other_placements: Vec::new(),
            rls: None,
            operator_roles: Vec::new(),
            operator: false,
        }
    }
}

/// One row per role the login role is a member of (itself included;
/// `pg_has_role(.., 'MEMBER')` follows memberships directly or through
/// others, inherited or not, since `SET ROLE` reaches them all) with the
/// attributes that reach beyond one database, and one row per other
/// database such a role owns. Read-only, with the session's own limits
/// lifted so a role default cannot make it fail.
const CHECK_SQL: &str = "BEGIN READ ONLY;\
SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0;\
SET LOCAL search_path = pg_catalog, pg_temp;\
WITH me AS (SELECT r.oid FROM pg_catalog.pg_roles r \
 WHERE r.rolname OPERATOR(pg_catalog.=) SESSION_USER), \
mine AS (SELECT m.oid, m.rolname, m.rolsuper, m.rolcreatedb, m.rolcreaterole, \
 m.rolbypassrls, m.rolreplication FROM pg_catalog.pg_roles m, me \
 WHERE pg_catalog.pg_has_role(me.oid, m.oid, 'MEMBER')) \
SELECT 'role'::pg_catalog.text, mine.rolname::pg_catalog.text, pg_catalog.concat_ws(',', \
 CASE WHEN mine.rolsuper THEN 'SUPERUSER' END, CASE WHEN mine.rolcreatedb THEN 'CREATEDB' END, \
 CASE WHEN mine.rolcreaterole THEN 'CREATEROLE' END, CASE WHEN mine.rolbypassrls THEN 'BYPASSRLS' END, \
 CASE WHEN mine.rolreplication THEN 'REPLICATION' END) FROM mine \
UNION ALL \
SELECT 'database'::pg_catalog.text, d.datname::pg_catalog.text, mine.rolname::pg_catalog.text \
 FROM pg_catalog.pg_database d JOIN mine ON d.datdba OPERATOR(pg_catalog.=) mine.oid \
 WHERE d.datname OPERATOR(pg_catalog.<>) pg_catalog.current_database();\
COMMIT";

/// Rows the check may return before it is considered hostile (a role in
/// thousands of roles is not a tenant's role anyway).
const MAX_ROWS: usize = 10_000;

/// Runs the check on `conn`, logged in as `user`. `Err(UnsafeRole)` says
/// what is wrong and the statement that fixes it; any other error (the
/// query failed, the connection broke) refuses the placement too.
pub(crate) async fn check(
    conn: &mut ServerConn,
    user: &str,
    policy: &RolePolicy,
) -> Result<(), ServerError> {
    let rows = query_rows(conn, CHECK_SQL).await?;
    let problems = problems(user, policy, &rows);
    if problems.is_empty() {
        return Ok(());
    }
    Err(ServerError::UnsafeRole(format!(
        "backend role {user:?} reaches beyond its own database: {}; fix the role, or set \
         trust_backend_role = true on the placement to accept it as it is",
        problems.join("; ")
    )))
}

/// One fact from the check query: (kind, name, detail).
type Row = [String; 3];

/// Rows of text columns, `N` per row.
pub(super) type Rows<const N: usize> = Vec<[String; N]>;

/// What is wrong with `user`, each with the statement that fixes it.
fn problems(user: &str, policy: &RolePolicy, rows: &[Row]) -> Vec<String> {
    let me = ident(user);
    let mut out = Vec::new();
    let is_superuser = rows
        .iter()
        .any(|[kind, name, flags]| kind == "role" && name == user && has(flags, "SUPERUSER"));
    if is_superuser {
        // A superuser is a member of every role and may do anything;
        // listing all of that would hide the one fix.
        return vec![format!("it is SUPERUSER (ALTER ROLE {me} NOSUPERUSER)")];
    }
    for [kind, name, detail] in rows {
        match kind.as_str() {
            "role" if name == user => {
                for flag in detail.split(',').filter(|f| !f.is_empty()) {
                    out.push(format!("it has {flag} (ALTER ROLE {me} NO{flag})"));
                }
            }
            // Only the owner of the current database is a member; owning
            // one's own database is allowed.
            "role" if name == "pg_database_owner" => {}
            "role" => {
                let revoke = format!("REVOKE {} FROM {me}", ident(name));
                if !detail.is_empty() {
                    out.push(format!(
                        "it is a member of role {name:?}, which has {detail} ({revoke})"
                    ));
                } else if let Some((_, placement)) =
                    policy.other_placements.iter().find(|(r, _)| r == name)
                {
                    out.push(format!(
                        "it is a member of role {name:?}, the login role of placement \
                         {placement:?} ({revoke})"
                    ));
                } else if let Some((_, placement)) =
                    policy.operator_roles.iter().find(|(r, _)| r == name)
                {
                    out.push(format!(
                        "it is a member of role {name:?}, the operator role of placement \
                         {placement:?}, and would see what operators see ({revoke})"
                    ));
                } else if name.starts_with("pg_") {
                    // Predefined roles (pg_signal_backend, pg_read_all_stats,
                    // pg_read_all_data, pg_monitor, ...) act cluster-wide.
                    out.push(format!(
                        "it is a member of the predefined role {name:?}, which acts on \
                         every database ({revoke})"
                    ));
                }
            }
            "database" if detail == user => out.push(format!(
                "it owns database {name:?} (ALTER DATABASE {} OWNER TO <an admin role>)",
                ident(name)
            )),
            "database" => out.push(format!(
                "it is a member of role {detail:?}, which owns database {name:?} \
                 (REVOKE {} FROM {me})",
                ident(detail)
            )),
            _ => {}
        }
    }
    out
}

fn has(flags: &str, flag: &str) -> bool {
    flags.split(',').any(|f| f == flag)
}

/// A quoted SQL identifier, for the fix statements in messages.
pub(super) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Runs a simple query whose result rows have `N` non-null text columns
/// and reads to ReadyForQuery, which must be idle.
pub(super) async fn query_rows<const N: usize>(
    conn: &mut ServerConn,
    sql: &str,
) -> Result<Rows<N>, ServerError> {
    let mut out = BytesMut::new();
    frontend::query(sql, &mut out)?;
    conn.stream.write_all(&out).await?;
    let mut rows = Vec::new();
    let mut failure = None;
    loop {
        match conn.read_message().await? {
            backend::Message::DataRow(row) => {
                if rows.len() >= MAX_ROWS {
                    failure = Some(ServerError::Protocol("check: too many rows".into()));
                    continue;
                }
                let buf = row.buffer();
                let mut ranges = row.ranges();
                let mut col = || -> Result<String, ServerError> {
                    use fallible_iterator::FallibleIterator;
                    match ranges
                        .next()
                        .map_err(|e| ServerError::Protocol(e.to_string()))?
                    {
                        Some(Some(r)) => buf
                            .get(r)
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .ok_or_else(|| ServerError::Protocol("check: bad row".into())),
                        _ => Err(ServerError::Protocol("check: short row".into())),
                    }
                };
                let mut r: [String; N] = std::array::from_fn(|_| String::new());
                for c in r.iter_mut() {
                    *c = col()?;
                }
                rows.push(r);
            }
            backend::Message::ErrorResponse(body) => {
                failure.get_or_insert(super::server_conn::rejected(&body));
            }
            backend::Message::ParameterStatus(body) => {
                let name = body
                    .name()
                    .map_err(|e| ServerError::Protocol(e.to_string()))?;
                let value = body
                    .value()
                    .map_err(|e| ServerError::Protocol(e.to_string()))?;
                conn.set_param(name, value);
            }
            backend::Message::ReadyForQuery(z) => {
                return match failure {
                    Some(e) => Err(e),
                    None if z.status() != b'I' => Err(ServerError::Protocol(
                        "role check left a transaction open".into(),
                    )),
                    None => Ok(rows),
                };
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, name: &str, detail: &str) -> Row {
        [kind.into(), name.into(), detail.into()]
    }

    fn policy() -> RolePolicy {
        RolePolicy {
            trusted: false,
            other_placements: vec![("pgt_initech".into(), "initech_db".into())],
            rls: None,
            operator_roles: vec![("pgt_operator".into(), "shared".into())],
            operator: false,
        }
    }

    #[test]
    fn a_plain_role_passes() {
        let rows = [row("role", "pgt_acme", ""), row("role", "app_group", "")];
        assert!(problems("pgt_acme", &policy(), &rows).is_empty());
        let own_db = [
            row("role", "pgt_acme", ""),
            row("role", "pg_database_owner", ""),
        ];
        assert!(problems("pgt_acme", &policy(), &own_db).is_empty());
    }

    #[test]
    fn each_attribute_is_named_with_its_fix() {
        let rows = [
            row("role", "pgt_acme", "CREATEDB,BYPASSRLS"),
            row("role", "pgt_initech", ""),
            row("role", "pg_signal_backend", ""),
            row("role", "pgt_operator", ""),
            row("role", "admins", "CREATEROLE"),
            row("database", "tenant_initech", "pgt_acme"),
            row("database", "tenant_x", "admins"),
        ];
        let p = problems("pgt_acme", &policy(), &rows).join("\n");
        for needle in [
            "it has CREATEDB (ALTER ROLE \"pgt_acme\" NOCREATEDB)",
            "it has BYPASSRLS (ALTER ROLE \"pgt_acme\" NOBYPASSRLS)",
            "login role of placement \"initech_db\" (REVOKE \"pgt_initech\" FROM \"pgt_acme\")",
            "predefined role \"pg_signal_backend\"",
            "operator role of placement \"shared\", and would see what operators see \
             (REVOKE \"pgt_operator\" FROM \"pgt_acme\")",
            "role \"admins\", which has CREATEROLE",
            "owns database \"tenant_initech\" (ALTER DATABASE \"tenant_initech\" OWNER TO",
            "role \"admins\", which owns database \"tenant_x\"",
        ] {
            assert!(p.contains(needle), "{needle} missing from:\n{p}");
        }
    }

    #[test]
    fn a_superuser_is_told_that_first_and_only() {
        let rows = [
            row("role", "pgt_acme", "SUPERUSER,CREATEDB"),
            row("role", "pg_signal_backend", ""),
            row("database", "tenant_initech", "postgres"),
        ];
        let p = problems("pgt_acme", &policy(), &rows);
        assert_eq!(p, ["it is SUPERUSER (ALTER ROLE \"pgt_acme\" NOSUPERUSER)"]);
    }
}
