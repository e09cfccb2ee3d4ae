//! The redirect's hand-off to the click pipeline, on the hot path: record a hit and return. Never awaits,
//! never blocks on a lock; allocates only copies of the user agent and `X-Forwarded-For` (views of
//! hyper's read buffer would keep it alive until the click thread is done with the hit). With the click
//! thread on and 64 hits waiting, it yields the CPU about every 8th request (`Handover`): one click
//! stretch, ~100 µs.
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
    pub click_id: Option<Arc<str>>,
}

impl Hit {
    /// One pass over the headers (a handful on a phone's request): cheaper than a lookup per name,
    /// each of which hashes the name.
    pub fn from_request(link: Arc<CachedLink>, head: bool, headers: &HeaderMap, peer: Option<IpAddr>) -> Self {
        let (mut user_agent, mut forwarded_for, mut prefetch) = (None, None, false);
        for (name, value) in headers {
            if name == hyper::header::USER_AGENT {
                user_agent.get_or_insert_with(|| detach(value));
            } else if name.as_str() == "x-forwarded-for" {
                forwarded_for.get_or_insert_with(|| detach(value));
            } else if !prefetch && PREFETCH_HEADERS.contains(&name.as_str()) {
                prefetch = says_prefetch(value);
            }
        }
        Self { link, at: Utc::now(), head, prefetch, user_agent, peer, forwarded_for, click_id: None }
    }
}

/// A copy of a header value that does not keep hyper's read buffer alive. A clone is a view of that
/// buffer: held by the hit until the click thread drops it, it made hyper allocate a fresh buffer for
/// every request (and the redirect worker fault in new pages for them) — measured in
/// docs/PERFORMANCE.md (session 5). One small allocation instead.
fn detach(value: &HeaderValue) -> HeaderValue {
    HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone())
}

/// The hot path's handle on the pipeline.
#[derive(Clone)]
pub struct Capture {
    tx: Option<mpsc::Sender<Hit>>,
    dropped: Counter,
    /// Set when the click pipeline runs on its own thread: the hand-over below.
    handover: Option<Arc<Handover>>,
}

/// How a redirect worker and the click thread share a CPU (`LINKHIT_CLICK_THREAD`).
///
/// Two busy threads on one CPU take turns by the scheduler's tick (4 ms here) unless one of them steps
/// off: a redirect worker then waits milliseconds behind the click thread, or the click thread behind
/// the worker until the hits pile up and it must run for milliseconds to catch up. Both step off
/// instead. The click thread pauses after each stretch of about 32 hits (`click::pipeline`); a redirect
/// worker that sees `NUDGE` hits waiting wakes the click thread if it is idle and yields the CPU (at
/// every 8th hit waiting) — the scheduler then runs the click thread, which has used less than its
/// share, for one stretch (~100 µs). On a host where the click thread has a core of its own the backlog
/// rarely reaches `NUDGE` (only while the click thread is busy with a burst); then the yields are wasted
/// system calls, which is why a worker yields at every 8th hit waiting, not on every request. The click
/// thread's pauses apply there too: they cap it at about half its core until it is 8,192 hits behind.
/// Measured in docs/PERFORMANCE.md (session 6).
#[derive(Debug, Default)]
pub struct Handover {
    /// The click thread has been asked to drain (reset by it before it waits again).
    nudged: std::sync::atomic::AtomicBool,
    /// Wakes the click thread's intake before its next drain tick.
    pub wake: tokio::sync::Notify,
}

impl Handover {
    /// The click thread is about to wait for its next tick: the next backlog wakes it again.
    pub fn rearm(&self) {
        self.nudged.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Hits waiting above which a redirect worker hands the CPU to the click thread (or a quarter of a
/// smaller capture channel).
pub const NUDGE: usize = 64;
/// Behind, a redirect worker yields when the backlog is a multiple of this (about every 8th request).
const YIELD_EVERY: usize = 8;

impl Capture {
    pub fn new(tx: Option<mpsc::Sender<Hit>>) -> Self {
        Self { tx, dropped: metrics::counter!("linkhit_hits_dropped_total", "stage" => "capture"), handover: None }
    }

    /// A capture whose pipeline runs on its own thread and takes the CPU from the redirects in turns.
    pub fn with_handover(tx: mpsc::Sender<Hit>, handover: Arc<Handover>) -> Self {
        Self { handover: Some(handover), ..Self::new(Some(tx)) }
    }

    /// A capture that records nothing (`LINKHIT_CAPTURE=false`).
    pub fn disabled() -> Self {
        Self::new(None)
    }

    #[inline]
    pub fn record(&self, hit: Hit) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(hit).is_err() {
            self.dropped.increment(1);
            return;
        }
        if let Some(handover) = &self.handover {
            let backlog = tx.max_capacity() - tx.capacity();
            if backlog >= NUDGE.min(tx.max_capacity() / 4).max(1) {
                if !handover.nudged.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    handover.wake.notify_one();
                }
                // Every 8th hit waiting, not every request: where the click thread has a core of its own
                // and is merely busy, a yield is a wasted system call.
                if backlog % YIELD_EVERY == 0 {
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// `Purpose: prefetch`, `Sec-Purpose: prefetch…`, `X-Purpose: preview`, `X-Moz: prefetch`: the browser
/// is fetching speculatively, no human has tapped yet (checked in `Hit::from_request`'s header pass).
const PREFETCH_HEADERS: [&str; 4] = ["sec-purpose", "purpose", "x-purpose", "x-moz"];

fn says_prefetch(value: &HeaderValue) -> bool {
    let v = value.as_bytes();
    contains_ignore_case(v, b"prefetch") || contains_ignore_case(v, b"preview")
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
            (&[("purpose", "none"), ("purpose", "prefetch")][..], true),
        ];
        for (headers, want) in cases {
            let mut map = HeaderMap::new();
            for (k, v) in headers {
                map.append(*k, v.parse().unwrap());
            }
            let link = CachedLink::for_tests();
            assert_eq!(Hit::from_request(link, false, &map, None).prefetch, want, "{headers:?}");
        }
    }

    #[tokio::test]
    async fn a_backlog_wakes_the_click_thread_once_until_it_rearms() {
        use std::time::Duration;
        let (tx, _rx) = mpsc::channel(4 * NUDGE);
        let handover = Arc::new(Handover::default());
        let capture = Capture::with_handover(tx, Arc::clone(&handover));
        let hit = || Hit::from_request(CachedLink::for_tests(), false, &HeaderMap::new(), None);
        let woken = |h: Arc<Handover>| async move {
            tokio::time::timeout(Duration::from_millis(50), h.wake.notified()).await.is_ok()
        };
        for _ in 0..NUDGE - 1 {
            capture.record(hit());
        }
        assert!(!woken(Arc::clone(&handover)).await, "below NUDGE hits waiting: the click thread is left alone");
        capture.record(hit());
        assert!(woken(Arc::clone(&handover)).await, "NUDGE hits waiting wake it");
        capture.record(hit());
        assert!(!woken(Arc::clone(&handover)).await, "already asked: no second wake-up per hit");
        handover.rearm();
        capture.record(hit());
        assert!(woken(Arc::clone(&handover)).await, "rearmed before waiting again: the next backlog wakes it");
    }

    #[test]
    fn user_agent_and_forwarded_for_are_the_first_of_each() {
        let mut map = HeaderMap::new();
        map.append("user-agent", HeaderValue::from_static("WhatsApp/2.23"));
        map.append("x-forwarded-for", HeaderValue::from_static("198.51.100.7, 10.0.0.1"));
        map.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        map.append("accept", HeaderValue::from_static("*/*"));
        let hit = Hit::from_request(CachedLink::for_tests(), true, &map, None);
        assert_eq!(hit.user_agent.as_ref().map(HeaderValue::as_bytes), Some(&b"WhatsApp/2.23"[..]));
        assert_eq!(hit.forwarded_for.as_ref().map(HeaderValue::as_bytes), Some(&b"198.51.100.7, 10.0.0.1"[..]));
        assert!(!hit.prefetch && hit.head);
    }
}
