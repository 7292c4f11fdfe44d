use super::*;
use crate::config::parse_str;

const HEAD: &str = "[proxy]\ndefault_placement = \"p\"\n";

fn placement(name: &str, db: &str, size: u32) -> String {
    format!(
        "[placements.{name}]\nurl = \"postgres://u_{db}@127.0.0.1/{db}\"\nisolation = \"database\"\n\
         allow_shared_database = true\npool_size = {size}\n"
    )
}

fn tenant(name: &str, extra: &str) -> String {
    format!("[tenants.{name}]\nusers = {{ app = \"pw-{name}\" }}\n{extra}\n")
}

fn build(text: &str) -> Snapshot {
    let (cfg, src) = parse_str(text, "old.toml").expect("valid");
    Snapshot::build(cfg, &src, 1).expect("builds")
}

fn rebuild(old: &Snapshot, text: &str) -> (Snapshot, Vec<crate::state::PoolUpdate>) {
    let (cfg, src) = parse_str(text, "new.toml").expect("valid");
    Snapshot::rebuild(cfg, &src, 1, old).expect("builds")
}

#[test]
fn unchanged_config_changes_nothing_and_keeps_every_pool() {
    let text = format!(
        "{HEAD}{}{}{}",
        placement("p", "a", 4),
        tenant("a", ""),
        tenant("b", "")
    );
    let old = build(&text);
    let (new, updates) = rebuild(&old, &text);
    let s = summarize(&old, &new);
    assert!(s.is_empty(), "{s}");
    assert_eq!(s.to_string(), "configuration reloaded: nothing changed");
    assert!(Arc::ptr_eq(
        &old.placements["p"].pool,
        &new.placements["p"].pool
    ));
    assert_eq!(updates.len(), 1);
    assert!(!s.touches("p"));
}

#[test]
fn tenants_added_removed_and_changed_are_told_apart() {
    let old = build(&format!(
        "{HEAD}{}{}{}{}",
        placement("p", "a", 4),
        tenant("keep", ""),
        tenant("gone", ""),
        tenant("limits", "max_server_connections = 2")
    ));
    let (new, _) = rebuild(
        &old,
        &format!(
            "{HEAD}{}{}{}{}",
            placement("p", "a", 4),
            tenant("keep", ""),
            tenant("fresh", ""),
            tenant("limits", "max_server_connections = 3")
        ),
    );
    let s = summarize(&old, &new);
    assert_eq!(s.tenants_added, ["fresh"]);
    assert_eq!(s.tenants_removed, ["gone"]);
    assert_eq!(s.tenants_changed, ["limits"]);
    assert!(s.placements_changed.is_empty());
    assert!(s.touches("p"));
    let shown = s.to_string();
    assert!(shown.contains("tenants added 1: fresh"), "{shown}");
    assert!(shown.contains("tenants removed 1: gone"), "{shown}");
}

#[test]
fn a_changed_password_is_a_changed_tenant() {
    let old = build(&format!(
        "{HEAD}{}{}",
        placement("p", "a", 4),
        tenant("a", "")
    ));
    let (new, _) = rebuild(
        &old,
        &format!(
            "{HEAD}{}[tenants.a]\nusers = {{ app = \"another\" }}\n",
            placement("p", "a", 4)
        ),
    );
    assert_eq!(summarize(&old, &new).tenants_changed, ["a"]);
}

/// Placement `name` on database `db` as role `user`.
fn placement_as(name: &str, user: &str, db: &str, size: u32) -> String {
    format!(
        "[placements.{name}]\nurl = \"postgres://{user}@127.0.0.1/{db}\"\nisolation = \"database\"\n\
         allow_shared_database = true\npool_size = {size}\n"
    )
}

#[test]
fn a_new_url_replaces_the_pool_and_a_new_size_keeps_it() {
    let old = build(&format!(
        "{HEAD}{}{}{}",
        placement("p", "a", 4),
        placement_as("q", "uq", "q", 2),
        tenant("a", "")
    ));
    let (new, updates) = rebuild(
        &old,
        &format!(
            "{HEAD}{}{}{}",
            placement("p", "a", 8),
            placement_as("q", "uq", "elsewhere", 2),
            tenant("a", "")
        ),
    );
    let s = summarize(&old, &new);
    assert_eq!(s.placements_changed, ["q"]);
    assert!(Arc::ptr_eq(
        &old.placements["p"].pool,
        &new.placements["p"].pool
    ));
    assert!(!Arc::ptr_eq(
        &old.placements["q"].pool,
        &new.placements["q"].pool
    ));
    // Only the kept pool has an update; it is not applied yet.
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].size, 8);
    assert_eq!(old.placements["p"].pool.counts().max, 4);
}

#[test]
fn a_placement_with_a_new_role_makes_checked_pools_vet_again_and_a_removed_one_does_not() {
    let two = format!(
        "{HEAD}{}{}{}",
        placement("p", "a", 4),
        placement("q", "q", 2),
        tenant("a", "")
    );
    let old = build(&two);
    // r's role is one p's role must not be able to become: p is rebuilt,
    // so its connections are checked against it.
    let (new, _) = rebuild(&old, &format!("{two}{}", placement("r", "r", 2)));
    let s = summarize(&old, &new);
    assert_eq!(s.placements_added, ["r"]);
    assert_eq!(s.placements_changed, ["p", "q"]);
    // Removing one only loosens the others' checks: they are kept.
    let (fewer, _) = rebuild(
        &new,
        &format!("{HEAD}{}{}", placement("p", "a", 4), tenant("a", "")),
    );
    let s = summarize(&new, &fewer);
    assert_eq!(s.placements_removed, ["q", "r"]);
    assert!(s.placements_changed.is_empty(), "{s}");
    assert!(Arc::ptr_eq(
        &new.placements["p"].pool,
        &fewer.placements["p"].pool
    ));
}

#[test]
fn trusted_roles_are_kept_when_placements_come() {
    let trusted =
        |name: &str, db: &str| format!("{}trust_backend_role = true\n", placement(name, db, 2));
    let old = build(&format!("{HEAD}{}{}", trusted("p", "a"), tenant("a", "")));
    let (new, _) = rebuild(
        &old,
        &format!(
            "{HEAD}{}{}{}",
            trusted("p", "a"),
            trusted("q", "q"),
            tenant("a", "")
        ),
    );
    assert!(Arc::ptr_eq(
        &old.placements["p"].pool,
        &new.placements["p"].pool
    ));
}

#[test]
fn restart_only_keys_keep_their_running_values() {
    let (running, _) = parse_str(
        "[proxy]\nlisten = \"127.0.0.1:6432\"\nworkers = 2\nserver_idle_timeout = \"60s\"\n",
        "old.toml",
    )
    .expect("valid");
    let (mut new, _) = parse_str(
        "[proxy]\nlisten = \"127.0.0.1:7000\"\nworkers = 2\nserver_idle_timeout = \"5s\"\n\
         query_wait_timeout = \"3s\"\n",
        "new.toml",
    )
    .expect("valid");
    let kept = keep_restart_only(&mut new, &running);
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept[0].starts_with("proxy.listen changed"), "{kept:?}");
    assert!(
        kept[1].starts_with("proxy.server_idle_timeout changed"),
        "{kept:?}"
    );
    assert_eq!(new.proxy.listen, "127.0.0.1:6432");
    assert_eq!(
        new.proxy.server_idle_timeout,
        running.proxy.server_idle_timeout
    );
    // What may change live does.
    assert_eq!(
        new.proxy.query_wait_timeout,
        std::time::Duration::from_secs(3)
    );
}

#[test]
fn admin_listen_is_kept_and_the_token_is_not() {
    let admin = |listen: &str, token: &str| {
        parse_str(
            &format!(
                "[proxy]\nlisten = \"127.0.0.1:6432\"\n[admin]\nlisten = \"{listen}\"\ntoken = \"{token}\"\n"
            ),
            "x.toml",
        )
        .expect("valid")
        .0
    };
    let running = admin("127.0.0.1:9930", "0123456789abcdef-old");
    let mut new = admin("127.0.0.1:9999", "0123456789abcdef-new");
    let kept = keep_restart_only(&mut new, &running);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].starts_with("admin.listen changed"), "{kept:?}");
    let a = new.admin.as_ref().expect("admin");
    assert_eq!(a.listen.as_deref(), Some("127.0.0.1:9930"));
    assert_eq!(
        a.token.as_ref().map(|t| t.expose().to_string()).as_deref(),
        Some("0123456789abcdef-new")
    );
    // A section removed whole keeps only the listener.
    let mut bare = parse_str("[proxy]\nlisten = \"127.0.0.1:6432\"\n", "y.toml")
        .expect("valid")
        .0;
    assert_eq!(keep_restart_only(&mut bare, &running).len(), 1);
    let a = bare.admin.as_ref().expect("admin kept for its listener");
    assert_eq!(a.listen.as_deref(), Some("127.0.0.1:9930"));
    assert!(a.token.is_none() && a.users.is_empty());
}

#[test]
fn long_lists_are_cut_and_counted() {
    let s = ReloadSummary {
        tenants_added: (0..12).map(|i| format!("t{i:02}")).collect(),
        ..ReloadSummary::default()
    };
    let shown = s.to_string();
    assert!(shown.contains("tenants added 12: t00, "), "{shown}");
    assert!(shown.ends_with("t09, and 2 more"), "{shown}");
}

#[test]
fn an_rls_placement_keeps_its_pool_and_context_key_across_a_reload() {
    let text = format!(
        "{HEAD}[placements.p]\nurl = \"postgres://u_p@127.0.0.1/shared\"\nisolation = \"rls\"\n{}",
        tenant("a", "")
    );
    let old = build(&text);
    assert!(old.placements["p"].pool.context().is_some());
    // Same key, same pool.
    let (new, _) = rebuild(&old, &format!("{text}{}", tenant("b", "")));
    assert!(Arc::ptr_eq(
        &old.placements["p"].pool,
        &new.placements["p"].pool
    ));
    // A new mirror setting is a new context: a new pool.
    let (other, _) = rebuild(
        &new,
        &text.replace(
            "isolation = \"rls\"\n",
            "isolation = \"rls\"\ntenant_setting = \"app.tenant_id\"\n",
        ),
    );
    assert_eq!(summarize(&new, &other).placements_changed, ["p"]);
}

#[test]
fn a_changed_secret_file_is_not_read_by_a_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pgtenant.toml");
    let text = format!(
        "{HEAD}[placements.p]\nurl = \"postgres://u_p@127.0.0.1/shared\"\nisolation = \"rls\"\n{}",
        tenant("a", "")
    );
    std::fs::write(&path, &text).expect("write");
    let (cfg, src) = crate::config::load_file(&path).expect("valid");
    let old = Snapshot::build(cfg, &src, 1).expect("builds");
    // Another secret in the file: it would change every verifier and the
    // rls context key registered in the database.
    let other = dir.path().join("other.secret");
    crate::credentials::secret::AuthSecret::load_or_create(&other).expect("secret");
    std::fs::copy(&other, dir.path().join("pgtenant.secret")).expect("replace the secret");
    let (cfg, src) = crate::config::load_file(&path).expect("valid");
    let (new, _) = Snapshot::rebuild(cfg, &src, 1, &old).expect("builds");
    let s = summarize(&old, &new);
    assert!(s.is_empty(), "{s}");
    assert!(Arc::ptr_eq(
        &old.placements["p"].pool,
        &new.placements["p"].pool
    ));
}
