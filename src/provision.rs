//! Creating a tenant's database and its own backend login role the way
//! the README's Isolation section asks: the role may log in to that one
//! database and use it, and nothing else. `pgtenant demo` and the tests
//! set their tenants up with it, so what they show is the safe setup.
//!
//! Setup code, run as a superuser on a cluster the caller controls; never
//! on the data path.

use crate::pgcluster::PgCluster;
use anyhow::Context;

/// The backend login role of a tenant with its own database.
pub fn backend_role(tenant: &str) -> String {
    format!("pgt_{tenant}")
}

/// The database of a tenant with its own database.
pub fn tenant_database(tenant: &str) -> String {
    format!("tenant_{tenant}")
}

/// Creates login role `role` (no attributes that reach beyond one
/// database, no memberships) and database `database`, owned by the
/// superuser `admin` is connected as, not by `role`. Only `role` may
/// connect to the database (and create temporary tables there); it may
/// use and create objects in its schema `public`. Then runs `seed` in the
/// database as `role`, so the tenant's app owns its own tables.
pub async fn dedicated_database(
    cluster: &PgCluster,
    admin: &tokio_postgres::Client,
    database: &str,
    role: &str,
    password: &str,
    seed: &str,
) -> anyhow::Result<()> {
    let (r, db) = (ident(role), ident(database));
    login_role_and_database(admin, role, password, database).await?;
    admin
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE {db} FROM PUBLIC;
             GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {r}"
        ))
        .await
        .with_context(|| format!("granting {role} its database"))?;
    let inside = cluster.admin(database).await?;
    inside
        .batch_execute(&format!(
            "GRANT USAGE, CREATE ON SCHEMA public TO {r};
             SET ROLE {r};
             {seed};
             RESET ROLE;"
        ))
        .await
        .with_context(|| format!("seeding {database}"))?;
    Ok(())
}

/// The SQL a shared (`isolation = "rls"`) database installs.
pub const PGTENANT_SQL: &str = include_str!("../sql/pgtenant.sql");

/// Creates a shared database for an `isolation = "rls"` placement, the way
/// the README's row-level security section asks: `owner`, a role that
/// cannot log in, owns schema `pgtenant` (installed from
/// `sql/pgtenant.sql`, with `context_key` registered) and the
/// application's tables; `role`, the placement's login role, may connect
/// to this database only, use schema `public`, and create nothing.
/// `seed` runs as `owner`: tables, their policies and the grants to
/// `role`.
#[allow(clippy::too_many_arguments)]
pub async fn shared_database(
    cluster: &PgCluster,
    admin: &tokio_postgres::Client,
    database: &str,
    owner: &str,
    role: &str,
    password: &str,
    context_key: &[u8; 32],
    seed: &str,
) -> anyhow::Result<()> {
    let (o, r, db) = (ident(owner), ident(role), ident(database));
    admin
        .batch_execute(&format!("CREATE ROLE {o} NOLOGIN"))
        .await
        .with_context(|| format!("creating role {owner}"))?;
    login_role_and_database(admin, role, password, database).await?;
    admin
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE {db} FROM PUBLIC;
             GRANT CONNECT ON DATABASE {db} TO {r};
             GRANT CONNECT, CREATE ON DATABASE {db} TO {o}"
        ))
        .await
        .with_context(|| format!("granting {database}"))?;
    let inside = cluster.admin(database).await?;
    let hex: String = context_key.iter().map(|b| format!("{b:02x}")).collect();
    inside
        .batch_execute(&format!(
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC;
             GRANT USAGE ON SCHEMA public TO {r};
             GRANT USAGE, CREATE ON SCHEMA public TO {o};
             SET ROLE {o};
             {PGTENANT_SQL};
             SELECT pgtenant.install_key('\\x{hex}'::bytea);
             {seed};
             RESET ROLE;"
        ))
        .await
        .with_context(|| format!("installing pgtenant into {database}"))?;
    Ok(())
}

/// A login role with no attribute that reaches beyond one database, and
/// a database owned by whoever `admin` is (not by the role).
async fn login_role_and_database(
    admin: &tokio_postgres::Client,
    role: &str,
    password: &str,
    database: &str,
) -> anyhow::Result<()> {
    admin
        .batch_execute(&format!(
            "CREATE ROLE {} LOGIN PASSWORD {} NOSUPERUSER NOCREATEDB NOCREATEROLE \
             NOBYPASSRLS NOREPLICATION",
            ident(role),
            literal(password)
        ))
        .await
        .with_context(|| format!("creating role {role}"))?;
    // CREATE DATABASE runs alone: not inside a multi-statement string.
    admin
        .batch_execute(&format!("CREATE DATABASE {}", ident(database)))
        .await
        .with_context(|| format!("creating database {database}"))?;
    Ok(())
}

/// A quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted SQL string literal (standard_conforming_strings, the default).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
