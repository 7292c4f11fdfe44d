//! The `[placements.*]` rules of config loading: isolation, roles, caps,
//! operators, the context store (the rest is in load_tests.rs).

use super::tests::GOOD;
use super::*;
use crate::config::placement_checks::is_qualified_name;

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
