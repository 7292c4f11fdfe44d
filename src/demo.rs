//! `pgtenant demo`: the newcomer's one command. Starts a throwaway
//! PostgreSQL, creates a database for each of two large tenants and one
//! shared database with row-level security for several small ones, each
//! placement with its own backend login role (`provision.rs`), runs the
//! proxy in front of them and prints `psql` connection strings.
//! Ctrl-C stops the proxy and PostgreSQL and removes the data.

use crate::config;
use crate::pgcluster::{HostAuth, PgCluster};
use crate::provision::{backend_role, dedicated_database, shared_database, tenant_database};
use anyhow::Context;
use tokio_util::sync::CancellationToken;

const SAMPLE_SQL: &str = include_str!("../sql/demo_tenant.sql");
const SHARED_SQL: &str = include_str!("../sql/demo_shared.sql");
/// Tenants with a dedicated database in the demo.
pub const DEDICATED: &[&str] = &["acme", "initech"];
/// Tenants placed on the shared database.
pub const SHARED: &[&str] = &["globex", "umbrella", "hooli", "stark"];
/// The shared database, the owner of its tables and its backend role.
const SHARED_DB: &str = "app_shared";
const SHARED_OWNER: &str = "app_owner";
const SHARED_ROLE: &str = "pgt_shared";

/// Creates the demo's databases on `pg` (through `admin`, a superuser
/// connection), each with its own backend login role and a password made
/// up here, and returns the proxy config for them, listening on `port`.
/// The tests run this same setup.
pub async fn setup(
    pg: &PgCluster,
    admin: &tokio_postgres::Client,
    port: u16,
) -> anyhow::Result<String> {
    let password = || {
        format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        )
    };
    let shared_pw = password();
    // The proxy's secret (beside the config), from which the shared
    // placement's context key derives: registered in its database here.
    let secret_file = pg.dir().join(crate::credentials::secret::DEFAULT_FILE);
    let secret = crate::credentials::secret::AuthSecret::load_or_create(&secret_file)
        .map_err(anyhow::Error::msg)?;
    let rows: String = SHARED
        .iter()
        .map(|t| {
            format!(
                "INSERT INTO notes (tenant_id, body) VALUES \
                 ('{t}', '{t} shares a database, and sees only its own rows'), \
                 ('{t}', 'only {t} can read this row');\n"
            )
        })
        .collect();
    shared_database(
        pg,
        admin,
        SHARED_DB,
        SHARED_OWNER,
        SHARED_ROLE,
        &shared_pw,
        &secret.context_key("shared"),
        &SHARED_SQL
            .replace(":rows", &rows)
            .replace(":shared_role", SHARED_ROLE),
    )
    .await?;
    let tls = demo_certificates(pg.dir())?;
    let mut toml = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\ndefault_placement = \"shared\"\n\
         secret_file = \"{}\"\nsni_suffix = \"{SNI_SUFFIX}\"\n\n{tls}\n\
         [placements.shared]\nurl = \"{}\"\nisolation = \"rls\"\npool_size = 10\n\n",
        secret_file.display(),
        pg.url(SHARED_ROLE, &shared_pw, SHARED_DB)
    );
    for t in DEDICATED {
        let (role, db, pw) = (backend_role(t), tenant_database(t), password());
        dedicated_database(
            pg,
            admin,
            &db,
            &role,
            &pw,
            &SAMPLE_SQL.replace(":tenant", t),
        )
        .await?;
        toml.push_str(&format!(
            "[placements.{t}_db]\nurl = \"{}\"\nisolation = \"database\"\npool_size = 5\n\n\
             [tenants.{t}]\nplacement = \"{t}_db\"\nusers = {{ app = \"{t}-secret\" }}\n\n",
            pg.url(&role, &pw, &db)
        ));
    }
    for t in SHARED {
        toml.push_str(&format!(
            "[tenants.{t}]\nusers = {{ app = \"{t}-secret\" }}\n\n"
        ));
    }
    Ok(toml)
}

/// Tenants are named by TLS server name under this suffix in the demo
/// (`acme.db.localhost`; the connection string gives the address, so no
/// DNS is needed).
const SNI_SUFFIX: &str = "db.localhost";

/// A throwaway CA and a wildcard certificate for `*.db.localhost`, written
/// beside the config; the `[tls]` table that serves them.
fn demo_certificates(dir: &std::path::Path) -> anyhow::Result<String> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "pgtenant demo CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let cert =
        rcgen::CertificateParams::new(vec![format!("*.{SNI_SUFFIX}"), "localhost".to_string()])?
            .signed_by(&key, &issuer)?;
    let write = |name: &str, text: String| -> anyhow::Result<std::path::PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    write("demo-ca.crt", ca_cert.pem())?;
    let cert = write("demo-server.crt", cert.pem())?;
    let key = write("demo-server.key", key.serialize_pem())?;
    Ok(format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    ))
}

pub async fn run(port: u16) -> anyhow::Result<()> {
    eprintln!("starting a throwaway PostgreSQL...");
    let pg = tokio::task::spawn_blocking(|| PgCluster::start(HostAuth::ScramSha256))
        .await
        .context("starting PostgreSQL")??;
    let admin = pg.admin("postgres").await?;
    let toml = setup(&pg, &admin, port).await?;
    let config_path = pg.dir().join("pgtenant-demo.toml");
    std::fs::write(&config_path, &toml)?;
    let (cfg, src) = config::load_file(&config_path)?;
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))
        .with_context(|| format!("port {port} is taken; try `pgtenant demo --port N`"))?;

    println!(
        "\npgtenant demo is running (config: {})\n",
        config_path.display()
    );
    println!("Tenants with their own database:");
    for t in DEDICATED {
        println!(
            "  psql \"postgres://app.{t}:{t}-secret@127.0.0.1:{port}/{t}\" -c 'select * from notes'"
        );
    }
    println!("\nTenants on the shared database, separated by row-level security:");
    for t in SHARED {
        println!(
            "  psql \"postgres://app.{t}:{t}-secret@127.0.0.1:{port}/{t}\" -c 'select * from notes'"
        );
    }
    println!(
        "\nThe same tenant via options: psql \"host=127.0.0.1 port={port} user=app dbname=app options=tenant=acme password=acme-secret\""
    );
    println!(
        "\nOver TLS, the tenant named by the server name (certificate checked against the demo's CA):\n  \
         psql \"host=acme.{SNI_SUFFIX} hostaddr=127.0.0.1 port={port} user=app password=acme-secret dbname=app \
         sslmode=verify-full sslrootcert={}\" -c 'select * from notes'",
        pg.dir().join("demo-ca.crt").display()
    );
    println!("Press Ctrl-C to stop and remove everything.\n");

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("\nstopping...");
        stop.cancel();
    });
    let result = crate::run(cfg, src, listener, shutdown).await;
    drop(admin);
    drop(pg); // stops PostgreSQL and removes its folder
    eprintln!("demo stopped; throwaway data removed");
    result
}
