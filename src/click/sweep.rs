//! Sweeps: one client (address and user agent) hitting many different recipients' links of one
//! broadcast within a short window, soon after the SMS went out, is a scanner, not a crowd. Per-recipient
//! links make this visible. People behind one carrier-grade NAT address share an address but tap
//! minutes after the send, mostly from different devices: hits later than `after_send` never count
//! toward a sweep.
//!
//! When a hit completes a sweep, the earlier hits of the same sweep that were judged human are returned
//! so the pipeline can flip them (within the hold window: their counts corrected, their events
//! withdrawn). Bounded: at most `capacity` hits are remembered; the oldest clients are forgotten first.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Who hit: a broadcast of a workspace, a client address, a user agent (hashed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Client {
    /// Shared with the cached link (interned): building a client allocates nothing.
    pub workspace_id: std::sync::Arc<str>,
    pub broadcast_id: std::sync::Arc<str>,
    pub ip: std::net::IpAddr,
    pub user_agent: u64,
}

/// A human-judged hit that a later sweep may flip, and where it is (batch sequence, index in batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flippable<T> {
    pub seq: u64,
    pub index: usize,
    pub at_ms: i64,
    pub item: T,
}

/// 24 bytes: a flood from one client walks its window (up to `MAX_PER_CLIENT` of these) per hit, so the
/// rare human hit that may flip is boxed rather than making every entry as large as a click (the window
/// was ~240 KB and each hit a cache miss, `perf` in docs/PERFORMANCE.md session 7).
#[derive(Debug)]
struct Seen<T> {
    recipient: u64,
    at_ms: i64,
    flippable: Option<Box<Flippable<T>>>,
}

/// One client's hits in the window, with what a hit needs in O(1): how many hits each recipient has in
/// the window (so the distinct count is the map's size) and how many hits still wait to be flipped. A
/// flood from one client costs constant work per hit, not a scan of its window.
#[derive(Debug)]
struct Window<T> {
    hits: VecDeque<Seen<T>>,
    recipients: HashMap<u64, u32, foldhash::fast::RandomState>,
    flippable: usize,
}

/// Hits remembered per client: far more than a sweep needs (`SweepRule::recipients`), and a flood from
/// one client keeps a small window instead of filling the tracker (whose eviction then stalled the
/// worker for ~100 ms dropping hundreds of thousands of entries at once).
const MAX_PER_CLIENT: usize = 1024;

impl<T> Default for Window<T> {
    fn default() -> Self {
        Self { hits: VecDeque::new(), recipients: HashMap::default(), flippable: 0 }
    }
}

impl<T> Window<T> {
    fn push(&mut self, seen: Seen<T>) {
        *self.recipients.entry(seen.recipient).or_default() += 1;
        self.flippable += usize::from(seen.flippable.is_some());
        self.hits.push_back(seen);
    }

    /// Forgets the hits older than `since_ms`, and the oldest beyond `MAX_PER_CLIENT`; returns how many.
    fn expire(&mut self, since_ms: i64) -> usize {
        let mut gone = 0;
        while self.hits.front().is_some_and(|s| s.at_ms < since_ms) || self.hits.len() >= MAX_PER_CLIENT {
            let Some(old) = self.hits.pop_front() else { break };
            self.flippable -= usize::from(old.flippable.is_some());
            if let Some(n) = self.recipients.get_mut(&old.recipient) {
                *n -= 1;
                if *n == 0 {
                    self.recipients.remove(&old.recipient);
                }
            }
            gone += 1;
        }
        gone
    }

    /// The hits still waiting to be flipped, taken.
    fn take_flippable(&mut self) -> Vec<Flippable<T>> {
        if self.flippable == 0 {
            return Vec::new();
        }
        self.flippable = 0;
        self.hits.iter_mut().filter_map(|s| s.flippable.take().map(|f| *f)).collect()
    }
}

/// The sweep rule's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SweepRule {
    /// Distinct recipients that make a sweep (0: sweeps are not detected).
    pub recipients: usize,
    pub window: Duration,
    /// Only hits this soon after their link's send count.
    pub after_send: Duration,
}

impl Default for SweepRule {
    fn default() -> Self {
        Self { recipients: 3, window: Duration::from_secs(30), after_send: Duration::from_secs(120) }
    }
}

/// What observing a hit found.
#[derive(Debug, PartialEq, Eq)]
pub struct Observed<T> {
    /// Distinct recipients in the sweep, if this hit is part of one.
    pub sweep: Option<usize>,
    /// Earlier hits of the sweep judged human, to flip.
    pub flips: Vec<Flippable<T>>,
}

pub struct Sweeps<T> {
    rule: SweepRule,
    capacity: usize,
    clients: HashMap<Client, Window<T>, foldhash::fast::RandomState>,
    /// Clients in order of their first remembered hit, for eviction.
    order: VecDeque<Client>,
    len: usize,
}

impl<T> Sweeps<T> {
    pub fn new(rule: SweepRule, capacity: usize) -> Self {
        Self { rule, capacity: capacity.max(1), clients: HashMap::default(), order: VecDeque::new(), len: 0 }
    }

    /// Records a hit of `client` on `recipient`'s link `since_send_ms` after its send; `flippable` if it
    /// was judged human. Returns whether it makes (or continues) a sweep and which earlier hits flip.
    pub fn observe(
        &mut self,
        client: &Client,
        recipient: u64,
        at_ms: i64,
        since_send_ms: Option<i64>,
        flippable: Option<Flippable<T>>,
    ) -> Observed<T> {
        let none = Observed { sweep: None, flips: Vec::new() };
        if self.rule.recipients == 0 || since_send_ms.is_none_or(|ms| ms > self.rule.after_send.as_millis() as i64) {
            return none;
        }
        let window = self.rule.window.as_millis() as i64;
        let seen = match self.clients.entry(client.clone()) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(new) => {
                self.order.push_back(client.clone());
                new.insert(Window::default())
            }
        };
        self.len -= seen.expire(at_ms - window);
        seen.push(Seen { recipient, at_ms, flippable: flippable.map(Box::new) });
        self.len += 1;
        let distinct = seen.recipients.len();
        let observed = if distinct >= self.rule.recipients {
            Observed { sweep: Some(distinct), flips: seen.take_flippable() }
        } else {
            none
        };
        // Both bounds: hits, and clients (whose hits the window may have emptied).
        while self.len > self.capacity || self.clients.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else { break };
            if let Some(gone) = self.clients.remove(&oldest) {
                self.len -= gone.hits.len();
            }
        }
        observed
    }

    /// Hits remembered (bounded by the capacity).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(ip: &str) -> Client {
        Client { workspace_id: "ws".into(), broadcast_id: "b".into(), ip: ip.parse().unwrap(), user_agent: 7 }
    }

    fn flip(seq: u64, index: usize, at_ms: i64) -> Option<Flippable<&'static str>> {
        Some(Flippable { seq, index, at_ms, item: "hit" })
    }

    #[test]
    fn a_remembered_hit_is_small() {
        assert_eq!(std::mem::size_of::<Seen<crate::model::ClickRecord>>(), 24);
    }

    #[test]
    fn a_scanner_sweeping_recipients_soon_after_send_is_caught_and_its_early_hits_flip() {
        let mut s = Sweeps::new(SweepRule::default(), 100);
        let scanner = client("203.0.113.9");
        assert_eq!(s.observe(&scanner, 1, 1_000, Some(4_000), flip(0, 0, 1_000)).sweep, None);
        assert_eq!(s.observe(&scanner, 1, 1_500, Some(4_500), flip(0, 1, 1_500)).sweep, None, "one recipient twice");
        assert_eq!(s.observe(&scanner, 2, 2_000, Some(5_000), flip(0, 2, 2_000)).sweep, None);
        let third = s.observe(&scanner, 3, 2_500, Some(5_500), flip(0, 3, 2_500));
        assert_eq!(third.sweep, Some(3));
        assert_eq!(third.flips.iter().map(|f| f.index).collect::<Vec<_>>(), [0, 1, 2, 3]);
        let fourth = s.observe(&scanner, 4, 3_000, Some(6_000), flip(1, 0, 3_000));
        assert_eq!((fourth.sweep, fourth.flips.len()), (Some(4), 1), "earlier flips are not repeated");
    }

    #[test]
    fn people_behind_one_address_minutes_after_send_are_not_a_sweep() {
        let mut s = Sweeps::new(SweepRule::default(), 100);
        let nat = client("198.51.100.1");
        for r in 0..20 {
            let o = s.observe(&nat, r, 1_000 + r as i64 * 100, Some(300_000), flip(0, r as usize, 0));
            assert_eq!(o, Observed { sweep: None, flips: Vec::new() }, "recipient {r}");
        }
        // Spread wider than the window: never three at once.
        let slow = client("198.51.100.2");
        for r in 0..5 {
            let o = s.observe(&slow, r, r as i64 * 20_000, Some(10_000 + r as i64 * 20_000), None);
            assert_eq!(o.sweep, None, "recipient {r}");
        }
    }

    #[test]
    fn memory_is_bounded() {
        let mut s: Sweeps<()> = Sweeps::new(SweepRule::default(), 50);
        for i in 0..10_000u32 {
            let ip = std::net::IpAddr::from(i.to_be_bytes());
            let c = Client { workspace_id: "ws".into(), broadcast_id: "b".into(), ip, user_agent: 1 };
            s.observe(&c, u64::from(i), i64::from(i), Some(1_000), None);
        }
        assert!(s.len() <= 50, "{}", s.len());
        assert!(s.clients.len() <= 50 && s.order.len() <= 10_000);
    }

    #[test]
    fn one_client_hammering_one_link_is_one_recipient_and_the_window_slides() {
        let mut s: Sweeps<()> = Sweeps::new(SweepRule::default(), 1_000_000);
        let flood = client("203.0.113.7");
        // 100,000 hits on one recipient's link within the window: never a sweep, and each hit is O(1).
        for i in 0..100_000i64 {
            assert_eq!(s.observe(&flood, 1, i / 10, Some(1_000), None).sweep, None);
        }
        // Two more recipients make it a sweep of three...
        s.observe(&flood, 2, 10_000, Some(1_000), None);
        assert_eq!(s.observe(&flood, 3, 10_001, Some(1_000), None).sweep, Some(3));
        // ...and once the window has moved past the first recipient's hits, those are forgotten.
        assert_eq!(s.observe(&flood, 4, 40_000, Some(1_000), None).sweep, Some(3), "1 expired, 2, 3, 4 remain");
        assert_eq!(s.len(), 3);
    }
}
