//! Who the client is: the peer's address, or, when the peer is a trusted proxy
//! (`TRUSTED_PROXIES`), the address the proxies say they forwarded for. The rate limit keys on
//! it and the request's span records it (`client.address`), so the request log names it.
//!
//! The hops in `X-Forwarded-For` (what nginx, HAProxy, Envoy and the cloud balancers append
//! to), or in `Forwarded` (RFC 7239) when there is none, are read from the nearest: each
//! trusted proxy vouches for the hop before it, and the first address that is not a trusted
//! proxy is the client. What an untrusted peer sends is ignored: a client cannot choose its
//! own address. A proxy that writes only `Forwarded` must drop a client's `X-Forwarded-For`
//! (one header is read, and a proxy passes on what it does not write).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use poem::http::HeaderMap;
use poem::{Endpoint, Middleware, Request, Result};

const FORWARDED: &str = "forwarded";
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The client's address, in the request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// Puts the [`ClientAddress`] in each request and records it in the current span.
#[derive(Clone)]
pub struct ResolveClient {
    trusted: Arc<[IpNet]>,
}

impl ResolveClient {
    pub fn new(trusted: &[IpNet]) -> Self {
        Self {
            trusted: trusted.into(),
        }
    }
}

impl<E: Endpoint> Middleware<E> for ResolveClient {
    type Output = ResolveClientEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        ResolveClientEndpoint {
            inner,
            trusted: Arc::clone(&self.trusted),
        }
    }
}

pub struct ResolveClientEndpoint<E> {
    inner: E,
    trusted: Arc<[IpNet]>,
}

impl<E: Endpoint> Endpoint for ResolveClientEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut request: Request) -> Result<Self::Output> {
        let peer = request.remote_addr().as_socket_addr().map(SocketAddr::ip);
        if let Some(client) = peer.map(|peer| client(peer, request.headers(), &self.trusted)) {
            tracing::Span::current().record("client.address", client.to_string());
            request.extensions_mut().insert(ClientAddress(client));
        }
        self.inner.call(request).await
    }
}

/// The client behind `peer`.
fn client(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |address: &IpAddr| trusted.iter().any(|net| net.contains(address));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for(headers).into_iter().rev() {
        // An unreadable hop ("unknown", an obfuscated name): the proxy that reported it is as
        // far as anyone vouches.
        let Some(hop) = hop else {
            break;
        };
        client = hop;
        if !is_trusted(&hop) {
            break;
        }
    }
    client
}

/// The hops each proxy added, nearest last: `X-Forwarded-For` when present, else `Forwarded`'s
/// `for=`. `None` for a hop that is not an address.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|hop| !hop.is_empty())
            .collect::<Vec<_>>()
    };
    let forwarded_for = values(X_FORWARDED_FOR);
    if !forwarded_for.is_empty() {
        return forwarded_for.into_iter().map(address).collect();
    }
    values(FORWARDED)
        .into_iter()
        .map(|element| {
            element
                .split(';')
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(key, _)| key.eq_ignore_ascii_case("for"))
                .and_then(|(_, node)| address(node.trim_matches('"')))
        })
        .collect()
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]:4711`.
fn address(node: &str) -> Option<IpAddr> {
    node.parse()
        .ok()
        .or_else(|| node.parse::<SocketAddr>().ok().map(|socket| socket.ip()))
        .or_else(|| {
            node.strip_prefix('[')
                .and_then(|rest| rest.split_once(']'))
                .and_then(|(inside, _)| inside.parse().ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(peer: &str, trusted: &[&str], headers: &[(&'static str, &str)]) -> String {
        let trusted: Vec<IpNet> = trusted.iter().map(|net| net.parse().unwrap()).collect();
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, value.parse().unwrap());
        }
        client(peer.parse().unwrap(), &map, &trusted).to_string()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let spoofed = [
            (X_FORWARDED_FOR, "203.0.113.7"),
            (FORWARDED, "for=203.0.113.8"),
        ];
        assert_eq!(resolve("198.51.100.1", &[], &spoofed), "198.51.100.1");
        assert_eq!(
            resolve("198.51.100.1", &["10.0.0.0/8"], &spoofed),
            "198.51.100.1"
        );
    }

    #[test]
    fn trusted_proxies_vouch_for_the_hop_before_them() {
        let trusted = ["10.0.0.0/8"];
        // The client prepended a lie; the proxy appended what it saw.
        let xff = [(X_FORWARDED_FOR, "1.2.3.4, 203.0.113.7, 10.0.0.5")];
        assert_eq!(resolve("10.0.0.9", &trusted, &xff), "203.0.113.7");
        let forwarded = [(
            FORWARDED,
            "for=1.2.3.4, for=\"[2001:db8::1]:4711\";proto=https",
        )];
        assert_eq!(resolve("10.0.0.9", &trusted, &forwarded), "2001:db8::1");
        // X-Forwarded-For, which the proxy wrote, over a client's own Forwarded.
        let both = [
            (FORWARDED, "for=192.0.2.60"),
            (X_FORWARDED_FOR, "203.0.113.7"),
        ];
        assert_eq!(resolve("10.0.0.9", &trusted, &both), "203.0.113.7");
        // Every hop trusted: the farthest.
        assert_eq!(
            resolve("10.0.0.9", &trusted, &[(X_FORWARDED_FOR, "10.1.1.1")]),
            "10.1.1.1"
        );
        // Nothing forwarded, or unreadable: the proxy itself.
        assert_eq!(resolve("10.0.0.9", &trusted, &[]), "10.0.0.9");
        assert_eq!(
            resolve("10.0.0.9", &trusted, &[(FORWARDED, "for=unknown")]),
            "10.0.0.9"
        );
        // Several header lines are one list, in order.
        let lines = [
            (X_FORWARDED_FOR, "203.0.113.7"),
            (X_FORWARDED_FOR, "10.0.0.5"),
        ];
        assert_eq!(resolve("10.0.0.9", &trusted, &lines), "203.0.113.7");
    }
}
