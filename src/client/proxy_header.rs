//! Who a connection is from: the socket's peer, or, behind a load
//! balancer listed in `proxy.proxy_protocol_networks`, the client its
//! PROXY protocol header (v1 or v2) names. Runs first, before any startup packet,
//! under the startup timeout; the address it gives is the one the
//! failed-login limits, the per-address login cap, logs and SHOW CLIENTS
//! use.
//!
//! Trust is by the socket's peer alone: a header from any other peer is
//! refused (believing it would let anyone pick the address the limits
//! see), and a listed balancer must send one unless
//! `proxy_protocol_required = false`.

use crate::admission::{Caps, Unauthenticated};
use crate::config::ProxyConfig;
use crate::config::networks::any_contains;
use crate::protocol::proxy_header::{self, Start};
use crate::session::client_conn::ClientConn;
use crate::session::error::ClientError;
use std::net::SocketAddr;
use tokio::io::AsyncReadExt;

/// The ends of a client connection as the proxy counts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Peer {
    /// The client: the relayed source, or the socket's peer.
    pub client: SocketAddr,
    /// The balancer that relayed it, when a header named a client.
    pub via: Option<SocketAddr>,
    /// The server name the client asked the balancer for (its header's
    /// authority TLV): the `sni` tenant source of a connection the
    /// balancer decrypted.
    pub server_name: Option<String>,
    /// The balancer says the client reached it over TLS (its header's
    /// SSL TLV): enough for `[tls] require`.
    pub client_tls: bool,
}

/// Whether `peer` is a balancer whose header is believed.
pub(super) fn trusted(proxy: &ProxyConfig, peer: SocketAddr) -> bool {
    any_contains(&proxy.proxy_protocol_networks, peer.ip())
}

/// The client of this connection ([`read`]), counted against its
/// address's unauthenticated cap and, behind a balancer, named in the
/// connection's span as `peer` (`serve` recorded the balancer as `via`,
/// and the peer of any other connection).
pub(super) async fn identify(
    client: &mut ClientConn,
    peer: SocketAddr,
    proxy: &ProxyConfig,
    unauthenticated: &mut Option<Unauthenticated>,
) -> Result<Peer, ClientError> {
    let who = read(client, peer, proxy).await?;
    if let Some(u) = unauthenticated.as_mut() {
        u.set_address(who.client.ip(), Caps::of(proxy))
            .map_err(|refusal| ClientError::LoginsInFlight(refusal.message()))?;
    }
    if trusted(proxy, peer) {
        crate::log_context::set_relayed_peer(who.client);
        if who.via.is_some() {
            tracing::debug!("client relayed by a load balancer (PROXY protocol)");
        }
    }
    Ok(who)
}

/// Reads the PROXY header if the connection starts with one, leaving
/// every byte after it in the read buffer for the startup packet. Reads
/// nothing past what the socket has: a startup packet (or a TLS
/// ClientHello) is told at its first byte.
pub(super) async fn read(
    client: &mut ClientConn,
    peer: SocketAddr,
    proxy: &ProxyConfig,
) -> Result<Peer, ClientError> {
    let trusted = trusted(proxy, peer);
    let own = Peer {
        client: peer,
        via: None,
        server_name: None,
        client_tls: false,
    };
    loop {
        let start = proxy_header::detect(&client.flow.buf);
        match start {
            Start::Other if trusted && proxy.proxy_protocol_required => {
                return Err(ClientError::Protocol(
                    "expected a PROXY protocol header from this load balancer \
                     (proxy.proxy_protocol_networks lists it)"
                        .into(),
                ));
            }
            Start::Other => return Ok(own),
            Start::V1 | Start::V2 if !trusted => {
                return Err(ClientError::Protocol(
                    "PROXY protocol header from an address not allowed to send one".into(),
                ));
            }
            Start::V1 | Start::V2 => match proxy_header::parse(&client.flow.buf) {
                Ok(Some((header, len))) => {
                    bytes::Buf::advance(&mut client.flow.buf, len);
                    return Ok(match header.source() {
                        Some(source) => Peer {
                            client: source,
                            via: Some(peer),
                            server_name: header.authority,
                            client_tls: header.client_tls,
                        },
                        // LOCAL (a health check), UNSPEC, AF_UNIX.
                        None => Peer {
                            server_name: header.authority,
                            client_tls: header.client_tls,
                            ..own
                        },
                    });
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            },
            Start::Incomplete => {}
        }
        fill(client).await?;
    }
}

/// One read into the client's buffer, with room for a whole header at
/// least; what follows the header stays there for the startup packet.
async fn fill(client: &mut ClientConn) -> Result<(), ClientError> {
    client.flow.unpark();
    let room = proxy_header::MAX_HEADER_LEN.saturating_sub(client.flow.buf.len());
    client.flow.buf.reserve(room.max(1));
    let n = client
        .stream
        .read_buf(&mut client.flow.buf)
        .await
        .map_err(super::startup_phase::early_eof)?;
    if n == 0 {
        return Err(super::startup_phase::early_eof(
            std::io::ErrorKind::UnexpectedEof.into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Network;
    use crate::protocol::proxy_header::{encode, encode_local};
    use crate::runtime::block_on;
    use crate::runtime::net::accepted;
    use std::io::Write;

    fn proxy(networks: &[&str], required: bool) -> ProxyConfig {
        ProxyConfig {
            proxy_protocol_networks: networks
                .iter()
                .map(|n| Network::parse(n).expect("network"))
                .collect(),
            proxy_protocol_required: required,
            ..ProxyConfig::default()
        }
    }

    /// What `read` makes of `sent` from a peer on 127.0.0.1, and what it
    /// left in the buffer.
    fn run(sent: Vec<u8>, cfg: ProxyConfig) -> (Result<Peer, String>, Vec<u8>, SocketAddr) {
        block_on(async move {
            let (ours, mut theirs) = accepted().await;
            let peer = ours.peer_addr().expect("peer");
            theirs.write_all(&sent).expect("send");
            let mut client = ClientConn::new(ours.into(), 1 << 20);
            let got = read(&mut client, peer, &cfg)
                .await
                .map_err(|e| e.to_string());
            (got, client.flow.buf.to_vec(), peer)
        })
    }

    const STARTUP: &[u8] = b"\0\0\0\x08\x04\xd2\x16\x2f";

    #[test]
    fn a_trusted_header_names_the_client_and_leaves_the_rest() {
        let src: SocketAddr = "203.0.113.9:4242".parse().expect("addr");
        let mut sent = encode(src, "127.0.0.1:6432".parse().expect("addr"), &[]);
        sent.extend_from_slice(STARTUP);
        let (got, rest, peer) = run(sent, proxy(&["127.0.0.0/8"], true));
        assert_eq!(
            got,
            Ok(Peer {
                client: src,
                via: Some(peer),
                server_name: None,
                client_tls: false,
            })
        );
        assert_eq!(rest, STARTUP);
    }

    /// The authority TLV comes through as the server name the client
    /// asked the balancer for.
    #[test]
    fn a_trusted_headers_authority_is_the_server_name() {
        let src: SocketAddr = "203.0.113.9:4242".parse().expect("addr");
        let mut tlv = vec![0x02, 0, 19];
        tlv.extend_from_slice(b"acme.db.example.com");
        let mut sent = encode(src, "127.0.0.1:6432".parse().expect("addr"), &tlv);
        sent.extend_from_slice(STARTUP);
        let (got, rest, _) = run(sent, proxy(&["127.0.0.0/8"], true));
        let got = got.expect("accepted");
        assert_eq!(got.server_name.as_deref(), Some("acme.db.example.com"));
        assert_eq!(rest, STARTUP);
    }

    #[test]
    fn a_v1_line_names_the_client_too() {
        let src: SocketAddr = "203.0.113.9:4242".parse().expect("addr");
        let mut sent =
            crate::protocol::proxy_v1::encode(src, "127.0.0.1:6432".parse().expect("addr"));
        sent.extend_from_slice(STARTUP);
        let (got, rest, peer) = run(sent, proxy(&["127.0.0.0/8"], true));
        assert_eq!(
            got,
            Ok(Peer {
                client: src,
                via: Some(peer),
                server_name: None,
                client_tls: false,
            })
        );
        assert_eq!(rest, STARTUP);
    }

    #[test]
    fn local_keeps_the_socket_peer() {
        let mut sent = encode_local();
        sent.extend_from_slice(STARTUP);
        let (got, rest, peer) = run(sent, proxy(&["127.0.0.1"], true));
        assert_eq!(
            got,
            Ok(Peer {
                client: peer,
                via: None,
                server_name: None,
                client_tls: false,
            })
        );
        assert_eq!(rest, STARTUP);
    }

    #[test]
    fn no_header_passes_where_none_is_required() {
        for cfg in [
            proxy(&[], true),
            proxy(&["10.0.0.0/8"], true),
            proxy(&["127.0.0.1"], false),
        ] {
            let (got, rest, peer) = run(STARTUP.to_vec(), cfg);
            assert_eq!(got.map(|p| p.client), Ok(peer));
            assert_eq!(rest, STARTUP, "nothing consumed");
        }
    }

    #[test]
    fn refusals() {
        let src: SocketAddr = "203.0.113.9:4242".parse().expect("addr");
        let header = encode(src, src, &[]);
        // A trusted balancer that sends none.
        let (got, _, _) = run(STARTUP.to_vec(), proxy(&["127.0.0.1"], true));
        assert!(got.expect_err("refused").contains("expected a PROXY"));
        // A header from a peer not listed (or with the protocol off).
        for cfg in [proxy(&["10.0.0.0/8"], true), proxy(&[], true)] {
            let (got, _, _) = run(header.clone(), cfg);
            assert!(got.expect_err("refused").contains("not allowed"));
        }
        // A broken v1, and a broken v2.
        let (got, _, _) = run(
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n".to_vec(),
            proxy(&["127.0.0.1"], true),
        );
        assert!(got.expect_err("refused").contains("v1"));
        let mut bad = header.clone();
        bad[13] = 0x51;
        let (got, _, _) = run(bad, proxy(&["127.0.0.1"], true));
        assert!(got.expect_err("refused").contains("family"));
    }
}
