-- pgtenant: the tenant context of an isolation = "rls" placement.
--
-- Install once per shared database, as the role that owns the
-- application's tables (the migrations role; never the placement's login
-- role, which must not be a member of it):
--
--     psql -v ON_ERROR_STOP=1 "dbname=app_shared user=app_owner" -f sql/pgtenant.sql
--
-- then register the placement's context key, which pgtenant prints:
--
--     pgtenant context-key -c pgtenant.toml shared | psql "dbname=app_shared user=app_owner"
--
-- Needs PostgreSQL 15 or later (unlogged sequences), no extension and no
-- superuser. Plain SQL in one transaction (no psql variables), so tools
-- and migration frameworks can run it too. Re-running it is safe: it
-- replaces the functions and keeps the key.
--
-- How the context works (README, "Row-level security"):
--
-- * Once per server connection pgtenant calls pgtenant.open_session(s1,
--   s2, proof): a fresh random 128-bit session secret S and an HMAC over
--   it and the backend's pid, keyed with the placement's context key. Only
--   pgtenant knows the key; in the database only this schema's owner can
--   read it. The function keeps S in sequences only the owner may read or
--   set (a sequence's currval() is private to the session).
-- * At the start of every lease that changes tenant pgtenant calls
--   pgtenant.enter(tenant, mirror, s1, s2, proof): it clears the session's
--   tenant first, compares S with the session's, then writes the tenant's
--   name into owner-only sequences. setval() is not transactional: the
--   context belongs to this backend alone, survives the client's ROLLBACK,
--   and a forged call leaves no tenant at all, never the previous one.
--   Both calls are protocol-level FunctionCalls: their arguments appear in
--   no query text (pg_stat_activity, pg_stat_statements, logs).
-- * A call can also fail before it clears anything (a read-only session,
--   a statement_timeout or a cancel before its first statement), and the
--   client's messages travel right behind it. So, last, enter() prepares
--   a statement named after `proof`, a random number pgtenant draws per
--   lease, and pgtenant sends a Describe and a Close of that statement
--   between the call and the client's messages, with no Sync: when the
--   call failed the statement does not exist, the Describe fails, and
--   PostgreSQL skips everything up to the next Sync, the client's
--   messages included (what the client sent after its own first Sync
--   waits in pgtenant until the call is answered); pgtenant then closes
--   the connection. A Describe
--   takes no snapshot and runs nothing, so the client's first statement
--   may still be BEGIN ISOLATION LEVEL ... or VACUUM.
-- * pgtenant.current_tenant() returns that name (sql/pgtenant-setting.sql
--   replaces it with a cheaper read where a superuser allows; run that
--   file again after this one). The setting
--   pgtenant.tenant, which enter() sets to 'on', only
--   says whether to look (a session that never entered has no currval to
--   read): a client may RESET it (then it sees no rows) or set it to
--   anything (the name still comes from the sequences). Nothing a client
--   can read is a credential, so there is nothing to replay.
-- * No context: NULL, so policies written
--   `tenant_id = pgtenant.current_tenant()` match no row and WITH CHECK
--   refuses every write.

BEGIN;

CREATE SCHEMA IF NOT EXISTS pgtenant;
-- Every role may call current_tenant() (policies run it as whoever
-- queries) and enter() (useless without the key); nothing else here.
GRANT USAGE ON SCHEMA pgtenant TO PUBLIC;

-- The placement's context key as HMAC-SHA-256 pads (key XOR 0x36.., key
-- XOR 0x5c..), so that the per-lease check needs no pgcrypto.
CREATE TABLE IF NOT EXISTS pgtenant.context_key (
    id   int PRIMARY KEY CHECK (id = 1),
    ipad bytea NOT NULL CHECK (length(ipad) = 64),
    opad bytea NOT NULL CHECK (length(opad) = 64)
);
REVOKE ALL ON pgtenant.context_key FROM PUBLIC;

-- The session's tenant: its name in up to 64 bytes, eight per sequence,
-- the first byte of ctx_0 holding the length (0: no tenant). Unlogged:
-- setval() writes no WAL and takes no transaction id. Only currval(),
-- which is per session, is ever read.
CREATE UNLOGGED SEQUENCE IF NOT EXISTS pgtenant.ctx_0
    AS bigint MINVALUE -9223372036854775808 MAXVALUE 9223372036854775807 CACHE 1;
CREATE UNLOGGED SEQUENCE IF NOT EXISTS pgtenant.ctx_1
    AS bigint MINVALUE -9223372036854775808 MAXVALUE 9223372036854775807 CACHE 1;
CREATE UNLOGGED SEQUENCE IF NOT EXISTS pgtenant.ctx_2
    AS bigint MINVALUE -9223372036854775808 MAXVALUE 9223372036854775807 CACHE 1;
CREATE UNLOGGED SEQUENCE IF NOT EXISTS pgtenant.ctx_3
    AS bigint MINVALUE -9223372036854775808 MAXVALUE 9223372036854775807 CACHE 1;
CREATE UNLOGGED SEQUENCE IF NOT EXISTS pgtenant.ctx_4
    AS bigint MINVALUE -9223372036854775808 MAXVALUE 9223372036854775807 CACHE 1;
CREATE UNLOGGED SEQUENCE IF NOT EXISTS pgtenant.ctx_5
    AS bigint MINVALUE -9223372036854775808 MAXVALUE 9223372036854775807 CACHE 1;
CREATE UNLOGGED SEQUENCE IF NOT EXISTS pgtenant.ctx_6
    AS bigint MINVALUE -9223372036854775808 MAXVALUE 9223372036854775807 CACHE 1;
CREATE UNLOGGED SEQUENCE IF NOT EXISTS pgtenant.ctx_7
    AS bigint MINVALUE -9223372036854775808 MAXVALUE 9223372036854775807 CACHE 1;
REVOKE ALL ON SEQUENCE pgtenant.ctx_0, pgtenant.ctx_1, pgtenant.ctx_2, pgtenant.ctx_3, pgtenant.ctx_4, pgtenant.ctx_5, pgtenant.ctx_6, pgtenant.ctx_7 FROM PUBLIC;

-- The session's secret S (128 bits, two halves), set by open_session()
-- once per server connection and shown by pgtenant at every enter(): what
-- makes a lease's call cheap (no key read, no hash) and binds it to this
-- backend session itself. Owner-only, like the name.
CREATE UNLOGGED SEQUENCE IF NOT EXISTS pgtenant.session_s1
    AS bigint MINVALUE -9223372036854775808 MAXVALUE 9223372036854775807 CACHE 1;
CREATE UNLOGGED SEQUENCE IF NOT EXISTS pgtenant.session_s2
    AS bigint MINVALUE -9223372036854775808 MAXVALUE 9223372036854775807 CACHE 1;
REVOKE ALL ON SEQUENCE pgtenant.session_s1, pgtenant.session_s2 FROM PUBLIC;

-- Registers the context key (32 random bytes, printed by
-- `pgtenant context-key`). Only this schema's owner may call it.
CREATE OR REPLACE FUNCTION pgtenant.install_key(key bytea) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k bytea := key;
    ipad bytea;
    opad bytea;
BEGIN
    IF length(k) < 32 THEN
        RAISE EXCEPTION 'pgtenant: the context key must be at least 32 bytes';
    END IF;
    IF length(k) > 64 THEN
        k := sha256(k);
    END IF;
    k := k || decode(repeat('00', 64 - length(k)), 'hex');
    ipad := k;
    opad := k;
    FOR i IN 0..63 LOOP
        ipad := set_byte(ipad, i, get_byte(k, i) # 54);
        opad := set_byte(opad, i, get_byte(k, i) # 92);
    END LOOP;
    INSERT INTO pgtenant.context_key (id, ipad, opad) VALUES (1, ipad, opad)
    ON CONFLICT (id) DO UPDATE SET ipad = EXCLUDED.ipad, opad = EXCLUDED.opad;
END $$;
REVOKE ALL ON FUNCTION pgtenant.install_key(bytea) FROM PUBLIC;

-- The i-th 8-byte word of b as a bigint (big-endian, signed), for setval.
CREATE OR REPLACE FUNCTION pgtenant.word(b pg_catalog.bytea, i pg_catalog.int4)
RETURNS pg_catalog.int8 LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN ('x' OPERATOR(pg_catalog.||) pg_catalog.encode(pg_catalog.substr(b, 8 OPERATOR(pg_catalog.*) i OPERATOR(pg_catalog.+) 1, 8), 'hex'))::pg_catalog.bit(64)::pg_catalog.int8;

-- Whether p names a setting enter() may write: a custom setting (a
-- mirror for applications: at least two dotted identifiers), or
-- backtrace_functions, the store of context_store = "setting", which
-- enter() can write only where sql/pgtenant-setting.sql granted it.
-- Inlined where enter() uses it.
CREATE OR REPLACE FUNCTION pgtenant.is_setting_name(p pg_catalog.text)
RETURNS pg_catalog.bool LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN p OPERATOR(pg_catalog.~) '^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$'
    OR p OPERATOR(pg_catalog.=) 'backtrace_functions';

-- Called by pgtenant once per server connection (and again after the
-- session lost its secret to DISCARD): checks proof = HMAC-SHA-256(key,
-- 'pgtenant open v1' || backend pid || s1 || s2) and keeps S = (s1, s2).
-- Clears the tenant first, like enter().
CREATE OR REPLACE FUNCTION pgtenant.open_session(p_s1 pg_catalog.int8, p_s2 pg_catalog.int8, p_proof pg_catalog.bytea)
RETURNS pg_catalog.int4
-- No SET search_path clause (see current_tenant()): every name is
-- schema-qualified.
LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $$
DECLARE
    ipad pg_catalog.bytea;
    opad pg_catalog.bytea;
    done pg_catalog.int8;
BEGIN
    done := pg_catalog.setval('pgtenant.ctx_0'::pg_catalog.regclass, 0, true);
    SELECT k.ipad, k.opad INTO ipad, opad FROM pgtenant.context_key k WHERE k.id OPERATOR(pg_catalog.=) 1;
    IF ipad IS NULL THEN
        RAISE EXCEPTION 'pgtenant: no context key installed (see pgtenant context-key)'
            USING ERRCODE = '42501';
    END IF;
    -- Digests compared, not the MACs, so the time a mismatch takes says
    -- nothing about the expected MAC.
    IF p_s1 IS NULL OR p_s2 IS NULL OR p_proof IS NULL
       OR pg_catalog.sha256(pg_catalog.sha256(opad OPERATOR(pg_catalog.||) pg_catalog.sha256(ipad
            OPERATOR(pg_catalog.||) '\x706774656e616e74206f70656e207631'::pg_catalog.bytea -- 'pgtenant open v1'
            OPERATOR(pg_catalog.||) pg_catalog.int4send(pg_catalog.pg_backend_pid())
            OPERATOR(pg_catalog.||) pg_catalog.int8send(p_s1) OPERATOR(pg_catalog.||) pg_catalog.int8send(p_s2))))
       OPERATOR(pg_catalog.<>) pg_catalog.sha256(p_proof) THEN
        RAISE EXCEPTION 'pgtenant: invalid tenant context' USING ERRCODE = '42501';
    END IF;
    done := pg_catalog.setval('pgtenant.session_s1'::pg_catalog.regclass, p_s1, true);
    done := pg_catalog.setval('pgtenant.session_s2'::pg_catalog.regclass, p_s2, true);
    RETURN 1;
END $$;

-- Called by pgtenant at the start of each lease that changes tenant, with
-- the session's secret. p_mirror, when not empty, names a custom setting
-- (such as app.tenant_id) that also gets the tenant's name, for
-- applications that read one; it is informational only.
--
-- PL/pgSQL sets up every expression of a function again in each
-- transaction, and each lease's call is a transaction of its own: the
-- common case (a name of up to 7 bytes) is one expression, a CASE, whose
-- branches run in order until one holds.
CREATE OR REPLACE FUNCTION pgtenant.enter(p_tenant pg_catalog.text, p_mirror pg_catalog.text, p_s1 pg_catalog.int8, p_s2 pg_catalog.int8, p_proof pg_catalog.int8)
RETURNS pg_catalog.int4
-- No SET search_path clause (see current_tenant()): every name is
-- schema-qualified.
LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $$
DECLARE
    name pg_catalog.bytea;
    n pg_catalog.int4;
    done pg_catalog.int8;
BEGIN
    n := CASE
        -- First, before anything that can fail: no tenant. Not undone if
        -- the rest fails or rolls back.
        WHEN pg_catalog.setval('pgtenant.ctx_0'::pg_catalog.regclass, 0, true) OPERATOR(pg_catalog.<>) 0 THEN 0
        -- currval raises when the session has no secret (it never opened,
        -- or it was discarded): no tenant either way.
        WHEN p_s1 IS NULL OR p_s2 IS NULL
            OR p_s1 OPERATOR(pg_catalog.<>) pg_catalog.currval('pgtenant.session_s1'::pg_catalog.regclass)
            OR p_s2 OPERATOR(pg_catalog.<>) pg_catalog.currval('pgtenant.session_s2'::pg_catalog.regclass) THEN 0
        -- A longer name, or anything the general path refuses (no
        -- name, no mirror argument, a mirror that is no custom setting's
        -- name): below.
        WHEN p_mirror IS NULL
            OR COALESCE(pg_catalog.octet_length(pg_catalog.convert_to(p_tenant, 'UTF8')), 0)
                OPERATOR(pg_catalog.<) 1
            OR pg_catalog.octet_length(pg_catalog.convert_to(p_tenant, 'UTF8')) OPERATOR(pg_catalog.>) 7
            OR (p_mirror OPERATOR(pg_catalog.<>) ''
                AND NOT pgtenant.is_setting_name(p_mirror)) THEN 2
        -- The name: its length, its bytes, zero-padded to 8.
        WHEN pg_catalog.setval('pgtenant.ctx_0'::pg_catalog.regclass, pgtenant.word(
            pg_catalog.set_byte('\x00'::pg_catalog.bytea, 0, pg_catalog.octet_length(pg_catalog.convert_to(p_tenant, 'UTF8')))
            OPERATOR(pg_catalog.||) pg_catalog.convert_to(p_tenant, 'UTF8')
            OPERATOR(pg_catalog.||) '\x00000000000000'::pg_catalog.bytea, 0), true) IS NULL THEN 0
        -- The setting that tells current_tenant() to look, unless it
        -- already says 'on' (written only then: a setting written in a
        -- transaction makes PostgreSQL 15 walk every setting at commit).
        WHEN COALESCE(pg_catalog.current_setting('pgtenant.tenant', true), '') OPERATOR(pg_catalog.<>) 'on'
            AND pg_catalog.set_config('pgtenant.tenant', 'on', false) IS NULL THEN 0
        -- The mirror setting, if any, gets the name.
        WHEN p_mirror OPERATOR(pg_catalog.<>) ''
            AND pg_catalog.set_config(p_mirror, p_tenant, false) IS NULL THEN 0
        ELSE 1 END;
    IF n OPERATOR(pg_catalog.=) 1 THEN
        -- Last, once the context is in place: the lease's proof (below).
        IF p_proof IS NOT NULL THEN
            EXECUTE 'PREPARE pgtenant_proof_' OPERATOR(pg_catalog.||) pg_catalog.to_hex(p_proof) OPERATOR(pg_catalog.||) ' AS SELECT';
        END IF;
        RETURN 1;
    END IF;
    IF n OPERATOR(pg_catalog.=) 0 THEN
        RAISE EXCEPTION 'pgtenant: invalid tenant context' USING ERRCODE = '42501';
    END IF;
    -- A longer name, or a call to refuse: the context is clear and the
    -- secret checked (above).
    name := pg_catalog.convert_to(p_tenant, 'UTF8');
    n := pg_catalog.length(name);
    IF n IS NULL OR n OPERATOR(pg_catalog.<) 1 OR n OPERATOR(pg_catalog.>) 63 OR p_mirror IS NULL THEN
        RAISE EXCEPTION 'pgtenant: invalid tenant context' USING ERRCODE = '42501';
    END IF;
    IF p_mirror OPERATOR(pg_catalog.<>) ''
       AND NOT pgtenant.is_setting_name(p_mirror) THEN
        RAISE EXCEPTION 'pgtenant: invalid mirror setting' USING ERRCODE = '42501';
    END IF;
    -- Length, then the name, zero-padded to whole sequences; ctx_0 last.
    name := pg_catalog.set_byte('\x00'::pg_catalog.bytea, 0, n) OPERATOR(pg_catalog.||) name
        OPERATOR(pg_catalog.||) pg_catalog.decode(pg_catalog.repeat('00', (8 OPERATOR(pg_catalog.-) (n OPERATOR(pg_catalog.+) 1) OPERATOR(pg_catalog.%) 8) OPERATOR(pg_catalog.%) 8), 'hex');
    IF n OPERATOR(pg_catalog.>) 7 THEN done := pg_catalog.setval('pgtenant.ctx_1'::pg_catalog.regclass, pgtenant.word(name, 1), true); END IF;
    IF n OPERATOR(pg_catalog.>) 15 THEN done := pg_catalog.setval('pgtenant.ctx_2'::pg_catalog.regclass, pgtenant.word(name, 2), true); END IF;
    IF n OPERATOR(pg_catalog.>) 23 THEN done := pg_catalog.setval('pgtenant.ctx_3'::pg_catalog.regclass, pgtenant.word(name, 3), true); END IF;
    IF n OPERATOR(pg_catalog.>) 31 THEN done := pg_catalog.setval('pgtenant.ctx_4'::pg_catalog.regclass, pgtenant.word(name, 4), true); END IF;
    IF n OPERATOR(pg_catalog.>) 39 THEN done := pg_catalog.setval('pgtenant.ctx_5'::pg_catalog.regclass, pgtenant.word(name, 5), true); END IF;
    IF n OPERATOR(pg_catalog.>) 47 THEN done := pg_catalog.setval('pgtenant.ctx_6'::pg_catalog.regclass, pgtenant.word(name, 6), true); END IF;
    IF n OPERATOR(pg_catalog.>) 55 THEN done := pg_catalog.setval('pgtenant.ctx_7'::pg_catalog.regclass, pgtenant.word(name, 7), true); END IF;
    done := pg_catalog.setval('pgtenant.ctx_0'::pg_catalog.regclass, pgtenant.word(name, 0), true);
    IF COALESCE(pg_catalog.current_setting('pgtenant.tenant', true), '') OPERATOR(pg_catalog.<>) 'on' THEN
        name := pg_catalog.convert_to(pg_catalog.set_config('pgtenant.tenant', 'on', false), 'UTF8');
    END IF;
    IF p_mirror OPERATOR(pg_catalog.<>) '' THEN
        name := pg_catalog.convert_to(pg_catalog.set_config(p_mirror, p_tenant, false), 'UTF8');
    END IF;
    IF p_proof IS NOT NULL THEN
        EXECUTE 'PREPARE pgtenant_proof_' OPERATOR(pg_catalog.||) pg_catalog.to_hex(p_proof) OPERATOR(pg_catalog.||) ' AS SELECT';
    END IF;
    RETURN 1;
END $$;
-- The previous version's signature, if installed: gone, so nothing can
-- call a proof-per-lease enter() any more.
DROP FUNCTION IF EXISTS pgtenant.enter(pg_catalog.text, pg_catalog.text, pg_catalog.bytea);
-- And the one before the lease proof: a proxy that calls it pipelines
-- the client's statements behind a call whose failure would leave the
-- previous tenant's context in place.
DROP FUNCTION IF EXISTS pgtenant.enter(pg_catalog.text, pg_catalog.text, pg_catalog.int8, pg_catalog.int8);

-- What policies use: USING (tenant_id = pgtenant.current_tenant()).
-- STABLE, so an index scan evaluates it once per scan; a filter evaluates
-- it per row, which `(SELECT pgtenant.current_tenant())` turns into once
-- per statement (README). Never IMMUTABLE: a cached plan must not carry
-- one tenant's value to another.
--
-- No SET search_path clause (nor on enter()): it runs in every statement
-- of every tenant, and the clause costs a search-path switch and restore
-- per call (about a tenth of select-only throughput on PostgreSQL 15,
-- README). Instead every name in it is schema-qualified, types and
-- operators included, so no search_path, and no temporary object, can
-- stand in for anything it uses.
CREATE OR REPLACE FUNCTION pgtenant.current_tenant() RETURNS pg_catalog.text
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED AS $$
DECLARE
    b pg_catalog.bytea;
    n pg_catalog.int4;
BEGIN
    IF COALESCE(pg_catalog.current_setting('pgtenant.tenant', true), '') OPERATOR(pg_catalog.=) '' THEN
        RETURN NULL;
    END IF;
    b := pg_catalog.int8send(pg_catalog.currval('pgtenant.ctx_0'::pg_catalog.regclass));
    n := pg_catalog.get_byte(b, 0);
    IF n OPERATOR(pg_catalog.<=) 7 THEN
        -- NULL for 0: no tenant.
        RETURN pg_catalog.convert_from(pg_catalog.substr(b, 2, NULLIF(n, 0)), 'UTF8');
    END IF;
    b := b OPERATOR(pg_catalog.||) pg_catalog.int8send(pg_catalog.currval('pgtenant.ctx_1'::pg_catalog.regclass));
    IF n OPERATOR(pg_catalog.>) 15 THEN b := b OPERATOR(pg_catalog.||) pg_catalog.int8send(pg_catalog.currval('pgtenant.ctx_2'::pg_catalog.regclass)); END IF;
    IF n OPERATOR(pg_catalog.>) 23 THEN b := b OPERATOR(pg_catalog.||) pg_catalog.int8send(pg_catalog.currval('pgtenant.ctx_3'::pg_catalog.regclass)); END IF;
    IF n OPERATOR(pg_catalog.>) 31 THEN b := b OPERATOR(pg_catalog.||) pg_catalog.int8send(pg_catalog.currval('pgtenant.ctx_4'::pg_catalog.regclass)); END IF;
    IF n OPERATOR(pg_catalog.>) 39 THEN b := b OPERATOR(pg_catalog.||) pg_catalog.int8send(pg_catalog.currval('pgtenant.ctx_5'::pg_catalog.regclass)); END IF;
    IF n OPERATOR(pg_catalog.>) 47 THEN b := b OPERATOR(pg_catalog.||) pg_catalog.int8send(pg_catalog.currval('pgtenant.ctx_6'::pg_catalog.regclass)); END IF;
    IF n OPERATOR(pg_catalog.>) 55 THEN b := b OPERATOR(pg_catalog.||) pg_catalog.int8send(pg_catalog.currval('pgtenant.ctx_7'::pg_catalog.regclass)); END IF;
    RETURN pg_catalog.convert_from(pg_catalog.substr(b, 2, n), 'UTF8');
END $$;

COMMIT;
