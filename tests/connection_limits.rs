//! Connections that never log in are bounded (issue 17, point 6; audit
//! H4). A flood of silent sockets and stalled SCRAM exchanges from a few
//! addresses must not lock out a client of another tenant, with the proxy
//! started under the usual service limit of 1,024 open files; the
//! unauthenticated caps refuse at accept with 53300; a stalled login never
//! holds an authenticated client's slot; the startup packet has its own
//! short timeout; and a tenant without a limit of its own gets the
//! default one.

mod common;

use common::raw::{self, Read};
use common::{TestPg, TestProxy, sqlstate};
use pgtenant::pgcluster::HostAuth;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

const TENANTS: [&str; 2] = ["acme", "globex"];

/// Silent sockets and stalled SCRAM exchanges in the flood, and the
/// loopback addresses they come from (127.0.0.2-17 and 127.0.0.20-21).
/// With the default caps, the 16 silent addresses (125 sockets each, under
/// the per-address cap of 128) and the 2 stalled ones (250 each, over it)
/// fill the general part of the total (1,800 of 2,000) between them: the
/// real client can only get in through the reserve.
const SILENT: usize = 2_000;
const SILENT_ADDRESSES: u8 = 16;
const STALLED: usize = 500;
const STALLED_ADDRESSES: u8 = 2;

/// The usual service default the audit reproduced the lock-out under.
const SERVICE_SOFT_LIMIT: u64 = 1024;

/// A test that cannot run here: skipped on a developer's machine, a
/// failure under CI.
fn cannot_run(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("cannot run under CI: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// Raises this process's soft open-files limit to its hard limit;
/// returns the new soft limit. (By hand rather than through the crate, so
/// that this file also builds against the code before the fix.)
fn raise_own_open_files_limit() -> std::io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit for the calls to read and write.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        r.rlim_cur = r.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(r.rlim_cur)
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection to the proxy from `from` (any port).
async fn connect_from(from: IpAddr, port: u16) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(SocketAddr::new(loopback(1), port)).await
}

/// Reads until the proxy closes `s`, or `stop`.
async fn hold_until_closed(s: &mut TcpStream, stop: &CancellationToken) {
    let mut buf = [0u8; 256];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}

/// What the attackers see.
#[derive(Default)]
struct Flood {
    /// Tasks whose first connection attempt is over (held or refused).
    first_round: AtomicUsize,
    /// Silent sockets and stalled exchanges the proxy holds open now.
    silent_held: AtomicUsize,
    stalled_held: AtomicUsize,
    /// Attempts refused with 53300, or closed, or not connected.
    refused: AtomicUsize,
    refused_53300: AtomicUsize,
}

/// A socket that never sends a byte: connects, waits for the proxy to
/// close it, connects again a second later; until `stop`.
async fn silent_attacker(from: IpAddr, port: u16, flood: Arc<Flood>, stop: CancellationToken) {
    let mut first = true;
    while !stop.is_cancelled() {
        match tokio::time::timeout(Duration::from_secs(5), connect_from(from, port)).await {
            Ok(Ok(mut s)) => {
                // Refused at accept: an error then the close at once (within
                // a second, allowing for a backlog under load).
                let mut head = [0u8; 64];
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut head)).await {
                    Err(_) => {
                        flood.silent_held.fetch_add(1, Ordering::SeqCst);
                        if std::mem::take(&mut first) {
                            flood.first_round.fetch_add(1, Ordering::SeqCst);
                        }
                        hold_until_closed(&mut s, &stop).await;
                        flood.silent_held.fetch_sub(1, Ordering::SeqCst);
                    }
                    Ok(r) => {
                        if matches!(r, Ok(n) if n > 0 && head[0] == b'E'
                            && head[..n].windows(5).any(|w| w == b"53300"))
                        {
                            flood.refused_53300.fetch_add(1, Ordering::SeqCst);
                        }
                        flood.refused.fetch_add(1, Ordering::SeqCst);
                        if std::mem::take(&mut first) {
                            flood.first_round.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
            _ => {
                flood.refused.fetch_add(1, Ordering::SeqCst);
                if std::mem::take(&mut first) {
                    flood.first_round.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// A SCRAM exchange that stops after the server's offer: a
/// StartupMessage for a real tenant, AuthenticationSASL read, then
/// nothing; again a second after the proxy closes it; until `stop`.
async fn stalled_attacker(from: IpAddr, port: u16, flood: Arc<Flood>, stop: CancellationToken) {
    let startup = raw::startup(3, 0, &[("user", "app.acme"), ("database", "acme")]);
    let mut first = true;
    while !stop.is_cancelled() {
        let mut held = None;
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(5), connect_from(from, port)).await
        {
            use tokio::io::AsyncWriteExt;
            if s.write_all(&startup).await.is_ok() {
                match raw::read_msg(&mut s, Duration::from_secs(5)).await {
                    Read::Msg(m) if m.tag == b'R' => held = Some(s),
                    Read::Msg(m) if m.tag == b'E' && m.code() == "53300" => {
                        flood.refused_53300.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
        }
        if std::mem::take(&mut first) {
            flood.first_round.fetch_add(1, Ordering::SeqCst);
        }
        match held {
            Some(mut s) => {
                flood.stalled_held.fetch_add(1, Ordering::SeqCst);
                hold_until_closed(&mut s, &stop).await;
                flood.stalled_held.fetch_sub(1, Ordering::SeqCst);
            }
            None => {
                flood.refused.fetch_add(1, Ordering::SeqCst);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The proxy binary, run as a service would run it; killed when dropped.
struct ProxyProcess {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl ProxyProcess {
    /// Starts `pgtenant -c config` with its soft open-files limit set to
    /// `soft` (hard limit unchanged), logging at info into `dir`.
    fn start(dir: &std::path::Path, config: &str, soft: u64) -> ProxyProcess {
        use std::os::unix::process::CommandExt;
        let path = dir.join("pgtenant.toml");
        std::fs::write(&path, config).expect("write config");
        let log = dir.join("pgtenant.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"));
        cmd.arg("-c")
            .arg(&path)
            .env("PGTENANT_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(stderr);
        // SAFETY: only async-signal-safe calls (getrlimit, setrlimit)
        // between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut r = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                r.rlim_cur = soft.min(r.rlim_max);
                if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start pgtenant");
        ProxyProcess { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Descriptors the proxy holds open now (Linux), if readable.
    fn open_files(&self) -> Option<usize> {
        let dir = std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).ok()?;
        Some(dir.count())
    }

    /// The proxy's resident memory now (Linux), as /proc reports it.
    fn rss(&self) -> Option<String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        Some(line.trim_start_matches("VmRSS:").trim().to_string())
    }

    /// The log's last lines, for a failure message.
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn conn_str(port: u16, tenant: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user=app.{tenant} password={tenant}-secret dbname={tenant} connect_timeout=10"
    )
}

/// Logs in as `tenant` and runs a query.
async fn login_and_query(port: u16, tenant: &str) -> Result<(), tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(&conn_str(port, tenant), NoTls).await?;
    let conn = tokio::spawn(conn);
    let rows = client.simple_query("SELECT 1").await?;
    assert!(!rows.is_empty());
    drop(client);
    let _ = conn.await;
    Ok(())
}

#[tokio::test]
async fn a_flood_of_logins_that_never_finish_locks_nobody_out() {
    // The flood's sockets are in this process: it needs its own limit
    // raised (the proxy under test is a child with the service default).
    let own = raise_own_open_files_limit();
    if !matches!(own, Ok(n) if n >= (SILENT + STALLED + 1000) as u64) {
        return cannot_run(&format!(
            "the flood needs {} open files in the test process; the hard limit allows {own:?}",
            SILENT + STALLED + 1000
        ));
    }
    if let Err(e) = TcpSocket::new_v4().and_then(|s| s.bind(SocketAddr::new(loopback(2), 0))) {
        return cannot_run(&format!("cannot bind a client socket to 127.0.0.2: {e}"));
    }

    let pg = TestPg::start(HostAuth::ScramSha256, &TENANTS).await;
    let port = pgtenant::pgcluster::free_port().expect("port");
    // Defaults for every limit: what the proxy does out of the box.
    let config = pg.config(&TENANTS, 4, "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = ProxyProcess::start(dir.path(), &config, SERVICE_SOFT_LIMIT);
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = login_and_query(port, "globex").await {
        assert!(
            Instant::now() < deadline,
            "the proxy did not come up: {e}\n{}",
            proxy.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let t = Instant::now();
    login_and_query(port, "globex")
        .await
        .expect("before the flood");
    let before = t.elapsed();

    let flood = Arc::new(Flood::default());
    let stop = CancellationToken::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..SILENT {
        let from = loopback(2 + (i % SILENT_ADDRESSES as usize) as u8);
        tasks.push(tokio::spawn(silent_attacker(
            from,
            port,
            Arc::clone(&flood),
            stop.clone(),
        )));
    }
    for i in 0..STALLED {
        let from = loopback(20 + (i % STALLED_ADDRESSES as usize) as u8);
        tasks.push(tokio::spawn(stalled_attacker(
            from,
            port,
            Arc::clone(&flood),
            stop.clone(),
        )));
    }
    while flood.first_round.load(Ordering::SeqCst) < SILENT + STALLED {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the flood did not get in place: {} of {} attempts over",
            flood.first_round.load(Ordering::SeqCst),
            SILENT + STALLED
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let in_place = started.elapsed();
    let silent_held = flood.silent_held.load(Ordering::SeqCst);
    let stalled_held = flood.stalled_held.load(Ordering::SeqCst);
    let proxy_files = proxy.open_files();
    let proxy_rss = proxy.rss();

    // The real client: another tenant, from its own address (127.0.0.1).
    let t = Instant::now();
    let result =
        tokio::time::timeout(Duration::from_secs(15), login_and_query(port, "globex")).await;
    let took = t.elapsed();
    println!(
        "flood in place after {in_place:?}: as the attackers see it, {silent_held} silent sockets and \
         {stalled_held} stalled SCRAM exchanges open (no answer within 1 s: this includes some still \
         in the listen backlog), {} attempts refused ({} with 53300); the proxy had {proxy_files:?} \
         files open and {proxy_rss:?} resident; a globex client logged in and ran a query in {took:?} ({before:?} before the flood)",
        flood.refused.load(Ordering::SeqCst),
        flood.refused_53300.load(Ordering::SeqCst),
    );
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!(
            "the real client could not log in during the flood: {e:?}\nproxy log:\n{}",
            proxy.log_tail()
        ),
        Err(_) => panic!(
            "the real client got no answer within 15 s during the flood\nproxy log:\n{}",
            proxy.log_tail()
        ),
    }
    assert!(
        took < Duration::from_secs(1),
        "login and query took {took:?} during the flood"
    );
    // The flood was real: the proxy held far more files than the service
    // limit it started under (a proxy that kept that limit sits at exactly
    // 1,024). How many of the 1,800 unauthenticated slots are taken when
    // this is read varies with how fast the attackers' connects are
    // accepted on a loaded machine (1,278 to 1,820 seen), so the bar is
    // the limit plus a margin, not the cap.
    let proxy_files = proxy_files.expect("/proc/PID/fd of the proxy");
    assert!(
        proxy_files as u64 >= SERVICE_SOFT_LIMIT + 128,
        "the proxy held only {proxy_files} files during the flood"
    );
    // The proxy raised its limit from the service default, and said so.
    let log = proxy.log();
    assert!(
        log.contains(&format!(
            "open files limit raised from {SERVICE_SOFT_LIMIT} to"
        )),
        "no word of the open files limit in the log:\n{}",
        proxy.log_tail()
    );
    for line in log
        .lines()
        .filter(|l| l.contains("open files") || l.contains("at accept"))
    {
        println!("proxy log: {line}");
    }
}

/// A raw SCRAM login for `tenant` from `from`, stopped after the
/// server's SASL offer (which it returns as the first message).
async fn stall_scram(port: u16, from: IpAddr, tenant: &str) -> (TcpStream, raw::Msg) {
    let mut s = connect_from(from, port).await.expect("connect");
    let user = format!("app.{tenant}");
    raw::send(
        &mut s,
        &raw::startup(3, 0, &[("user", &user), ("database", tenant)]),
    )
    .await;
    let m = raw::expect_msg(&mut s, "first answer").await;
    (s, m)
}

async fn connect(proxy: &TestProxy, tenant: &str) -> Result<Client, tokio_postgres::Error> {
    proxy
        .try_connect(&proxy.conn_str(
            &format!("app.{tenant}"),
            &format!("{tenant}-secret"),
            tenant,
        ))
        .await
}

/// Connects as `tenant` and expects to be refused.
async fn refused(proxy: &TestProxy, tenant: &str, what: &str) -> tokio_postgres::Error {
    match connect(proxy, tenant).await {
        Ok(_) => panic!("{what}: connecting as {tenant} must be refused"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn stalled_logins_hold_no_client_slot() {
    if let Err(e) = TcpSocket::new_v4().and_then(|s| s.bind(SocketAddr::new(loopback(2), 0))) {
        return cannot_run(&format!("cannot bind a client socket to 127.0.0.2: {e}"));
    }
    let pg = TestPg::start(HostAuth::ScramSha256, &TENANTS).await;
    let proxy = TestProxy::start(&pg.config(&TENANTS, 2, "max_client_connections = 2")).await;

    // More stalled exchanges than there are client slots, each offered
    // SCRAM (an attacker needs only a tenant's name for that).
    let mut stalled = Vec::new();
    for _ in 0..5 {
        let (s, m) = stall_scram(proxy.port, loopback(2), "acme").await;
        assert_eq!(m.tag, b'R', "{m:?}");
        stalled.push(s);
    }
    // They hold none of the two slots: both tenants log in.
    let acme = connect(&proxy, "acme")
        .await
        .unwrap_or_else(|e| panic!("acme during the stalls: {e:?}"));
    let globex = connect(&proxy, "globex")
        .await
        .unwrap_or_else(|e| panic!("globex during the stalls: {e:?}"));
    acme.simple_query("SELECT 1").await.expect("acme query");
    globex.simple_query("SELECT 1").await.expect("globex query");
    // The two slots are what the limit says.
    let err = refused(&proxy, "globex", "proxy full").await;
    assert_eq!(sqlstate(&err), "53300", "{err}");
    drop(stalled);
    drop(acme);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match connect(&proxy, "globex").await {
            Ok(c) => {
                c.simple_query("SELECT 1")
                    .await
                    .expect("after a slot freed");
                break;
            }
            Err(e) if sqlstate(&e) == "53300" && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn unauthenticated_caps_refuse_at_accept() {
    if let Err(e) = TcpSocket::new_v4().and_then(|s| s.bind(SocketAddr::new(loopback(2), 0))) {
        return cannot_run(&format!("cannot bind a client socket to 127.0.0.2: {e}"));
    }
    let pg = TestPg::start(HostAuth::ScramSha256, &TENANTS).await;
    let proxy = TestProxy::start(&pg.config(
        &TENANTS,
        2,
        "max_unauthenticated_connections = 12
max_unauthenticated_per_address = 5",
    ))
    .await;
    let acme = connect(&proxy, "acme").await.expect("acme");

    // Five stalled exchanges from one address: each is offered SCRAM.
    let mut stalled = Vec::new();
    for _ in 0..5 {
        let (s, m) = stall_scram(proxy.port, loopback(2), "acme").await;
        assert_eq!(m.tag, b'R', "{m:?}");
        stalled.push(s);
    }
    // A sixth from the same address is refused at once, with 53300.
    let (mut s, m) = stall_scram(proxy.port, loopback(2), "acme").await;
    assert_eq!((m.tag, m.code()), (b'E', "53300".into()), "{m:?}");
    assert!(m.message().contains("from this address"), "{m:?}");
    assert!(matches!(
        raw::read_msg(&mut s, Duration::from_secs(5)).await,
        Read::Closed
    ));
    // Even one that never sends a byte hears it.
    let mut s = connect_from(loopback(2), proxy.port)
        .await
        .expect("connect");
    let got = raw::read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].code(), "53300", "{got:?}");
    // Another address is not held back by the first one's count.
    let globex = connect(&proxy, "globex")
        .await
        .expect("globex from 127.0.0.1");

    // Other addresses fill the total cap (12): 5 + 5 + 2.
    for _ in 0..5 {
        stalled.push(stall_scram(proxy.port, loopback(3), "acme").await.0);
    }
    for _ in 0..2 {
        stalled.push(stall_scram(proxy.port, loopback(4), "acme").await.0);
    }
    let (_s, m) = stall_scram(proxy.port, loopback(5), "globex").await;
    assert_eq!((m.tag, m.code()), (b'E', "53300".into()), "{m:?}");
    assert!(m.message().contains("to pgtenant"), "{m:?}");
    // So is a real client meanwhile (the limit is on logins in flight)...
    let err = refused(&proxy, "globex", "refused while full").await;
    assert_eq!(sqlstate(&err), "53300", "{err}");
    // ...but logged-in clients are not disturbed.
    acme.simple_query("SELECT 1")
        .await
        .expect("acme while full");
    globex
        .simple_query("SELECT 1")
        .await
        .expect("globex while full");

    // When the stalled connections go, their counts go with them.
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_s, m) = stall_scram(proxy.port, loopback(2), "acme").await;
        if m.tag == b'R' {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the caps were not released: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    connect(&proxy, "globex")
        .await
        .expect("globex after the stalls");
}

#[tokio::test]
async fn a_silent_socket_gets_the_startup_timeout() {
    let pg = TestPg::start(HostAuth::ScramSha256, &TENANTS).await;
    // A short client_startup_timeout, well under the login timeout given
    // here. (The default, 5 s, and both limits to the millisecond:
    // `client::timeout_tests`, on a paused clock.)
    let proxy = TestProxy::start(&pg.config(
        &TENANTS,
        2,
        "client_startup_timeout = \"1s\"\nclient_login_timeout = \"30s\"",
    ))
    .await;
    let started = Instant::now();
    let mut silent = raw::connect(proxy.port).await;
    let mut partial = raw::connect(proxy.port).await;
    raw::send(
        &mut partial,
        &raw::startup(3, 0, &[("user", "app.acme")])[..6],
    )
    .await;
    // A stalled SCRAM exchange past its startup packet has the login
    // timeout instead.
    let (mut scram, m) = stall_scram(proxy.port, loopback(1), "acme").await;
    assert_eq!(m.tag, b'R');
    for (what, s) in [
        ("silent", &mut silent),
        ("partial startup packet", &mut partial),
    ] {
        let got = raw::read_until_closed(s, Duration::from_secs(15)).await;
        assert!(got.len() <= 1, "{what}: {got:?}");
        for m in &got {
            assert_eq!(m.code(), "08P01", "{what}: {:?}", m.fields());
        }
    }
    let took = started.elapsed();
    println!("closed after {took:?}");
    // Timers never fire early; late only by the machine's load, and far
    // from the login timeout.
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(15),
        "closed after {took:?}"
    );
    assert!(matches!(
        raw::read_msg(&mut scram, Duration::from_millis(500)).await,
        Read::Timeout
    ));
}

#[tokio::test]
async fn a_tenant_without_a_limit_gets_the_default() {
    let pg = TestPg::start(HostAuth::ScramSha256, &TENANTS).await;
    let config = pg
        .config(&TENANTS, 2, "default_tenant_max_client_connections = 2")
        .replace(
            "[tenants.acme]\n",
            "[tenants.acme]\nmax_client_connections = 3\n",
        );
    let proxy = TestProxy::start(&config).await;

    // globex has no limit of its own: the default (2) applies.
    let g1 = connect(&proxy, "globex").await.expect("g1");
    let _g2 = connect(&proxy, "globex").await.expect("g2");
    let err = refused(&proxy, "globex", "third globex").await;
    assert_eq!(sqlstate(&err), "53300", "{err}");
    let message = err.as_db_error().map(|e| e.message().to_string());
    assert!(
        message.as_deref().is_some_and(|m| m.contains("\"globex\"")),
        "{message:?}"
    );
    g1.simple_query("SELECT 1").await.expect("g1 still works");
    // acme's own limit (3) wins over the default.
    let mut acme = Vec::new();
    for i in 0..3 {
        acme.push(
            connect(&proxy, "acme")
                .await
                .unwrap_or_else(|e| panic!("acme {i}: {e}")),
        );
    }
    let err = refused(&proxy, "acme", "fourth acme").await;
    assert_eq!(sqlstate(&err), "53300", "{err}");
}
