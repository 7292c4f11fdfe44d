//! ErrorResponse / NoticeResponse encoding and the SQLSTATEs pgtenant sends.
//!
//! Codes are named as in PostgreSQL's `errcodes.txt`; each is used for the
//! case CONTRACT §5 gives it.

use bytes::{BufMut, BytesMut};

/// A five-character SQLSTATE.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SqlState([u8; 5]);

impl std::fmt::Debug for SqlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SqlState {
    const fn lit(s: &str) -> SqlState {
        let b = s.as_bytes();
        SqlState([b[0], b[1], b[2], b[3], b[4]])
    }

    /// A code received from elsewhere (say, a server's ErrorResponse).
    pub fn parse(s: &str) -> Option<SqlState> {
        let b: [u8; 5] = s.as_bytes().try_into().ok()?;
        b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            .then_some(SqlState(b))
    }

    pub fn as_str(&self) -> &str {
        // Only built from ASCII by `lit` and `parse`.
        std::str::from_utf8(&self.0).unwrap_or("XX000")
    }

    /// `08004`: no tenant, sources disagree, tenant suspended.
    /// `F0000`: a reload found the config file invalid.
    pub const CONFIG_FILE_ERROR: SqlState = SqlState::lit("F0000");
    /// `00000`: a notice's code.
    pub const SUCCESSFUL_COMPLETION: SqlState = SqlState::lit("00000");
    pub const SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION: SqlState = SqlState::lit("08004");
    /// `3D000`: tenant unknown.
    pub const INVALID_CATALOG_NAME: SqlState = SqlState::lit("3D000");
    /// `28P01`: wrong password or unknown user.
    pub const INVALID_PASSWORD: SqlState = SqlState::lit("28P01");
    /// `28000`: authentication protocol misuse.
    pub const INVALID_AUTHORIZATION_SPECIFICATION: SqlState = SqlState::lit("28000");
    /// `53300`: tenant or proxy connection limit.
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState::lit("53300");
    /// `57014`: no server connection within the wait timeout.
    pub const QUERY_CANCELED: SqlState = SqlState::lit("57014");
    /// `08006`: placement unreachable, server connection lost.
    pub const CONNECTION_FAILURE: SqlState = SqlState::lit("08006");
    /// `08P01`: malformed or oversized protocol message.
    pub const PROTOCOL_VIOLATION: SqlState = SqlState::lit("08P01");
    /// `0A000`: something pgtenant does not do (yet).
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState::lit("0A000");
    /// `57P01`: the proxy is shutting down.
    pub const ADMIN_SHUTDOWN: SqlState = SqlState::lit("57P01");
    /// `57P03`: the proxy cannot take connections right now.
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState::lit("57P03");
    /// `25P03`: idle in transaction longer than idle_transaction_timeout.
    pub const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: SqlState = SqlState::lit("25P03");
    /// `57P05`: idle longer than client_idle_timeout.
    pub const IDLE_SESSION_TIMEOUT: SqlState = SqlState::lit("57P05");
    /// `22023`: a startup setting PostgreSQL would refuse.
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState::lit("22023");
    /// `26000`: a statement name the client never prepared (the proxy
    /// answers it as PostgreSQL would, without asking a server).
    pub const INVALID_SQL_STATEMENT_NAME: SqlState = SqlState::lit("26000");
    /// `54000`: a client went past a per-client memory limit.
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState::lit("54000");
    /// `42601`: an admin console command it does not know.
    pub const SYNTAX_ERROR: SqlState = SqlState::lit("42601");
    /// `XX000`: a bug or an unexpected state inside pgtenant.
    pub const INTERNAL_ERROR: SqlState = SqlState::lit("XX000");
}

/// `ERROR` leaves the session usable; `FATAL` is followed by the proxy
/// closing the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Appends an ErrorResponse (`E`) to `out`. Fields follow
/// <https://www.postgresql.org/docs/current/protocol-error-fields.html>.
pub fn write_error(
    out: &mut BytesMut,
    severity: Severity,
    code: SqlState,
    message: &str,
    hint: Option<&str>,
) {
    write_fields(out, b'E', severity.as_str(), code, message, hint);
}

/// Appends a NoticeResponse (`N`, severity NOTICE, SQLSTATE 00000):
/// something the client may show and need not act on.
pub fn write_notice(out: &mut BytesMut, message: &str) {
    write_fields(
        out,
        b'N',
        "NOTICE",
        SqlState::SUCCESSFUL_COMPLETION,
        message,
        None,
    );
}

fn write_fields(
    out: &mut BytesMut,
    tag: u8,
    severity: &str,
    code: SqlState,
    message: &str,
    hint: Option<&str>,
) {
    let start = out.len();
    out.put_u8(tag);
    out.put_i32(0); // patched below
    for (field, value) in [(b'S', severity), (b'V', severity), (b'C', code.as_str())] {
        put_field(out, field, value);
    }
    put_field(out, b'M', message);
    if let Some(h) = hint {
        put_field(out, b'H', h);
    }
    out.put_u8(0);
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// A C string may not contain NUL; a message carrying one (say, an echoed
/// hostile user name) has it replaced rather than truncating the frame.
fn put_field(out: &mut BytesMut, field: u8, value: &str) {
    out.put_u8(field);
    for b in value.bytes() {
        out.put_u8(if b == 0 { b'?' } else { b });
    }
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::message::backend::Message;

    #[test]
    fn error_response_parses_with_postgres_protocol() {
        let mut out = BytesMut::new();
        write_error(
            &mut out,
            Severity::Fatal,
            SqlState::INVALID_CATALOG_NAME,
            "tenant \"x\0y\" is unknown",
            Some("check the name"),
        );
        let Ok(Some(Message::ErrorResponse(body))) = Message::parse(&mut out) else {
            panic!("not an ErrorResponse");
        };
        use fallible_iterator::FallibleIterator;
        let fields: Vec<(u8, String)> = body
            .fields()
            .map(|f| {
                Ok((
                    f.type_(),
                    String::from_utf8_lossy(f.value_bytes()).into_owned(),
                ))
            })
            .collect()
            .expect("fields");
        assert!(fields.contains(&(b'C', "3D000".into())));
        assert!(fields.contains(&(b'S', "FATAL".into())));
        assert!(fields.contains(&(b'M', "tenant \"x?y\" is unknown".into())));
        assert!(fields.contains(&(b'H', "check the name".into())));
        assert!(out.is_empty());
    }
}
