//! The console's commands: parsed from a simple Query's text, one command
//! per query string (trailing semicolons allowed), case-insensitive, as
//! PgBouncer's console takes them.
//!
//! To add one: a variant here,
//! its words in [`parse_one`], its arm in `execute`.

use crate::routing::TenantId;

/// What a SHOW lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Tenants,
    Pools,
    Clients,
    Servers,
    Config,
    Version,
    Stats,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Listing),
    /// `None`: every tenant.
    Pause(Option<TenantId>),
    Resume(Option<TenantId>),
    Suspend(TenantId),
    Kill(TenantId),
    /// Re-read the config file (`crate::reload`).
    Reload,
}

impl Command {
    /// Changes state (logged with who and when).
    pub fn changes_state(&self) -> bool {
        !matches!(self, Command::Show(_))
    }
}

/// Why a statement is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error(
        "unknown command {0:?}; the console accepts SHOW TENANTS|POOLS|CLIENTS|SERVERS|STATS|CONFIG|VERSION, RELOAD, PAUSE [tenant], RESUME [tenant], SUSPEND tenant, KILL tenant"
    )]
    Unknown(String),
    #[error("{0} needs a tenant name")]
    MissingTenant(&'static str),
    #[error("{0:?} is not a tenant name")]
    BadTenant(String),
    #[error("the admin console takes one command per query")]
    TooMany,
}

/// The command of a query string; `None` for an empty one (only
/// whitespace and semicolons).
pub fn parse(query: &str) -> Result<Option<Command>, ParseError> {
    let mut statements = query.split(';').map(str::trim).filter(|s| !s.is_empty());
    let Some(first) = statements.next() else {
        return Ok(None);
    };
    if statements.next().is_some() {
        return Err(ParseError::TooMany);
    }
    parse_one(first).map(Some)
}

fn parse_one(statement: &str) -> Result<Command, ParseError> {
    let words: Vec<&str> = statement.split_ascii_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let unknown = || ParseError::Unknown(shorten(statement));
    let up: Vec<&str> = upper.iter().map(String::as_str).collect();
    match up.as_slice() {
        ["SHOW", what] => {
            let listing = match *what {
                "TENANTS" => Listing::Tenants,
                "POOLS" => Listing::Pools,
                "CLIENTS" => Listing::Clients,
                "SERVERS" => Listing::Servers,
                "CONFIG" => Listing::Config,
                "VERSION" => Listing::Version,
                "STATS" => Listing::Stats,
                _ => return Err(unknown()),
            };
            Ok(Command::Show(listing))
        }
        ["RELOAD"] => Ok(Command::Reload),
        ["PAUSE"] => Ok(Command::Pause(None)),
        ["RESUME"] => Ok(Command::Resume(None)),
        ["PAUSE", _] => Ok(Command::Pause(Some(tenant(words[1])?))),
        ["RESUME", _] => Ok(Command::Resume(Some(tenant(words[1])?))),
        ["SUSPEND", _] => Ok(Command::Suspend(tenant(words[1])?)),
        ["KILL", _] => Ok(Command::Kill(tenant(words[1])?)),
        ["SUSPEND"] => Err(ParseError::MissingTenant("SUSPEND")),
        ["KILL"] => Err(ParseError::MissingTenant("KILL")),
        _ => Err(unknown()),
    }
}

/// A tenant name as written: bare or in double quotes, of the config's
/// alphabet (letters, digits, '_', '-').
fn tenant(word: &str) -> Result<TenantId, ParseError> {
    let name = word
        .strip_prefix('"')
        .and_then(|w| w.strip_suffix('"'))
        .unwrap_or(word);
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(TenantId::new(name))
    } else {
        Err(ParseError::BadTenant(shorten(word)))
    }
}

/// At most 64 characters of client text in an error message.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_case_insensitively_with_semicolons() {
        assert_eq!(
            parse("show tenants;").ok(),
            Some(Some(Command::Show(Listing::Tenants)))
        );
        assert_eq!(
            parse(" Pause \"acme\" ;;").ok(),
            Some(Some(Command::Pause(Some(TenantId::new("acme")))))
        );
        assert_eq!(parse("PAUSE").ok(), Some(Some(Command::Pause(None))));
        assert_eq!(parse(" ; ").ok(), Some(None));
        assert!(matches!(
            parse("PAUSE acme; RESUME acme"),
            Err(ParseError::TooMany)
        ));
        assert!(matches!(parse("SHOW STUFF"), Err(ParseError::Unknown(_))));
        assert!(matches!(parse("KILL"), Err(ParseError::MissingTenant(_))));
        assert!(matches!(parse("KILL a'b"), Err(ParseError::BadTenant(_))));
        assert!(matches!(parse("SELECT 1"), Err(ParseError::Unknown(_))));
        let long = "x".repeat(10_000);
        let Err(ParseError::Unknown(shown)) = parse(&long) else {
            panic!("unknown")
        };
        assert!(shown.len() < 100);
    }
}
