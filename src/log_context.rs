//! Who a client connection is, for its log lines: connection id, peer,
//! and, once known, user, tenant, placement, isolation and operator.
//!
//! Not a `tracing` span: a span lives in the subscriber's registry for
//! the connection's whole life, about 1.4 kB of memory per client, idle
//! ones too. The context is a small box the connection's future owns
//! ([`WithLog`]); while that future is polled (and only then) it sits in
//! a thread-local, where [`Format`] reads it and adds it to each line
//! the way the span's fields were: `client{conn=.. peer=..}:` in text,
//! `"span": {"name": "client", ..}` in JSON. A subscriber that does not
//! use [`Format`] (a library user's own) logs the lines without it.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// One connection's context.
#[derive(Debug)]
pub struct ClientLog {
    conn: u64,
    /// The client's address; None while a load balancer's PROXY header
    /// has not named it yet.
    peer: Option<SocketAddr>,
    /// The load balancer a relayed client came through.
    via: Option<SocketAddr>,
    user: Option<Box<str>>,
    tenant: Option<Box<str>>,
    placement: Option<Box<str>>,
    isolation: Option<&'static str>,
    operator: Option<Box<str>>,
}

thread_local! {
    /// The context of the connection being polled on this thread, or
    /// null. A plain pointer, not an owner: setting and restoring it is
    /// a store each, twice per poll of every client (an owning
    /// `RefCell<Option<Box<..>>>` cost about 20 instructions a poll).
    static CURRENT: Cell<*const RefCell<ClientLog>> = const { Cell::new(std::ptr::null()) };
}

/// Calls `f` with the context of the connection being polled, if any.
fn with_current<R>(f: impl FnOnce(Option<&RefCell<ClientLog>>) -> R) -> R {
    let ptr = CURRENT.get();
    // SAFETY: a non-null pointer is set only by `WithLog::poll`, to the
    // box its future owns and does not touch while its inner future
    // runs, and is restored before that poll returns (on unwind too, by
    // `Restore`); so it points to a live `RefCell` whenever it is read.
    // The thread-local is per thread, so no other thread sees it.
    f(unsafe { ptr.as_ref() })
}

/// Sets a field of the context of the connection being polled (none
/// outside one).
fn record(set: impl FnOnce(&mut ClientLog)) {
    with_current(|c| {
        if let Some(c) = c {
            set(&mut c.borrow_mut())
        }
    });
}

/// Recorded as strings: both formats quote and escape them, so a crafted
/// name cannot forge a line.
/// The client a trusted load balancer's PROXY header named.
pub fn set_relayed_peer(client: SocketAddr) {
    record(|c| c.peer = Some(client));
}

pub fn set_user(user: &str) {
    record(|c| c.user = Some(user.into()));
}

pub fn set_tenant(tenant: &str) {
    record(|c| c.tenant = Some(tenant.into()));
}

pub fn set_operator(operator: &str) {
    record(|c| c.operator = Some(operator.into()));
}

pub fn set_placement(placement: &str, isolation: &'static str) {
    record(|c| {
        c.placement = Some(placement.into());
        c.isolation = Some(isolation);
    });
}

pin_project_lite::pin_project! {
    /// `inner` with `log` as the current context while it is polled.
    pub struct WithLog<F> {
        log: Box<RefCell<ClientLog>>,
        #[pin]
        inner: F,
    }
}

/// `inner`, logging as connection `conn` from `peer`, or via `peer` (a
/// load balancer) when `relayed`.
pub fn with_log<F: Future>(conn: u64, peer: SocketAddr, relayed: bool, inner: F) -> WithLog<F> {
    let log = ClientLog {
        conn,
        peer: (!relayed).then_some(peer),
        via: relayed.then_some(peer),
        user: None,
        tenant: None,
        placement: None,
        isolation: None,
        operator: None,
    };
    WithLog {
        log: Box::new(RefCell::new(log)),
        inner,
    }
}

/// Puts the outer context back when dropped, so that a panicking poll
/// leaves no dangling pointer on the thread.
struct Restore(*const RefCell<ClientLog>);

impl Drop for Restore {
    fn drop(&mut self) {
        CURRENT.set(self.0);
    }
}

impl<F: Future> Future for WithLog<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _restore = Restore(CURRENT.replace(&**this.log));
        this.inner.poll(cx)
    }
}

/// An event format that adds the current connection's context to lines
/// logged while one is polled, around `F` (the stock text or JSON one).
pub struct Format<F> {
    inner: F,
    json: bool,
}

impl<F> Format<F> {
    pub fn text(inner: F) -> Self {
        Format { inner, json: false }
    }

    pub fn json(inner: F) -> Self {
        Format { inner, json: true }
    }
}

impl<S, N, F> FormatEvent<S, N> for Format<F>
where
    F: FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let context = with_current(|c| {
            c.map(|c| {
                let c = c.borrow();
                if self.json {
                    json_span(&c)
                } else {
                    text_span(&c)
                }
            })
        });
        let Some(context) = context else {
            return self.inner.format_event(ctx, writer, event);
        };
        // Formatted apart, then spliced: tracing-subscriber makes no
        // colored writer to a buffer, so on a terminal a connection's
        // lines come without colors.
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        if self.json {
            // One object per line: the span goes in before its last brace.
            let end = line.trim_end().len();
            match line[..end].strip_suffix('}') {
                Some(body) => write!(writer, "{body},\"span\":{context}}}{}", &line[end..]),
                None => writer.write_str(&line),
            }
        } else {
            // Before the target, where the span stood.
            let at = line.find(event.metadata().target()).unwrap_or(line.len());
            write!(writer, "{}{context}: {}", &line[..at], &line[at..])
        }
    }
}

impl ClientLog {
    /// The fields known so far after the addresses, in line order.
    fn named(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("user", self.user.as_deref()),
            ("tenant", self.tenant.as_deref()),
            ("placement", self.placement.as_deref()),
            ("isolation", self.isolation),
            ("operator", self.operator.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, v)| Some((name, v?)))
    }
}

/// `client{conn=1 peer=127.0.0.1:5000 user="app" ..}`, as the span was.
fn text_span(c: &ClientLog) -> String {
    let mut s = format!("client{{conn={}", c.conn);
    for (name, addr) in [("peer", c.peer), ("via", c.via)] {
        if let Some(a) = addr {
            let _ = write!(s, " {name}={a}");
        }
    }
    for (name, v) in c.named() {
        let _ = write!(s, " {name}={v:?}");
    }
    s.push('}');
    s
}

/// `{"conn":1,"peer":"127.0.0.1:5000","user":"app",..,"name":"client"}`.
fn json_span(c: &ClientLog) -> String {
    let mut m = serde_json::Map::new();
    m.insert("conn".into(), c.conn.into());
    for (name, addr) in [("peer", c.peer), ("via", c.via)] {
        if let Some(a) = addr {
            m.insert(name.into(), a.to_string().into());
        }
    }
    for (name, v) in c.named() {
        m.insert(name.into(), v.into());
    }
    m.insert("name".into(), "client".into());
    serde_json::Value::Object(m).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        f.poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn the_context_is_set_only_while_its_future_runs() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = std::sync::Arc::clone(&seen);
        let f = with_log(7, peer, false, async move {
            set_user("app \"x\"");
            set_tenant("acme");
            let line = with_current(|c| c.map(|c| text_span(&c.borrow())));
            s.lock().expect("lock").push(line);
        });
        let mut f = std::pin::pin!(f);
        assert!(poll_once(f.as_mut()).is_ready());
        assert!(CURRENT.get().is_null(), "left behind");
        set_user("nobody"); // outside any connection: ignored
        let seen = seen.lock().expect("lock");
        assert_eq!(
            seen[0].as_deref(),
            Some(r#"client{conn=7 peer=127.0.0.1:5000 user="app \"x\"" tenant="acme"}"#)
        );
        let v: serde_json::Value = serde_json::from_str(&json_span(&f.log.borrow())).expect("json");
        assert_eq!(v["conn"], 7);
        assert_eq!(v["user"], "app \"x\"");
        assert_eq!(v["name"], "client");
    }
    /// Lines as the binary writes them (`main.rs`), in both formats.
    fn lines(json: bool) -> String {
        use tracing_subscriber::fmt::format::Format as Stock;
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = std::sync::Arc::clone(&out);
        let make = move || Capture(std::sync::Arc::clone(&sink));
        let builder = tracing_subscriber::fmt().with_ansi(false).with_writer(make);
        let log = || {
            let peer: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
            tracing::info!("before");
            let f = with_log(7, peer, false, async {
                set_tenant("acme");
                tracing::info!(n = 1, "inside");
            });
            assert!(poll_once(std::pin::pin!(f)).is_ready());
        };
        if json {
            let stock = Stock::default().json().with_current_span(true);
            let sub = builder.json().event_format(Format::json(stock)).finish();
            tracing::subscriber::with_default(sub, log);
        } else {
            let sub = builder
                .event_format(Format::text(Stock::default()))
                .finish();
            tracing::subscriber::with_default(sub, log);
        }
        let bytes = out.lock().expect("lock").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_logged_while_a_connection_runs_carry_it() {
        let text = lines(false);
        let l: Vec<&str> = text.lines().collect();
        assert_eq!(l.len(), 2, "{text}");
        assert!(!l[0].contains("client{"), "{text}");
        assert!(
            l[1].contains(r#"INFO client{conn=7 peer=127.0.0.1:5000 tenant="acme"}: pgtenant::log_context::tests: inside n=1"#),
            "{text}"
        );
        let json = lines(true);
        let v: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert!(v[0].get("span").is_none(), "{json}");
        assert_eq!(v[1]["span"]["conn"], 7, "{json}");
        assert_eq!(v[1]["span"]["tenant"], "acme", "{json}");
        assert_eq!(v[1]["span"]["name"], "client", "{json}");
        assert_eq!(v[1]["fields"]["message"], "inside", "{json}");
    }
}
