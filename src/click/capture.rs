//! Stage 1b, on the hot path: record a hit and return. Never awaits, never blocks, never allocates
//! beyond the channel's block (the user agent and `X-Forwarded-For` are reference-counted views of
//! hyper's read buffer).
//!
//! What happens when the channel is full: the hit is dropped and counted
//! (`linkhit_hits_dropped_total{stage="capture"}`). The pipeline task drains the channel continuously
//! and never waits on the store itself, so the channel only fills if that task is starved of CPU.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use hyper::HeaderMap;
use hyper::header::HeaderValue;
use ipnet::IpNet;
use metrics::Counter;
use tokio::sync::mpsc;

use crate::redirect::cache::CachedLink;

/// A hit as captured on the hot path: cheap to build, classified later.
#[derive(Debug)]
pub struct Hit {
    pub link: Arc<CachedLink>,
    pub at: DateTime<Utc>,
    pub head: bool,
    pub prefetch: bool,
    pub user_agent: Option<HeaderValue>,
    pub peer: Option<IpAddr>,
    pub forwarded_for: Option<HeaderValue>,
}

impl Hit {
    pub fn from_request(link: Arc<CachedLink>, head: bool, headers: &HeaderMap, peer: Option<IpAddr>) -> Self {
        Self {
            link,
            at: Utc::now(),
            head,
            prefetch: is_prefetch(headers),
            user_agent: headers.get(hyper::header::USER_AGENT).cloned(),
            peer,
            forwarded_for: headers.get("x-forwarded-for").cloned(),
        }
    }
}

/// The hot path's handle on the pipeline.
#[derive(Clone)]
pub struct Capture {
    tx: Option<mpsc::Sender<Hit>>,
    dropped: Counter,
}

impl Capture {
    pub fn new(tx: Option<mpsc::Sender<Hit>>) -> Self {
        Self { tx, dropped: metrics::counter!("linkhit_hits_dropped_total", "stage" => "capture") }
    }

    /// A capture that records nothing (`LINKHIT_CAPTURE=false`).
    pub fn disabled() -> Self {
        Self::new(None)
    }

    #[inline]
    pub fn record(&self, hit: Hit) {
        if let Some(tx) = &self.tx
            && tx.try_send(hit).is_err()
        {
            self.dropped.increment(1);
        }
    }
}

/// `Purpose: prefetch`, `Sec-Purpose: prefetch…`, `X-Purpose: preview`, `X-Moz: prefetch`: the browser
/// is fetching speculatively, no human has tapped yet.
pub fn is_prefetch(headers: &HeaderMap) -> bool {
    ["sec-purpose", "purpose", "x-purpose", "x-moz"].iter().any(|name| {
        headers.get(*name).is_some_and(|v| {
            let v = v.as_bytes();
            contains_ignore_case(v, b"prefetch") || contains_ignore_case(v, b"preview")
        })
    })
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

/// The client address: the TCP peer, or — when the peer is a trusted proxy — the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: Option<IpAddr>, forwarded_for: Option<&str>, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let Some(chain) = forwarded_for else {
        return Some(peer);
    };
    let mut client = peer;
    for hop in chain.rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // A malformed entry ends the trustworthy part of the chain.
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    Some(client)
}

/// Anonymises an address: IPv4 keeps 24 bits, IPv6 keeps 48 (the last octet / last 80 bits are zeroed).
pub fn anonymize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return anonymize(IpAddr::V4(v4));
            }
            let mut octets = v6.octets();
            octets[6..].fill(0);
            IpAddr::from(octets)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn client_ip_policy() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let cases = [
            // Untrusted peer: X-Forwarded-For is ignored (it could be forged).
            (ip("203.0.113.9"), Some("1.2.3.4"), ip("203.0.113.9")),
            // Trusted proxy: the right-most untrusted hop.
            (ip("10.0.0.5"), Some("198.51.100.7"), ip("198.51.100.7")),
            (ip("10.0.0.5"), Some("6.6.6.6, 198.51.100.7, 10.0.0.2"), ip("198.51.100.7")),
            (ip("10.0.0.5"), None, ip("10.0.0.5")),
            (ip("10.0.0.5"), Some("garbage"), ip("10.0.0.5")),
            (ip("127.0.0.1"), Some("2001:db8::1"), ip("2001:db8::1")),
            (None, Some("1.2.3.4"), None),
        ];
        for (peer, xff, want) in cases {
            assert_eq!(client_ip(peer, xff, &trusted), want, "{peer:?} {xff:?}");
        }
        assert_eq!(client_ip(ip("10.0.0.5"), Some("1.2.3.4"), &[]), ip("10.0.0.5"), "nothing trusted by default");
    }

    #[test]
    fn anonymization() {
        let cases = [
            ("203.0.113.77", "203.0.113.0"),
            ("2001:db8:85a3:1234:5678:8a2e:370:7334", "2001:db8:85a3::"),
            ("::ffff:198.51.100.23", "198.51.100.0"),
            ("::1", "::"),
        ];
        for (raw, want) in cases {
            assert_eq!(anonymize(raw.parse().unwrap()).to_string(), want, "{raw}");
        }
    }

    #[test]
    fn prefetch_headers() {
        let cases = [
            (&[("sec-purpose", "prefetch;prerender")][..], true),
            (&[("purpose", "prefetch")][..], true),
            (&[("x-moz", "prefetch")][..], true),
            (&[("x-purpose", "preview")][..], true),
            (&[("accept", "text/html")][..], false),
            (&[][..], false),
        ];
        for (headers, want) in cases {
            let mut map = HeaderMap::new();
            for (k, v) in headers {
                map.insert(*k, v.parse().unwrap());
            }
            assert_eq!(is_prefetch(&map), want, "{headers:?}");
        }
    }
}
