//! HTTP on `admin.listen`: `GET /metrics` (Prometheus text) and
//! `GET /healthz` (ready or not), on the control runtime, never on the
//! data-plane workers.
//!
//! Bounded against hostile clients: at most `MAX_CONNECTIONS` at once
//! (more are closed at accept), request heads of at most `MAX_HEAD`
//! bytes, `HEAD_TIMEOUT` to send one, `CONNECTION_LIFETIME` for a whole
//! connection, and no request body is read. With `admin.token` set,
//! `/metrics` wants `Authorization: Bearer TOKEN` (compared in constant
//! time); `/healthz` stays open, as load balancers and kubelets probe it
//! without credentials and it tells nothing but ready or not.

use crate::state::ProxyState;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 64;
/// The most bytes of a request head (line and headers); hyper answers
/// 431 past it.
pub const MAX_HEAD: usize = 16 * 1024;
/// From the first byte of a request (or from accept), its head must have
/// arrived within this.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed this long after accept, whatever it does
/// (keep-alive scrapers just reconnect).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// What the handler needs.
struct Shared {
    state: Arc<ProxyState>,
}

/// Serves until `stop` fires. `listener` is already bound (so a bad
/// address fails the start, not a background task).
pub async fn serve(listener: TcpListener, state: Arc<ProxyState>, stop: CancellationToken) {
    let shared = Arc::new(Shared { state });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: wait, rather than spin.
                tracing::warn!("admin HTTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "admin HTTP: too many connections; closed");
            drop(stream);
            continue;
        };
        // `admin.tls`: the certificates of the snapshot current now (a
        // reload's new files serve the next connection).
        let https = {
            let snap = shared.state.snapshot();
            let wanted = snap.config.admin.as_ref().is_some_and(|a| a.tls);
            match (wanted, &snap.tls) {
                (false, _) => None,
                (true, Some(tls)) => Some(Arc::clone(&tls.https)),
                // The config check makes [tls] a condition of admin.tls.
                (true, None) => continue,
            }
        };
        let shared = Arc::clone(&shared);
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let served = async {
                match https {
                    None => serve_connection(stream, shared).await,
                    Some(config) => {
                        let handshake = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                        match tokio::time::timeout(HEAD_TIMEOUT, handshake).await {
                            Ok(Ok(tls)) => serve_connection(tls, shared).await,
                            Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
                            Err(_) => Err("TLS handshake timed out".into()),
                        }
                    }
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                r = tokio::time::timeout(CONNECTION_LIFETIME, served) => {
                    if let Ok(Err(e)) = r {
                        tracing::debug!(%peer, "admin HTTP connection: {e}");
                    }
                }
            }
        });
    }
}

/// One HTTP/1 connection over `io` (plain TCP or TLS).
async fn serve_connection<I>(io: I, shared: Arc<Shared>) -> Result<(), String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, std::convert::Infallible>(handle(req, &shared).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), service)
        .await
        .map_err(|e| e.to_string())
}

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match path {
        "/healthz" if get => {
            if shared.state.is_ready() {
                text(StatusCode::OK, "ok\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            }
        }
        "/metrics" if get => {
            if !authorized(&req, shared) {
                return unauthorized();
            }
            let state = Arc::clone(&shared.state);
            // A large catalog takes milliseconds to walk: off the control
            // runtime's only thread.
            match tokio::task::spawn_blocking(move || crate::metrics::render::render(&state)).await
            {
                Ok(body) => {
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static(crate::metrics::encode::CONTENT_TYPE),
                    );
                    r
                }
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"),
            }
        }
        "/reload" if req.method() == Method::POST => {
            if !authorized(&req, shared) {
                return unauthorized();
            }
            // No body is read: the reload re-reads the file the proxy
            // was started with, nothing else.
            match crate::reload::reload(&shared.state).await {
                Ok(summary) => owned_text(StatusCode::OK, format!("{summary}\n")),
                Err(e @ crate::reload::ReloadError::Internal(_)) => {
                    owned_text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
                }
                Err(e) => owned_text(StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")),
            }
        }
        "/healthz" | "/metrics" | "/reload" => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// With a token configured: `Authorization: Bearer <token>`. The token
/// is read from the running configuration, so a reload rotates it.
/// Compared as SHA-256 digests, so neither its content nor its length
/// leaks through timing.
fn authorized(req: &Request<Incoming>, shared: &Shared) -> bool {
    let snap = shared.state.snapshot();
    let Some(token) = snap.config.admin.as_ref().and_then(|a| a.token.as_ref()) else {
        return true;
    };
    let want = digest(token.expose().as_bytes());
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    bool::from(digest(given).ct_eq(&want))
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    owned_text(status, body.into())
}

fn owned_text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
