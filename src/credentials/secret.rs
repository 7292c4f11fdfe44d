//! The proxy's authentication secret: 32 random bytes that key the SCRAM
//! salts the proxy makes up, both for plaintext passwords in the config and
//! for the mock exchange of user names that do not exist (as PostgreSQL
//! keys `scram_mock_salt` with its per-cluster `mock_auth_nonce`).
//!
//! Why it persists: a salt that changed at every restart would mark a real
//! user (unknown users' salts would have to be stable to look real), and a
//! salt derived from public inputs only would let anyone compute it. So the
//! secret is generated once, kept in a file (`pgtenant.secret` beside the
//! config, or `proxy.secret_file`), and re-read at every start.

use crate::config::Config;
use hmac::{Hmac, KeyInit, Mac};
use rand::TryRng;
use sha2::Sha256;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Name of the secret file in the config file's folder by default.
pub const DEFAULT_FILE: &str = "pgtenant.secret";
/// Salt length, as PostgreSQL's `SCRAM_DEFAULT_SALT_LEN`.
pub const SALT_LEN: usize = 16;
const SECRET_LEN: usize = 32;

/// The secret. Never printed.
#[derive(Clone)]
pub struct AuthSecret([u8; SECRET_LEN]);

impl std::fmt::Debug for AuthSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthSecret(..)")
    }
}

/// Where a config's secret lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretLocation {
    File(PathBuf),
    /// A config parsed from text, with no folder and no `proxy.secret_file`:
    /// a secret made once per process (salts change at every start).
    Process,
}

impl SecretLocation {
    /// `proxy.secret_file` (relative to the config's folder, or to the
    /// current directory for a config parsed from text), else
    /// `pgtenant.secret` in the config's folder, else per process.
    pub fn of(cfg: &Config) -> SecretLocation {
        match &cfg.proxy.secret_file {
            Some(p) => SecretLocation::File(cfg.base_dir.join(p)),
            None if cfg.base_dir.as_os_str().is_empty() => SecretLocation::Process,
            None => SecretLocation::File(cfg.base_dir.join(DEFAULT_FILE)),
        }
    }
}

impl AuthSecret {
    /// 32 bytes from the operating system's CSPRNG.
    pub fn generate() -> Result<AuthSecret, String> {
        let mut bytes = [0u8; SECRET_LEN];
        rand::rngs::SysRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| format!("cannot read the OS random number generator: {e}"))?;
        Ok(AuthSecret(bytes))
    }

    /// The secret for `cfg`: read from its file, which is created on first
    /// use; or a per-process one (with a warning) for a config without a
    /// folder.
    pub fn for_config(cfg: &Config) -> Result<AuthSecret, String> {
        match SecretLocation::of(cfg) {
            SecretLocation::File(path) => AuthSecret::load_or_create(&path),
            SecretLocation::Process => {
                tracing::warn!(
                    "no proxy.secret_file and no config folder: using a per-process secret, so \
                     SCRAM salts change at every restart"
                );
                AuthSecret::per_process()
            }
        }
    }

    /// One secret for the life of the process, made on first use.
    fn per_process() -> Result<AuthSecret, String> {
        static SECRET: std::sync::OnceLock<AuthSecret> = std::sync::OnceLock::new();
        if let Some(s) = SECRET.get() {
            return Ok(s.clone());
        }
        let fresh = AuthSecret::generate()?;
        Ok(SECRET.get_or_init(|| fresh).clone())
    }

    /// Reads `path`, or creates it (mode 0600, never over an existing file)
    /// when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<AuthSecret, String> {
        match AuthSecret::load(path)? {
            Some(s) => Ok(s),
            None => AuthSecret::create(path),
        }
    }

    /// Reads `path`; `None` when it does not exist. Refuses a file others
    /// may read, or anything but one line of 64 hex digits.
    pub fn load(path: &Path) -> Result<Option<AuthSecret>, String> {
        let shown = path.display();
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read the secret file {shown}: {e}")),
        };
        if !meta.is_file() {
            return Err(format!("the secret file {shown} is not a regular file"));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(format!(
                "the secret file {shown} is readable or writable by group or others \
                 (mode {:o}); run `chmod 600 {shown}`",
                meta.mode() & 0o777
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the secret file {shown}: {e}"))?;
        AuthSecret::parse(text.trim_end_matches('\n'))
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "the secret file {shown} is malformed (expected 64 hex digits); \
                     remove it to generate a new one (every plaintext-password salt changes)"
                )
            })
    }

    fn parse(text: &str) -> Option<AuthSecret> {
        if text.len() != 2 * SECRET_LEN {
            return None;
        }
        let mut bytes = [0u8; SECRET_LEN];
        for (b, pair) in bytes.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let hex = std::str::from_utf8(pair).ok()?;
            *b = u8::from_str_radix(hex, 16).ok()?;
        }
        Some(AuthSecret(bytes))
    }

    /// Writes a new secret to `path`. Written to a private temporary file
    /// first and then hard-linked into place, so that a proxy starting at
    /// the same moment either sees the complete file or creates its own
    /// link, never a half-written one; the link fails if `path` exists.
    fn create(path: &Path) -> Result<AuthSecret, String> {
        let shown = path.display();
        let secret = AuthSecret::generate()?;
        let text: String = secret.0.iter().map(|b| format!("{b:02x}")).collect();
        let cannot = |e: std::io::Error| format!("cannot create the secret file {shown}: {e}");
        // A name of its own, so a leftover of a crashed start is no obstacle.
        let mut name = path.as_os_str().to_owned();
        name.push(format!(
            ".tmp{}.{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let tmp = PathBuf::from(name);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(format!("{text}\n").as_bytes())?;
                f.sync_all()
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(cannot(e));
        }
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                tracing::info!("created the authentication secret file {shown}");
                Ok(secret)
            }
            // Another proxy won the race: use its secret.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => AuthSecret::load(path)?
                .ok_or_else(|| format!("the secret file {shown} vanished while being created")),
            Err(e) => Err(cannot(e)),
        }
    }

    /// The tenant-context key of placement `placement` (`isolation =
    /// "rls"`): what the shared database's `pgtenant.install_key()` is
    /// given, and what keys the proof of each `pgtenant.enter()` call.
    /// Derived, so it survives restarts with the secret file and differs
    /// per placement.
    pub fn context_key(&self, placement: &str) -> [u8; 32] {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            // HMAC takes keys of any length; unreachable.
            Err(_) => return [0; 32],
        };
        mac.update(b"pgtenant context key v1\0");
        mac.update(placement.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(&mac.finalize().into_bytes());
        key
    }

    /// The SCRAM salt of `user` of `tenant`: the same for a configured user
    /// and a name that does not exist, and stable across restarts.
    pub fn salt(&self, tenant: &str, user: &str) -> [u8; SALT_LEN] {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            // HMAC takes keys of any length; unreachable.
            Err(_) => return [0; SALT_LEN],
        };
        mac.update(b"pgtenant scram salt\0");
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        mac.update(&(tenant.len() as u64).to_be_bytes());
        mac.update(tenant.as_bytes());
        mac.update(user.as_bytes());
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&mac.finalize().into_bytes()[..SALT_LEN]);
        salt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salts_are_keyed_and_stable() {
        let a = AuthSecret::generate().expect("random");
        let b = AuthSecret::generate().expect("random");
        assert_eq!(a.salt("acme", "app"), a.salt("acme", "app"));
        assert_ne!(a.salt("acme", "app"), b.salt("acme", "app"));
        assert_ne!(a.salt("acme", "app"), a.salt("acme", "app2"));
        assert_ne!(a.salt("ab", "c"), a.salt("a", "bc"));
    }

    #[test]
    fn file_is_created_private_and_reread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DEFAULT_FILE);
        let first = AuthSecret::load_or_create(&path).expect("created");
        let mode = std::fs::metadata(&path).expect("exists").mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = AuthSecret::load_or_create(&path).expect("re-read");
        assert_eq!(first.salt("t", "u"), again.salt("t", "u"));
        // Only the secret file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
    }

    #[test]
    fn proxies_starting_together_agree_on_one_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DEFAULT_FILE);
        let salts: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| AuthSecret::load_or_create(&path).map(|k| k.salt("t", "u"))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread").expect("secret"))
                .collect()
        });
        assert!(salts.windows(2).all(|w| w[0] == w[1]), "{salts:?}");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
    }

    #[test]
    fn refuses_readable_or_malformed_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        AuthSecret::load_or_create(&path).expect("created");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let e = AuthSecret::load_or_create(&path).expect_err("group-readable");
        assert!(e.contains("chmod 600"), "{e}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&path, "not hex\n").expect("write");
        let e = AuthSecret::load_or_create(&path).expect_err("malformed");
        assert!(e.contains("malformed"), "{e}");
        std::fs::write(&path, format!("{}\n", "zz".repeat(32))).expect("write");
        assert!(AuthSecret::load(&path).is_err());
    }
}
