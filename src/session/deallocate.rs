//! SQL-level `DEALLOCATE` of a client's protocol-level statement.
//!
//! Drivers (pgjdbc, psycopg) drop statements they prepared with Parse by
//! sending `DEALLOCATE name` as a simple Query. Under transaction pooling
//! the server knows the statement by the proxy's name only, so the proxy
//! recognises a Query that is exactly one such command and handles it for
//! the client's own map. Anything else goes to the server as it is.

/// What a `DEALLOCATE` Query drops.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    All,
    /// The statement name, case-folded as PostgreSQL does (unquoted) or as
    /// written (quoted).
    Name(Vec<u8>),
}

const KEYWORD: &[u8] = b"deallocate";

fn skip_space(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

/// Cheap first look at a Query body (any prefix of it): it may be a
/// `DEALLOCATE`. Runs on every simple Query in transaction mode.
#[inline]
pub fn may_be(body: &[u8]) -> bool {
    let b = skip_space(body);
    b.len() >= KEYWORD.len() && b[..KEYWORD.len()].eq_ignore_ascii_case(KEYWORD)
}

/// Reads a keyword or an identifier at the front of `b`: (folded or
/// unquoted text, quoted, rest).
fn word(b: &[u8]) -> Option<(Vec<u8>, bool, &[u8])> {
    if let Some(rest) = b.strip_prefix(b"\"") {
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            match rest.get(i)? {
                b'"' if rest.get(i + 1) == Some(&b'"') => {
                    out.push(b'"');
                    i += 2;
                }
                b'"' => return (!out.is_empty()).then_some((out, true, &rest[i + 1..])),
                &c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
    }
    let n = b
        .iter()
        .take_while(|&&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80)
        .count();
    let first = *b.first()?;
    if n == 0 || first.is_ascii_digit() || first == b'$' {
        return None;
    }
    Some((b[..n].to_ascii_lowercase(), false, &b[n..]))
}

/// The whole Query body (text and its NUL): `DEALLOCATE [PREPARE]
/// {name | ALL} [;]` and nothing else, or `None`.
pub fn parse(body: &[u8]) -> Option<Target> {
    // Every Query between transactions comes here: most are not a
    // DEALLOCATE, and the look costs no allocation.
    if !may_be(body) {
        return None;
    }
    let text = body.strip_suffix(&[0])?;
    let b = skip_space(text);
    let (kw, quoted, mut rest) = word(b)?;
    if quoted || kw != KEYWORD {
        return None;
    }
    let mut next = word(skip_space(rest))?;
    if !next.1 && next.0 == b"prepare" {
        // `DEALLOCATE PREPARE` needs a name after it ("prepare" alone is
        // a statement called prepare).
        if let Some(after) = word(skip_space(next.2)) {
            next = after;
        }
    }
    let (name, quoted, tail) = next;
    rest = skip_space(tail);
    if let Some(r) = rest.strip_prefix(b";") {
        rest = skip_space(r);
    }
    if !rest.is_empty() {
        return None;
    }
    if !quoted && name == b"all" {
        return Some(Target::All);
    }
    Some(Target::Name(name))
}

/// The proxy's answer to a `DEALLOCATE` it handled itself:
/// CommandComplete and ReadyForQuery with `status`.
pub fn answer(status: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(22);
    out.push(b'C');
    out.extend_from_slice(&15i32.to_be_bytes());
    out.extend_from_slice(b"DEALLOCATE\0");
    out.push(b'Z');
    out.extend_from_slice(&5i32.to_be_bytes());
    out.push(status);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    #[test]
    fn recognises_exactly_one_deallocate() {
        let name = |s: &str| Some(Target::Name(s.as_bytes().to_vec()));
        assert_eq!(parse(&q("DEALLOCATE s1")), name("s1"));
        assert_eq!(parse(&q("  deallocate   PREPARE S1 ; ")), name("s1"));
        assert_eq!(parse(&q("DEALLOCATE \"Mixed\"\"Q\"")), name("Mixed\"Q"));
        assert_eq!(parse(&q("DEALLOCATE prepare")), name("prepare"));
        assert_eq!(parse(&q("DEALLOCATE _pg3_0;")), name("_pg3_0"));
        assert_eq!(parse(&q("dealLocate ALL;")), Some(Target::All));
        assert_eq!(parse(&q("DEALLOCATE PREPARE all")), Some(Target::All));
        assert_eq!(parse(&q("DEALLOCATE \"all\"")), name("all"));
        for no in [
            "DEALLOCATE",
            "DEALLOCATE s1; SELECT 1",
            "DEALLOCATE s1 s2",
            "DEALLOCATE \"\"",
            "DEALLOCATE 1x",
            "SELECT 1",
            "DEALLOCATEs1",
            "DEALLOCATE \"open",
        ] {
            assert_eq!(parse(&q(no)), None, "{no}");
        }
        assert!(may_be(b"\n deallocate x") && !may_be(b"select"));
        assert_eq!(&answer(b'T')[..], b"C\0\0\0\x0fDEALLOCATE\0Z\0\0\0\x05T");
    }
}
