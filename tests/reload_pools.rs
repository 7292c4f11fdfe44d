//! Live reload (issue 21 point 4), the pool side: a placement whose URL
//! changes (or a tenant moved to another placement) gets connections made
//! from the new settings for every transaction that starts after the
//! reload, never a mix within one; session-mode and pinned clients finish
//! on the old connection and are then told to reconnect; the old pool
//! drains; `pool_size` and `max_server_connections` change on live pools
//! without cutting a running transaction.

mod common;

use common::TestPg;
use common::live::{
    ConfigText, LiveProxy, backend_pid, backends, current_database, wait_for_backends,
};
use pgtenant::pgcluster::HostAuth;
use std::time::Duration;

/// Tenant t on placement p, on database `tenant_<db>`.
fn on(pg: &TestPg, db: &str, proxy_extra: &str) -> ConfigText {
    ConfigText::new(proxy_extra)
        .placement(pg, "p", db, 4)
        .tenant("t", "p", "")
}

#[tokio::test]
async fn a_new_url_applies_from_the_next_transaction_and_the_old_pool_drains() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["x", "y"]).await;
    let admin = pg.cluster.admin("postgres").await.expect("admin");
    let proxy = LiveProxy::start(&on(&pg, "x", "").0).await;
    let idle = proxy.connect("t").await;
    let busy = proxy.connect("t").await;
    assert_eq!(current_database(&idle).await, "tenant_x");
    busy.batch_execute("BEGIN").await.expect("begin");
    assert_eq!(current_database(&busy).await, "tenant_x");
    let summary = proxy.reload(&on(&pg, "y", "").0).await.expect("reload");
    assert_eq!(summary.placements_changed, ["p"]);
    // Every transaction that starts now runs on the new database...
    assert_eq!(current_database(&idle).await, "tenant_y");
    let fresh = proxy.connect("t").await;
    assert_eq!(current_database(&fresh).await, "tenant_y");
    // ...but the one running stays where it began, to its end.
    assert_eq!(current_database(&busy).await, "tenant_x");
    busy.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(current_database(&busy).await, "tenant_y");
    // The old pool: idle connections closed at once, the busy one when it
    // came back.
    wait_for_backends(&admin, "x", 0).await;
    assert!(backends(&admin, "y").await >= 1);
}

#[tokio::test]
async fn a_tenant_moved_to_another_placement_follows_at_its_next_transaction() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["x", "y"]).await;
    let admin = pg.cluster.admin("postgres").await.expect("admin");
    let two = |placement: &str| {
        ConfigText::new("")
            .placement(&pg, "px", "x", 2)
            .placement(&pg, "py", "y", 2)
            .tenant("t", placement, "")
            .tenant("stay", "px", "")
    };
    let proxy = LiveProxy::start(&two("px").0).await;
    let t = proxy.connect("t").await;
    let stay = proxy.connect("stay").await;
    assert_eq!(current_database(&t).await, "tenant_x");
    let pid = backend_pid(&stay).await;
    let summary = proxy.reload(&two("py").0).await.expect("reload");
    // (stay's share of px grew as t left.)
    assert!(
        summary.tenants_changed.contains(&"t".to_string()),
        "{summary}"
    );
    assert!(summary.placements_changed.is_empty(), "{summary}");
    assert_eq!(current_database(&t).await, "tenant_y");
    // px's pool was kept: stay's connection is the same.
    assert_eq!(backend_pid(&stay).await, pid);
    assert!(backends(&admin, "x").await >= 1);
}

#[tokio::test]
async fn session_mode_and_pinned_clients_finish_on_the_old_connection_then_are_told() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["x", "y"]).await;
    let admin = pg.cluster.admin("postgres").await.expect("admin");
    for extra in ["pool_mode = \"session\"", "pin_policy = \"pin\""] {
        let proxy = LiveProxy::start(&on(&pg, "x", extra).0).await;
        let (busy, busy_end) = proxy.connect_watched("t").await;
        let (idle, idle_end) = proxy.connect_watched("t").await;
        if extra.contains("pin") {
            // Session state that pins each to its server connection.
            for c in [&busy, &idle] {
                c.batch_execute("CREATE TEMP TABLE keep (x int)")
                    .await
                    .expect("pin");
            }
        }
        idle.simple_query("SELECT 1").await.expect("query");
        busy.batch_execute("BEGIN").await.expect("begin");
        let pid = backend_pid(&busy).await;
        proxy.reload(&on(&pg, "y", extra).0).await.expect("reload");
        // The running transaction stays on its connection to the end.
        assert_eq!(backend_pid(&busy).await, pid, "{extra}");
        assert_eq!(current_database(&busy).await, "tenant_x", "{extra}");
        busy.batch_execute("COMMIT").await.expect("commit");
        // Then told why they are closed (the idle one at once).
        for end in [busy_end, idle_end] {
            let (code, message) = end.error().await;
            assert_eq!(code, "57P01", "{extra}: {message}");
            assert!(message.contains("reconnect"), "{extra}: {message}");
        }
        // Reconnecting reaches the new placement.
        assert_eq!(
            current_database(&proxy.connect("t").await).await,
            "tenant_y"
        );
        wait_for_backends(&admin, "x", 0).await;
    }
}

#[tokio::test]
async fn a_grown_pool_serves_a_waiting_client_at_once() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["x"]).await;
    let one = ConfigText::new("")
        .placement(&pg, "p", "x", 1)
        .tenant("t", "p", "");
    let proxy = LiveProxy::start(&one.0).await;
    let holder = proxy.connect("t").await;
    let waiter = proxy.connect("t").await;
    holder
        .batch_execute("BEGIN")
        .await
        .expect("holds the one connection");
    let pid = backend_pid(&holder).await;
    let waiting = tokio::spawn(async move { backend_pid(&waiter).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the pool is full");
    let two = ConfigText::new("")
        .placement(&pg, "p", "x", 2)
        .tenant("t", "p", "");
    let summary = proxy.reload(&two.0).await.expect("reload");
    assert_eq!(summary.pools_resized, [("p".to_string(), 1, 2)]);
    // Well under query_wait_timeout (30 s) while the holder still holds.
    let other = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served after the resize")
        .expect("task");
    assert_ne!(other, pid);
    holder.batch_execute("COMMIT").await.expect("commit");
}

#[tokio::test]
async fn a_shrunk_pool_closes_idle_connections_first_and_cuts_no_transaction() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["x"]).await;
    let admin = pg.cluster.admin("postgres").await.expect("admin");
    let sized = |n: u32| {
        ConfigText::new("")
            .placement(&pg, "p", "x", n)
            .tenant("t", "p", "")
    };
    let proxy = LiveProxy::start(&sized(4).0).await;
    let clients: Vec<_> = futures_util::future::join_all((0..4).map(|_| proxy.connect("t"))).await;
    // Four connections: all four clients in a transaction at once.
    for c in &clients {
        c.batch_execute("BEGIN; SELECT 1").await.expect("begin");
    }
    wait_for_backends(&admin, "x", 4).await;
    // Two come back idle.
    for c in &clients[2..] {
        c.batch_execute("COMMIT").await.expect("commit");
    }
    proxy.reload(&sized(1).0).await.expect("reload");
    // The idle two are closed at once; the running two are not cut.
    wait_for_backends(&admin, "x", 2).await;
    for c in &clients[..2] {
        c.simple_query("SELECT 1").await.expect("still running");
        c.batch_execute("COMMIT").await.expect("commit");
    }
    // Closed as they came back while over size.
    wait_for_backends(&admin, "x", 1).await;
    for c in &clients {
        c.simple_query("SELECT 1")
            .await
            .expect("served by the one left");
    }
    assert_eq!(proxy.pool_size("p"), 1);
}

#[tokio::test]
async fn a_raised_tenant_cap_lets_its_waiting_client_in() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["x"]).await;
    let capped = |n: u32| {
        ConfigText::new("").placement(&pg, "p", "x", 4).tenant(
            "t",
            "p",
            &format!("max_server_connections = {n}"),
        )
    };
    let proxy = LiveProxy::start(&capped(1).0).await;
    let holder = proxy.connect("t").await;
    let waiter = proxy.connect("t").await;
    holder.batch_execute("BEGIN").await.expect("holds its one");
    let waiting = tokio::spawn(async move { backend_pid(&waiter).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "at its cap");
    let summary = proxy.reload(&capped(2).0).await.expect("reload");
    assert_eq!(summary.tenants_changed, ["t"]);
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served after the cap was raised")
        .expect("task");
    holder.batch_execute("COMMIT").await.expect("commit");
}
