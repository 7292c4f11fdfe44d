//! The operator role check: the role of an rls placement's
//! `operator_url` (the platform operators' pool) must be bound by
//! row-level security like every other role, so that what operators see
//! is what their policies give them (all rows, or one tenant's when they
//! name one), never everything regardless. Refused: SUPERUSER or
//! BYPASSRLS, the role's own or a role's it belongs to (`SET ROLE`
//! reaches those). Nothing else: operators are trusted with more than
//! tenants (DDL, migrations), and `trust_backend_role` does not skip this.
//!
//! Runs once per pool on a fresh connection, like `role_check.rs`; a
//! refused role closes the connection and fails the connect (operators
//! get 08006, the log says why and the statement that fixes it), and is
//! asked again at the next attempt.

use super::role_check::{ident, query_rows};
use super::server_conn::{ServerConn, ServerError};

/// One row per role the login role is a member of (itself included)
/// that is SUPERUSER or BYPASSRLS: (name, flags).
const CHECK_SQL: &str = "BEGIN READ ONLY;\
SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0;\
SET LOCAL search_path = pg_catalog, pg_temp;\
SELECT m.rolname::pg_catalog.text, pg_catalog.concat_ws(',', \
 CASE WHEN m.rolsuper THEN 'SUPERUSER' END, CASE WHEN m.rolbypassrls THEN 'BYPASSRLS' END) \
 FROM pg_catalog.pg_roles m, pg_catalog.pg_roles me \
 WHERE me.rolname OPERATOR(pg_catalog.=) SESSION_USER \
 AND pg_catalog.pg_has_role(me.oid, m.oid, 'MEMBER') AND (m.rolsuper OR m.rolbypassrls);\
COMMIT";

/// Runs the check on `conn`, logged in as `user`.
pub(crate) async fn check(conn: &mut ServerConn, user: &str) -> Result<(), ServerError> {
    let rows = query_rows::<2>(conn, CHECK_SQL).await?;
    let problems = problems(user, &rows);
    if problems.is_empty() {
        return Ok(());
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
