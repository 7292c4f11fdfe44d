//! The tenant context of an `isolation = "rls"` placement: how the proxy
//! drives what `sql/pgtenant.sql` installs in the shared database.
//!
//! Once per server connection the proxy calls `pgtenant.open_session(s1,
//! s2, proof)`: a fresh random 128-bit session secret S and an
//! HMAC-SHA-256 proof, keyed with the placement's context key, over S and
//! the backend's pid; the database keeps S where only its schema owner can
//! read it (a sequence's currval, private to the session). Every lease
//! that changes tenant then starts with one FunctionCall of
//! `pgtenant.enter(tenant, mirror, s1, s2, proof)`, written ahead of the
//! client's first message and sent with it (no round trip of its own): the
//! database compares S with the session's (no key read, no hash) and sets
//! the tenant, and last prepares a statement named after a number drawn
//! for the lease; a Describe and a Close of that statement follow the call
//! (`write_guard`), so that if the call failed anywhere, before it could
//! clear the previous tenant too, PostgreSQL skips the client's messages
//! up to their Sync (and the session holds back what the client sent
//! after its first Sync until the replies are in). The session drops the
//! calls' replies and ends the lease if one fails. Only the proxy knows
//! the key and S; S is bound to the backend session itself; a
//! FunctionCall's arguments appear in no query text (`pg_stat_activity`,
//! `pg_stat_statements`, statement logging).
//!
//! When a pool opens a connection it looks the functions up by their full
//! signatures, opens the session and, until one passes, runs a self-test
//! on it: an `enter()` that `current_tenant()` must then report, and one
//! with a wrong secret that must fail and leave no tenant behind. A
//! database without the SQL or the key is refused like a failed connect
//! (clients get 08006; the log says what to run).

use super::server_conn::{ServerConn, ServerError};
use crate::config::{CONTEXT_SETTING, ContextStore};
use bytes::{BufMut, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use postgres_protocol::message::frontend;
use sha2::Sha256;

/// What the self-test enters: no tenant can have this name (' ' is not
/// allowed in one, and `backtrace_functions` accepts it), and at 18 bytes
/// it spans three of the name sequences.
const SELF_TEST_TENANT: &str = "pgtenant self test";

/// A session secret: what `open_session` stores and `enter` must show.
pub type SessionSecret = (i64, i64);

/// The context functions of one database (OIDs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextFunctions {
    pub open: u32,
    pub enter: u32,
}

/// A fresh session secret, from the thread's CSPRNG.
pub fn new_secret() -> SessionSecret {
    (rand::random(), rand::random())
}

/// A placement's context key, mirror setting and store.
#[derive(PartialEq, Eq)]
pub struct TenantContext {
    key: [u8; 32],
    /// A setting that `enter()` also sets to the tenant's name: a custom
    /// one for applications that read it (`app.tenant_id`), or
    /// `backtrace_functions` for the setting store; "" for none.
    mirror: String,
    store: ContextStore,
}

impl std::fmt::Debug for TenantContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantContext")
            .field("mirror", &self.mirror)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl TenantContext {
    /// `mirror` is ignored with [`ContextStore::Setting`], whose setting
    /// takes its place (config/load.rs refuses both at once).
    pub fn new(key: [u8; 32], mirror: Option<String>, store: ContextStore) -> TenantContext {
        let mirror = match store {
            ContextStore::Sequences => mirror.unwrap_or_default(),
            ContextStore::Setting => CONTEXT_SETTING.to_owned(),
        };
        TenantContext { key, mirror, store }
    }

    /// The built-in setting this context is kept in, if any: `enter()`
    /// writes it, so it is never one of the client's settings.
    pub fn own_setting(&self) -> Option<&'static str> {
        (self.store == ContextStore::Setting).then_some(CONTEXT_SETTING)
    }

    /// Appends the FunctionCall that gives backend `pid` the session
    /// secret `secret` (`open` is its `pgtenant.open_session`).
    pub fn write_open(&self, open: u32, pid: i32, secret: SessionSecret, out: &mut BytesMut) {
        let proof = self.proof(pid, secret);
        let (s1, s2) = (secret.0.to_be_bytes(), secret.1.to_be_bytes());
        write_call(open, &[Some(&s1), Some(&s2), Some(&proof)], out);
    }

    /// Appends the FunctionCall that makes `tenant` the context of the
    /// session holding `secret` (`enter` is its `pgtenant.enter`). With a
    /// `proof`, the call ends by preparing the statement [`write_guard`]
    /// names: only a call that set the context does.
    pub fn write_enter(
        &self,
        enter: u32,
        secret: SessionSecret,
        tenant: &str,
        proof: Option<i64>,
        out: &mut BytesMut,
    ) {
        let (s1, s2) = (secret.0.to_be_bytes(), secret.1.to_be_bytes());
        let proof = proof.map(i64::to_be_bytes);
        write_call(
            enter,
            &[
                Some(tenant.as_bytes()),
                Some(self.mirror.as_bytes()),
                Some(&s1),
                Some(&s2),
                proof.as_ref().map(|p| &p[..]),
            ],
            out,
        );
    }

    /// What `pgtenant.open_session()` recomputes: HMAC over a fixed label,
    /// the pid and the secret.
    fn proof(&self, pid: i32, secret: SessionSecret) -> [u8; 32] {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(m) => m,
            // HMAC takes keys of any length; unreachable.
            Err(_) => return [0; 32],
        };
        mac.update(b"pgtenant open v1");
        mac.update(&pid.to_be_bytes());
        mac.update(&secret.0.to_be_bytes());
        mac.update(&secret.1.to_be_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// The statement that registers this key in the shared database (run
    /// there by its owner): what `pgtenant context-key` prints.
    pub fn install_statement(&self) -> String {
        use std::fmt::Write;
        let mut hex = String::with_capacity(64);
        for b in self.key {
            let _ = write!(hex, "{b:02x}");
        }
        format!("SELECT pgtenant.install_key('\\x{hex}'::bytea);")
    }
}

/// The messages that let the client's messages behind a pipelined
/// `enter()` call run only if the call set the context: a Describe of the
/// statement the call prepares last (named after `proof`) and a Close of
/// it, with no Sync. If the call failed, at any point, the statement does
/// not exist, the Describe fails, and PostgreSQL skips every message up to
/// the next Sync, the client's included. A Describe takes no snapshot and
/// runs nothing, so the client's first statement is free to set its
/// transaction's isolation level. Replies: ParameterDescription,
/// RowDescription, CloseComplete.
pub fn write_guard(proof: i64, out: &mut BytesMut) {
    // The name on the stack: this runs at every lease that switches tenant.
    const ROOM: usize = PROOF_PREFIX.len() + 16;
    let mut name = [0u8; ROOM];
    name[..PROOF_PREFIX.len()].copy_from_slice(PROOF_PREFIX.as_bytes());
    let mut digits = &mut name[PROOF_PREFIX.len()..];
    let _ = std::io::Write::write_fmt(&mut digits, format_args!("{:x}", proof as u64));
    let len = ROOM - digits.len();
    // ASCII, no NUL: neither writer can fail.
    let name = std::str::from_utf8(&name[..len]).unwrap_or_default();
    frontend::describe(b'S', name, out).ok();
    frontend::close(b'S', name, out).ok();
}

/// Replies to the guard that each end one of its messages: the Describe's
/// RowDescription (or NoData), the Close's CloseComplete.
pub const GUARD_ENDS: u8 = 2;

/// What `pgtenant.enter()` names the statement it prepares:
/// `'pgtenant_proof_' || to_hex(proof)` (two's complement, lower case, no
/// leading zeros: `{:x}` of the proof as a u64).
const PROOF_PREFIX: &str = "pgtenant_proof_";

/// A FunctionCall of `function` with binary arguments (`None`: NULL) and
/// a binary result.
fn write_call(function: u32, args: &[Option<&[u8]>], out: &mut BytesMut) {
    let len = 4
        + 4
        + 2
        + 2
        + 2
        + args
            .iter()
            .map(|a| 4 + a.map_or(0, <[u8]>::len))
            .sum::<usize>()
        + 2;
    out.reserve(1 + len);
    out.put_u8(b'F');
    out.put_i32(len as i32);
    out.put_u32(function);
    out.put_i16(1); // one format code for all arguments:
    out.put_i16(1); // binary
    out.put_i16(args.len() as i16);
    for a in args {
        match a {
            Some(a) => {
                out.put_i32(a.len() as i32);
                out.put_slice(a);
            }
            None => out.put_i32(-1),
        }
    }
    out.put_i16(1); // result in binary
}

/// Looks up `pgtenant.open_session` and `pgtenant.enter` on `conn` by
/// their whole signatures (every name schema-qualified, so no
/// `search_path` can stand in another); also checks that
/// `pgtenant.current_tenant()` exists.
pub(super) async fn resolve(conn: &mut ServerConn) -> Result<ContextFunctions, ServerError> {
    const SQL: &str = "SELECT COALESCE(pg_catalog.to_regprocedure(\
        'pgtenant.open_session(pg_catalog.int8,pg_catalog.int8,pg_catalog.bytea)')\
        ::pg_catalog.oid, 0::pg_catalog.oid)::pg_catalog.text \
        OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) \
        COALESCE(pg_catalog.to_regprocedure(\
        'pgtenant.enter(pg_catalog.text,pg_catalog.text,pg_catalog.int8,pg_catalog.int8,pg_catalog.int8)')\
        ::pg_catalog.oid, 0::pg_catalog.oid)::pg_catalog.text, \
        COALESCE(pg_catalog.to_regprocedure('pgtenant.current_tenant()')\
        ::pg_catalog.oid, 0::pg_catalog.oid)::pg_catalog.text";
    let (rows, _) = conn.query_pairs(SQL, &mut BytesMut::new(), 0).await?;
    let found = rows.first().and_then(|(fns, current)| {
        let (open, enter) = fns.split_once(' ')?;
        let oid = |s: &str| s.parse::<u32>().ok().filter(|&o| o != 0);
        oid(current)?;
        Some(ContextFunctions {
            open: oid(open)?,
            enter: oid(enter)?,
        })
    });
    found.ok_or_else(|| {
        not_installed(
            "the functions pgtenant.open_session(int8, int8, bytea), \
             pgtenant.enter(text, text, int8, int8, int8) and pgtenant.current_tenant() are missing \
             or not executable",
        )
    })
}

/// Gives the session on `conn` a fresh secret; `Err` if the database
/// refuses the proof (another key, no key).
pub(super) async fn open(
    conn: &mut ServerConn,
    ctx: &TenantContext,
    functions: ContextFunctions,
) -> Result<SessionSecret, ServerError> {
    let secret = new_secret();
    let mut call = BytesMut::new();
    ctx.write_open(functions.open, conn.cancel_key().pid, secret, &mut call);
    match conn.exchange(&call).await {
        Ok(_) => Ok(secret),
        Err(ServerError::Rejected { message, .. }) => Err(not_installed(&format!(
            "pgtenant.open_session() refused the proxy's proof ({message}); the database holds \
             another context key"
        ))),
        Err(e) => Err(e),
    }
}

/// Proves on a fresh connection, whose session holds `secret`, that the
/// database's context works and fails closed.
pub(super) async fn self_test(
    conn: &mut ServerConn,
    ctx: &TenantContext,
    functions: ContextFunctions,
    secret: SessionSecret,
) -> Result<(), ServerError> {
    let mut call = BytesMut::new();
    ctx.write_enter(functions.enter, secret, SELF_TEST_TENANT, None, &mut call);
    if let Err(e) = conn.exchange(&call).await {
        return Err(match e {
            ServerError::Rejected { message, .. } => not_installed(&format!(
                "pgtenant.enter() refused the session's secret or could not set the context \
                 ({message}){}",
                match ctx.store {
                    ContextStore::Setting => SETTING_INSTALL,
                    ContextStore::Sequences => "",
                }
            )),
            e => e,
        });
    }
    if current_tenant(conn).await? != SELF_TEST_TENANT {
        return Err(not_installed(
            "pgtenant.current_tenant() does not report what pgtenant.enter() set; \
             sql/pgtenant.sql is not the version this proxy needs, or sql/pgtenant-setting.sql \
             made it read backtrace_functions, which only a placement with \
             context_store = \"setting\" sets",
        ));
    }
    if ctx.store == ContextStore::Setting && !reads_the_setting(conn).await? {
        tracing::warn!(
            "context_store = \"setting\", but pgtenant.current_tenant() still reads the \
             sequences (sql/pgtenant.sql was run after sql/pgtenant-setting.sql): the context \
             holds, and every policy pays the slower read; run sql/pgtenant-setting.sql again \
             as a superuser"
        );
    }
    // A wrong secret: refused, and (where the store is not transactional,
    // so that the clear survives the failure) no tenant afterwards. The
    // setting store's value rolls back with the failed call: there the
    // guard and the closed connection are what stop a failed lease.
    let mut forged = BytesMut::new();
    let wrong = (secret.0 ^ 1, secret.1);
    ctx.write_enter(functions.enter, wrong, SELF_TEST_TENANT, None, &mut forged);
    let refused = matches!(
        conn.exchange(&forged).await,
        Err(ServerError::Rejected { .. })
    );
    let cleared = match ctx.store {
        ContextStore::Sequences => current_tenant(conn).await?.is_empty(),
        ContextStore::Setting => true,
    };
    if !refused || !cleared {
        return Err(not_installed(
            "pgtenant.enter() accepted a wrong session secret or left the previous tenant \
             behind; install sql/pgtenant.sql again",
        ));
    }
    Ok(())
}

/// What the setting store's refusals add to the fix.
const SETTING_INSTALL: &str = "; context_store = \"setting\" needs sql/pgtenant-setting.sql \
    run by a superuser in this database, after sql/pgtenant.sql";

/// The setting store's premises, on every new connection before any
/// `enter()` (a superuser may change either while the pool runs): the
/// session starts with no tenant in `backtrace_functions` (nothing in the
/// server's configuration, `ALTER DATABASE` or `ALTER ROLE` names one,
/// which a client's `RESET ALL` would bring back), and the placement's role
/// may not set it (only what `enter()` writes is a tenant). The sequences
/// store needs nothing here.
pub(super) async fn check_store(
    conn: &mut ServerConn,
    ctx: &TenantContext,
) -> Result<(), ServerError> {
    if ctx.store == ContextStore::Sequences {
        return Ok(());
    }
    let (rows, _) = conn
        .query_pairs(
            "SELECT pg_catalog.current_setting('backtrace_functions'), \
             pg_catalog.has_parameter_privilege('backtrace_functions', 'SET')::pg_catalog.text",
            &mut BytesMut::new(),
            0,
        )
        .await?;
    let (value, may_set) = rows.into_iter().next().unwrap_or_default();
    if !value.is_empty() {
        return Err(not_installed(&format!(
            "a new session of the placement's role starts with backtrace_functions = {value:?} \
             (from the server's configuration, ALTER DATABASE or ALTER ROLE), which a session \
             without a context would read as its tenant; sql/pgtenant-setting.sql sets it to '' \
             for the database, and no role setting may override it"
        )));
    }
    if may_set != "false" {
        return Err(not_installed(
            "the placement's role may SET backtrace_functions (a superuser granted it, to the \
             role or one it belongs to), so every tenant could name another; REVOKE SET ON \
             PARAMETER backtrace_functions from it",
        ));
    }
    Ok(())
}

/// Whether `pgtenant.current_tenant()` is the setting store's version.
async fn reads_the_setting(conn: &mut ServerConn) -> Result<bool, ServerError> {
    let (rows, _) = conn
        .query_pairs(
            "SELECT (pg_catalog.pg_get_functiondef('pgtenant.current_tenant()'::pg_catalog.regprocedure) \
             OPERATOR(pg_catalog.~~) '%backtrace_functions%')::pg_catalog.text, ''",
            &mut BytesMut::new(),
            0,
        )
        .await?;
    Ok(rows.first().is_some_and(|(b, _)| b == "true"))
}

async fn current_tenant(conn: &mut ServerConn) -> Result<String, ServerError> {
    let (rows, _) = conn
        .query_pairs(
            "SELECT COALESCE(pgtenant.current_tenant(), ''), ''",
            &mut BytesMut::new(),
            0,
        )
        .await?;
    Ok(rows.into_iter().next().map(|(t, _)| t).unwrap_or_default())
}

fn not_installed(what: &str) -> ServerError {
    ServerError::ContextUnavailable(format!(
        "isolation = \"rls\" needs the tenant context in the placement's database: {what}. \
         Install it with `psql -v shared_role=<the placement's user> -f sql/pgtenant.sql` and \
         register the key with `pgtenant context-key -c <config> <placement> | psql ...`, \
         both as the database's owner (README, \"Row-level security\")"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enter_call_layout() {
        let ctx = TenantContext::new(
            [7; 32],
            Some("app.tenant_id".into()),
            ContextStore::Sequences,
        );
        let mut out = BytesMut::new();
        ctx.write_enter(16_384, (1, -2), "acme", Some(-1), &mut out);
        assert_eq!(out[0], b'F');
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        assert_eq!(&out[5..9], &16_384u32.to_be_bytes());
        // One binary format code, five arguments.
        assert_eq!(&out[9..15], &[0, 1, 0, 1, 0, 5]);
        assert_eq!(&out[15..19], &4i32.to_be_bytes());
        assert_eq!(&out[19..23], b"acme");
        assert_eq!(&out[23..27], &13i32.to_be_bytes());
        assert_eq!(&out[27..40], b"app.tenant_id");
        assert_eq!(&out[40..44], &8i32.to_be_bytes());
        assert_eq!(&out[44..52], &1i64.to_be_bytes());
        assert_eq!(&out[56..64], &(-2i64).to_be_bytes());
        assert_eq!(&out[64..68], &8i32.to_be_bytes());
        assert_eq!(&out[68..76], &(-1i64).to_be_bytes());
        assert_eq!(&out[out.len() - 2..], &[0, 1]);
        // Without a proof: NULL.
        let mut out = BytesMut::new();
        ctx.write_enter(16_384, (1, -2), "acme", None, &mut out);
        assert_eq!(&out[64..68], &(-1i32).to_be_bytes());
        assert_eq!(out.len(), 70);
    }

    /// The guard names what `enter()` prepares: PostgreSQL's `to_hex` of
    /// the proof (two's complement, lower case, no leading zeros).
    #[test]
    fn guard_layout() {
        for (proof, hex) in [
            (0i64, "0"),
            (15, "f"),
            (16, "10"),
            (0x0abc, "abc"),
            (-1, "ffffffffffffffff"),
            (i64::MIN, "8000000000000000"),
            (i64::MAX, "7fffffffffffffff"),
        ] {
            let mut out = BytesMut::new();
            write_guard(proof, &mut out);
            let name = format!("pgtenant_proof_{hex}");
            let mut want = Vec::new();
            for tag in [b'D', b'C'] {
                want.push(tag);
                want.extend_from_slice(&((4 + 1 + name.len() + 1) as i32).to_be_bytes());
                want.push(b'S');
                want.extend_from_slice(name.as_bytes());
                want.push(0);
            }
            assert_eq!(&out[..], &want[..], "proof {proof}");
        }
    }

    #[test]
    fn proofs_bind_pid_secret_and_key() {
        let a = TenantContext::new([1; 32], None, ContextStore::Sequences);
        let p = a.proof(10, (5, 6));
        assert_ne!(p, a.proof(11, (5, 6)), "another backend");
        assert_ne!(p, a.proof(10, (5, 7)), "another secret");
        assert_ne!(
            p,
            TenantContext::new([2; 32], None, ContextStore::Sequences).proof(10, (5, 6))
        );
        assert_eq!(p, a.proof(10, (5, 6)));
    }

    #[test]
    fn secrets_differ() {
        assert_ne!(new_secret(), new_secret());
    }
}
