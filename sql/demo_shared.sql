-- The shared database's sample schema that `pgtenant demo` loads, as the
-- owner of its tables (never the placement's login role): one table for
-- every tenant on the placement, separated by row-level security on the
-- tenant context pgtenant sets (sql/pgtenant.sql). The demo fills in the
-- placement's login role and the sample rows.
CREATE TABLE notes (
    id         bigserial PRIMARY KEY,
    -- Filled from the context: a client never names its tenant.
    tenant_id  text NOT NULL DEFAULT pgtenant.current_tenant(),
    body       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notes_tenant ON notes (tenant_id, id);
:rows
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
-- Also for the table's owner: nobody reads around the policy by accident.
ALTER TABLE notes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON notes
    USING (tenant_id = pgtenant.current_tenant())
    WITH CHECK (tenant_id = pgtenant.current_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO :shared_role;
GRANT USAGE ON SEQUENCE notes_id_seq TO :shared_role;
