-- pgtenant: optional hardening of a shared (isolation = "rls") database
-- that only a superuser can apply.
--
-- Every tenant of an rls placement logs in as the same backend role, and
-- PostgreSQL lets a role watch and signal its own backends and use its own
-- large objects whatever row-level security says. These statements close
-- those channels. Run once per shared database, as a superuser, connected
-- to that database (function and view privileges are kept per database):
--
--     psql "dbname=app_shared user=postgres" -f sql/pgtenant-superuser.sql
--
-- Without a superuser (most managed services), these channels stay open;
-- pgtenant logs each one as a warning when the placement's pool starts
-- (README, "Row-level security": what stays open). Re-running is safe.
-- Roles that need what is revoked here get it back through the predefined
-- roles below (grant those to your monitoring and admin roles, never to a
-- placement's role).

BEGIN;

-- 1. Other tenants' SQL text. pg_stat_activity shows a role the query
--    text of its own backends, that is every shared tenant's. Closes the
--    view and the two functions that return the text; pg_monitor /
--    pg_read_all_stats members keep it.
REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_stat_get_activity(integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_stat_get_backend_activity(integer) FROM PUBLIC;
GRANT SELECT ON pg_catalog.pg_stat_activity TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_get_activity(integer) TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_get_backend_activity(integer) TO pg_read_all_stats;
--    Also pg_stat_ssl and pg_stat_gssapi, which read pg_stat_get_activity,
--    are then for pg_read_all_stats members only. An alternative that
--    leaves every privilege as it is but hides the shared role's SQL from
--    everyone, administrators included (no role but a superuser may change
--    it back):
--
--     ALTER ROLE pgt_shared IN DATABASE app_shared SET track_activities = off;

-- 2. Cancelling and terminating other tenants' backends. A role may
--    signal every backend of its own role. pgtenant's own cancel requests
--    use the protocol's cancel keys, not these functions, and keep
--    working. pg_signal_backend members keep them.
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_cancel_backend(integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_terminate_backend(integer, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_cancel_backend(integer) TO pg_signal_backend;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_terminate_backend(integer, bigint) TO pg_signal_backend;

-- 3. Large objects. Row-level security never applies to them, and one a
--    tenant creates is owned by the shared role, so every other shared
--    tenant could read and overwrite it. Nobody but a superuser may create
--    one after this (lo_import is already superuser-only by default).
REVOKE EXECUTE ON FUNCTION pg_catalog.lo_create(oid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.lo_creat(integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.lo_from_bytea(oid, bytea) FROM PUBLIC;

-- 4. Other tenants' statement texts on a shared server connection.
--    pgtenant keeps named statements prepared per server connection and
--    shares them between clients; pg_prepared_statements shows a session
--    every statement prepared on it, so a tenant could read the SQL text
--    (not the parameters) of statements another tenant prepared there.
--    Nothing pgtenant or a driver does needs the view.
REVOKE SELECT ON pg_catalog.pg_prepared_statements FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_prepared_statement() FROM PUBLIC;

COMMIT;

-- 5. Prepared transactions. A role may COMMIT PREPARED or ROLLBACK
--    PREPARED any prepared transaction of its own role, so one shared
--    tenant could finish or discard another's. Unless a shared tenant
--    needs two-phase commit, turn them off for the whole server (takes
--    effect at the next restart; pgtenant refuses the placement while it is
--    above 0):
--
--     ALTER SYSTEM SET max_prepared_transactions = 0;
