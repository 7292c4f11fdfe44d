use super::*;
use crate::config::placement_checks::is_qualified_name;

const GOOD: &str = r#"
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
fn shared_tables_are_qualified_names_on_rls_placements() {
    for good in [
        "public.countries",
        "ref.\"Country Codes\"",
        "\"a\"\"b\".c_1$",
    ] {
        assert!(is_qualified_name(good), "{good}");
    }
    for bad in [
        "countries",
        "public.",
        ".countries",
        "a.b.c",
        "public.\"\"",
        "public.\"open",
        "public.coun tries",
        "public.countries;drop",
        "public.\"a\nb\"",
        "1x.y",
    ] {
        assert!(!is_qualified_name(bad), "{bad}");
    }
    let ok = GOOD.replace(
        "isolation = \"rls\"\n",
        "isolation = \"rls\"\nshared_tables = [\"public.countries\"]\n",
    );
    parse_str(&ok, "t.toml").expect("valid");
    let unqualified = ok.replace("\"public.countries\"", "\"countries\"");
    let err = parse_str(&unqualified, "t.toml").expect_err("unqualified");
    assert_eq!(err.key, "placements.shared.shared_tables", "{err}");
    let on_database = GOOD.replace(
        "pool_size = 10\n",
        "pool_size = 10\nshared_tables = [\"public.countries\"]\n",
    );
    let err = parse_str(&on_database, "t.toml").expect_err("not rls");
    assert_eq!(err.key, "placements.acme_db.shared_tables", "{err}");
}

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
fn one_role_on_two_placements_is_refused_unless_both_trust_it() {
    let bad = GOOD.replace("pgt_acme:secret", "pgtenant:other");
    let err = parse_str(&bad, "t.toml").expect_err("invalid");
    assert!(err.message.contains("trust_backend_role"), "{err}");
    assert!(err.message.contains("placements.acme_db"), "{err}");
    // Host names compare without case; another port is another server.
    let other_host = bad.replace("127.0.0.1:5432/tenant_acme", "LOCALHOST:5432/tenant_acme");
    parse_str(&other_host, "t.toml").expect("another host");
    let upper = bad.replace("127.0.0.1:5432/app_shared", "LOCALHOST:5432/app_shared");
    let upper = upper.replace("127.0.0.1:5432/tenant_acme", "localhost:5432/tenant_acme");
    parse_str(&upper, "t.toml").expect_err("same host");
    let other_port = bad.replace("5432/tenant_acme", "5433/tenant_acme");
    parse_str(&other_port, "t.toml").expect("another port");
    let one = bad.replace(
        "pool_size = 10\n",
        "pool_size = 10\ntrust_backend_role = true\n",
    );
    parse_str(&one, "t.toml").expect_err("only one placement opted out");
    let both = one.replace(
        "isolation = \"rls\"\n",
        "isolation = \"rls\"\ntrust_backend_role = true\n",
    );
    parse_str(&both, "t.toml").expect("both opted out");
}

#[test]
fn two_tenants_on_one_database_placement_are_refused_unless_allowed() {
    let bad = GOOD.replace(
        "users = { app = \"globex-secret\" }",
        "placement = \"acme_db\"\nusers = { app = \"globex-secret\" }",
    );
    let err = parse_str(&bad, "t.toml").expect_err("invalid");
    assert_eq!(err.key, "tenants.globex.placement", "{err}");
    assert!(err.message.contains("allow_shared_database"), "{err}");
    let allowed = bad.replace(
        "pool_size = 10\n",
        "pool_size = 10\nallow_shared_database = true\n",
    );
    parse_str(&allowed, "t.toml").expect("opted out");
    // Several tenants on an rls placement are what it is for.
    let rls = GOOD.replace("placement = \"acme_db\"\n", "");
    parse_str(&rls, "t.toml").expect("rls");
}

#[test]
fn schema_placements_check_their_keys_and_every_tenants_schema() {
    let schema = GOOD.replace("isolation = \"rls\"", "isolation = \"schema\"");
    parse_str(&schema, "t.toml").expect("defaults");
    let keyed = |placement: &str, tenant: &str| {
        schema
            .replace(
                "isolation = \"schema\"\n",
                &format!("isolation = \"schema\"\n{placement}\n"),
            )
            .replace(
                "users = { app = \"globex-secret\" }",
                &format!("users = {{ app = \"globex-secret\" }}\n{tenant}"),
            )
    };
    parse_str(
        &keyed(
            "schema_pattern = \"{tenant}_data\"\nsearch_path = \"{schema}, public\"",
            "schema = \"globex-eu\"",
        ),
        "t.toml",
    )
    .expect("both keys and an override");
    for (placement, tenant, key) in [
        (
            "schema_pattern = \"{tenant}\"",
            "",
            "placements.shared.schema_pattern",
        ),
        (
            "schema_pattern = \"x\"",
            "",
            "placements.shared.schema_pattern",
        ),
        (
            "search_path = \"public\"",
            "",
            "placements.shared.search_path",
        ),
        (
            "search_path = \"{schema};x\"",
            "",
            "placements.shared.search_path",
        ),
        ("", "schema = \"public\"", "tenants.globex.schema"),
        ("", "schema = \"a.b\"", "tenants.globex.schema"),
    ] {
        // "{tenant}" alone gives tenant "globex" the schema "globex";
        // refused only where it names a shared one.
        let text = keyed(placement, tenant).replace("[tenants.globex]", "[tenants.public]");
        let err = parse_str(&text, "t.toml").expect_err(placement);
        let key = key.replace("tenants.globex", "tenants.public");
        assert_eq!(err.key, key, "{err}");
    }
    // Two tenants, one schema.
    let twice = keyed("", "schema = \"tenant_acme\"").replace(
        "[tenants.acme]\nplacement = \"acme_db\"\n",
        "[tenants.acme]\n",
    );
    let err = parse_str(&twice, "t.toml").expect_err("one schema");
    assert_eq!(err.key, "tenants.globex.schema", "{err}");
    assert!(err.message.contains("acme"), "{err}");
    // The keys belong to schema placements only.
    let err = parse_str(
        &GOOD.replace(
            "isolation = \"rls\"",
            "isolation = \"rls\"\nsearch_path = \"{schema}\"",
        ),
        "t.toml",
    )
    .expect_err("rls");
    assert_eq!(err.key, "placements.shared.search_path", "{err}");
    let err = parse_str(
        &GOOD.replace(
            "users = { app = \"acme-secret\" }",
            "users = { app = \"acme-secret\" }\nschema = \"acme\"",
        ),
        "t.toml",
    )
    .expect_err("database");
    assert_eq!(err.key, "tenants.acme.schema", "{err}");
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
fn tenant_server_caps_default_to_the_pool_or_half_of_a_shared_one() {
    let (cfg, _) = parse_str(GOOD, "t.toml").expect("valid");
    let n = cfg.tenants_per_placement();
    // Alone on their placements: the whole pool.
    assert_eq!(cfg.tenant_server_cap("acme", &n), Some(10));
    assert_eq!(cfg.tenant_server_cap("globex", &n), Some(20));
    assert_eq!(cfg.tenant_server_cap("nobody", &n), None);
    let shared = format!("{GOOD}\n[tenants.initech]\nusers = {{ app = \"i\" }}\n");
    let (cfg, _) = parse_str(&shared, "t.toml").expect("valid");
    let n = cfg.tenants_per_placement();
    assert_eq!(n.get("shared"), Some(&2));
    assert_eq!(cfg.tenant_server_cap("globex", &n), Some(10));
    assert_eq!(cfg.tenant_server_cap("initech", &n), Some(10));
    assert_eq!(cfg.tenant_server_cap("acme", &n), Some(10));
    // The placement's default, then the tenant's own.
    let set = shared
        .replace(
            "isolation = \"rls\"\n",
            "isolation = \"rls\"\ntenant_max_server_connections = 3\n",
        )
        .replace(
            "[tenants.initech]\n",
            "[tenants.initech]\nmax_server_connections = 20\n",
        );
    let (cfg, _) = parse_str(&set, "t.toml").expect("valid");
    let n = cfg.tenants_per_placement();
    assert_eq!(cfg.tenant_server_cap("globex", &n), Some(3));
    assert_eq!(cfg.tenant_server_cap("initech", &n), Some(20));
    // A pool of one shared: still one each.
    let tiny = shared.replace("pool_size = 20\n", "").replace(
        "isolation = \"rls\"\n",
        "isolation = \"rls\"\npool_size = 1\n",
    );
    let (cfg, _) = parse_str(&tiny, "t.toml").expect("valid");
    let n = cfg.tenants_per_placement();
    assert_eq!(cfg.tenant_server_cap("globex", &n), Some(1));
}

#[test]
fn tenant_server_caps_must_fit_the_pool() {
    for (find, put, key) in [
        (
            "isolation = \"rls\"\n",
            "isolation = \"rls\"\ntenant_max_server_connections = 0\n",
            "placements.shared.tenant_max_server_connections",
        ),
        (
            "isolation = \"rls\"\n",
            "isolation = \"rls\"\ntenant_max_server_connections = 21\n",
            "placements.shared.tenant_max_server_connections",
        ),
        (
            "max_client_connections = 500\n",
            "max_client_connections = 500\nmax_server_connections = 0\n",
            "tenants.acme.max_server_connections",
        ),
        (
            "max_client_connections = 500\n",
            "max_client_connections = 500\nmax_server_connections = 11\n",
            "tenants.acme.max_server_connections",
        ),
    ] {
        let bad = GOOD.replace(find, put);
        let err = parse_str(&bad, "t.toml").expect_err(put);
        assert_eq!(err.key, key, "{err}");
        assert!(err.line.is_some(), "{err}");
    }
    let fits = GOOD.replace(
        "max_client_connections = 500\n",
        "max_client_connections = 500\nmax_server_connections = 10\n",
    );
    parse_str(&fits, "t.toml").expect("the whole pool is allowed");
}

#[test]
fn operators_reach_rls_placements_through_a_role_of_their_own() {
    let op_url = "operator_url = \"postgres://pgt_operator:op@127.0.0.1:5432/app_shared\"\n";
    let with_url = GOOD.replace(
        "isolation = \"rls\"\n",
        &format!("isolation = \"rls\"\n{op_url}"),
    );
    let ok = format!("{with_url}\n[operators.ops]\npassword = \"p\"\nplacements = [\"shared\"]\n");
    let (cfg, _) = parse_str(&ok, "t.toml").expect("valid");
    assert_eq!(cfg.placements["shared"].operator_pool(), Some(2));
    assert_eq!(cfg.placements["acme_db"].operator_pool(), None);
    assert_eq!(cfg.operators["ops"].placements, ["shared"]);
    let sized = ok.replace(op_url, &format!("{op_url}operator_pool_size = 5\n"));
    let (cfg, _) = parse_str(&sized, "t.toml").expect("valid");
    assert_eq!(cfg.placements["shared"].operator_pool(), Some(5));

    let refused = |text: &str, key: &str, needle: &str| {
        let err = parse_str(text, "t.toml").expect_err(key);
        assert_eq!(err.key, key, "{err}");
        assert!(err.message.contains(needle), "{err}");
        assert!(err.line.is_some(), "{err}");
    };
    // The tenants' own role, another placement's role, another database.
    refused(
        &ok.replace("pgt_operator:op", "pgtenant:op"),
        "placements.shared.operator_url",
        "tenants') role",
    );
    refused(
        &ok.replace("pgt_operator:op", "pgt_acme:op"),
        "placements.shared.operator_url",
        "placements.acme_db",
    );
    refused(
        &ok.replace("5432/app_shared\"\noperator", "5432/other\"\noperator")
            .replace("op@127.0.0.1:5432/app_shared", "op@127.0.0.1:5432/other"),
        "placements.shared.operator_url",
        "same shared database",
    );
    refused(
        &ok.replace(op_url, &format!("{op_url}operator_pool_size = 0\n")),
        "placements.shared.operator_pool_size",
        "at least 1",
    );
    refused(
        &GOOD.replace(
            "isolation = \"rls\"\n",
            "isolation = \"rls\"\noperator_pool_size = 3\n",
        ),
        "placements.shared.operator_pool_size",
        "operator_url",
    );
    // Not on a database placement.
    refused(
        &GOOD.replace("pool_size = 10\n", &format!("pool_size = 10\n{op_url}")),
        "placements.acme_db.operator_url",
        "rls",
    );
    // [operators.*]: placements required, existing, with an operator_url.
    for (placements, needle) in [
        ("[]", "at least one"),
        ("[\"nope\"]", "no [placements.nope]"),
        ("[\"acme_db\"]", "no operator_url"),
        ("[\"shared\", \"shared\"]", "twice"),
    ] {
        refused(
            &ok.replace(
                "placements = [\"shared\"]",
                &format!("placements = {placements}"),
            ),
            "operators.ops.placements",
            needle,
        );
    }
    refused(
        &ok.replace("[operators.ops]", "[operators.\"o ps\"]"),
        "operators.o ps",
        "letters, digits",
    );
    let err = parse_str(&ok.replace("password = \"p\"\n", ""), "t.toml").expect_err("password");
    assert!(err.message.contains("password"), "{err}");
    // A certificate identity needs [tls] client_ca.
    refused(
        &ok.replace("password = \"p\"\n", "password = \"p\"\ncert = \"ops@x\"\n"),
        "operators.ops.cert",
        "client_ca",
    );
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

#[test]
fn a_setting_context_store_is_for_rls_placements_and_identifier_tenants() {
    let setting = GOOD.replace(
        "isolation = \"rls\"\n",
        "isolation = \"rls\"\ncontext_store = \"setting\"\n",
    );
    let (cfg, _) = parse_str(&setting, "t.toml").expect("valid");
    assert_eq!(
        cfg.placements["shared"].context_store,
        crate::config::ContextStore::Setting
    );
    assert_eq!(
        parse_str(GOOD, "t.toml").expect("valid").0.placements["shared"].context_store,
        crate::config::ContextStore::Sequences
    );
    // A name the setting's check refuses could never be entered.
    let dashed = setting.replace("[tenants.globex]", "[tenants.glo-bex]");
    let err = parse_str(&dashed, "t.toml").expect_err("dash");
    assert_eq!(err.key, "tenants.glo-bex", "{err}");
    // On a sequences placement the same name is fine.
    parse_str(
        &GOOD.replace("[tenants.globex]", "[tenants.glo-bex]"),
        "t.toml",
    )
    .expect("dash on sequences");
    // Not with a mirror setting, not on other isolations.
    let mirrored = setting.replace(
        "context_store = \"setting\"\n",
        "context_store = \"setting\"\ntenant_setting = \"app.tenant_id\"\n",
    );
    let err = parse_str(&mirrored, "t.toml").expect_err("mirror");
    assert_eq!(err.key, "placements.shared.context_store", "{err}");
    let on_database = GOOD.replace(
        "pool_size = 10\n",
        "pool_size = 10\ncontext_store = \"setting\"\n",
    );
    let err = parse_str(&on_database, "t.toml").expect_err("not rls");
    assert_eq!(err.key, "placements.acme_db.context_store", "{err}");
    let err = parse_str(
        &GOOD.replace(
            "isolation = \"rls\"\n",
            "isolation = \"rls\"\ncontext_store = \"guc\"\n",
        ),
        "t.toml",
    )
    .expect_err("unknown store");
    assert!(err.to_string().contains("context_store"), "{err}");
}
