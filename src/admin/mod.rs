//! The operator-facing side: the admin console (database `pgtenant` on
//! the proxy's listener).

pub mod console;
