//! What authentication is checked against, apart from any connection:
//! SCRAM-SHA-256 verifiers and the server side of the exchange
//! (`scram`, sans-IO), and the proxy's authentication secret that keys
//! salts and statement names (`secret`). Below `catalog` (which stores
//! verifiers) and `client` (which runs exchanges over a socket).

pub mod scram;
pub mod secret;

#[cfg(test)]
mod scram_prop;
