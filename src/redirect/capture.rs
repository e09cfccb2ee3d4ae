//! The redirect's hand-off to the click pipeline, on the hot path: record a hit and return. Never awaits, never blocks, never allocates
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
use metrics::Counter;
use tokio::sync::mpsc;

use super::cache::CachedLink;

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
    /// The click id added to the target (links tracking conversions).
    pub click_id: Option<Box<str>>,
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
            click_id: None,
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

#[cfg(test)]
mod tests {
    use super::*;

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
