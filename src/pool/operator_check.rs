//! The operator role check: the role of an rls placement's
//! `operator_url` (the platform operators' pool) must be bound by
//! row-level security like every other role, so that what operators see
//! is what their policies give them (all rows, or one tenant's when they
//! name one), never everything regardless. Refused: SUPERUSER or
//! BYPASSRLS, the role's own or a role's it belongs to (`SET ROLE`
//! reaches those). Nothing else: operators are trusted with more than
//! tenants (DDL, migrations), and `trust_backend_role` does not skip this.
//!
//! Warned about, not refused: a role that can read `pgtenant.context_key`
//! (a member of the role that owns schema `pgtenant`, as a migrations role
//! may be). Whoever holds its password can then forge any tenant's
//! context on the tenants' role, outside the proxy and its log.
//!
//! Runs once per pool on a fresh connection, like `role_check.rs`; a
//! refused role closes the connection and fails the connect (operators
//! get 08006, the log says why and the statement that fixes it), and is
//! asked again at the next attempt.

use super::role_check::{ident, query_rows};
use super::server_conn::{ServerConn, ServerError};

/// One row per role the login role is a member of (itself included)
/// that is SUPERUSER or BYPASSRLS: (name, flags); and a row (`` ``,
/// `context_key`) when it may read the context key.
const CHECK_SQL: &str = "BEGIN READ ONLY;\
SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0;\
SET LOCAL search_path = pg_catalog, pg_temp;\
SELECT m.rolname::pg_catalog.text, pg_catalog.concat_ws(',', \
 CASE WHEN m.rolsuper THEN 'SUPERUSER' END, CASE WHEN m.rolbypassrls THEN 'BYPASSRLS' END) \
 FROM pg_catalog.pg_roles m, pg_catalog.pg_roles me \
 WHERE me.rolname OPERATOR(pg_catalog.=) SESSION_USER \
 AND pg_catalog.pg_has_role(me.oid, m.oid, 'MEMBER') AND (m.rolsuper OR m.rolbypassrls) \
UNION ALL SELECT ''::pg_catalog.text, 'context_key'::pg_catalog.text \
 WHERE CASE WHEN pg_catalog.to_regclass('pgtenant.context_key') IS NULL THEN false \
 ELSE pg_catalog.has_table_privilege('pgtenant.context_key', 'SELECT') END;\
COMMIT";

/// Runs the check on `conn`, logged in as `user`; what to warn about.
pub(crate) async fn check(conn: &mut ServerConn, user: &str) -> Result<Vec<String>, ServerError> {
    let rows = query_rows::<2>(conn, CHECK_SQL).await?;
    let (key, roles): (Vec<_>, Vec<_>) = rows.into_iter().partition(|[name, _]| name.is_empty());
    let problems = problems(user, &roles);
    if problems.is_empty() {
        let warnings = key.iter().map(|_| {
            "it can read pgtenant.context_key (it owns schema pgtenant or belongs to its \
             owner): whoever holds its password can set any tenant's context on the tenants' \
             role without the proxy; keep migrations in a role operators do not log in as"
                .to_string()
        });
        return Ok(warnings.collect());
    }
    Err(ServerError::UnsafeRole(format!(
        "operator role {user:?} is not bound by row-level security: {}; operators must see \
         what their policies give them, so the placement is refused for operators",
        problems.join("; ")
    )))
}

/// What is wrong with `user`, each with the statement that fixes it.
fn problems(user: &str, rows: &[[String; 2]]) -> Vec<String> {
    let me = ident(user);
    let mut out = Vec::new();
    for [name, flags] in rows {
        if name == user {
            for flag in flags.split(',').filter(|f| !f.is_empty()) {
                out.push(format!("it has {flag} (ALTER ROLE {me} NO{flag})"));
            }
        } else {
            out.push(format!(
                "it is a member of role {name:?}, which has {flags} (REVOKE {} FROM {me})",
                ident(name)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_way_around_the_policies_is_named_with_its_fix() {
        let rows = [
            [
                "pgt_operator".to_string(),
                "SUPERUSER,BYPASSRLS".to_string(),
            ],
            ["admins".to_string(), "BYPASSRLS".to_string()],
        ];
        let p = problems("pgt_operator", &rows).join("\n");
        for needle in [
            "it has SUPERUSER (ALTER ROLE \"pgt_operator\" NOSUPERUSER)",
            "it has BYPASSRLS (ALTER ROLE \"pgt_operator\" NOBYPASSRLS)",
            "member of role \"admins\", which has BYPASSRLS (REVOKE \"admins\" FROM \"pgt_operator\")",
        ] {
            assert!(p.contains(needle), "{needle} missing from:\n{p}");
        }
        assert!(problems("pgt_operator", &[]).is_empty());
    }
}
