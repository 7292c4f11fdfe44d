use super::*;

pub(super) const GOOD: &str = r#"
[proxy]
listen = "127.0.0.1:6432"
default_placement = "shared"

[placements.shared]
url = "postgres://pgtenant:secret@127.0.0.1:5432/app_shared"
isolation = "rls"

[placements.acme_db]
url = "postgres://pgt_acme:secret@127.0.0.1:5432/tenant_acme"
isolation = "database"
pool_size = 10

[tenants.acme]
placement = "acme_db"
users = { app = "acme-secret" }
max_client_connections = 500

[tenants.globex]
users = { app = "globex-secret" }
"#;

#[test]
fn parses_the_contract_example() {
    let (cfg, _) = parse_str(GOOD, "t.toml").expect("valid");
    assert_eq!(cfg.placements["shared"].pool_size, 20);
    assert_eq!(cfg.placements["acme_db"].pool_size, 10);
    assert_eq!(cfg.tenants["acme"].max_client_connections, Some(500));
    assert_eq!(cfg.proxy.tenant_from.len(), 4);
}

#[test]
fn semantic_errors_name_key_and_line() {
    let bad = GOOD.replace("pool_size = 10", "pool_size = 0");
    let err = parse_str(&bad, "t.toml").expect_err("invalid");
    assert_eq!(err.key, "placements.acme_db.pool_size");
    assert_eq!(err.line, Some(13));
    assert!(
        err.to_string()
            .starts_with("t.toml:13: placements.acme_db.pool_size")
    );
}

#[test]
fn unknown_placement_is_named() {
    let bad = GOOD.replace("placement = \"acme_db\"", "placement = \"nope\"");
    let err = parse_str(&bad, "t.toml").expect_err("invalid");
    assert_eq!(err.key, "tenants.acme.placement");
    assert_eq!(err.line, Some(16));
}

#[test]
fn syntax_and_type_errors_carry_a_line() {
    let bad = GOOD.replace("pool_size = 10", "pool_size = \"ten\"");
    let err = parse_str(&bad, "t.toml").expect_err("invalid");
    assert_eq!(err.line, Some(13));
    let unknown = GOOD.replace("pool_size = 10", "pool_sise = 10");
    let err = parse_str(&unknown, "t.toml").expect_err("invalid");
    assert!(err.message.contains("pool_sise"), "{err}");
    assert_eq!(err.line, Some(13));
    assert_eq!(err.key, "placements.acme_db.pool_sise");
    let dur = GOOD.replace("[proxy]\n", "[proxy]\nquery_wait_timeout = \"soon\"\n");
    let err = parse_str(&dur, "t.toml").expect_err("invalid");
    assert_eq!(err.key, "proxy.query_wait_timeout", "{err}");
}

#[test]
fn a_missing_field_names_its_table() {
    let bad = GOOD.replace("isolation = \"database\"\n", "");
    let err = parse_str(&bad, "t.toml").expect_err("invalid");
    assert!(err.message.contains("isolation"), "{err}");
    assert_eq!(err.key, "placements.acme_db", "{err}");
    assert_eq!(err.line, Some(10), "{err}");
}

#[test]
fn missing_default_placement_is_reported_on_the_tenant() {
    let bad = GOOD.replace("default_placement = \"shared\"\n", "");
    let err = parse_str(&bad, "t.toml").expect_err("invalid");
    assert_eq!(err.key, "tenants.globex");
}

#[test]
fn login_limits_default_and_refuse_zero() {
    let (cfg, _) = parse_str(GOOD, "t.toml").expect("valid");
    let p = &cfg.proxy;
    assert_eq!(p.max_unauthenticated_connections, 2_000);
    assert_eq!(p.max_unauthenticated_per_address, 128);
    assert_eq!(p.default_tenant_max_client_connections, 1_000);
    assert_eq!(p.client_startup_timeout.as_secs(), 5);
    assert_eq!(p.client_login_timeout.as_secs(), 15);
    for line in [
        "max_unauthenticated_connections = 0",
        "max_unauthenticated_per_address = 0",
        "default_tenant_max_client_connections = 0",
        "client_startup_timeout = \"0s\"",
        "client_login_timeout = \"0s\"",
    ] {
        let bad = GOOD.replace("[proxy]\n", &format!("[proxy]\n{line}\n"));
        let err = parse_str(&bad, "t.toml").expect_err(line);
        let key = line.split(' ').next().expect("key");
        assert_eq!(err.key, format!("proxy.{key}"), "{err}");
        assert_eq!(err.line, Some(3), "{err}");
    }
}

#[test]
fn durations_and_sizes() {
    let text = format!("{GOOD}\n",).replace(
        "[proxy]\n",
        "[proxy]\nquery_wait_timeout = \"1500ms\"\nmax_message_size = \"2MB\"\n",
    );
    let (cfg, _) = parse_str(&text, "t.toml").expect("valid");
    assert_eq!(cfg.proxy.query_wait_timeout.as_millis(), 1500);
    assert_eq!(cfg.proxy.max_message_size.0, 2 << 20);
}

#[test]
fn admin_token_and_top_tenants_are_checked() {
    let with = |admin: &str| parse_str(&format!("{GOOD}\n[admin]\n{admin}\n"), "t.toml");
    let cfg = with("listen = \"127.0.0.1:9930\"").expect("valid").0;
    let admin = cfg.admin.expect("admin");
    assert_eq!(admin.top_tenants, crate::config::DEFAULT_TOP_TENANTS);
    assert!(admin.token.is_none());
    assert!(with("token = \"0123456789abcdef\"\ntop_tenants = 0").is_ok());
    for (bad, key) in [
        ("token = \"short\"", "admin.token"),
        ("token = \"has a space in it, too\"", "admin.token"),
        ("top_tenants = 10001", "admin.top_tenants"),
    ] {
        let e = with(bad).expect_err(bad);
        assert_eq!(e.key, key, "{bad}: {e}");
    }
}

#[test]
fn tenants_may_be_watched() {
    let text = GOOD.replace("max_client_connections = 500", "watch = true");
    let (cfg, _) = parse_str(&text, "t.toml").expect("valid");
    assert!(cfg.tenants["acme"].watch);
    assert!(!cfg.tenants["globex"].watch);
}

#[test]
fn secrets_from_the_environment_and_files() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir(dir.path().join("secrets")).expect("mkdir");
    std::fs::write(dir.path().join("secrets/acme-app"), "acme-from-file\n").expect("write");
    // SAFETY (edition 2024 marks set_var unsafe): names only this test reads.
    unsafe {
        std::env::set_var(
            "PGTENANT_TEST_LOAD_URL_Q7",
            "postgres://pgt_acme:from-env@127.0.0.1:5432/tenant_acme",
        );
        std::env::set_var("PGTENANT_TEST_LOAD_TOKEN_Q7", "token-from-env-0123456789");
    }
    let text =
        GOOD.replace(
            "url = \"postgres://pgt_acme:secret@127.0.0.1:5432/tenant_acme\"",
            "url = { env = \"PGTENANT_TEST_LOAD_URL_Q7\" }",
        )
        .replace(
            "users = { app = \"acme-secret\" }",
            "users = { app = { file = \"secrets/acme-app\" } }",
        ) + "\n[admin]\ntoken = { env = \"PGTENANT_TEST_LOAD_TOKEN_Q7\" }\n";
    let path = dir.path().join("pgtenant.toml");
    std::fs::write(&path, &text).expect("write config");
    let (cfg, _) = load_file(&path).expect("valid");
    let acme_db = &cfg.placements["acme_db"];
    assert!(acme_db.url.expose().contains(":from-env@"));
    assert_eq!(
        cfg.tenants["acme"].users["app"]
            .password
            .as_ref()
            .map(|p| p.expose()),
        Some("acme-from-file")
    );
    let admin = cfg.admin.as_ref().expect("admin");
    assert_eq!(
        admin.token.as_ref().map(|t| t.expose()),
        Some("token-from-env-0123456789")
    );
    // Only what sits in the file counts as exposed by its mode.
    let exposed = crate::config::secret_exposure::plaintext_secrets(&cfg);
    assert_eq!(
        exposed,
        ["tenants.globex.users.app", "placements.shared.url"],
        "{exposed:?}"
    );

    // A missing variable or file: the key and line, never a value.
    let unset = text.replace("PGTENANT_TEST_LOAD_URL_Q7", "PGTENANT_TEST_UNSET_Q7");
    std::fs::write(&path, &unset).expect("write config");
    let e = load_file(&path).expect_err("unset variable");
    assert_eq!(e.key, "placements.acme_db.url", "{e}");
    assert_eq!(e.line, Some(11), "{e}");
    assert!(
        e.message.contains("PGTENANT_TEST_UNSET_Q7 is not set"),
        "{e}"
    );
    let missing = text.replace("secrets/acme-app", "secrets/nope");
    std::fs::write(&path, &missing).expect("write config");
    let e = load_file(&path).expect_err("missing file");
    assert_eq!(e.key, "tenants.acme.users.app", "{e}");
    assert!(e.message.contains("secrets/nope"), "{e}");
    // The token is still checked once read.
    unsafe { std::env::set_var("PGTENANT_TEST_LOAD_SHORT_Q7", "short") };
    let short = text.replace("PGTENANT_TEST_LOAD_TOKEN_Q7", "PGTENANT_TEST_LOAD_SHORT_Q7");
    std::fs::write(&path, &short).expect("write config");
    let e = load_file(&path).expect_err("short token");
    assert_eq!(e.key, "admin.token");
    assert!(!e.to_string().contains("short\""), "{e}");
}

#[test]
fn proxy_protocol_networks_are_checked() {
    let text = GOOD.replace(
        "listen = \"127.0.0.1:6432\"",
        "listen = \"127.0.0.1:6432\"\nproxy_protocol_networks = [\"10.0.0.0/8\", \"::1\"]",
    );
    let (cfg, _) = parse_str(&text, "t.toml").expect("valid");
    assert_eq!(cfg.proxy.proxy_protocol_networks.len(), 2);
    assert!(cfg.proxy.proxy_protocol_required, "required by default");
    let (cfg, _) = parse_str(GOOD, "t.toml").expect("valid");
    assert!(
        cfg.proxy.proxy_protocol_networks.is_empty(),
        "off by default"
    );
    let bad = GOOD.replace(
        "listen = \"127.0.0.1:6432\"",
        "listen = \"127.0.0.1:6432\"\nproxy_protocol_networks = [\"10.0.0.1/8\"]",
    );
    let e = parse_str(&bad, "t.toml").expect_err("host bits");
    assert_eq!(e.key, "proxy.proxy_protocol_networks", "{e}");
    assert!(e.message.contains("10.0.0.0/8"), "{e}");
}
