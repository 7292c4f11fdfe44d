//! The operator-facing side: the admin console (database `pgtenant` on
//! the proxy's listener) and the HTTP endpoints on `admin.listen`.

pub mod console;
pub mod http;
