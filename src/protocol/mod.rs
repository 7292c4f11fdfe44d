//! The PostgreSQL wire protocol, as far as the proxy needs it: framing with
//! length caps (`codec`), the startup-phase packets (`startup`), the backend
//! messages the proxy writes itself (`messages`), ErrorResponse with
//! SQLSTATEs (`error`), and the PROXY protocol v2 header a load balancer
//! may send first (`proxy_header`).
//!
//! Pure: no sockets, no tasks, no config. Everything here reads hostile
//! bytes and must return an error rather than panic.

pub mod codec;
pub mod encoding;
pub mod error;
pub mod messages;
pub mod proxy_header;
pub mod proxy_v1;
pub mod startup;

pub use codec::{FrameError, FrameScanner, FrameSink, HEADER_LEN, Step, WHOLE_BODY};
pub use error::{Severity, SqlState};
pub use startup::{CancelKey, Startup, StartupPacket};
