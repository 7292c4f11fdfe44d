//! Secrets in the config (passwords, verifiers, placement URLs, the admin
//! token): written inline, or read at load from an environment variable
//! (`{ env = "NAME" }`) or a file (`{ file = "PATH" }`, relative to the
//! config's folder, one trailing newline trimmed), so that the TOML can be
//! committed and the secret come from a Kubernetes Secret or a vault
//! agent. A reload reads them again: rotating a file and sending SIGHUP
//! is enough (a variable is fixed for the process's life).
//!
//! Errors name the variable or the file and, through the parser's span,
//! the key; never the value. A [`Secret`] never shows in `Debug` output.

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};

/// The most a secret file may hold: a secret is short, and a path
/// pointing at a device or a log must not be read whole.
const MAX_FILE_LEN: u64 = 64 * 1024;

/// A string that must not leak, and where it came from.
#[derive(Clone)]
pub struct Secret {
    value: String,
    origin: SecretOrigin,
}

/// Where a secret's value was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretOrigin {
    /// Written in the config file itself.
    Inline,
    /// `{ env = "NAME" }`.
    Env,
    /// `{ file = "PATH" }`.
    File,
}

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret {
            value: s.into(),
            origin: SecretOrigin::Inline,
        }
    }
    pub fn expose(&self) -> &str {
        &self.value
    }
    /// Whether the value sits in the config file (what a world-readable
    /// file would give away).
    pub fn is_inline(&self) -> bool {
        self.origin == SecretOrigin::Inline
    }
    pub fn origin(&self) -> SecretOrigin {
        self.origin
    }

    /// The secret `{ KIND = "NAME" }` names: an environment variable
    /// (`env`) or a file (`file`).
    pub(super) fn from_source(kind: &str, name: &str) -> Result<Secret, String> {
        let (value, origin) = match kind {
            "env" => (from_env(name)?, SecretOrigin::Env),
            "file" => (from_file(name)?, SecretOrigin::File),
            other => {
                return Err(format!(
                    "unknown secret source {other:?}; expected {SHAPES}"
                ));
            }
        };
        Ok(Secret { value, origin })
    }
}

const SHAPES: &str = "a secret: a string, { env = \"VARIABLE\" } or { file = \"PATH\" }";

/// Equal when the values are: moving a secret out of the file changes
/// nothing a reload must act on.
impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.value == other.value
    }
}
impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

thread_local! {
    /// The folder `{ file = ... }` paths resolve from while a config is
    /// parsed on this thread (serde's derive passes no context down).
    static BASE_DIR: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// Runs `parse` with relative secret files resolving from `dir`.
pub(super) fn with_base_dir<T>(dir: &Path, parse: impl FnOnce() -> T) -> T {
    struct Reset(Option<PathBuf>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let old = self.0.take();
            BASE_DIR.with(|b| *b.borrow_mut() = old);
        }
    }
    let old = BASE_DIR.with(|b| b.borrow_mut().replace(dir.to_path_buf()));
    let _reset = Reset(old);
    parse()
}

fn from_env(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("env: name an environment variable".into());
    }
    match std::env::var(name) {
        Ok(v) if v.is_empty() => Err(format!("environment variable {name} is empty")),
        Ok(v) => Ok(v),
        Err(std::env::VarError::NotPresent) => {
            Err(format!("environment variable {name} is not set"))
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(format!("environment variable {name} is not valid UTF-8"))
        }
    }
}

fn from_file(path: &str) -> Result<String, String> {
    use std::io::Read;
    if path.is_empty() {
        return Err("file: name a file".into());
    }
    let path = Path::new(path);
    let full = match BASE_DIR.with(|b| b.borrow().clone()) {
        Some(base) if path.is_relative() => base.join(path),
        _ => path.to_path_buf(),
    };
    let shown = full.display();
    let file = std::fs::File::open(&full).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(format!("{shown} is larger than {MAX_FILE_LEN} bytes"));
    }
    let text = String::from_utf8(bytes).map_err(|_| format!("{shown} is not valid UTF-8"))?;
    // `echo secret > file` and editors add a newline nobody means.
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(format!("{shown} is empty"));
    }
    Ok(value.to_string())
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SecretVisitor;

        impl<'de> Visitor<'de> for SecretVisitor {
            type Value = Secret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SHAPES)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Secret, A::Error> {
                let Some((kind, name)) = map.next_entry::<String, String>()? else {
                    return Err(de::Error::custom(format!("expected {SHAPES}")));
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom(format!(
                        "expected {SHAPES}, with one key only"
                    )));
                }
                Secret::from_source(&kind, &name).map_err(de::Error::custom)
            }
        }
        d.deserialize_any(SecretVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        s: Secret,
    }

    fn parse(toml_text: &str) -> Result<Secret, String> {
        toml::from_str::<Doc>(toml_text)
            .map(|d| d.s)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn inline_env_and_file() {
        let s = parse("s = \"hunter2\"").expect("inline");
        assert_eq!((s.expose(), s.is_inline()), ("hunter2", true));

        // SAFETY (edition 2024 marks set_var unsafe): a name no other
        // test reads, set before any thread of this test reads it.
        unsafe { std::env::set_var("PGTENANT_TEST_SECRET_A1", "from-env") };
        let s = parse("s = { env = \"PGTENANT_TEST_SECRET_A1\" }").expect("env");
        assert_eq!((s.expose(), s.origin()), ("from-env", SecretOrigin::Env));

        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("pw"), "from file \n\n").expect("write");
        std::fs::write(dir.path().join("crlf"), "x\r\n").expect("write");
        let s = with_base_dir(dir.path(), || parse("s = { file = \"pw\" }")).expect("file");
        assert_eq!(s.expose(), "from file ", "trailing newlines only");
        assert_eq!(s.origin(), SecretOrigin::File);
        let abs = dir.path().join("crlf");
        let s =
            parse(&format!("s = {{ file = {:?} }}", abs.display().to_string())).expect("absolute");
        assert_eq!(s.expose(), "x");
        // The base is gone after the parse.
        assert!(BASE_DIR.with(|b| b.borrow().is_none()));
    }

    #[test]
    fn errors_name_the_source_never_the_value() {
        let e = parse("s = { env = \"PGTENANT_TEST_SECRET_UNSET_Z9\" }").expect_err("unset");
        assert!(
            e.contains("PGTENANT_TEST_SECRET_UNSET_Z9 is not set"),
            "{e}"
        );

        let dir = tempfile::tempdir().expect("dir");
        let e =
            with_base_dir(dir.path(), || parse("s = { file = \"missing\" }")).expect_err("missing");
        assert!(e.contains("missing") && e.contains("cannot read"), "{e}");
        std::fs::write(dir.path().join("empty"), "\n").expect("write");
        let e = with_base_dir(dir.path(), || parse("s = { file = \"empty\" }")).expect_err("empty");
        assert!(e.contains("is empty"), "{e}");
        std::fs::write(dir.path().join("big"), vec![b'a'; 70_000]).expect("write");
        let e = with_base_dir(dir.path(), || parse("s = { file = \"big\" }")).expect_err("too big");
        assert!(e.contains("larger than") && !e.contains("aaaa"), "{e}");

        for bad in [
            "s = { vault = \"x\" }",
            "s = { env = \"A\", file = \"b\" }",
            "s = {}",
            "s = 3",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains("env = \"VARIABLE\""), "{bad}: {e}");
        }
    }
}
