//! Named prepared statements under transaction pooling: the pure parts.
//!
//! A client's statement names mean nothing on a server connection it did
//! not prepare them on, and two clients may use the same name for
//! different SQL. So the proxy renames: the server-side name is derived
//! from what is prepared (query text and parameter types), which makes
//! identical statements from many clients share one server-side statement
//! and makes the name valid on every connection once prepared there.
//!
//! The derivation is keyed with a secret drawn at start, so no client can
//! compute the name of another's statement (to run, drop or replace it).
//!
//! This file holds the naming, the frame readers/rewriters and the
//! bounded per-connection set; the session decides when to use them.

use bytes::{BufMut, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use rand::rand_core::TryRng;
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// A server-side statement name: `pgt_` and 32 hex digits of
/// HMAC-SHA-256, under a per-process secret, over the Parse body after the
/// name (query text and parameter types).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerName(Arc<str>);

impl ServerName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A statement a client prepared: what to send to prepare it anywhere.
#[derive(Debug)]
pub struct Statement {
    pub server_name: ServerName,
    /// The Parse body after the name: query text, NUL, parameter types.
    pub definition: Vec<u8>,
}

/// Reads a NUL-terminated string at the start of `b`: (string, rest).
fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = b.iter().position(|&c| c == 0)?;
    Some((&b[..nul], &b[nul + 1..]))
}

/// Parse body: `name\0 query\0 int16 n, int32[n] types`.
/// Returns (name, definition = everything after the name).
pub fn parse_parse(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (name, rest) = cstr(body)?;
    let (_query, types) = cstr(rest)?;
    let n = i16::from_be_bytes(types.get(..2)?.try_into().ok()?);
    if n < 0 || types.len() != 2 + 4 * n as usize {
        return None;
    }
    Some((name, rest))
}

/// Bind body: `portal\0 statement\0 ...`. Returns (portal, statement,
/// offset of the byte after the statement's NUL).
pub fn parse_bind_names(body: &[u8]) -> Option<(&[u8], &[u8], usize)> {
    let (portal, rest) = cstr(body)?;
    let (stmt, after) = cstr(rest)?;
    Some((portal, stmt, body.len() - after.len()))
}

/// Describe/Close body: `'S'|'P' name\0`.
pub fn parse_target(body: &[u8]) -> Option<(u8, &[u8])> {
    let (&kind, rest) = body.split_first()?;
    let (name, tail) = cstr(rest)?;
    (tail.is_empty() && (kind == b'S' || kind == b'P')).then_some((kind, name))
}

/// The key of the statement names: random per process, never sent.
fn name_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        if rand::rngs::SysRng.try_fill_bytes(&mut key).is_err() {
            // The thread generator is a CSPRNG seeded from the OS too.
            key = rand::RngExt::random(&mut rand::rng());
        }
        key
    })
}

/// The server-side name for a statement definition.
pub fn server_name(definition: &[u8]) -> ServerName {
    server_name_in(None, definition)
}

/// The server-side name for a statement definition in `namespace`
/// (`ClientStatements::in_namespace`); the length prefix keeps every
/// (namespace, definition) pair apart.
pub fn server_name_in(namespace: Option<&str>, definition: &[u8]) -> ServerName {
    let digest = match Hmac::<Sha256>::new_from_slice(name_key()) {
        Ok(mut mac) => {
            if let Some(ns) = namespace {
                mac.update(&(ns.len() as u64).to_be_bytes());
                mac.update(ns.as_bytes());
            }
            mac.update(definition);
            mac.finalize().into_bytes()
        }
        // Any key length is valid for HMAC: unreachable.
        Err(_) => Default::default(),
    };
    let mut s = String::with_capacity(36);
    s.push_str("pgt_");
    for b in &digest[..16] {
        s.push(char::from(HEX[(b >> 4) as usize]));
        s.push(char::from(HEX[(b & 15) as usize]));
    }
    ServerName(s.into())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A server-side name nobody prepares: a Describe of it fails with 26000
/// (no client definition hashes to it: a definition's parameter types
/// have the length their count says, and these bytes do not).
pub fn refusal_name() -> &'static ServerName {
    static NAME: OnceLock<ServerName> = OnceLock::new();
    NAME.get_or_init(|| server_name(b"\0pgtenant: refused"))
}

fn frame(out: &mut BytesMut, tag: u8, body_len: usize, f: impl FnOnce(&mut BytesMut)) {
    out.reserve(body_len + 5);
    out.put_u8(tag);
    out.put_i32((body_len + 4) as i32);
    let start = out.len();
    f(out);
    debug_assert_eq!(out.len() - start, body_len);
}

/// Appends `Parse(server_name, definition)`.
pub fn write_parse(out: &mut BytesMut, name: &ServerName, definition: &[u8]) {
    let n = name.as_str().as_bytes();
    frame(out, b'P', n.len() + 1 + definition.len(), |o| {
        o.put_slice(n);
        o.put_u8(0);
        o.put_slice(definition);
    });
}

/// Appends the Bind `body` with its statement name replaced.
pub fn write_bind_renamed(out: &mut BytesMut, body: &[u8], name: &ServerName) -> Option<()> {
    let (portal, _old, after) = parse_bind_names(body)?;
    let n = name.as_str().as_bytes();
    let rest = &body[after..];
    frame(
        out,
        b'B',
        portal.len() + 1 + n.len() + 1 + rest.len(),
        |o| {
            o.put_slice(portal);
            o.put_u8(0);
            o.put_slice(n);
            o.put_u8(0);
            o.put_slice(rest);
        },
    );
    Some(())
}

/// Appends `Describe('S', name)` or `Close('S', name)` (`tag` `D`/`C`).
pub fn write_statement_target(out: &mut BytesMut, tag: u8, name: &ServerName) {
    let n = name.as_str().as_bytes();
    frame(out, tag, 1 + n.len() + 1, |o| {
        o.put_u8(b'S');
        o.put_slice(n);
        o.put_u8(0);
    });
}

/// The statements prepared on one server connection, bounded, least
/// recently used first out.
#[derive(Debug, Default)]
pub struct PreparedSet {
    /// Name → last use tick.
    used: HashMap<ServerName, u64>,
    tick: u64,
}

impl PreparedSet {
    pub fn contains(&self, name: &ServerName) -> bool {
        self.used.contains_key(name)
    }

    /// Marks `name` used now (if present).
    pub fn touch(&mut self, name: &ServerName) {
        self.tick += 1;
        if let Some(t) = self.used.get_mut(name) {
            *t = self.tick;
        }
    }

    pub fn insert(&mut self, name: ServerName) {
        self.tick += 1;
        self.used.insert(name, self.tick);
    }

    pub fn remove(&mut self, name: &ServerName) {
        self.used.remove(name);
    }

    pub fn clear(&mut self) {
        self.used.clear();
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    /// If the set is at `cap`, the least recently used name to close
    /// before another is prepared (removed from the set). Linear in the
    /// set size, which is small and bounded, and only runs on a miss.
    pub fn evict_for_insert(&mut self, cap: usize, keep: &ServerName) -> Option<ServerName> {
        if self.used.len() < cap.max(1) {
            return None;
        }
        let victim = self
            .used
            .iter()
            .filter(|(n, _)| *n != keep)
            .min_by_key(|(_, t)| **t)
            .map(|(n, _)| n.clone())?;
        self.used.remove(&victim);
        Some(victim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::message::frontend;

    fn body_of(buf: &[u8]) -> &[u8] {
        &buf[5..]
    }

    #[test]
    fn names_depend_on_text_and_types_only() {
        let mut a = BytesMut::new();
        frontend::parse("s1", "select $1", [23], &mut a).expect("encode");
        let mut b = BytesMut::new();
        frontend::parse("other", "select $1", [23], &mut b).expect("encode");
        let mut c = BytesMut::new();
        frontend::parse("s1", "select $1", [25], &mut c).expect("encode");
        let (na, da) = parse_parse(body_of(&a)).expect("parse");
        let (_, db) = parse_parse(body_of(&b)).expect("parse");
        let (_, dc) = parse_parse(body_of(&c)).expect("parse");
        assert_eq!(na, b"s1");
        assert_eq!(server_name(da), server_name(db));
        assert_ne!(server_name(da), server_name(dc));
        assert_eq!(server_name(da).as_str().len(), 36);
        // Another namespace, another statement; the same one, the same.
        let in_a = server_name_in(Some("\"tenant_a\""), da);
        assert_ne!(in_a, server_name(da));
        assert_ne!(in_a, server_name_in(Some("\"tenant_b\""), da));
        assert_eq!(in_a, server_name_in(Some("\"tenant_a\""), db));
        assert!(parse_parse(b"s1\0select\0\0\x01").is_none());
    }

    #[test]
    fn names_are_keyed_not_a_plain_hash() {
        use sha2::Digest;
        let def = b"select 1\0\0\0";
        let plain: String = Sha256::digest(def)[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let name = server_name(def);
        assert_eq!(name, server_name(def), "stable within the process");
        assert_ne!(name.as_str(), format!("pgt_{plain}"));
    }

    #[test]
    fn rewrites_round_trip() {
        let name = server_name(b"select 1\0\0\0");
        let mut out = BytesMut::new();
        write_parse(&mut out, &name, b"select 1\0\0\0");
        let (n, def) = parse_parse(body_of(&out)).expect("parse");
        assert_eq!(n, name.as_str().as_bytes());
        assert_eq!(def, b"select 1\0\0\0");

        let mut bind = BytesMut::new();
        frontend::bind(
            "p",
            "s1",
            [1],
            [7i32],
            |v, buf| {
                buf.put_i32(v);
                Ok(postgres_protocol::IsNull::No)
            },
            [1],
            &mut bind,
        )
        .map_err(|_| ())
        .expect("encode");
        let mut out = BytesMut::new();
        write_bind_renamed(&mut out, body_of(&bind), &name).expect("rename");
        let (portal, stmt, after) = parse_bind_names(body_of(&out)).expect("names");
        assert_eq!(portal, b"p");
        assert_eq!(stmt, name.as_str().as_bytes());
        let (_, _, old_after) = parse_bind_names(body_of(&bind)).expect("names");
        assert_eq!(&body_of(&out)[after..], &body_of(&bind)[old_after..]);
        assert_eq!(
            i32::from_be_bytes(out[1..5].try_into().expect("len")) as usize,
            out.len() - 1
        );

        let mut d = BytesMut::new();
        write_statement_target(&mut d, b'D', &name);
        assert_eq!(
            parse_target(body_of(&d)),
            Some((b'S', name.as_str().as_bytes()))
        );
        assert_eq!(parse_target(b"X\0"), None);
        assert_eq!(parse_target(b"Sname\0extra"), None);
    }

    #[test]
    fn lru_evicts_the_oldest_but_never_the_one_being_added() {
        let names: Vec<ServerName> = (0..3).map(|i| server_name(&[i])).collect();
        let mut set = PreparedSet::default();
        set.insert(names[0].clone());
        set.insert(names[1].clone());
        set.touch(&names[0]);
        assert_eq!(set.evict_for_insert(3, &names[2]), None);
        assert_eq!(set.evict_for_insert(2, &names[2]), Some(names[1].clone()));
        assert!(!set.contains(&names[1]) && set.contains(&names[0]));
        assert_eq!(set.evict_for_insert(1, &names[0]), None);
    }
}
