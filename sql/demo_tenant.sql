-- Sample schema and rows that `pgtenant demo` loads into each tenant
-- database. :tenant is replaced by the tenant's name.
CREATE TABLE IF NOT EXISTS notes (
    id         bigserial PRIMARY KEY,
    tenant_id  text NOT NULL DEFAULT ':tenant',
    body       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO notes (body) VALUES
    ('welcome to :tenant''s own database'),
    ('only :tenant can read this row');
