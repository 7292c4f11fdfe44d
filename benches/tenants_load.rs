//! Many tenants through one proxy: `--tenants` tenants with
//! `--clients-per-tenant` clients each, every client logging in as its own
//! tenant (user `USER.TENANT`, or `options=tenant=TENANT`) and running
//! pgbench's select-only transaction (`SELECT abalance FROM
//! pgbench_accounts WHERE aid = $1`, a random aid) until the time is up.
//! Prints total TPS and latency percentiles as one `RESULT key=value ...`
//! line and as a table. pgbench cannot do this: it takes one connection
//! string, so one tenant.
//!
//! Cheap on the client side, so that it leaves the CPU to the proxy and
//! PostgreSQL it measures: `--threads` OS threads (default 1), each a
//! current-thread tokio runtime serving its share of the clients.
//!
//!     cargo bench --bench tenants_load -- --tenants 1000 --duration 20s
//!
//! Every option can also come from a `LOAD_*` environment variable
//! (`--help` lists them). `benches/many-tenants.sh` drives it.

use clap::{Parser, ValueEnum};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, Statement};

const SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
/// Rows per pgbench scale unit in pgbench_accounts.
const ACCOUNTS_PER_SCALE: u32 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// One Query message with the aid written in (pgbench -M simple).
    Simple,
    /// Unnamed Parse/Bind/Execute/Sync each time (pgbench -M extended).
    Extended,
    /// A named statement prepared once per client (pgbench -M prepared).
    Prepared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Via {
    /// User name `USER.TENANT` (the proxy's default separator).
    User,
    /// Startup parameter `options=tenant=TENANT`.
    Options,
}

#[derive(Parser, Debug)]
#[command(
    name = "tenants_load",
    about = "Select-only load through pgtenant from many tenants"
)]
struct Args {
    /// The proxy's address.
    #[arg(long, env = "LOAD_ADDR", default_value = "127.0.0.1:6432")]
    addr: std::net::SocketAddr,
    /// Tenant names: `{}` is replaced by the tenant's number, 0 to tenants-1.
    #[arg(long, env = "LOAD_TENANT_PATTERN", default_value = "t{}")]
    tenant_pattern: String,
    /// How each client names its tenant.
    #[arg(long, env = "LOAD_VIA", value_enum, default_value_t = Via::User)]
    via: Via,
    /// User name, without the tenant.
    #[arg(long, env = "LOAD_USER", default_value = "app")]
    user: String,
    /// Password of that user in every tenant (empty: none sent).
    #[arg(long, env = "LOAD_PASSWORD", default_value = "")]
    password: String,
    /// Database name sent at startup.
    #[arg(long, env = "LOAD_DBNAME", default_value = "bench")]
    dbname: String,
    /// Number of tenants.
    #[arg(long, env = "LOAD_TENANTS", default_value_t = 1)]
    tenants: u32,
    /// Clients per tenant.
    #[arg(long, env = "LOAD_CLIENTS_PER_TENANT", default_value_t = 1)]
    clients_per_tenant: u32,
    /// Measured time, after the warm-up ("20s", "1m").
    #[arg(long, env = "LOAD_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time run but not measured, once every client is connected.
    #[arg(long, env = "LOAD_WARMUP", default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Transactions per client instead of a duration: every one is
    /// measured, without warm-up (for counting instructions, whose
    /// start-up cancels out between two such runs).
    #[arg(long, env = "LOAD_TRANSACTIONS")]
    transactions: Option<u64>,
    /// Query protocol.
    #[arg(long, env = "LOAD_PROTOCOL", value_enum, default_value_t = Protocol::Simple)]
    protocol: Protocol,
    /// pgbench scale of the database (aids are drawn from 1 to 100,000 x scale).
    #[arg(long, env = "LOAD_SCALE", default_value_t = 1)]
    scale: u32,
    /// OS threads, each running its share of the clients.
    #[arg(long, env = "LOAD_THREADS", default_value_t = 1)]
    threads: usize,
    /// Logins in flight at once (the proxy caps logins per address, 128 by default).
    #[arg(long, env = "LOAD_CONNECT_CONCURRENCY", default_value_t = 32)]
    connect_concurrency: usize,
    /// The proxy's process id: its CPU time over the measured window is
    /// reported (per transaction, a figure less shaken by other load on
    /// the machine than TPS).
    #[arg(long, env = "LOAD_PROXY_PID")]
    proxy_pid: Option<u32>,
    /// A label copied into the RESULT line.
    #[arg(long, env = "LOAD_LABEL", default_value = "")]
    label: String,
    /// Added by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// When the run starts being measured and when it ends, shared by every
/// thread once all of them have connected.
struct Window {
    measure_from: Instant,
    end: Instant,
}

/// What every thread reports into.
struct Shared {
    window: OnceLock<Window>,
    failed: AtomicBool,
    /// Every client has finished.
    done: AtomicBool,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(what);
    }
}

/// What one thread measured: its clients' latency samples (microseconds)
/// and how long their logins took.
struct ThreadResult {
    latencies: Vec<u32>,
    connect: Duration,
}

fn main() {
    let args = Arc::new(Args::parse());
    if args.tenants == 0 || args.clients_per_tenant == 0 || args.threads == 0 {
        eprintln!("tenants_load: --tenants, --clients-per-tenant and --threads must be at least 1");
        std::process::exit(2);
    }
    if !args.tenant_pattern.contains("{}") && args.tenants > 1 {
        eprintln!("tenants_load: --tenant-pattern needs a {{}} for more than one tenant");
        std::process::exit(2);
    }
    let clients = args.tenants as usize * args.clients_per_tenant as usize;
    raise_open_files(clients);
    let threads = args.threads.min(clients);
    let shared = Arc::new(Shared {
        window: OnceLock::new(),
        failed: AtomicBool::new(false),
        done: AtomicBool::new(false),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (args, shared, barrier) =
                (Arc::clone(&args), Arc::clone(&shared), Arc::clone(&barrier));
            // Clients t, t + threads, t + 2 x threads, ...
            let mine: Vec<usize> = (t..clients).step_by(threads).collect();
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || run_thread(&args, &shared, &barrier, mine, threads))
                .expect("spawn a load thread")
        })
        .collect();
    let watcher = {
        let (shared, pid) = (Arc::clone(&shared), args.proxy_pid);
        std::thread::spawn(move || cpu_use(pid, &shared))
    };
    let mut latencies = Vec::new();
    let mut connect = Duration::ZERO;
    for h in handles {
        let r = h.join().expect("a load thread panicked");
        latencies.extend_from_slice(&r.latencies);
        connect = connect.max(r.connect);
    }
    if shared.failed.load(Ordering::Relaxed) {
        eprintln!(
            "tenants_load: could not connect every client: {}",
            shared
                .first_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_deref()
                .unwrap_or("?")
        );
        std::process::exit(1);
    }
    let measured = match (args.transactions, shared.window.get()) {
        (Some(_), Some(w)) => w.measure_from.elapsed(),
        _ => args.duration,
    };
    shared.done.store(true, Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed);
    let cpu = watcher.join().unwrap_or_default();
    report(
        &args,
        clients,
        connect,
        measured,
        &mut latencies,
        errors,
        cpu,
    );
    if errors > 0 {
        eprintln!(
            "tenants_load: {errors} clients failed; first: {}",
            shared
                .first_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_deref()
                .unwrap_or("?")
        );
        std::process::exit(1);
    }
}

fn run_thread(
    args: &Args,
    shared: &Shared,
    barrier: &Barrier,
    mine: Vec<usize>,
    threads: usize,
) -> ThreadResult {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let started = Instant::now();
    let connected = rt.block_on(connect_all(args, shared, mine, threads));
    let connect = started.elapsed();
    // Every thread's clients are connected before anyone starts, so that
    // logins do not run inside the measured window.
    barrier.wait();
    if shared.failed.load(Ordering::Relaxed) {
        return ThreadResult {
            latencies: Vec::new(),
            connect,
        };
    }
    let window = shared.window.get_or_init(|| {
        let now = Instant::now();
        match args.transactions {
            // Until done: a day is as good as never.
            Some(_) => Window {
                measure_from: now,
                end: now + Duration::from_secs(86_400),
            },
            None => Window {
                measure_from: now + args.warmup,
                end: now + args.warmup + args.duration,
            },
        }
    });
    let plan = Plan {
        protocol: args.protocol,
        aids: args.scale.max(1) * ACCOUNTS_PER_SCALE,
        measure_from: window.measure_from,
        end: window.end,
        limit: args.transactions.unwrap_or(u64::MAX),
    };
    let latencies = rt.block_on(async {
        let tasks: Vec<_> = connected
            .into_iter()
            .map(|(i, client, stmt)| {
                let seed = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                tokio::spawn(transactions(client, stmt, seed, plan))
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            match task.await {
                Ok((lat, err)) => {
                    all.extend_from_slice(&lat);
                    if let Some(e) = err {
                        shared.error(e);
                    }
                }
                Err(e) => shared.error(format!("client task: {e}")),
            }
        }
        all
    });
    ThreadResult { latencies, connect }
}

/// Logs in this thread's clients, at most `connect_concurrency / threads`
/// at once; on any failure marks the run failed.
async fn connect_all(
    args: &Args,
    shared: &Shared,
    mine: Vec<usize>,
    threads: usize,
) -> Vec<(usize, Client, Option<Statement>)> {
    let limit = Arc::new(tokio::sync::Semaphore::new(
        (args.connect_concurrency / threads).max(1),
    ));
    let tasks: Vec<_> = mine
        .into_iter()
        .map(|i| {
            let limit = Arc::clone(&limit);
            let config = client_config(args, i);
            let protocol = args.protocol;
            tokio::spawn(async move {
                let _permit = limit.acquire_owned().await.map_err(|e| e.to_string())?;
                connect_one(config, protocol).await.map(|(c, s)| (i, c, s))
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        let failure = match task.await {
            Ok(Ok(c)) => {
                out.push(c);
                continue;
            }
            Ok(Err(e)) => e,
            Err(e) => e.to_string(),
        };
        shared.failed.store(true, Ordering::Relaxed);
        shared.error(failure);
    }
    out
}

fn client_config(args: &Args, i: usize) -> tokio_postgres::Config {
    let tenant_no = i / args.clients_per_tenant as usize;
    let tenant = args.tenant_pattern.replace("{}", &tenant_no.to_string());
    let mut config = tokio_postgres::Config::new();
    config
        .host(args.addr.ip().to_string())
        .port(args.addr.port())
        .dbname(&args.dbname)
        .application_name("tenants_load")
        .connect_timeout(Duration::from_secs(30));
    match args.via {
        Via::User => config.user(format!("{}.{tenant}", args.user)),
        Via::Options => config.user(&args.user).options(format!("tenant={tenant}")),
    };
    if !args.password.is_empty() {
        config.password(&args.password);
    }
    config
}

async fn connect_one(
    config: tokio_postgres::Config,
    protocol: Protocol,
) -> Result<(Client, Option<Statement>), String> {
    let who = config.get_user().unwrap_or("?").to_string();
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| format!("{who}: connect: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let stmt = match protocol {
        Protocol::Prepared => Some(
            client
                .prepare_typed(SELECT, &[Type::INT4])
                .await
                .map_err(|e| format!("{who}: prepare: {e}"))?,
        ),
        _ => None,
    };
    Ok((client, stmt))
}

/// What every client runs.
#[derive(Clone, Copy)]
struct Plan {
    protocol: Protocol,
    /// Accounts to draw from (1 to aids).
    aids: u32,
    measure_from: Instant,
    end: Instant,
    /// Transactions per client at most.
    limit: u64,
}

/// One client's loop: transactions until `end` or `limit` of them; the
/// latencies of those that started at or after `measure_from`, and the
/// error that stopped it, if any.
async fn transactions(
    client: Client,
    stmt: Option<Statement>,
    seed: u64,
    plan: Plan,
) -> (Vec<u32>, Option<String>) {
    let Plan {
        protocol,
        aids,
        measure_from,
        end,
        limit,
    } = plan;
    let mut rng = XorShift(seed | 1);
    let mut latencies = Vec::with_capacity(1024);
    let mut sql = String::with_capacity(SELECT.len() + 16);
    for _ in 0..limit {
        let start = Instant::now();
        if start >= end {
            return (latencies, None);
        }
        let aid = (rng.next() % u64::from(aids)) as i32 + 1;
        let rows = match protocol {
            Protocol::Simple => {
                sql.clear();
                let _ = write!(
                    sql,
                    "SELECT abalance FROM pgbench_accounts WHERE aid = {aid}"
                );
                client.simple_query(&sql).await.map(|msgs| {
                    msgs.iter()
                        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
                        .count()
                })
            }
            Protocol::Extended => client
                .query_typed(SELECT, &[(&aid, Type::INT4)])
                .await
                .map(|r| r.len()),
            Protocol::Prepared => match &stmt {
                Some(s) => client.query(s, &[&aid]).await.map(|r| r.len()),
                None => return (latencies, Some("no prepared statement".into())),
            },
        };
        match rows {
            Ok(1) => {}
            Ok(n) => return (latencies, Some(format!("aid {aid}: {n} rows, expected 1"))),
            Err(e) => return (latencies, Some(format!("query: {e}"))),
        }
        if start >= measure_from {
            latencies.push(start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        }
    }
    (latencies, None)
}

/// CPU time spent in the measured window (once every thread has
/// connected): the proxy's (process `pid`, if given) and this process's.
#[derive(Default)]
struct CpuUse {
    proxy: Option<Duration>,
    load: Option<Duration>,
}

fn cpu_use(pid: Option<u32>, shared: &Shared) -> CpuUse {
    let window = loop {
        if let Some(w) = shared.window.get() {
            break w;
        }
        if shared.failed.load(Ordering::Relaxed) {
            return CpuUse::default();
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    std::thread::sleep(
        window
            .measure_from
            .saturating_duration_since(Instant::now()),
    );
    let before = (pid.and_then(cpu_ticks), own_cpu());
    while Instant::now() < window.end && !shared.done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let after = (pid.and_then(cpu_ticks), own_cpu());
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let proxy = match (before.0, after.0) {
        (Some(b), Some(a)) if hz > 0 => Some(Duration::from_secs_f64(
            a.saturating_sub(b) as f64 / hz as f64,
        )),
        _ => None,
    };
    CpuUse {
        proxy,
        load: Some(after.1.saturating_sub(before.1)),
    }
}

/// This process's user + system CPU time.
fn own_cpu() -> Duration {
    // SAFETY: `usage` is a valid rusage for getrusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// utime + stime of `pid`, in clock ticks (/proc/PID/stat fields 14-15).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it do not.
    let mut rest = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    Some(rest.next()?.parse::<u64>().ok()? + rest.next()?.parse::<u64>().ok()?)
}

/// xorshift64*: a few instructions per aid, no shared state.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn report(
    args: &Args,
    clients: usize,
    connect: Duration,
    measured: Duration,
    latencies: &mut [u32],
    errors: u64,
    cpu: CpuUse,
) {
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let idx = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        f64::from(latencies[idx]) / 1000.0
    };
    let secs = measured.as_secs_f64();
    let txns = latencies.len();
    let tps = txns as f64 / secs;
    let (p50, p95, p99) = (pct(0.50), pct(0.95), pct(0.99));
    let max = latencies
        .last()
        .map_or(f64::NAN, |&m| f64::from(m) / 1000.0);
    let protocol = format!("{:?}", args.protocol).to_lowercase();
    let pct_of = |d: Option<Duration>| d.map_or(f64::NAN, |d| 100.0 * d.as_secs_f64() / secs);
    let (cpu_pct, load_pct) = (pct_of(cpu.proxy), pct_of(cpu.load));
    let cpu_us = cpu
        .proxy
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e6 / txns.max(1) as f64);
    let label = if args.label.is_empty() {
        "-"
    } else {
        args.label.as_str()
    };
    println!(
        "RESULT label={label} tenants={} clients_per_tenant={} clients={clients} protocol={protocol} \
         duration_s={secs:.1} txns={txns} tps={tps:.1} p50_ms={p50:.3} p95_ms={p95:.3} p99_ms={p99:.3} \
         max_ms={max:.3} errors={errors} connect_s={:.2} proxy_cpu_pct={cpu_pct:.1} \
         proxy_cpu_us_per_txn={cpu_us:.2} load_cpu_pct={load_pct:.1}",
        args.tenants,
        args.clients_per_tenant,
        connect.as_secs_f64()
    );
    println!(
        "{:<24} {:>8} {:>8} {:>9} {:>10} {:>10} {:>8} {:>8} {:>8} {:>7} {:>12}",
        "run",
        "tenants",
        "clients",
        "protocol",
        "txns",
        "TPS",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "proxy us/txn"
    );
    println!(
        "{label:<24} {:>8} {clients:>8} {protocol:>9} {txns:>10} {tps:>10.0} {p50:>8.2} {p95:>8.2} {p99:>8.2} {errors:>7} {cpu_us:>12.1}",
        args.tenants
    );
}

/// One descriptor per client, plus the runtime's own: raise the soft
/// limit to the hard one, as the proxy does, and warn if that is short.
fn raise_open_files(clients: usize) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit for the calls to read and write.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return;
        }
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
    if (r.rlim_cur as usize) < clients + 64 {
        eprintln!(
            "tenants_load: open files limit {} may be short for {clients} clients",
            r.rlim_cur
        );
    }
}
