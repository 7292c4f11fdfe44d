//! The `pgtenant` command: `serve` (the default), `check`, `demo` and
//! `context-key`.
//! Parses arguments, sets up logging and signals, then calls the library.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc's malloc: a client's login allocates and
/// frees dozens of blocks (its session future, buffers, startup strings),
/// and glibc's bookkeeping for them (free lists, consolidation) was about
/// a quarter of the login path's user-space instructions (callgrind,
/// `pgbench -S -C`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pgtenant",
    version,
    about = "PostgreSQL proxy for multi-tenant SaaS"
)]
struct Cli {
    /// Config file (for running the proxy without a subcommand).
    #[arg(short = 'c', long = "config", global = true, env = "PGTENANT_CONFIG")]
    config: Option<PathBuf>,
    /// Log line format: `text` for people, `json` (one object per line,
    /// with the connection's span fields) for log pipelines.
    #[arg(
        long = "log-format",
        global = true,
        env = "PGTENANT_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy (the default).
    Serve,
    /// Validate a config file and report what is wrong, by key and line.
    Check,
    /// Start a throwaway PostgreSQL with demo tenants and the proxy in
    /// front of it; Ctrl-C stops and removes everything.
    Demo {
        /// Port for the proxy.
        #[arg(long, default_value_t = 6432)]
        port: u16,
    },
    /// Print the statement that registers an `isolation = "rls"`
    /// placement's context key in its database (run it there as the
    /// owner of schema pgtenant). Creates the secret file if missing.
    ContextKey {
        /// The placement, as named in the config.
        placement: String,
    },
    /// Print a SCRAM-SHA-256 verifier for a password, to put in the config
    /// instead of the password (`users`, `[operators]`, `[admin] users`).
    /// Reads the password from the terminal without echo (twice), or one
    /// line from standard input when it is not a terminal.
    HashPassword {
        /// PBKDF2 rounds (PostgreSQL's default is 4096); more makes each
        /// login, and each guess from a stolen config, dearer.
        #[arg(long, default_value_t = pgtenant::credentials::scram::ITERATIONS,
              value_parser = clap::value_parser!(u32).range(4096..=10_000_000))]
        iterations: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGTENANT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colors only for a terminal (and not under NO_COLOR): a log file
        // or journal gets plain text, and each client's span keeps its
        // fields in half the bytes (they are stored formatted, escapes
        // included).
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        );
    // Every line a client connection logs carries its id, address, user
    // and tenant (`log_context`): `client{..}` in text, `"span"` in JSON.
    use tracing_subscriber::fmt::format;
    match cli.log_format {
        LogFormat::Text => logs
            .event_format(pgtenant::log_context::Format::text(
                format::Format::default(),
            ))
            .init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .event_format(pgtenant::log_context::Format::json(
                format::Format::default()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
            ))
            .init(),
    }
    let result = match cli.command.unwrap_or(Cmd::Serve) {
        Cmd::Check => check(cli.config),
        Cmd::Serve => serve(cli.config),
        Cmd::ContextKey { placement } => context_key(cli.config, &placement),
        Cmd::HashPassword { iterations } => hash_password(iterations),
        Cmd::Demo { port } => {
            control_runtime().and_then(|rt| rt.block_on(pgtenant::demo::run(port)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgtenant: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn require(config: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    config.ok_or_else(|| anyhow::anyhow!("no config file: pass -c FILE (or run `pgtenant demo`)"))
}

fn check(config: Option<PathBuf>) -> anyhow::Result<()> {
    let path = require(config)?;
    let (cfg, src) = pgtenant::config::load_file(&path)?;
    if let Some(w) = pgtenant::config::secret_exposure::exposure_warning(&path, &cfg) {
        eprintln!("warning: {w}");
    }
    // Checks the secret file without creating it (`serve` does that).
    use pgtenant::credentials::secret::{AuthSecret, SecretLocation};
    if let SecretLocation::File(file) = SecretLocation::of(&cfg)
        && AuthSecret::load(&file)
            .map_err(|m| src.error("proxy.secret_file", m))?
            .is_none()
    {
        eprintln!(
            "note: the secret file {} does not exist yet; the proxy creates it at start",
            file.display()
        );
    }
    // Without deriving verifiers from plaintext passwords: that cannot
    // fail, and took seconds per thousand tenants.
    pgtenant::catalog::Catalog::check_config(&cfg, &src)?;
    for (name, p) in &cfg.placements {
        let tenants: Vec<&str> = cfg
            .tenants
            .iter()
            .filter(|(_, t)| {
                t.placement
                    .as_deref()
                    .or(cfg.proxy.default_placement.as_deref())
                    == Some(name)
            })
            .map(|(t, _)| t.as_str())
            .collect();
        let shown = tenants
            .iter()
            .take(8)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        let more = if tenants.len() > 8 { ", ..." } else { "" };
        let store = match (p.isolation, p.context_store) {
            (pgtenant::config::Isolation::Rls, pgtenant::config::ContextStore::Setting) => {
                " (context in the setting backtrace_functions)"
            }
            (pgtenant::config::Isolation::Rls, pgtenant::config::ContextStore::Sequences) => {
                " (context in sequences)"
            }
            _ => "",
        };
        println!(
            "placements.{name}: isolation {}{store}, {} tenant(s) ({shown}{more})",
            p.isolation.as_str(),
            tenants.len()
        );
    }
    for (name, o) in &cfg.operators {
        println!(
            "operators.{name}: may reach {} (options operator=PLACEMENT)",
            o.placements.join(", ")
        );
    }
    if let Some(tls) = &cfg.tls {
        pgtenant::tls::ServerTls::load(tls, &cfg.base_dir).map_err(|m| src.error("tls", m))?;
    }
    // `serve` raises its soft limit to the hard one, so that is the figure
    // to compare with (as seen from this shell; a service manager may set
    // another).
    match pgtenant::open_files::current() {
        Ok(limit) => {
            if let Some(warning) = pgtenant::open_files::shortfall(&cfg, limit.hard) {
                eprintln!(
                    "warning: {warning} (the limit compared is this shell's hard limit, which pgtenant raises its soft limit to)"
                );
            }
        }
        Err(e) => eprintln!("warning: cannot read the open files limit: {e}"),
    }
    println!(
        "{}: ok ({} placements, {} tenants)",
        path.display(),
        cfg.placements.len(),
        cfg.tenants.len()
    );
    Ok(())
}

fn hash_password(iterations: u32) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("password: ")?;
        let again = rpassword::prompt_password("again: ")?;
        anyhow::ensure!(first == again, "the two passwords differ");
        first
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    anyhow::ensure!(!password.is_empty(), "an empty password cannot log in");
    // 16 random bytes, as PostgreSQL's own verifiers.
    let salt: [u8; 16] = rand::random();
    let verifier =
        pgtenant::credentials::scram::Verifier::with_iterations(&password, &salt, iterations);
    let text = verifier
        .to_pg_authid()
        .ok_or_else(|| anyhow::anyhow!("no verifier"))?;
    println!("{text}");
    Ok(())
}

fn context_key(config: Option<PathBuf>, placement: &str) -> anyhow::Result<()> {
    let path = require(config)?;
    let (cfg, src) = pgtenant::config::load_file(&path)?;
    match cfg.placements.get(placement) {
        Some(p) if p.isolation == pgtenant::config::Isolation::Rls => {}
        Some(_) => anyhow::bail!("placements.{placement} does not have isolation = \"rls\""),
        None => anyhow::bail!("no [placements.{placement}] in {}", path.display()),
    }
    let secret = pgtenant::credentials::secret::AuthSecret::for_config(&cfg)
        .map_err(|m| src.error("proxy.secret_file", m))?;
    let ctx = pgtenant::pool::TenantContext::new(
        secret.context_key(placement),
        None,
        pgtenant::config::ContextStore::Sequences,
    );
    println!("{}", ctx.install_statement());
    Ok(())
}

fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let path = require(config)?;
    let (cfg, src) = pgtenant::config::load_file(&path)?;
    if let Some(w) = pgtenant::config::secret_exposure::exposure_warning(&path, &cfg) {
        tracing::warn!("{w}");
    }
    control_runtime()?.block_on(async move {
        let listener = std::net::TcpListener::bind(&cfg.proxy.listen)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.proxy.listen))?;
        tracing::info!("listening on {}", cfg.proxy.listen);
        let shutdown = CancellationToken::new();
        // Caught from the start, so that its default action (terminate)
        // cannot take the proxy down while it starts; followed once the
        // state exists.
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| anyhow::anyhow!("cannot install the SIGHUP handler: {e}"))?;
        tokio::spawn(stop_on_signal(shutdown.clone()));
        pgtenant::run_with(cfg, src, listener, shutdown, Some(path), move |state| {
            tokio::spawn(reload_on_hangup(hangups, Arc::clone(state)));
        })
        .await
    })
}

/// SIGHUP re-reads the config file (`pgtenant::reload`, which logs the
/// outcome); one reload at a time, the next signal after it.
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    state: Arc<pgtenant::state::ProxyState>,
) {
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        // The outcome is logged by `reload`; the old config stays on error.
        let _ = pgtenant::reload::reload(&state).await;
    }
}

/// The runtime for signals and startup; the data plane has its own
/// worker threads.
fn control_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// SIGTERM or SIGINT starts a graceful shutdown.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing running transactions"),
        _ = int.recv() => tracing::info!("SIGINT: finishing running transactions"),
    }
    shutdown.cancel();
}
