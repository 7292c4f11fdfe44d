//! Session settings that follow the client, not the server connection:
//! what the client asked for at startup (`application_name`,
//! `client_encoding`, `DateStyle`, `-c` options...) and what ParameterStatus
//! later told it. Before a leased connection runs the client's transaction,
//! the differences are applied with one `SET`/`RESET` round trip; when the
//! connection already matches (the common case) nothing is sent.

use postgres_protocol::escape::{escape_identifier, escape_literal};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};

/// A settings list, shared by identity. Sessions whose lists are equal
/// hold one allocation (`interned`), and a server connection keeps the
/// list it was last synced to, so "already in sync" (checked at every
/// lease) is usually one pointer compare rather than a compare of every
/// name and value, which touches a cache line per string. Changed with
/// `Arc::make_mut`, so a shared list is never changed under its holders.
pub type Settings = Arc<SettingList>;

/// Settings as (name, value) pairs, in the order they were set.
pub type SettingList = Vec<(String, String)>;

/// Interned lists, by content; entries whose lists are gone are swept
/// when the table has doubled since the last sweep.
struct Interned {
    lists: HashMap<SettingList, Weak<SettingList>>,
    sweep_at: usize,
}

static INTERNED: LazyLock<Mutex<Interned>> = LazyLock::new(|| {
    Mutex::new(Interned {
        lists: HashMap::new(),
        sweep_at: 64,
    })
});

/// The shared allocation for a list equal to `list` (once per login).
pub fn interned(list: SettingList) -> Settings {
    let mut t = INTERNED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(shared) = t.lists.get(&list).and_then(Weak::upgrade) {
        return shared;
    }
    if t.lists.len() >= t.sweep_at {
        t.lists.retain(|_, w| w.strong_count() > 0);
        t.sweep_at = (2 * t.lists.len()).max(64);
    }
    let shared = Arc::new(list.clone());
    t.lists.insert(list, Arc::downgrade(&shared));
    shared
}

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Whether a startup parameter is a session setting to carry.
pub fn is_setting(name: &str) -> bool {
    !NOT_SETTINGS.contains(&name) && !name.starts_with("_pq_.")
}

/// Setting names are GUC names: letters, digits, `_` and `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// Sets `name` in a settings list (names compare case-insensitively, as
/// GUC names do).
pub fn upsert(list: &mut Vec<(String, String)>, name: &str, value: &str) {
    match list.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
        Some((_, v)) => {
            if v != value {
                value.clone_into(v);
            }
        }
        None => list.push((name.to_string(), value.to_string())),
    }
}

/// ParameterStatus values a client has been told: its placement's server
/// values, shared by every client of the placement, with this client's
/// own values on top. A login then copies only what differs (say,
/// `application_name`), not the dozen strings the server reports.
#[derive(Debug, Clone)]
pub struct Reported {
    base: Arc<[(String, String)]>,
    own: Vec<(String, String)>,
}

impl Reported {
    pub fn new(base: Arc<[(String, String)]>) -> Reported {
        Reported {
            base,
            own: Vec::new(),
        }
    }

    /// The value the client was last told for `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.own
            .iter()
            .chain(self.base.iter())
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The client has been told `value` for `name`.
    pub fn set(&mut self, name: &str, value: &str) {
        if self.get(name) != Some(value) {
            upsert(&mut self.own, name, value);
        }
    }
}

/// Custom settings tracked per client; past this, more are not followed
/// (bounds what one client can make the proxy query).
pub const MAX_CUSTOM_SETTINGS: usize = 64;

/// Client encodings whose multibyte characters can contain ASCII bytes
/// such as `\` or `'` (PostgreSQL accepts them only as client encodings).
const ASCII_UNSAFE_ENCODINGS: &[&str] = &[
    "SJIS",
    "SHIFT_JIS_2004",
    "BIG5",
    "GBK",
    "UHC",
    "GB18030",
    "JOHAB",
];

/// Whether `sql`, sent on a connection that reported `params`, must wait
/// for the connection to be switched to UTF8: its client_encoding is one
/// of the ASCII-unsafe ones and `sql` holds bytes it could misread.
pub fn needs_utf8_first(params: &[(String, String)], sql: &str) -> bool {
    let unsafe_encoding = params.iter().any(|(k, v)| {
        k == "client_encoding"
            && ASCII_UNSAFE_ENCODINGS
                .iter()
                .any(|e| v.eq_ignore_ascii_case(e))
    });
    unsafe_encoding && sql.bytes().any(|b| b >= 0x80 || b == b'\\')
}

/// What a client expects: its startup settings, overridden by what it set
/// since (RESET returns a setting to its startup value, as in PostgreSQL).
pub fn overlay(
    startup: &[(String, String)],
    session: &[(String, String)],
) -> Vec<(String, String)> {
    let mut out = startup.to_vec();
    for (k, v) in session {
        upsert(&mut out, k, v);
    }
    out
}

/// Timeouts a sync switches off before it runs (see `sync_sql`).
const SYNC_TIMEOUTS: [&str; 2] = ["statement_timeout", "lock_timeout"];

/// The SQL that turns a connection's `applied` settings into `wanted`, or
/// `None` when they already match. Values go through `set_config`, which
/// takes them as the text of the setting (so list settings such as
/// `search_path` keep their form); removals are `RESET`.
pub fn sync_sql(wanted: &[(String, String)], applied: &[(String, String)]) -> Option<String> {
    if wanted == applied {
        return None;
    }
    // The previous client's timeouts would apply to this very sync (say,
    // its statement_timeout of 1 ms): switch them off first, then set or
    // reset them like any other setting.
    let has =
        |list: &[(String, String)], k: &str| list.iter().any(|(n, _)| n.eq_ignore_ascii_case(k));
    let neutralised =
        |k: &str| SYNC_TIMEOUTS.iter().any(|t| k.eq_ignore_ascii_case(t)) && has(applied, k);
    let mut sql = String::new();
    for t in SYNC_TIMEOUTS {
        if has(applied, t) {
            sql.push_str(&format!("SET {t} = 0;"));
        }
    }
    let mut sets = Vec::new();
    for (k, v) in wanted {
        let same = !neutralised(k)
            && applied
                .iter()
                .any(|(ak, av)| ak.eq_ignore_ascii_case(k) && av == v);
        if !same {
            sets.push(format!(
                "pg_catalog.set_config({}, {}, false)",
                escape_literal(k),
                escape_literal(v)
            ));
        }
    }
    if !sets.is_empty() {
        sql.push_str(&format!("SELECT {};", sets.join(", ")));
    }
    for (k, _) in applied {
        if !wanted.iter().any(|(wk, _)| wk.eq_ignore_ascii_case(k)) {
            sql.push_str(&format!("RESET {};", escape_identifier(k)));
        }
    }
    (!sql.is_empty()).then_some(sql)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A settings list from literals (also used by `control`'s tests).
    pub(crate) fn s(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn reported_values_copy_only_what_differs() {
        let base: Arc<[(String, String)]> =
            s(&[("application_name", ""), ("DateStyle", "ISO, MDY")]).into();
        let mut r = Reported::new(Arc::clone(&base));
        r.set("application_name", "");
        r.set("datestyle", "ISO, MDY");
        assert!(r.own.is_empty(), "equal values are not copied");
        assert_eq!(r.get("DATESTYLE"), Some("ISO, MDY"));
        r.set("application_name", "psql");
        r.set("Application_Name", "app");
        assert_eq!(r.get("application_name"), Some("app"));
        assert_eq!(r.own.len(), 1);
        r.set("TimeZone", "UTC");
        assert_eq!(r.get("timezone"), Some("UTC"));
        assert_eq!(r.get("server_version"), None);
        assert_eq!(base[0].1, "", "the shared values never change");
    }

    #[test]
    fn equal_lists_share_one_allocation() {
        let a = interned(s(&[
            ("application_name", "intern-test"),
            ("DateStyle", "ISO"),
        ]));
        let b = interned(s(&[
            ("application_name", "intern-test"),
            ("DateStyle", "ISO"),
        ]));
        let c = interned(s(&[("application_name", "intern-test-2")]));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        // Changing a shared list copies it: the other holder keeps its own.
        let mut changed = Arc::clone(&a);
        upsert(Arc::make_mut(&mut changed), "DateStyle", "German");
        assert_eq!(b[1].1, "ISO");
        assert_eq!(changed[1].1, "German");
        // Once every holder is gone, an equal list gets a fresh allocation.
        drop((a, b, changed));
        let d = interned(s(&[
            ("application_name", "intern-test"),
            ("DateStyle", "ISO"),
        ]));
        assert_eq!(Arc::strong_count(&d), 1);
    }

    #[test]
    fn nothing_to_do_when_equal() {
        let a = s(&[("application_name", "psql"), ("DateStyle", "ISO")]);
        let b = s(&[("datestyle", "ISO"), ("application_name", "psql")]);
        assert_eq!(sync_sql(&a, &b), None);
    }

    #[test]
    fn sets_and_resets() {
        let wanted = s(&[("application_name", "it's")]);
        let applied = s(&[("application_name", "x"), ("TimeZone", "UTC")]);
        assert_eq!(
            sync_sql(&wanted, &applied).as_deref(),
            Some(
                "SELECT pg_catalog.set_config('application_name', 'it''s', false);RESET \"TimeZone\";"
            )
        );
    }

    #[test]
    fn overlay_keeps_startup_values_unless_overridden() {
        let startup = s(&[("application_name", "start"), ("DateStyle", "ISO")]);
        let session = s(&[("datestyle", "German"), ("work_mem", "13312")]);
        assert_eq!(
            overlay(&startup, &session),
            s(&[
                ("application_name", "start"),
                ("DateStyle", "German"),
                ("work_mem", "13312")
            ])
        );
    }

    #[test]
    fn syncs_wait_for_utf8_only_where_an_encoding_could_misread_them() {
        let sjis = s(&[("client_encoding", "SJIS")]);
        let utf8 = s(&[("client_encoding", "UTF8")]);
        let escaped = "SELECT pg_catalog.set_config('app.x', E'\u{441}\\''', false)";
        assert!(needs_utf8_first(&sjis, escaped));
        assert!(!needs_utf8_first(&utf8, escaped));
        assert!(!needs_utf8_first(
            &sjis,
            "SELECT pg_catalog.set_config('a.b', 'x', false)"
        ));
    }

    #[test]
    fn a_previous_clients_timeouts_are_off_while_syncing() {
        let applied = s(&[("statement_timeout", "1ms"), ("application_name", "a")]);
        let wanted = s(&[("application_name", "b")]);
        assert_eq!(
            sync_sql(&wanted, &applied).as_deref(),
            Some(
                "SET statement_timeout = 0;SELECT pg_catalog.set_config('application_name', 'b', false);RESET \"statement_timeout\";"
            )
        );
        // Kept by the next client too: set again after the switch-off.
        let wanted = s(&[("statement_timeout", "1ms"), ("application_name", "b")]);
        assert_eq!(
            sync_sql(&wanted, &applied).as_deref(),
            Some(
                "SET statement_timeout = 0;SELECT pg_catalog.set_config('statement_timeout', '1ms', false), pg_catalog.set_config('application_name', 'b', false);"
            )
        );
    }

    #[test]
    fn names() {
        assert!(valid_name("search_path") && valid_name("app.tenant_x"));
        assert!(!valid_name("a;b") && !valid_name("") && !valid_name("a b"));
        assert!(is_setting("application_name") && !is_setting("user") && !is_setting("_pq_.x"));
    }
}
