-- pgtenant: the setting store of an isolation = "rls" placement
-- (context_store = "setting"), where a superuser may run this once.
--
-- With sql/pgtenant.sql alone, pgtenant.current_tenant() is a SECURITY
-- DEFINER PL/pgSQL function reading owner-only sequences: it needs no
-- superuser, and it costs every statement under a policy two calls of it
-- (one when PostgreSQL plans the statement, one when it runs it). This
-- file keeps the tenant in the built-in setting backtrace_functions
-- instead, and makes current_tenant() an SQL function PostgreSQL inlines
-- into every policy: reading a setting costs a fraction of the call
-- (README, "What a shared placement costs").
--
-- Why that setting: every role may read it, but only a superuser, or a
-- role a superuser granted SET ON PARAMETER, may change it. Here that is
-- the owner of pgtenant.enter() alone, so a client's SET, SET LOCAL, RESET,
-- set_config(), a function's SET clause and ALTER ROLE ... SET all fail
-- with 42501; RESET ALL and DISCARD ALL (which need no privilege) take it
-- back to '' (set below for the database): no tenant, no rows. What
-- PostgreSQL does with it, logging a backtrace when an error is raised in
-- a C function of that name, does not happen for a tenant's name unless
-- the tenant is named like one of the server's C functions.
--
-- Its prices: PostgreSQL 15 or later and a superuser for this file;
-- tenant names of letters, digits and '_' only (the setting's own check;
-- pgtenant refuses other names on such a placement); and the setting is
-- transactional, so a context call that fails leaves the previous tenant
-- in it: pgtenant's guard behind each call and the closing of the
-- connection are what stop a failed lease (README, "How the context
-- works").
--
-- Run as a superuser, connected to the shared database, after
-- sql/pgtenant.sql (and again after every later run of it, which puts the
-- sequence version of current_tenant() back):
--
--     psql -v ON_ERROR_STOP=1 "dbname=app_shared user=postgres" -f sql/pgtenant-setting.sql
--
-- then set context_store = "setting" on the placement. On a placement
-- already serving tenants with the sequences store, this file's last step
-- would leave them without rows until the reload: run the DO block's two
-- statements first, reload with context_store = "setting", then the whole
-- file (README, "Where the context is kept"). pgtenant checks
-- on every new server connection that the placement's role cannot set
-- the setting and that the session starts without a value. To go back:
-- run sql/pgtenant.sql again, then set context_store = "sequences" (in
-- that order: enter() writes both stores while the setting is
-- configured, so current_tenant() reads a tenant all along).

BEGIN;
SET LOCAL search_path = pg_catalog, pg_temp;

DO $$
DECLARE
    owner pg_catalog.name;
BEGIN
    SELECT r.rolname INTO owner
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
    WHERE p.oid = pg_catalog.to_regprocedure(
        'pgtenant.enter(pg_catalog.text,pg_catalog.text,pg_catalog.int8,pg_catalog.int8,pg_catalog.int8)');
    IF owner IS NULL THEN
        RAISE EXCEPTION 'pgtenant: install sql/pgtenant.sql first';
    END IF;
    -- enter() runs as its owner, and so may set the tenant.
    EXECUTE pg_catalog.format('GRANT SET ON PARAMETER backtrace_functions TO %I', owner);
    -- Sessions of this database start with no tenant, whatever the
    -- server's configuration says (a database setting comes after the
    -- configuration file), and RESET ALL comes back to this.
    EXECUTE pg_catalog.format('ALTER DATABASE %I SET backtrace_functions = %L',
        pg_catalog.current_database(), '');
END $$;

-- Inlined into each policy (an SQL function with a single RETURN, not
-- SECURITY DEFINER, no SET clause), its body parsed here, once, with the
-- search_path above: no later search_path can stand in for what it uses.
-- STABLE, never IMMUTABLE: a cached plan must not carry one tenant's name
-- to another. NULL when empty: no tenant matches no row.
CREATE OR REPLACE FUNCTION pgtenant.current_tenant() RETURNS pg_catalog.text
LANGUAGE sql STABLE PARALLEL RESTRICTED
RETURN NULLIF(pg_catalog.current_setting('backtrace_functions'), '');

COMMIT;
