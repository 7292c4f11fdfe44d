//! The row-level security check of an `isolation = "rls"` placement:
//! before its pool hands out a connection, the login role its tenants
//! share must not be able to reach around the policies that separate
//! them. It runs after `role_check.rs` (which already refuses SUPERUSER,
//! BYPASSRLS, REPLICATION and every predefined `pg_*` role), once per
//! pool, on the same fresh connection, and refuses the placement (its
//! clients get 08006) when the role
//!
//! - owns the database, or anything in it (tables, views, sequences,
//!   functions, schemas, large objects: an owner is exempt from
//!   non-forced policies and may change them), or is a member of the
//!   role that owns schema `pgtenant` (or of `pgtenant_owner`);
//! - may CREATE in the database or in any schema (its objects would
//!   shadow names, or run as whichever tenant calls them);
//! - may read or write a table without row-level security enabled and
//!   forced, a materialized view (never filtered), or a view that reads
//!   with its owner's rights (not `security_invoker`) through such a
//!   relation or as an owner who bypasses row-level security, unless the
//!   relation is on the placement's `shared_tables`, which must then be
//!   read-only;
//! - may TRUNCATE any table (never filtered) or setval() a sequence;
//! - may use a table whose policy reads `current_setting()`, which any
//!   client can set (policies must call `pgtenant.current_tenant()`, or,
//!   with `context_store = "setting"`, read that store's setting through
//!   [`SETTING_POLICY_EXPR`]);
//! - holds any privilege on a table or sequence of schema `pgtenant`;
//! - may call a SECURITY DEFINER function whose owner bypasses
//!   row-level security;
//! - may read large objects around their owners (`lo_compat_privileges`,
//!   SELECT on `pg_largeobject`, a large object granted to it or PUBLIC);
//! - cannot call `pgtenant.current_tenant()` (sql/pgtenant.sql missing).
//!
//! What only a superuser can close (signalling and watching the role's
//! other backends, creating large objects, prepared transactions), what
//! any tenant can change about the role, and temporary tables (which the
//! lease's reset must discard) are logged as warnings
//! (sql/pgtenant-superuser.sql; README, "Row-level security").
//!
//! One read-only query with schema-qualified names, the session's limits
//! lifted and `search_path` pinned, like the role check. A refused
//! placement is asked again at the next connect attempt.

use super::role_check::{Rows, ident, query_rows};
use super::server_conn::{ServerConn, ServerError};
use std::fmt::Write as _;

/// What the check needs to know beyond the connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RlsPolicy {
    /// `shared_tables`: schema-qualified relations every tenant may read
    /// without row-level security (validated by config/load.rs).
    pub shared_tables: Vec<String>,
    /// `context_store = "setting"`: policies may read the tenant straight
    /// from its setting, in the one form that maps "no tenant" to NULL.
    pub setting_store: bool,
}

/// What a policy on a setting-store placement may say instead of
/// `pgtenant.current_tenant()`, as `pg_get_expr` prints it under the
/// check's `search_path`: only a superuser or `enter()` can set that
/// setting, and NULLIF turns its "no tenant" ('') into NULL, which matches
/// no row (a bare read would match rows whose tenant_id is '').
pub const SETTING_POLICY_EXPR: &str =
    "NULLIF(current_setting('backtrace_functions'::text), ''::text)";

/// A fact from the check query: (kind, name, detail, more).
pub type Row = [String; 4];

/// Problems listed in full in one refusal; the rest are counted. (The
/// query returns at most 1,000 rows of each kind, so that a database with
/// many problems stays under `role_check`'s row cap.)
const SHOWN: usize = 25;

/// The check query. The allow-list travels hex-encoded, one name a line,
/// so that no quoting rule (`standard_conforming_strings`) is in play.
pub fn check_sql(policy: &RlsPolicy) -> String {
    let mut list = String::with_capacity(policy.shared_tables.len() * 40);
    for (i, name) in policy.shared_tables.iter().enumerate() {
        if i > 0 {
            list.push_str("0a");
        }
        for b in name.bytes() {
            let _ = write!(list, "{b:02x}");
        }
    }
    // Removed from the policies' text before they are searched for
    // current_setting(); replace() with '' removes nothing.
    let allowed = if policy.setting_store {
        SETTING_POLICY_EXPR.replace('\'', "''")
    } else {
        String::new()
    };
    // Definers that may write a setting store's setting (asked only there).
    let setter = if policy.setting_store {
        "pg_catalog.has_parameter_privilege(o.oid, 'backtrace_functions', 'SET')"
    } else {
        "false"
    };
    CHECK_SQL
        .replace("@LIST@", &list)
        .replace("@SETTING_EXPR@", &allowed)
        .replace("@SETTER@", setter)
}

const CHECK_SQL: &str = "BEGIN READ ONLY;\
SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0;\
SET LOCAL search_path = pg_catalog, pg_temp;\
WITH me AS (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) SESSION_USER), \
mine AS (SELECT m.oid, m.rolname FROM pg_catalog.pg_roles m, me WHERE pg_catalog.pg_has_role(me.oid, m.oid, 'MEMBER')), \
listed AS (SELECT n.name, (SELECT c.oid FROM pg_catalog.pg_class c \
  JOIN pg_catalog.pg_namespace s ON s.oid OPERATOR(pg_catalog.=) c.relnamespace \
  WHERE s.nspname OPERATOR(pg_catalog.=) (pg_catalog.parse_ident(n.name))[1] \
  AND c.relname OPERATOR(pg_catalog.=) (pg_catalog.parse_ident(n.name))[2]) AS oid \
 FROM pg_catalog.unnest(pg_catalog.string_to_array(\
 pg_catalog.convert_from(pg_catalog.decode('@LIST@', 'hex'), 'UTF8'), pg_catalog.chr(10))) AS n(name)), \
ns AS (SELECT n.oid, n.nspname, n.nspname OPERATOR(pg_catalog.=) 'pgtenant' AS own FROM pg_catalog.pg_namespace n \
 WHERE n.nspname OPERATOR(pg_catalog.!~) '^pg_(toast|temp_|toast_temp_)' \
 AND n.nspname OPERATOR(pg_catalog.<>) ALL ('{pg_catalog,information_schema}'::pg_catalog.name[])), \
rel AS (SELECT c.oid, c.relkind, c.relowner, ns.own, \
 EXISTS (SELECT FROM listed l WHERE l.oid OPERATOR(pg_catalog.=) c.oid) AS listed, \
 c.relrowsecurity AND c.relforcerowsecurity AS forced, \
 EXISTS (SELECT FROM pg_catalog.pg_options_to_table(c.reloptions) o \
  WHERE o.option_name OPERATOR(pg_catalog.=) 'security_invoker' AND o.option_value::pg_catalog.bool) AS invoker, \
 pg_catalog.quote_ident(ns.nspname) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname) AS name \
 FROM pg_catalog.pg_class c JOIN ns ON ns.oid OPERATOR(pg_catalog.=) c.relnamespace \
 WHERE c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p,f,v,m,S}'::pg_catalog.\"char\"[]) \
 AND c.relpersistence OPERATOR(pg_catalog.<>) 't'), \
privs AS (SELECT rel.oid, rel.relkind, rel.own, rel.listed, rel.forced, rel.invoker, rel.name, pg_catalog.concat_ws(',', \
 CASE WHEN pg_catalog.bool_or(CASE WHEN rel.relkind OPERATOR(pg_catalog.<>) 'S' THEN pg_catalog.has_any_column_privilege(mine.oid, rel.oid, 'SELECT') END) THEN 'SELECT' END, \
 CASE WHEN pg_catalog.bool_or(CASE WHEN rel.relkind OPERATOR(pg_catalog.<>) 'S' THEN pg_catalog.has_any_column_privilege(mine.oid, rel.oid, 'INSERT') END) THEN 'INSERT' END, \
 CASE WHEN pg_catalog.bool_or(CASE WHEN rel.relkind OPERATOR(pg_catalog.<>) 'S' THEN pg_catalog.has_any_column_privilege(mine.oid, rel.oid, 'UPDATE') END) THEN 'UPDATE' END, \
 CASE WHEN pg_catalog.bool_or(CASE WHEN rel.relkind OPERATOR(pg_catalog.<>) 'S' THEN pg_catalog.has_table_privilege(mine.oid, rel.oid, 'DELETE') END) THEN 'DELETE' END, \
 CASE WHEN pg_catalog.bool_or(CASE WHEN rel.relkind OPERATOR(pg_catalog.<>) 'S' THEN pg_catalog.has_table_privilege(mine.oid, rel.oid, 'TRUNCATE') END) THEN 'TRUNCATE' END, \
 CASE WHEN pg_catalog.bool_or(CASE WHEN rel.relkind OPERATOR(pg_catalog.<>) 'S' AND rel.own THEN pg_catalog.has_any_column_privilege(mine.oid, rel.oid, 'REFERENCES') END) THEN 'REFERENCES' END, \
 CASE WHEN pg_catalog.bool_or(CASE WHEN rel.relkind OPERATOR(pg_catalog.<>) 'S' AND rel.own THEN pg_catalog.has_table_privilege(mine.oid, rel.oid, 'TRIGGER') END) THEN 'TRIGGER' END, \
 CASE WHEN pg_catalog.bool_or(CASE WHEN rel.relkind OPERATOR(pg_catalog.=) 'S' AND rel.own THEN pg_catalog.has_sequence_privilege(mine.oid, rel.oid, 'USAGE') END) THEN 'USAGE' END, \
 CASE WHEN pg_catalog.bool_or(CASE WHEN rel.relkind OPERATOR(pg_catalog.=) 'S' AND rel.own THEN pg_catalog.has_sequence_privilege(mine.oid, rel.oid, 'SELECT') END) THEN 'SELECT' END, \
 CASE WHEN pg_catalog.bool_or(CASE WHEN rel.relkind OPERATOR(pg_catalog.=) 'S' THEN pg_catalog.has_sequence_privilege(mine.oid, rel.oid, 'UPDATE') END) THEN 'UPDATE' END) AS privs \
 FROM rel CROSS JOIN mine \
 GROUP BY rel.oid, rel.relkind, rel.own, rel.listed, rel.forced, rel.invoker, rel.name), \
walk AS (WITH RECURSIVE w(top, cur) AS (\
 SELECT p.oid, p.oid FROM privs p WHERE p.relkind OPERATOR(pg_catalog.=) 'v' AND p.privs OPERATOR(pg_catalog.<>) '' \
  AND NOT p.invoker AND NOT p.listed AND NOT p.own \
 UNION SELECT w.top, d.refobjid FROM w \
  JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) w.cur AND c.relkind OPERATOR(pg_catalog.=) 'v' \
  JOIN pg_catalog.pg_rewrite rw ON rw.ev_class OPERATOR(pg_catalog.=) w.cur \
  JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
   AND d.objid OPERATOR(pg_catalog.=) rw.oid \
   AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
   AND d.refobjid OPERATOR(pg_catalog.<>) w.cur) \
 SELECT w.top, w.cur FROM w), \
here AS (SELECT d.oid, d.datname, d.datdba FROM pg_catalog.pg_database d \
 WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()) \
(SELECT 'rel'::pg_catalog.text, p.name, p.privs, pg_catalog.concat_ws(',', p.relkind, CASE WHEN p.own THEN 'own' END, \
 CASE WHEN p.listed THEN 'listed' END, CASE WHEN p.forced THEN 'forced' END, CASE WHEN p.invoker THEN 'invoker' END) \
 FROM privs p WHERE p.privs OPERATOR(pg_catalog.<>) '' AND (p.own \
 OR p.relkind OPERATOR(pg_catalog.=) ANY ('{S,m}'::pg_catalog.\"char\"[]) \
 OR p.privs OPERATOR(pg_catalog.~) 'TRUNCATE' \
 OR (p.listed AND p.privs OPERATOR(pg_catalog.~) 'INSERT|UPDATE|DELETE') \
 OR (NOT p.listed AND NOT p.forced AND p.relkind OPERATOR(pg_catalog.=) ANY ('{r,p,f}'::pg_catalog.\"char\"[]))) \
 LIMIT 1000) \
UNION ALL \
(SELECT DISTINCT 'view_owner', t.name, o.rolname::pg_catalog.text, '' FROM walk w \
 JOIN rel t ON t.oid OPERATOR(pg_catalog.=) w.top \
 JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) w.cur AND c.relkind OPERATOR(pg_catalog.=) 'v' \
 JOIN pg_catalog.pg_roles o ON o.oid OPERATOR(pg_catalog.=) c.relowner WHERE o.rolsuper OR o.rolbypassrls LIMIT 1000) \
UNION ALL \
(SELECT DISTINCT 'view_reads', t.name, b.name, b.relkind::pg_catalog.text FROM walk w \
 JOIN rel t ON t.oid OPERATOR(pg_catalog.=) w.top JOIN rel b ON b.oid OPERATOR(pg_catalog.=) w.cur \
 WHERE b.relkind OPERATOR(pg_catalog.=) ANY ('{r,p,f,m}'::pg_catalog.\"char\"[]) AND NOT b.listed \
 AND (b.relkind OPERATOR(pg_catalog.=) 'm' OR NOT b.forced) LIMIT 1000) \
UNION ALL \
(SELECT 'owns', i.type, i.identity, mine.rolname::pg_catalog.text FROM pg_catalog.pg_shdepend s \
 JOIN mine ON mine.oid OPERATOR(pg_catalog.=) s.refobjid \
 CROSS JOIN LATERAL pg_catalog.pg_identify_object(s.classid, s.objid, 0) i \
 WHERE s.dbid OPERATOR(pg_catalog.=) (SELECT here.oid FROM here) \
 AND s.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_authid'::pg_catalog.regclass AND s.deptype OPERATOR(pg_catalog.=) 'o' \
 AND i.identity IS NOT NULL AND (i.schema IS NULL OR i.schema OPERATOR(pg_catalog.!~) '^pg_(temp|toast_temp)_') \
 LIMIT 1000) \
UNION ALL \
(SELECT 'policy_guc', p.name, pol.polname::pg_catalog.text, '' FROM privs p \
 JOIN pg_catalog.pg_policy pol ON pol.polrelid OPERATOR(pg_catalog.=) p.oid \
 WHERE p.privs OPERATOR(pg_catalog.<>) '' AND NOT p.own \
 AND pg_catalog.replace(pg_catalog.concat(pg_catalog.pg_get_expr(pol.polqual, pol.polrelid), ' ', \
  pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid)), '@SETTING_EXPR@', '') \
  OPERATOR(pg_catalog.~) 'current_setting[(]' \
 LIMIT 1000) \
UNION ALL \
SELECT 'owns', 'database', pg_catalog.quote_ident(here.datname), mine.rolname::pg_catalog.text \
 FROM here JOIN mine ON mine.oid OPERATOR(pg_catalog.=) here.datdba \
UNION ALL \
(SELECT 'create', 'database', pg_catalog.quote_ident(here.datname), '' FROM here, mine \
 WHERE pg_catalog.has_database_privilege(mine.oid, here.oid, 'CREATE') LIMIT 1) \
UNION ALL \
(SELECT 'temp', pg_catalog.quote_ident(here.datname), '', '' FROM here, mine \
 WHERE pg_catalog.has_database_privilege(mine.oid, here.oid, 'TEMPORARY') LIMIT 1) \
UNION ALL \
(SELECT DISTINCT 'create', 'schema', pg_catalog.quote_ident(ns.nspname), '' FROM ns CROSS JOIN mine \
 WHERE pg_catalog.has_schema_privilege(mine.oid, ns.oid, 'CREATE') LIMIT 1000) \
UNION ALL \
SELECT 'member', o.rolname::pg_catalog.text, '', '' FROM pg_catalog.pg_roles o, me \
 WHERE (o.rolname OPERATOR(pg_catalog.=) 'pgtenant_owner' OR o.oid OPERATOR(pg_catalog.=) \
  (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname OPERATOR(pg_catalog.=) 'pgtenant')) \
 AND o.oid OPERATOR(pg_catalog.<>) me.oid AND pg_catalog.pg_has_role(me.oid, o.oid, 'MEMBER') \
UNION ALL \
SELECT 'tenant_fn', CASE WHEN p.oid IS NULL THEN 'missing' \
 WHEN NOT pg_catalog.has_schema_privilege(me.oid, p.pronamespace, 'USAGE') \
  OR NOT pg_catalog.has_function_privilege(me.oid, p.oid, 'EXECUTE') THEN 'no_execute' \
 WHEN p.provolatile OPERATOR(pg_catalog.=) 'i' THEN 'immutable' ELSE 'ok' END, '', '' \
 FROM me LEFT JOIN (SELECT f.oid, f.pronamespace, f.provolatile FROM pg_catalog.pg_proc f \
  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) f.pronamespace \
  WHERE n.nspname OPERATOR(pg_catalog.=) 'pgtenant' AND f.proname OPERATOR(pg_catalog.=) 'current_tenant' \
  AND f.pronargs OPERATOR(pg_catalog.=) 0) p ON true \
UNION ALL \
SELECT 'setting', s.name, s.setting, '' FROM pg_catalog.pg_settings s \
 WHERE s.name OPERATOR(pg_catalog.=) ANY ('{lo_compat_privileges,max_prepared_transactions}'::pg_catalog.text[]) \
UNION ALL \
(SELECT 'lo_table', 'pg_catalog.pg_largeobject', '', '' FROM mine \
 WHERE pg_catalog.has_table_privilege(mine.oid, 'pg_catalog.pg_largeobject', 'SELECT') LIMIT 1) \
UNION ALL \
(SELECT DISTINCT 'lo_acl', l.oid::pg_catalog.text, CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' \
 ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END, a.privilege_type \
 FROM pg_catalog.pg_largeobject_metadata l CROSS JOIN LATERAL pg_catalog.aclexplode(l.lomacl) a \
 WHERE a.grantee OPERATOR(pg_catalog.=) 0 OR a.grantee IN (SELECT mine.oid FROM mine) LIMIT 1000) \
UNION ALL \
SELECT 'fn', f.sig, '', '' FROM (VALUES ('pg_catalog.pg_cancel_backend(integer)'), \
 ('pg_catalog.pg_terminate_backend(integer, bigint)'), ('pg_catalog.pg_stat_get_activity(integer)'), \
 ('pg_catalog.pg_stat_get_backend_activity(integer)'), ('pg_catalog.lo_create(oid)'), \
 ('pg_catalog.lo_creat(integer)'), ('pg_catalog.lo_from_bytea(oid, bytea)')) f(sig), me \
 WHERE pg_catalog.has_function_privilege(me.oid, pg_catalog.to_regprocedure(f.sig), 'EXECUTE') \
UNION ALL \
SELECT 'fn', 'pg_catalog.pg_stat_activity', '', '' FROM me \
 WHERE pg_catalog.has_table_privilege(me.oid, 'pg_catalog.pg_stat_activity', 'SELECT') \
UNION ALL \
(SELECT DISTINCT 'definer', p.oid::pg_catalog.regprocedure::pg_catalog.text, o.rolname::pg_catalog.text, \
 CASE WHEN o.rolsuper OR o.rolbypassrls THEN 'bypass' WHEN @SETTER@ THEN 'setter' ELSE '' END \
 FROM pg_catalog.pg_proc p JOIN ns ON ns.oid OPERATOR(pg_catalog.=) p.pronamespace AND NOT ns.own \
 JOIN pg_catalog.pg_roles o ON o.oid OPERATOR(pg_catalog.=) p.proowner CROSS JOIN mine \
 WHERE p.prosecdef AND pg_catalog.has_function_privilege(mine.oid, p.oid, 'EXECUTE') LIMIT 1000) \
UNION ALL \
SELECT 'role_setting', CASE WHEN s.setdatabase OPERATOR(pg_catalog.=) 0 THEN '' \
 ELSE pg_catalog.quote_ident(pg_catalog.current_database()) END, c.c, '' \
 FROM pg_catalog.pg_db_role_setting s CROSS JOIN me CROSS JOIN pg_catalog.unnest(s.setconfig) c(c) \
 LEFT JOIN pg_catalog.pg_settings ps ON ps.name OPERATOR(pg_catalog.=) pg_catalog.split_part(c.c, '=', 1) \
 WHERE s.setrole OPERATOR(pg_catalog.=) me.oid \
 AND (s.setdatabase OPERATOR(pg_catalog.=) 0 OR s.setdatabase OPERATOR(pg_catalog.=) (SELECT here.oid FROM here)) \
 AND (ps.context IS NULL OR ps.context OPERATOR(pg_catalog.=) 'user') \
UNION ALL \
SELECT 'listed_missing', l.name, '', '' FROM listed l WHERE l.oid IS NULL;\
COMMIT";

/// What the check found: refusals, and what to log but accept.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

/// Runs the check on `conn`, logged in as `user`. `Err(UnsafeRole)`
/// lists what lets a tenant reach around row-level security, each with
/// the statement that fixes it; `Ok` carries the warnings to log.
pub async fn check(
    conn: &mut ServerConn,
    user: &str,
    policy: &RlsPolicy,
) -> Result<Vec<String>, ServerError> {
    let rows: Rows<4> = query_rows(conn, &check_sql(policy)).await?;
    let verdict = verdict(user, &rows);
    if verdict.problems.is_empty() {
        return Ok(verdict.warnings);
    }
    let n = verdict.problems.len();
    let mut shown = verdict.problems;
    shown.truncate(SHOWN);
    let more = if n > SHOWN {
        format!("; and {} more", n - SHOWN)
    } else {
        String::new()
    };
    Err(ServerError::UnsafeRole(format!(
        "backend role {user:?} of an isolation = \"rls\" placement can reach around \
         row-level security: {}{more}; fix these, or set trust_backend_role = true on the \
         placement to accept it as it is",
        shown.join("; ")
    )))
}

/// Reads the check's rows into refusals and warnings, each with what
/// fixes it.
pub fn verdict(user: &str, rows: &[Row]) -> Verdict {
    let me = ident(user);
    let mut v = Verdict::default();
    let (mut tenant_fn, mut lo_compat) = (None, None);
    let mut signals = Vec::new();
    let mut activity = Vec::new();
    let mut lo_create = Vec::new();
    for [kind, name, detail, more] in rows {
        match kind.as_str() {
            "rel" => relation(&me, name, detail, more, &mut v.problems),
            "view_owner" => v.problems.push(format!(
                "view {name} reads with the rights of {detail:?}, who bypasses row-level \
                 security (ALTER VIEW {name} SET (security_invoker = on))"
            )),
            "view_reads" => {
                let what = if more == "m" {
                    "a materialized view, which row-level security never filters"
                } else {
                    "without row-level security enabled and forced"
                };
                v.problems.push(format!(
                    "view {name} reads {detail}, {what}, with its owner's rights \
                     (ALTER VIEW {name} SET (security_invoker = on))"
                ));
            }
            "policy_guc" => v.problems.push(format!(
                "policy {detail:?} on {name} reads current_setting(), which any client may \
                 SET or set_config() to another tenant's value (write it with \
                 pgtenant.current_tenant(): ALTER POLICY {} ON {name} USING (tenant_id = \
                 pgtenant.current_tenant()) WITH CHECK (tenant_id = pgtenant.current_tenant()); \
                 with context_store = \"setting\", tenant_id = \
                 NULLIF(pg_catalog.current_setting('backtrace_functions'), '') is allowed too)",
                ident(detail)
            )),
            "owns" => v.problems.push(owns(user, &me, name, detail, more)),
            "create" => v.problems.push(format!(
                "it may CREATE in {name} {detail}: what it creates there runs for, or \
                 shadows names of, other tenants (REVOKE CREATE ON {} {detail} FROM PUBLIC, {me})",
                name.to_ascii_uppercase()
            )),
            "temp" => v.warnings.push(format!(
                "it may create temporary tables in database {name}: they come before the \
                 shared schemas in name lookup, so one left on a server connection would \
                 shadow a table for the next tenant there unless the lease's reset discards \
                 it (if no tenant needs them: REVOKE TEMPORARY ON DATABASE {name} FROM \
                 PUBLIC, {me})"
            )),
            "member" => v.problems.push(format!(
                "it is a member of role {name:?}, which owns schema pgtenant and its \
                 context key (REVOKE {} FROM {me})",
                ident(name)
            )),
            "tenant_fn" => tenant_fn = Some(name.clone()),
            "setting" if name == "lo_compat_privileges" => lo_compat = Some(detail.clone()),
            // Fail closed: a value that is not a number counts as above 0.
            "setting"
                if name == "max_prepared_transactions"
                    && detail.parse::<i64>().map_or(true, |n| n > 0) =>
            {
                // Refused, not warned: with it above 0, one tenant can
                // commit or roll back another's prepared transaction.
                v.problems.push(format!(
                    "max_prepared_transactions is {detail}: a tenant may COMMIT or ROLLBACK \
                     PREPARED another shared tenant's prepared transaction (same role) and \
                     see its name in pg_prepared_xacts (ALTER SYSTEM SET \
                     max_prepared_transactions = 0, then restart the server; it is 0 by \
                     default and on the usual managed services)"
                ));
            }
            "lo_table" => v.problems.push(format!(
                "it may read {name}, the data of every large object, which row-level security \
                 never filters (REVOKE SELECT ON {name} FROM PUBLIC, {me})"
            )),
            "lo_acl" => v.problems.push(format!(
                "large object {name} grants {more} to {detail}, and large objects ignore \
                 row-level security (REVOKE ALL ON LARGE OBJECT {name} FROM {detail})"
            )),
            "fn" if name.contains("_backend(") => signals.push(name.clone()),
            "fn" if name.contains("activity") => activity.push(name.clone()),
            "fn" => lo_create.push(name.clone()),
            "definer" if more == "bypass" => v.problems.push(format!(
                "it may call SECURITY DEFINER function {name}, which runs as {detail:?}, who \
                 bypasses row-level security (REVOKE EXECUTE ON FUNCTION {name} FROM PUBLIC, {me})"
            )),
            "definer" if more == "setter" => v.warnings.push(format!(
                "it may call SECURITY DEFINER function {name}, which runs as {detail:?}, who \
                 may SET backtrace_functions, where this placement keeps the tenant: if the \
                 function sets a setting its caller names, any tenant can name another \
                 (keep such functions owned by a role without that privilege)"
            )),
            "definer" => v.warnings.push(format!(
                "it may call SECURITY DEFINER function {name}, which runs as {detail:?}: \
                 row-level security applies to that role, not the tenant's; make sure the \
                 function reads only tables with forced row-level security"
            )),
            "role_setting" => {
                let (db, setting) = (name, detail);
                let param = setting.split('=').next().unwrap_or(setting);
                let scope = if db.is_empty() {
                    String::new()
                } else {
                    format!(" IN DATABASE {db}")
                };
                v.warnings.push(format!(
                    "its role has the default {setting}, which every shared tenant's session \
                     starts with and which any of them may set (ALTER ROLE CURRENT_USER SET); \
                     if unintended: ALTER ROLE {me}{scope} RESET {param}"
                ));
            }
            "listed_missing" => v.warnings.push(format!(
                "shared_tables names {name}, which is not in this database"
            )),
            _ => {}
        }
    }
    match tenant_fn.as_deref() {
        Some("ok") => {}
        Some("no_execute") => v.problems.push(format!(
            "it may not call pgtenant.current_tenant(), which every policy calls (install \
             sql/pgtenant.sql with -v shared_role={user})"
        )),
        Some("immutable") => v.problems.push(
            "pgtenant.current_tenant() is IMMUTABLE, so a plan could keep one tenant's value \
             (install sql/pgtenant.sql again)"
                .into(),
        ),
        _ => v.problems.push(
            "pgtenant.current_tenant() does not exist in this database (install \
             sql/pgtenant.sql)"
                .into(),
        ),
    }
    // Fail closed: a setting the check cannot see counts as on.
    if lo_compat.as_deref() != Some("off") {
        v.problems.push(
            "lo_compat_privileges is not off: every role may read and write every large \
             object, which row-level security never filters (as a superuser: ALTER SYSTEM \
             SET lo_compat_privileges = off; SELECT pg_reload_conf())"
                .into(),
        );
    }
    if !signals.is_empty() {
        v.warnings.push(format!(
            "it may call {}: any shared tenant may cancel or terminate every backend of its \
             own role, that is every other shared tenant's (run sql/pgtenant-superuser.sql \
             as a superuser)",
            signals.join(", ")
        ));
    }
    if !activity.is_empty() {
        v.warnings.push(format!(
            "it may read {}: any shared tenant sees the statement text of every backend of \
             its own role, that is every other shared tenant's (run \
             sql/pgtenant-superuser.sql as a superuser)",
            activity.join(", ")
        ));
    }
    if !lo_create.is_empty() {
        v.warnings.push(format!(
            "it may call {}: a large object a tenant creates is owned by the shared role, so \
             every other shared tenant may read and write it (run sql/pgtenant-superuser.sql \
             as a superuser)",
            lo_create.join(", ")
        ));
    }
    v
}

/// A relation the role holds privileges on: `privs` as listed by the
/// query, `flags` its kind letter and `own`/`listed`/`forced`/`invoker`.
fn relation(me: &str, name: &str, privs: &str, flags: &str, out: &mut Vec<String>) {
    let flags: Vec<&str> = flags.split(',').collect();
    let kind = flags.first().copied().unwrap_or("");
    let flag = |f: &str| flags.contains(&f);
    let privs: Vec<&str> = privs.split(',').filter(|p| !p.is_empty()).collect();
    let has = |p: &str| privs.contains(&p);
    if flag("own") {
        let what = if kind == "S" { "SEQUENCE " } else { "" };
        out.push(format!(
            "it has {} on {name}, pgtenant's own, which holds the tenant context's secrets \
             (REVOKE ALL ON {what}{name} FROM PUBLIC, {me})",
            privs.join(", ")
        ));
        return;
    }
    if kind == "S" {
        if has("UPDATE") {
            out.push(format!(
                "it may setval() sequence {name}, which every tenant's inserts draw from \
                 (REVOKE UPDATE ON SEQUENCE {name} FROM PUBLIC, {me}; USAGE is enough for \
                 nextval())"
            ));
        }
        return;
    }
    if has("TRUNCATE") {
        out.push(format!(
            "it may TRUNCATE {name}, which row-level security never filters (REVOKE \
             TRUNCATE ON {name} FROM PUBLIC, {me})"
        ));
    }
    let writes: Vec<&str> = privs
        .iter()
        .copied()
        .filter(|p| matches!(*p, "INSERT" | "UPDATE" | "DELETE"))
        .collect();
    if flag("listed") {
        if !writes.is_empty() {
            out.push(format!(
                "it may {} shared table {name}, which every tenant reads (REVOKE INSERT, \
                 UPDATE, DELETE, TRUNCATE ON {name} FROM PUBLIC, {me})",
                writes.join(", ")
            ));
        }
        return;
    }
    let reach: Vec<&str> = privs
        .iter()
        .copied()
        .filter(|p| matches!(*p, "SELECT" | "INSERT" | "UPDATE" | "DELETE"))
        .collect();
    if reach.is_empty() {
        return;
    }
    match kind {
        "m" => out.push(format!(
            "it may read materialized view {name}, which row-level security never filters \
             (REVOKE ALL ON {name} FROM PUBLIC, {me}; or, if it holds no tenant's rows, \
             add it to shared_tables)"
        )),
        "f" => out.push(format!(
            "it may {} foreign table {name}, which row-level security cannot filter \
             (REVOKE ALL ON {name} FROM PUBLIC, {me}; or, if it holds no tenant's rows, \
             add it to shared_tables and make it read-only)",
            reach.join(", ")
        )),
        // A view is judged by what it reads (the `view_*` rows); one
        // that reads with the caller's rights is the caller's tables.
        "v" => {}
        _ if !flag("forced") => out.push(format!(
            "it may {} {name}, which does not have row-level security enabled and forced \
             (ALTER TABLE {name} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY; or, if \
             it holds no tenant's rows, add it to shared_tables and make it read-only)",
            reach.join(", ")
        )),
        _ => {}
    }
}

/// An object the role owns, itself or through a role it is a member of.
fn owns(user: &str, me: &str, kind: &str, identity: &str, owner: &str) -> String {
    let why = match kind {
        "large object" => "large objects ignore row-level security",
        "table" | "foreign table" => {
            "an owner may turn its row-level security off and change its policies"
        }
        "database" => "its owner may change what the check requires",
        _ => "an owner may change it for every tenant",
    };
    if owner != user {
        return format!(
            "it is a member of role {owner:?}, which owns {kind} {identity}: {why} \
             (REVOKE {} FROM {me})",
            ident(owner)
        );
    }
    format!(
        "it owns {kind} {identity}: {why} (ALTER {} {identity} OWNER TO <an admin role>)",
        kind.to_ascii_uppercase()
    )
}

#[cfg(test)]
#[path = "rls_check_tests.rs"]
mod tests;
