//! One connection to a placement's PostgreSQL: opening it, authenticating
//! with the placement URL's credentials (SCRAM-SHA-256, md5, cleartext or
//! trust), and what the proxy knows about its state.
//!
//! Knows nothing of clients: the session decides what flows over it.

use crate::config::BackendTarget;
use crate::protocol::CancelKey;
use crate::runtime::net::Socket;
use crate::runtime::stream::{Stream, Transport};
use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a server connection could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot reach server: {0}")]
    Io(#[from] std::io::Error),
    #[error("connecting to the server timed out")]
    Timeout,
    #[error("server refused the connection: {code} {message}")]
    Rejected { code: String, message: String },
    #[error("server requested unsupported authentication {0}")]
    UnsupportedAuth(String),
    #[error("server needs a password and the placement URL has none")]
    NoPassword,
    /// TLS to the server failed, or the server declined it where the
    /// placement's sslmode requires it.
    #[error("TLS to the server: {0}")]
    Tls(String),
    /// The server asked for an authentication the placement does not
    /// allow (`require_auth`); nothing was sent.
    #[error(
        "the server asked for {asked}, and the placement allows only {allowed} \
         (require_auth in its url); no password was sent"
    )]
    AuthNotAllowed {
        asked: &'static str,
        allowed: String,
    },
    #[error("server protocol error: {0}")]
    Protocol(String),
    /// The placement's backend role could act beyond its own database
    /// (see `role_check.rs`); says what and how to fix it.
    #[error("{0}")]
    UnsafeRole(String),
    /// An `isolation = "rls"` placement whose database cannot carry the
    /// tenant context (see `context.rs`); says what to install.
    #[error("{0}")]
    ContextUnavailable(String),
    /// Not an attempt: a recent one failed, and the pool waits this long
    /// before the next (see `placement.rs`, reconnect backoff).
    #[error("connecting failed recently; next attempt in {0:?}")]
    Backoff(Duration),
}

/// An open, authenticated server connection.
#[derive(Debug)]
pub struct ServerConn {
    pub(crate) stream: Stream,
    /// Bytes read from the server and not yet handled.
    pub(crate) buf: BytesMut,
    /// The server's own cancel key (never shown to clients).
    pub(crate) key: CancelKey,
    /// Server parameters as last reported by ParameterStatus.
    pub(crate) params: Vec<(String, String)>,
    /// What the session knows of the connection's own state (settings
    /// applied, statements prepared), opaque here (`carried.rs`); empty
    /// on a new connection.
    pub(crate) carried: super::Carried,
    /// Data-plane worker whose reactor the socket is registered with.
    pub(crate) worker: usize,
    /// When the connection last went idle (or was opened).
    pub(crate) last_used: Instant,
    /// When the pool retires it (`server_lifetime`, jittered); `None`:
    /// never.
    pub(crate) retire_at: Option<Instant>,
    /// Idle longer than `server_check_delay`: prove it answers before
    /// handing it out.
    pub(crate) needs_check: bool,
    /// `pgtenant.open_session` and `pgtenant.enter` on this connection
    /// (`isolation = "rls"`; see `context.rs`), looked up when it was
    /// opened.
    pub(crate) context_functions: Option<crate::pool::ContextFunctions>,
    /// The session secret the server session holds, as far as the proxy
    /// can tell (set with `open_session`, cleared after anything that may
    /// have discarded it); the next context call opens a new one if unset.
    pub(crate) context_secret: Option<crate::pool::SessionSecret>,
    /// The tenant whose context the server session holds, as far as the
    /// proxy can tell (set with the context call, cleared after anything
    /// that may have reset it); a lease of the same tenant skips the call.
    pub(crate) context_of: Option<std::sync::Arc<crate::catalog::TenantEntry>>,
    /// Its entry in its pool's list (SHOW SERVERS), once pooled.
    pub(crate) listed: Option<crate::pool::servers::Registered>,
}

const READ_CHUNK: usize = 16 * 1024;

/// Query(";"): the cheapest statement that makes the server answer.
const EMPTY_QUERY: &[u8] = b"Q\0\0\0\x06;\0";
/// Terminate: the polite way to leave.
const TERMINATE: &[u8] = b"X\0\0\0\x04";

impl ServerConn {
    /// Opens and authenticates a connection, reading up to the first
    /// ReadyForQuery.
    pub async fn connect(
        target: &BackendTarget,
        timeout: Duration,
        worker: usize,
    ) -> Result<ServerConn, ServerError> {
        crate::runtime::time::timeout(timeout, Self::connect_inner(target, worker))
            .await
            .map_err(|_| ServerError::Timeout)?
    }

    async fn connect_inner(
        target: &BackendTarget,
        worker: usize,
    ) -> Result<ServerConn, ServerError> {
        let socket = Socket::connect(&target.host, target.port).await?;
        socket.set_nodelay(true)?;
        let mut stream = Stream::from(socket);
        let binding = negotiate_tls(&mut stream, target).await?;
        let mut conn = ServerConn {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            key: CancelKey { pid: 0, secret: 0 },
            params: Vec::new(),
            carried: Default::default(),
            worker,
            last_used: crate::runtime::time::now(),
            retire_at: None,
            needs_check: false,
            context_functions: None,
            context_secret: None,
            context_of: None,
            listed: None,
        };
        let mut out = BytesMut::new();
        frontend::startup_message(
            [
                ("user", target.user.as_str()),
                ("database", target.database.as_str()),
            ],
            &mut out,
        )?;
        conn.stream.write_all(&out).await?;
        let mut scram: Option<ScramSha256> = None;
        // What the server asked for, checked against what the placement
        // allows before anything is answered.
        let mut exchanged = false;
        let mut admitted = false;
        let allow = |asked: &'static str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(ServerError::AuthNotAllowed {
                    asked,
                    allowed: target.auth.describe(),
                })
            }
        };
        loop {
            let msg = conn.read_message().await?;
            out.clear();
            match msg {
                backend::Message::AuthenticationOk => {
                    // OK with no exchange before it: the server let us in
                    // unauthenticated (trust), or SCRAM ended (checked
                    // in SaslFinal).
                    if !exchanged {
                        allow("no authentication", target.auth.none)?;
                    }
                    admitted = true;
                }
                backend::Message::AuthenticationCleartextPassword => {
                    allow("a cleartext password", target.auth.password)?;
                    exchanged = true;
                    let pw = target.password.as_deref().ok_or(ServerError::NoPassword)?;
                    frontend::password_message(pw, &mut out)?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    allow("an md5 password", target.auth.md5)?;
                    exchanged = true;
                    let pw = target.password.as_deref().ok_or(ServerError::NoPassword)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        target.user.as_bytes(),
                        pw,
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut out)?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    allow("SCRAM-SHA-256", target.auth.scram)?;
                    let pw = target.password.as_deref().ok_or(ServerError::NoPassword)?;
                    let (mut offers_scram, mut offers_plus) = (false, false);
                    let mut mechs = body.mechanisms();
                    while let Some(m) = fallible_next(&mut mechs)? {
                        offers_scram |= m == sasl::SCRAM_SHA_256;
                        offers_plus |= m == sasl::SCRAM_SHA_256_PLUS;
                    }
                    if !offers_scram {
                        return Err(ServerError::UnsupportedAuth(
                            "SASL without SCRAM-SHA-256".into(),
                        ));
                    }
                    // Over TLS, bound to the server's certificate where
                    // both sides can (SCRAM-SHA-256-PLUS).
                    let (mechanism, binding) = match &binding {
                        ServerBinding::Tls(Some(hash)) if offers_plus => (
                            sasl::SCRAM_SHA_256_PLUS,
                            ChannelBinding::tls_server_end_point(hash.clone()),
                        ),
                        ServerBinding::Tls(Some(_)) => {
                            (sasl::SCRAM_SHA_256, ChannelBinding::unrequested())
                        }
                        ServerBinding::Tls(None) | ServerBinding::Plain => {
                            (sasl::SCRAM_SHA_256, ChannelBinding::unsupported())
                        }
                    };
                    let s = ScramSha256::new(pw, binding);
                    frontend::sasl_initial_response(mechanism, s.message(), &mut out)?;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| ServerError::Protocol("unexpected SASL continue".into()))?;
                    s.update(body.data())
                        .map_err(|e| ServerError::Protocol(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut out)?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let mut s = scram
                        .take()
                        .ok_or_else(|| ServerError::Protocol("unexpected SASL final".into()))?;
                    // The server proved it knows the verifier: only now
                    // does the AuthenticationOk that follows count.
                    s.finish(body.data())
                        .map_err(|e| ServerError::Protocol(format!("SCRAM: {e}")))?;
                    exchanged = true;
                }
                backend::Message::ParameterStatus(body) => {
                    let name = body.name().map_err(proto_err)?.to_string();
                    let value = body.value().map_err(proto_err)?.to_string();
                    conn.params.push((name, value));
                }
                backend::Message::BackendKeyData(body) => {
                    conn.key = CancelKey {
                        pid: body.process_id(),
                        secret: body.secret_key(),
                    };
                }
                // ReadyForQuery only after AuthenticationOk.
                backend::Message::ReadyForQuery(_) if admitted => return Ok(conn),
                backend::Message::ErrorResponse(body) => return Err(rejected(&body)),
                backend::Message::NoticeResponse(_) => {}
                backend::Message::AuthenticationKerberosV5
                | backend::Message::AuthenticationScmCredential
                | backend::Message::AuthenticationGss
                | backend::Message::AuthenticationSspi => {
                    return Err(ServerError::UnsupportedAuth("Kerberos/GSS/SSPI".into()));
                }
                _ => {
                    return Err(ServerError::Protocol(
                        "unexpected message during startup".into(),
                    ));
                }
            }
            if !out.is_empty() {
                conn.stream.write_all(&out).await?;
            }
        }
    }

    /// Reads one whole backend message (control path only: startup, reset,
    /// rollback; never the forwarding path).
    /// FunctionCallResponse ('V'), which postgres-protocol does not parse,
    /// is skipped: the proxy's own calls (`context.rs`) need only whether
    /// they succeeded.
    pub(crate) async fn read_message(&mut self) -> Result<backend::Message, ServerError> {
        loop {
            if self.buf.first() == Some(&b'V') && self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let whole = usize::try_from(len).ok().filter(|&l| l >= 4).map(|l| l + 1);
                match whole {
                    Some(n) if self.buf.len() >= n => {
                        self.buf.advance(n);
                        continue;
                    }
                    Some(_) => {}
                    None => return Err(ServerError::Protocol("bad FunctionCallResponse".into())),
                }
            } else if let Some(msg) = backend::Message::parse(&mut self.buf).map_err(proto_err)? {
                return Ok(msg);
            }
            // Bound what an unexpected server message can make us buffer.
            if self.buf.len() > 1 << 20 {
                return Err(ServerError::Protocol("oversized control message".into()));
            }
            self.buf.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ServerError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Runs `sql` as a simple query and reads to ReadyForQuery, keeping
    /// ParameterStatus changes; returns the final transaction status.
    /// An ErrorResponse fails the call.
    pub(crate) async fn simple_query(&mut self, sql: &str) -> Result<u8, ServerError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.exchange(&out).await
    }

    /// Sends `msg` (a Query or FunctionCall) and reads to ReadyForQuery;
    /// returns its transaction status, or the server's error.
    pub(crate) async fn exchange(&mut self, msg: &[u8]) -> Result<u8, ServerError> {
        self.stream.write_all(msg).await?;
        let mut failure = None;
        loop {
            match self.read_message().await? {
                backend::Message::ReadyForQuery(z) => {
                    return match failure {
                        Some(e) => Err(e),
                        None => Ok(z.status()),
                    };
                }
                backend::Message::ErrorResponse(body) => failure = Some(rejected(&body)),
                backend::Message::ParameterStatus(body) => {
                    let name = body.name().map_err(proto_err)?;
                    let value = body.value().map_err(proto_err)?;
                    self.set_param(name, value);
                }
                _ => {}
            }
        }
    }

    /// Runs a simple query returning two text columns; reads to
    /// ReadyForQuery and returns the rows with its transaction status.
    /// Control path only (release-time checks). NotificationResponses that
    /// arrive meanwhile belong to the client (it LISTENs): they are
    /// re-encoded into `notifications`, the sender's pid shown as
    /// `client_pid` when it is this connection's backend and as 0
    /// otherwise (no real backend pid reaches a client).
    pub(crate) async fn query_pairs(
        &mut self,
        sql: &str,
        notifications: &mut BytesMut,
        client_pid: i32,
    ) -> Result<(Vec<(String, String)>, u8), ServerError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.stream.write_all(&out).await?;
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            match self.read_message().await? {
                backend::Message::DataRow(row) => {
                    let buf = row.buffer();
                    let mut ranges = row.ranges();
                    let mut col = || -> Result<String, ServerError> {
                        use fallible_iterator::FallibleIterator;
                        match ranges.next().map_err(proto_err)? {
                            Some(Some(r)) => Ok(String::from_utf8_lossy(&buf[r]).into_owned()),
                            _ => Err(ServerError::Protocol("unexpected NULL or short row".into())),
                        }
                    };
                    let pair = (col()?, col()?);
                    rows.push(pair);
                }
                backend::Message::ErrorResponse(body) => failure = Some(rejected(&body)),
                backend::Message::ParameterStatus(body) => {
                    let name = body.name().map_err(proto_err)?;
                    let value = body.value().map_err(proto_err)?;
                    self.set_param(name, value);
                }
                backend::Message::NotificationResponse(n) => {
                    use bytes::BufMut;
                    let channel = n.channel().map_err(proto_err)?;
                    let payload = n.message().map_err(proto_err)?;
                    notifications.put_u8(b'A');
                    notifications.put_i32((4 + 4 + channel.len() + 1 + payload.len() + 1) as i32);
                    let pid = if n.process_id() == self.key.pid {
                        client_pid
                    } else {
                        0
                    };
                    notifications.put_i32(pid);
                    notifications.put_slice(channel.as_bytes());
                    notifications.put_u8(0);
                    notifications.put_slice(payload.as_bytes());
                    notifications.put_u8(0);
                }
                backend::Message::ReadyForQuery(z) => {
                    return match failure {
                        Some(e) => Err(e),
                        None => Ok((rows, z.status())),
                    };
                }
                _ => {}
            }
        }
    }

    /// Records a ParameterStatus the server sent.
    pub(crate) fn set_param(&mut self, name: &str, value: &str) {
        match self.params.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => {
                if v != value {
                    value.clone_into(v);
                }
            }
            None => self.params.push((name.to_string(), value.to_string())),
        }
    }

    /// Whether the socket is still usable: no EOF, no unsolicited bytes
    /// (such as a FATAL from a terminated backend). Costs one non-blocking
    /// read only when the reactor has seen the socket become readable.
    pub(crate) fn is_alive(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        // The usual answer, without a syscall: registered with this
        // thread's loop, which has seen nothing to read.
        if self.stream.is_local() && !self.stream.read_ready() {
            return true;
        }
        self.stream.is_quiet()
    }

    /// A real round trip for a connection idle a long time, which may have
    /// died without a word (a half-open TCP connection after a failover, a
    /// firewall that forgot it): an empty query, answered by
    /// EmptyQueryResponse and ReadyForQuery idle, with nothing left over.
    /// The caller bounds the time.
    pub(crate) async fn check(&mut self) -> Result<(), ServerError> {
        self.stream.write_all(EMPTY_QUERY).await?;
        let mut empty = false;
        loop {
            match self.read_message().await? {
                backend::Message::EmptyQueryResponse => empty = true,
                backend::Message::ReadyForQuery(z) => {
                    return if empty && z.status() == b'I' && self.buf.is_empty() {
                        Ok(())
                    } else {
                        Err(ServerError::Protocol("unexpected reply to a check".into()))
                    };
                }
                backend::Message::ParameterStatus(body) => {
                    let name = body.name().map_err(proto_err)?;
                    let value = body.value().map_err(proto_err)?;
                    self.set_param(name, value);
                }
                backend::Message::NoticeResponse(_) => {}
                backend::Message::ErrorResponse(body) => return Err(rejected(&body)),
                _ => return Err(ServerError::Protocol("unexpected reply to a check".into())),
            }
        }
    }

    /// Closes an idle connection: Terminate if the socket takes it at
    /// once (no waiting, from any thread), then the socket.
    pub(crate) fn close(mut self) {
        self.stream.send_now(TERMINATE);
    }

    /// Moves the socket to this thread's event loop (worker `worker`) if
    /// it is registered with another, so that its wake-ups stay on the
    /// thread that uses it. Asked of the socket, not the worker number: a
    /// worker that ended (shutdown) leaves its connections on a loop that
    /// no longer runs.
    pub(crate) fn into_worker(
        self: Box<Self>,
        worker: usize,
    ) -> Result<Box<ServerConn>, ServerError> {
        if self.stream.is_local() {
            return Ok(self);
        }
        let mut conn = *self;
        conn.stream = conn.stream.rebind()?;
        conn.worker = worker;
        Ok(Box::new(conn))
    }

    pub fn cancel_key(&self) -> CancelKey {
        self.key
    }
}

fn fallible_next<I: fallible_iterator::FallibleIterator<Error = std::io::Error>>(
    it: &mut I,
) -> Result<Option<I::Item>, ServerError> {
    it.next().map_err(proto_err)
}

fn proto_err(e: std::io::Error) -> ServerError {
    ServerError::Protocol(e.to_string())
}

pub(super) fn rejected(body: &backend::ErrorResponseBody) -> ServerError {
    use fallible_iterator::FallibleIterator;
    let mut code = String::new();
    let mut message = String::new();
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    ServerError::Rejected { code, message }
}

/// TLS on a new server connection, as the placement's sslmode says.
enum ServerBinding {
    Plain,
    /// Encrypted; the certificate's channel binding where its signature
    /// algorithm defines one.
    Tls(Option<Vec<u8>>),
}

/// SSLRequest, then the handshake if the server agrees. A server that
/// declines where sslmode requires TLS is refused, so an on-path attacker
/// answering `N` cannot strip it. The answer is read byte by byte: what
/// follows `S` belongs to the handshake, never to the protocol.
async fn negotiate_tls(
    stream: &mut Stream,
    target: &BackendTarget,
) -> Result<ServerBinding, ServerError> {
    use crate::config::SslMode;
    if matches!(target.tls.mode, SslMode::Disable | SslMode::Allow) {
        return Ok(ServerBinding::Plain);
    }
    stream.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await?;
    stream.flush().await?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let config = crate::tls::backend_config(&target.tls).map_err(ServerError::Tls)?;
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| ServerError::Tls(format!("server name {:?}: {e}", target.host)))?;
            let conn = rustls::ClientConnection::new(config, name)
                .map_err(|e| ServerError::Tls(e.to_string()))?;
            stream
                .start_tls(rustls::Connection::Client(conn), None)
                .await
                .map_err(|e| ServerError::Tls(e.to_string()))?;
            let leaf = stream
                .tls()
                .and_then(|c| c.peer_certificates())
                .and_then(|chain| chain.first());
            Ok(ServerBinding::Tls(
                leaf.and_then(crate::tls::end_point_hash).map(Vec::from),
            ))
        }
        b'N' if target.tls.mode.needs_tls() => Err(ServerError::Tls(format!(
            "the server declined TLS, and the placement's sslmode is {:?}",
            target.tls.mode
        ))),
        b'N' => Ok(ServerBinding::Plain),
        other => Err(ServerError::Protocol(format!(
            "unexpected answer {:?} to SSLRequest",
            other as char
        ))),
    }
}
