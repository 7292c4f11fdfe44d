//! The tenant context of an `isolation = "rls"` placement: how the proxy
//! drives what `sql/pgtenant.sql` installs in the shared database.
//!
//! Every lease starts with one FunctionCall of `pgtenant.enter(tenant,
//! mirror, proof)`, written ahead of the client's first message and sent
//! with it (no round trip of its own); the session swallows its reply and
//! ends the lease if it fails. The proof is HMAC-SHA-256, keyed with the
//! placement's context key, over the tenant and the backend's pid: only
//! the proxy can make one, and one made for a backend is refused by any
//! other. A FunctionCall's arguments appear in no query text
//! (`pg_stat_activity`, `pg_stat_statements`, statement logging).
//!
//! When a pool opens a connection it looks the function up by its full
//! signature and, until one passes, runs a self-test on it: an `enter()`
//! that `current_tenant()` must then report, and a forged one that must
//! fail and leave no tenant behind. A database without the SQL or the
//! key is refused like a failed connect (clients get 08006; the log says
//! what to run).

use super::server_conn::{ServerConn, ServerError};
use bytes::{BufMut, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// What the self-test enters: no tenant can have this name (':' is not
/// allowed in one), and at 10 bytes it spans two of the name sequences.
const SELF_TEST_TENANT: &str = ":self-test";

/// A placement's context key and mirror setting.
pub struct TenantContext {
    key: [u8; 32],
    /// A custom setting that `enter()` also sets to the tenant's name,
    /// for applications that read one (`app.tenant_id`); "" for none.
    mirror: String,
}

impl std::fmt::Debug for TenantContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantContext")
            .field("mirror", &self.mirror)
            .finish_non_exhaustive()
    }
}

impl TenantContext {
    pub fn new(key: [u8; 32], mirror: Option<String>) -> TenantContext {
        TenantContext {
            key,
            mirror: mirror.unwrap_or_default(),
        }
    }

    /// Appends the FunctionCall that makes `tenant` the context of
    /// backend `pid`, whose `pgtenant.enter` is `function`. Arguments and
    /// result in binary: the name's bytes, the proof's bytes.
    pub fn write_enter(&self, function: u32, pid: i32, tenant: &str, out: &mut BytesMut) {
        let proof = self.proof(pid, tenant);
        let args: [&[u8]; 3] = [tenant.as_bytes(), self.mirror.as_bytes(), &proof];
        let len = 4 + 4 + 2 + 2 + 2 + args.iter().map(|a| 4 + a.len()).sum::<usize>() + 2;
        out.reserve(1 + len);
        out.put_u8(b'F');
        out.put_i32(len as i32);
        out.put_u32(function);
        out.put_i16(1); // one format code for all arguments:
        out.put_i16(1); // binary
        out.put_i16(args.len() as i16);
        for a in args {
            out.put_i32(a.len() as i32);
            out.put_slice(a);
        }
        out.put_i16(1); // result in binary
    }

    /// What `pgtenant.enter()` recomputes: HMAC over a fixed label, the
    /// pid, the name, a NUL (names hold none) and the mirror setting.
    fn proof(&self, pid: i32, tenant: &str) -> [u8; 32] {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(m) => m,
            // HMAC takes keys of any length; unreachable.
            Err(_) => return [0; 32],
        };
        mac.update(b"pgtenant enter v1");
        mac.update(&pid.to_be_bytes());
        mac.update(tenant.as_bytes());
        mac.update(&[0]);
        mac.update(self.mirror.as_bytes());
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

/// Looks up `pgtenant.enter` on `conn` by its whole signature (every name
/// schema-qualified, so no `search_path` can stand in another); also
/// checks that `pgtenant.current_tenant()` exists.
pub(super) async fn resolve(conn: &mut ServerConn) -> Result<u32, ServerError> {
    const SQL: &str = "SELECT COALESCE(pg_catalog.to_regprocedure(\
        'pgtenant.enter(pg_catalog.text,pg_catalog.text,pg_catalog.bytea)')\
        ::pg_catalog.oid, 0::pg_catalog.oid)::pg_catalog.text, \
        COALESCE(pg_catalog.to_regprocedure('pgtenant.current_tenant()')\
        ::pg_catalog.oid, 0::pg_catalog.oid)::pg_catalog.text";
    let (rows, _) = conn.query_pairs(SQL, &mut BytesMut::new(), 0).await?;
    let oids = rows
        .first()
        .map(|(e, c)| (e.parse::<u32>().unwrap_or(0), c.parse::<u32>().unwrap_or(0)));
    match oids {
        Some((enter, current)) if enter != 0 && current != 0 => Ok(enter),
        _ => Err(not_installed(
            "the functions pgtenant.enter(text, text, bytea) and pgtenant.current_tenant() \
             are missing or not executable",
        )),
    }
}

/// Proves on a fresh connection that the database's context works with
/// this placement's key and fails closed.
pub(super) async fn self_test(
    conn: &mut ServerConn,
    ctx: &TenantContext,
    function: u32,
) -> Result<(), ServerError> {
    let pid = conn.cancel_key().pid;
    let mut call = BytesMut::new();
    ctx.write_enter(function, pid, SELF_TEST_TENANT, &mut call);
    if let Err(e) = conn.exchange(&call).await {
        return Err(match e {
            ServerError::Rejected { message, .. } => not_installed(&format!(
                "pgtenant.enter() refused the proxy's proof ({message}); the database holds \
                 another context key"
            )),
            e => e,
        });
    }
    if current_tenant(conn).await? != SELF_TEST_TENANT {
        return Err(not_installed(
            "pgtenant.current_tenant() does not report what pgtenant.enter() set; \
             sql/pgtenant.sql is not the version this proxy needs",
        ));
    }
    // A forged proof: refused, and no tenant afterwards.
    let mut forged = BytesMut::new();
    TenantContext {
        key: [0; 32],
        mirror: ctx.mirror.clone(),
    }
    .write_enter(function, pid, SELF_TEST_TENANT, &mut forged);
    let refused = matches!(
        conn.exchange(&forged).await,
        Err(ServerError::Rejected { .. })
    );
    if !refused || !current_tenant(conn).await?.is_empty() {
        return Err(not_installed(
            "pgtenant.enter() accepted a forged proof or left the previous tenant behind; \
             install sql/pgtenant.sql again",
        ));
    }
    Ok(())
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
        let ctx = TenantContext::new([7; 32], Some("app.tenant_id".into()));
        let mut out = BytesMut::new();
        ctx.write_enter(16_384, 4242, "acme", &mut out);
        assert_eq!(out[0], b'F');
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        assert_eq!(&out[5..9], &16_384u32.to_be_bytes());
        // One binary format code, three arguments.
        assert_eq!(&out[9..15], &[0, 1, 0, 1, 0, 3]);
        assert_eq!(&out[15..19], &4i32.to_be_bytes());
        assert_eq!(&out[19..23], b"acme");
        assert_eq!(&out[23..27], &13i32.to_be_bytes());
        assert_eq!(&out[27..40], b"app.tenant_id");
        assert_eq!(&out[40..44], &32i32.to_be_bytes());
        assert_eq!(&out[out.len() - 2..], &[0, 1]);
    }

    #[test]
    fn proofs_bind_tenant_pid_key_and_mirror() {
        let a = TenantContext::new([1; 32], None);
        let p = a.proof(10, "acme");
        assert_ne!(p, a.proof(11, "acme"), "another backend");
        assert_ne!(p, a.proof(10, "acm"), "another tenant");
        assert_ne!(p, TenantContext::new([2; 32], None).proof(10, "acme"));
        assert_ne!(
            p,
            TenantContext::new([1; 32], Some("x.y".into())).proof(10, "acme")
        );
        assert_eq!(p, a.proof(10, "acme"));
    }
}
