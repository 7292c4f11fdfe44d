use super::*;

fn row(kind: &str, name: &str, detail: &str, more: &str) -> Row {
    [kind.into(), name.into(), detail.into(), more.into()]
}

/// What a correctly set up shared database answers.
fn clean() -> Vec<Row> {
    vec![
        row(
            "rel",
            "public.notes",
            "SELECT,INSERT,UPDATE,DELETE",
            "r,forced",
        ),
        row("rel", "public.countries", "SELECT", "r,listed"),
        row("rel", "public.v_notes", "SELECT", "v,invoker"),
        row("tenant_fn", "ok", "", ""),
        row("setting", "lo_compat_privileges", "off", ""),
        row("setting", "max_prepared_transactions", "0", ""),
    ]
}

#[test]
fn a_clean_database_passes_without_warnings() {
    assert_eq!(verdict("pgt_shared", &clean()), Verdict::default());
}

#[test]
fn each_channel_is_named_with_its_fix() {
    let cases = [
        (
            row("rel", "public.plain", "SELECT", "r"),
            "it may SELECT public.plain, which does not have row-level security enabled and forced (ALTER TABLE public.plain ENABLE",
        ),
        (
            row("rel", "public.notes", "SELECT,TRUNCATE", "r,forced"),
            "it may TRUNCATE public.notes",
        ),
        (
            row("rel", "public.countries", "SELECT,UPDATE", "r,listed"),
            "it may UPDATE shared table public.countries",
        ),
        (
            row("policy_guc", "public.orders", "tenant", ""),
            "policy \"tenant\" on public.orders reads current_setting()",
        ),
        (
            row("rel", "public.remote", "SELECT", "f"),
            "foreign table public.remote, which row-level security cannot filter",
        ),
        (
            row("rel", "public.mv", "SELECT", "m"),
            "materialized view public.mv",
        ),
        (
            row("rel", "public.notes_id_seq", "UPDATE", "S"),
            "setval() sequence public.notes_id_seq",
        ),
        (
            row("rel", "pgtenant.context_key", "SELECT", "r,own"),
            "REVOKE ALL ON pgtenant.context_key FROM PUBLIC, \"pgt_shared\"",
        ),
        (
            row("view_owner", "public.v", "postgres", ""),
            "ALTER VIEW public.v SET (security_invoker = on)",
        ),
        (
            row("view_reads", "public.v", "public.plain", "r"),
            "view public.v reads public.plain, without row-level security",
        ),
        (
            row("owns", "table", "public.owned", "pgt_shared"),
            "ALTER TABLE public.owned OWNER TO <an admin role>",
        ),
        (
            row("owns", "database", "app_shared", "pgt_shared"),
            "it owns database app_shared",
        ),
        (
            row("owns", "schema", "pgtenant", "app_owner"),
            "member of role \"app_owner\", which owns schema pgtenant",
        ),
        (
            row("create", "schema", "public", ""),
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC, \"pgt_shared\"",
        ),
        (
            row("create", "database", "app_shared", ""),
            "REVOKE CREATE ON DATABASE app_shared",
        ),
        (
            row("member", "pgtenant_owner", "", ""),
            "REVOKE \"pgtenant_owner\" FROM \"pgt_shared\"",
        ),
        (
            row("lo_table", "pg_catalog.pg_largeobject", "", ""),
            "REVOKE SELECT ON pg_catalog.pg_largeobject",
        ),
        (
            row("lo_acl", "4343", "PUBLIC", "SELECT"),
            "REVOKE ALL ON LARGE OBJECT 4343 FROM PUBLIC",
        ),
        (
            row("definer", "public.sd()", "postgres", "bypass"),
            "REVOKE EXECUTE ON FUNCTION public.sd()",
        ),
    ];
    for (bad, needle) in cases {
        let mut rows = clean();
        rows.push(bad.clone());
        let v = verdict("pgt_shared", &rows);
        assert_eq!(v.problems.len(), 1, "{bad:?}: {v:?}");
        assert!(v.problems[0].contains(needle), "{bad:?}: {v:?}");
    }
}

#[test]
fn what_is_allowed_passes() {
    for ok in [
        // Reading a listed table, nextval() on a sequence, a view
        // that reads with the caller's rights.
        row("rel", "public.countries", "SELECT", "r,listed"),
        row("rel", "public.v2", "SELECT,INSERT", "v,invoker"),
        row("rel", "public.v3", "SELECT", "v"),
        row("rel", "public.ref_mv", "SELECT", "m,listed"),
    ] {
        let mut rows = clean();
        rows.push(ok.clone());
        assert_eq!(verdict("pgt_shared", &rows), Verdict::default(), "{ok:?}");
    }
}

#[test]
fn a_missing_install_or_unseen_setting_fails_closed() {
    let rows: Vec<Row> = clean()
        .into_iter()
        .filter(|r| r[0] != "tenant_fn" && r[1] != "lo_compat_privileges")
        .collect();
    let p = verdict("pgt_shared", &rows).problems.join("\n");
    assert!(p.contains("install sql/pgtenant.sql"), "{p}");
    assert!(p.contains("lo_compat_privileges is not off"), "{p}");
    let mut rows = clean();
    rows[3] = row("tenant_fn", "missing", "", "");
    let p = verdict("pgt_shared", &rows).problems.join("\n");
    assert!(p.contains("does not exist in this database (install sql/pgtenant.sql)"));
}

#[test]
fn superuser_only_channels_are_warnings() {
    let mut rows = clean();
    rows.push(row("fn", "pg_catalog.pg_cancel_backend(integer)", "", ""));
    rows.push(row("fn", "pg_catalog.pg_stat_activity", "", ""));
    rows.push(row("fn", "pg_catalog.lo_create(oid)", "", ""));
    rows.push(row("role_setting", "", "statement_timeout=1", ""));
    rows.push(row("temp", "app_shared", "", ""));
    let v = verdict("pgt_shared", &rows);
    assert!(v.problems.is_empty(), "{v:?}");
    let w = v.warnings.join("\n");
    for needle in [
        "pg_cancel_backend(integer)",
        "pg_stat_activity: any shared tenant sees the statement text",
        "lo_create(oid)",
        "ALTER ROLE \"pgt_shared\" RESET statement_timeout",
        "REVOKE TEMPORARY ON DATABASE app_shared FROM PUBLIC, \"pgt_shared\"",
    ] {
        assert!(w.contains(needle), "{needle} missing from {w}");
    }
}

#[test]
fn prepared_transactions_refuse_the_placement() {
    let mut rows = clean();
    rows[5] = row("setting", "max_prepared_transactions", "5", "");
    let p = verdict("pgt_shared", &rows).problems.join("\n");
    assert!(p.contains("max_prepared_transactions is 5"), "{p}");
}

#[test]
fn the_allow_list_travels_as_hex_lines() {
    let sql = check_sql(&RlsPolicy {
        shared_tables: vec!["public.a".into(), "x.\"b'\"".into()],
        setting_store: false,
    });
    assert!(sql.contains("decode('7075626c69632e610a782e22622722', 'hex')"));
    assert!(check_sql(&RlsPolicy::default()).contains("decode('', 'hex')"));
    // Only a setting store's check lets policies read its setting.
    assert!(sql.contains("pol.polrelid)), '', '')"), "{sql}");
    let setting = check_sql(&RlsPolicy {
        setting_store: true,
        ..RlsPolicy::default()
    });
    assert!(
        setting
            .contains("'NULLIF(current_setting(''backtrace_functions''::text), ''''::text)', '')"),
        "{setting}"
    );
}
