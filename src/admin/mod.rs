//! Operators' interfaces: the HTTP endpoints (`http`).

pub mod http;
