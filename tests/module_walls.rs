//! Issue 19, point 8: modules call only downward (`README.md`, layout;
//! `shared/STYLE.md`). Each wall below names a directory of `src/` and
//! the modules above it that none of its files may name; the test reads
//! the source and fails naming the file, line and module of every breach.
//!
//! What counts as naming a module: a path starting `crate::m` (or
//! `$crate::m`), `m` as an entry of a `crate::{..}` group, or a path
//! starting `m::` (after such an import). Comments do not count.
//! Textual, not a compiler pass: it cannot see through a re-export by a
//! module the wall allows, so each wall lists every module above.

use std::path::{Path, PathBuf};

/// (directory under `src/`, modules it must not name, why).
const WALLS: &[(&str, &[&str], &str)] = &[
    (
        "pool",
        &["session", "client", "admin"],
        "the pool sits below the session; what the session keeps with a \
         connection is opaque to it (pool::Carried)",
    ),
    (
        "session",
        &["client", "admin"],
        "the client hands an authenticated connection down to the session",
    ),
    (
        "runtime",
        &["client", "session", "pool", "admin"],
        "the data-plane runtime knows sockets and timers, not what flows",
    ),
    (
        "tls",
        &["client", "session", "pool", "admin", "catalog", "routing"],
        "certificates and their configurations; the client runs the handshake",
    ),
    (
        "sys",
        &["client", "session", "pool", "admin", "catalog", "routing"],
        "the operating system's calls know nothing of what flows over them",
    ),
    (
        "config",
        &[
            "pool", "session", "client", "admin", "catalog", "routing", "protocol", "runtime",
        ],
        "config is a leaf",
    ),
    (
        "protocol",
        &[
            "pool", "session", "client", "admin", "catalog", "routing", "config",
        ],
        "protocol is pure: messages and framing",
    ),
    (
        "routing",
        &["pool", "session", "client", "admin", "catalog"],
        "routing is pure; the client does the catalog lookup",
    ),
    (
        "catalog",
        &["pool", "session", "client", "admin"],
        "the catalog is read by the layers above",
    ),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, or `dir` itself as `dir.rs`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let single = dir.with_extension("rs");
    if single.is_file() {
        out.push(single);
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let path = e.expect("read a source directory").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// `text` with `//` and `/* */` comments blanked (lines kept). Naive
/// about string literals: a `//` in one blanks the rest of its line,
/// which can hide a breach there but never invents one.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut in_block = 0usize;
    while !rest.is_empty() {
        if in_block > 0 {
            if rest.starts_with("*/") {
                in_block -= 1;
                rest = &rest[2..];
            } else if rest.starts_with("/*") {
                in_block += 1;
                rest = &rest[2..];
            } else {
                let c = rest.chars().next().expect("non-empty");
                out.push(if c == '\n' { '\n' } else { ' ' });
                rest = &rest[c.len_utf8()..];
            }
        } else if rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            rest = &rest[end..];
        } else if rest.starts_with("/*") {
            in_block = 1;
            rest = &rest[2..];
        } else {
            let c = rest.chars().next().expect("non-empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The leading identifier of `s`.
fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
    &s[..end]
}

/// The top-level entries' leading identifiers of the group `s` starts
/// after its `{`.
fn group_heads(s: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                heads.push(ident(s[start..i].trim_start()));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                heads.push(ident(s[start..i].trim_start()));
                start = i + 1;
            }
            _ => {}
        }
    }
    heads
}

/// The crate modules among `candidates` that `code` (comments stripped)
/// names, by line (once per line and module).
fn named_modules<'a>(code: &str, candidates: &[&'a str]) -> Vec<(usize, &'a str)> {
    let mut found = Vec::new();
    let boundary = |at: usize| !code[..at].ends_with(|c: char| is_ident(c) || c == ':');
    for (at, _) in code.match_indices("crate::") {
        if code[..at].ends_with(|c: char| is_ident(c)) {
            continue;
        }
        let rest = code[at + "crate::".len()..].trim_start();
        let heads = match rest.strip_prefix('{') {
            Some(group) => group_heads(group),
            None => vec![ident(rest)],
        };
        for h in heads {
            if let Some(m) = candidates.iter().find(|&&m| m == h) {
                found.push((line_of(code, at), *m));
            }
        }
    }
    for &m in candidates {
        let pat = format!("{m}::");
        for (at, _) in code.match_indices(&pat) {
            if boundary(at) {
                found.push((line_of(code, at), m));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

#[test]
fn modules_call_only_downward() {
    let mut breaches = Vec::new();
    let mut files_read = 0;
    for &(dir, above, why) in WALLS {
        let mut files = Vec::new();
        rust_files(&src().join(dir), &mut files);
        assert!(
            !files.is_empty(),
            "src/{dir} has no Rust files: is the wall stale?"
        );
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read a source file");
            files_read += 1;
            let code = strip_comments(&text);
            for (line, m) in named_modules(&code, above) {
                let shown = file.strip_prefix(src()).unwrap_or(&file).display();
                breaches.push(format!(
                    "src/{shown}:{line} names `{m}` (src/{dir} must not: {why})"
                ));
            }
        }
    }
    assert!(files_read > 20, "read only {files_read} files");
    assert!(
        breaches.is_empty(),
        "module walls broken:\n{}",
        breaches.join("\n")
    );
}

#[test]
fn the_scan_sees_every_way_of_naming_a_module() {
    let m = ["session", "client"];
    let names = |code: &str| -> Vec<String> {
        let code = strip_comments(code);
        let found = named_modules(&code, &m);
        found.into_iter().map(|(_, n)| n.to_string()).collect()
    };
    assert_eq!(names("use crate::session::known::X;"), ["session"]);
    assert_eq!(names("let x: crate::client::C = f();"), ["client"]);
    assert_eq!(names("use crate::{config, session::params};"), ["session"]);
    assert_eq!(
        names("use crate::{\n  protocol::{a, b},\n  client,\n};"),
        ["client"]
    );
    assert_eq!(names("$crate::session::f()"), ["session"]);
    assert_eq!(names("session::conn_state(c)"), ["session"]);
    // Not the crate's modules: comments, other paths, longer names.
    assert!(names("// see crate::session::known").is_empty());
    assert!(names("/* session::x\n crate::client */ let a = 1;").is_empty());
    assert!(names("tokio::session::x; mycrate::session::y").is_empty());
    assert!(names("open_session::f(); use crate::sessions::x;").is_empty());
    assert!(names("use crate::{pool::Lease, protocol};").is_empty());
}
