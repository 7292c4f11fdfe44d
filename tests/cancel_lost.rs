//! A cancel the proxy could not confirm (its delivery timed out) may still
//! reach the backend later, so the server connection it was meant for is
//! closed rather than handed to the next client, whom it would cancel.

mod common;

use common::{TestPg, TestProxy};
use pgtenant::pgcluster::HostAuth;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::NoTls;

/// A TCP relay to PostgreSQL that, once `blackhole` is set, accepts new
/// connections and never answers them (so a cancel sent through it is
/// never confirmed). Existing connections keep working.
async fn relay(pg_port: u16, blackhole: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut client, _)) = listener.accept().await {
            if blackhole.load(Ordering::SeqCst) {
                held.push(client);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(("127.0.0.1", pg_port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    port
}

async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

#[tokio::test]
async fn a_connection_whose_cancel_was_not_confirmed_is_not_reused() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let blackhole = Arc::new(AtomicBool::new(false));
    let relay_port = relay(pg.cluster.port, Arc::clone(&blackhole)).await;
    let config = pg.config(&["acme"], 1, "auth_type = \"trust\"").replace(
        &format!("127.0.0.1:{}/", pg.cluster.port),
        &format!("127.0.0.1:{relay_port}/"),
    );
    assert!(config.contains(&relay_port.to_string()), "{config}");
    let proxy = TestProxy::start(&config).await;

    let a = proxy.connect("acme").await;
    let first = backend_pid(&a).await;
    blackhole.store(true, Ordering::SeqCst);
    let token = a.cancel_token();
    let sleeper = tokio::spawn(async move { a.batch_execute("SELECT pg_sleep(1)").await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The proxy forwards it to the relay, which never answers.
    token.cancel_query(NoTls).await.expect("cancel request");
    let _ = sleeper.await.expect("join");
    blackhole.store(false, Ordering::SeqCst);

    let b = proxy.connect("acme").await;
    assert_ne!(
        backend_pid(&b).await,
        first,
        "the connection an unconfirmed cancel was meant for went to another client"
    );
}
