//! The redirect cache: what lets a tap be answered from memory.
//!
//! Two bounded maps: links that exist (`links`, the big one, default one million entries) and codes
//! known not to exist (`missing`, small, entries expire after the negative TTL). Keeping them apart
//! means a flood of random codes can only churn the small map, never evict real links.
//!
//! Eviction is first-in-first-out by insertion: an SMS campaign's links are clicked mostly in the hours
//! after sending, so the oldest inserted are the least likely to be needed, and FIFO costs O(1) per
//! insert with no scan. The order queue is touched only when a *new* key is inserted, i.e. on a cache
//! miss that already waited for the store; a cache hit takes one shard read lock of the `DashMap` and
//! clones an `Arc`, nothing else.
//!
//! Freshness: a cached link is served until it is invalidated (pub/sub from the instance that disabled
//! it) and revalidated in the background when older than the TTL or loaded before the last
//! `Invalidation::All` (an epoch bump after the invalidation feed reconnected). Serving a stale entry
//! while the background refresh runs is deliberate: the recipient never waits for the store.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;

use super::bounded::{Bounded, Keyed};
use crate::model::{Link, LinkKind, LinkState};

/// What the redirector needs of a link, prepared once when the link enters the cache so that a hit
/// builds its response without parsing or allocating.
#[derive(Debug)]
pub struct CachedLink {
    /// What the click pipeline needs to count a hit without reading the store again.
    /// Shared with the cache's key and eviction queue: one allocation per cached code.
    pub code: Arc<str>,
    /// Interned: the links of a broadcast share one copy (see [`Interner`]).
    pub workspace_id: Arc<str>,
    pub broadcast_id: Option<Arc<str>>,
    pub recipient: Option<Arc<str>>,
    /// Who the link's SMS went to, as the click pipeline's sweep tracker tells recipients apart: a
    /// process-local hash of the recipient (of the code for a link without one), computed here so that
    /// a bot hit never touches the recipient's own allocation (docs/PERFORMANCE.md, session 10). 32
    /// bits: the tracker compares the few recipients of one client, and the entry has no room to spare.
    pub recipient_key: u32,
    /// `Location` header value; `None` for an opt-out link without a target. Interned: the links of a
    /// broadcast share one value (and a thin `Arc` keeps the entry small).
    pub location: Option<Arc<HeaderValue>>,
    pub kind: LinkKind,
    /// When the link expires, its SMS was sent, and (if reported) delivered, each as a [`Compact`]
    /// time (0: never / unknown). Three `u32`s where `Option<i64>`s would take 48 bytes: the entry stays
    /// in the 128-byte allocation class (docs/PERFORMANCE.md).
    expires: u32,
    sent: u32,
    delivered: u32,
    /// [`Link::bot_slot`], 0 for none.
    bot_slot: u32,
    pub disabled: bool,
    /// The link tracks conversions: its redirects add a click id to the target.
    pub track: bool,
    /// Tenths of a second since the cache's `born` instant after which the entry is stale (a `u32`
    /// lasts 13 years of uptime).
    fresh_until_ds: u32,
    epoch: u32,
    refreshing: AtomicBool,
    /// The link's last bot hit listed in its recent clicks, for the click pipeline alone: its time
    /// ([`Compact`] seconds, high half) and its bot's fingerprint (user agent and address, low half).
    bot_listed: AtomicU64,
}

/// [`CachedLink::recipient_key`] of a recipient (or code).
fn recipient_key(text: &str) -> u32 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x6c69_6e6b_6869_7402).hash_one(text) as u32
}

/// A compact wall-clock time: seconds since 2020-01-01T00:00:00Z in a `u32` (until 2156); 0 is "none".
pub struct Compact;

impl Compact {
    const EPOCH: i64 = 1_577_836_800;

    pub fn from_unix(secs: i64) -> u32 {
        u32::try_from((secs - Self::EPOCH).max(1)).unwrap_or(u32::MAX)
    }

    /// From a time with milliseconds, rounded to the nearest second (the timing rules then err by at
    /// most half a second either way).
    pub fn from_unix_ms(ms: i64) -> u32 {
        Self::from_unix((ms + 500).div_euclid(1000))
    }

    pub fn to_unix(c: u32) -> Option<i64> {
        (c != 0).then(|| Self::EPOCH + i64::from(c))
    }
}

impl CachedLink {
    /// Whether the link redirects at `now_unix` (not disabled, not expired).
    #[inline]
    pub fn is_live(&self, now_unix: impl FnOnce() -> i64) -> bool {
        !self.disabled && Compact::to_unix(self.expires).is_none_or(|at| now_unix() < at)
    }

    /// When the link's SMS was sent (unix seconds): `sent_at`, else the creation time.
    pub fn sent_unix(&self) -> Option<i64> {
        Compact::to_unix(self.sent)
    }

    /// The link's place in the store's dense bot-hit counters ([`Link::bot_slot`]).
    pub fn bot_slot(&self) -> Option<u32> {
        (self.bot_slot != 0).then_some(self.bot_slot)
    }

    /// When the platform reported the SMS delivered (unix seconds), if it did before the entry was
    /// cached.
    pub fn delivered_unix(&self) -> Option<i64> {
        Compact::to_unix(self.delivered)
    }

    /// Whether a bot hit at `now_unix` (seconds) by the bot `fingerprint` repeats the link's last
    /// listed bot hit within `window` seconds: if so it is counted but not listed again; if not it
    /// becomes the listed one. Only the click pipeline's one intake calls this. A refresh of a cached
    /// link carries the state over (`LinkCache::insert_link`); an entry evicted or invalidated starts
    /// over, which lists a repeat early, never hides a new bot.
    pub fn bot_repeats(&self, fingerprint: u32, now_unix: i64, window: u32) -> bool {
        let now = Compact::from_unix(now_unix);
        let last = self.bot_listed.load(Ordering::Relaxed);
        let (at, seen) = ((last >> 32) as u32, last as u32);
        if last != 0 && seen == fingerprint && now.wrapping_sub(at) < window {
            return true;
        }
        self.bot_listed.store(u64::from(now) << 32 | u64::from(fingerprint), Ordering::Relaxed);
        false
    }

    /// Claims the right to run the one background refresh of this entry.
    pub fn begin_refresh(&self) -> bool {
        !self.refreshing.swap(true, Ordering::AcqRel)
    }
}

/// The outcome of a cache lookup.
#[derive(Debug)]
pub enum Lookup {
    /// Serve it.
    Fresh(std::sync::Arc<CachedLink>),
    /// Serve it, and revalidate in the background.
    Stale(std::sync::Arc<CachedLink>),
    /// Known not to exist (negative entry still valid).
    Missing,
    /// Not in the cache: ask the store.
    Unknown,
}

/// A cached link as its own map key, hashed and compared by code: one pointer per bucket instead of a
/// code pointer plus a value pointer (33 MB less over a million links, docs/PERFORMANCE.md).
#[derive(Clone)]
struct LinkKey(Arc<CachedLink>);

impl Borrow<str> for LinkKey {
    fn borrow(&self) -> &str {
        &self.0.code
    }
}

/// Must hash exactly as the borrowed `str` does, or lookups by `&str` would miss.
impl Hash for LinkKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let code: &str = &self.0.code;
        code.hash(state);
    }
}

impl PartialEq for LinkKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.code == other.0.code
    }
}

impl Eq for LinkKey {}

impl Keyed for LinkKey {
    fn code(&self) -> Arc<str> {
        Arc::clone(&self.0.code)
    }
}

/// The in-process cache of links by code. Shared by every connection; all methods are synchronous and
/// hold no lock across an `.await`.
pub struct LinkCache {
    links: Bounded<LinkKey, ()>,
    missing: Bounded<Arc<str>, Instant>,
    ttl: Duration,
    negative_ttl: Duration,
    /// Bumped by `Invalidation::All`: entries loaded before are stale.
    epoch: AtomicU32,
    /// Bumped by every invalidation: a store read that started before a bump must not be cached.
    generation: AtomicU64,
    /// Taken on cache fills only (misses), never on a hit.
    interner: Mutex<Interner>,
    /// The origin of the entries' `fresh_until_ds`.
    born: Instant,
}

impl LinkCache {
    pub fn new(capacity: usize, ttl: Duration, negative_capacity: usize, negative_ttl: Duration) -> Self {
        Self {
            links: Bounded::new(capacity),
            missing: Bounded::new(negative_capacity),
            ttl,
            negative_ttl,
            epoch: AtomicU32::new(0),
            generation: AtomicU64::new(0),
            interner: Mutex::new(Interner::default()),
            born: Instant::now(),
        }
    }

    /// The hot-path lookup.
    #[inline]
    pub fn lookup(&self, code: &str) -> Lookup {
        if let Some(entry) = self.links.map.get(code) {
            let link = Arc::clone(&entry.key().0);
            drop(entry);
            let stale = link.epoch < self.epoch.load(Ordering::Relaxed) || self.now_ds() >= link.fresh_until_ds;
            return if stale { Lookup::Stale(link) } else { Lookup::Fresh(link) };
        }
        if self.negative_ttl.is_zero() {
            return Lookup::Unknown;
        }
        match self.missing.map.get(code).map(|until| *until) {
            Some(until) if Instant::now() < until => Lookup::Missing,
            _ => Lookup::Unknown,
        }
    }

    /// The generation to pass to [`LinkCache::insert_link`] after reading the store.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Caches a link read from the store, unless an invalidation arrived since `generation` was taken
    /// (the read may predate the change). Returns the prepared entry either way.
    pub fn insert_link(&self, link: &Link, generation: u64) -> Arc<CachedLink> {
        let ttl_ds = u32::try_from(self.ttl.as_millis() / 100).unwrap_or(u32::MAX);
        let fresh_until_ds = self.now_ds().saturating_add(ttl_ds);
        let cached = Arc::new(self.prepare(link, fresh_until_ds, self.epoch.load(Ordering::Acquire)));
        // A refresh of the same link keeps its listed bot: a repeat stays folded across revalidations.
        if let Some(old) = self.links.map.get(link.code.as_str()) {
            cached.bot_listed.store(old.key().0.bot_listed.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        if self.generation.load(Ordering::Acquire) == generation {
            self.missing.remove(&link.code);
            self.links.insert(LinkKey(cached.clone()), ());
        }
        cached
    }

    /// Remembers that `code` does not exist, for the negative TTL.
    pub fn insert_missing(&self, code: &str, generation: u64) {
        if !self.negative_ttl.is_zero() && self.generation.load(Ordering::Acquire) == generation {
            self.missing.insert(Arc::from(code), Instant::now() + self.negative_ttl);
        }
    }

    /// A link was created: forget any "not found" remembered for its code.
    pub fn created(&self, code: &str) {
        self.missing.remove(code);
    }

    /// A link changed: drop it, so the next request reads the store.
    pub fn invalidate(&self, code: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.links.remove(code);
        self.missing.remove(code);
    }

    /// Changes may have been missed: treat every entry as stale (served, then revalidated).
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.missing.clear();
    }

    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn missing_len(&self) -> usize {
        self.missing.len()
    }
}

/// Shares the strings that repeat across links — workspace, broadcast, target URL — so that a cache
/// of a million links of one broadcast holds each once (1M cached links: 460 → 348 MiB RSS,
/// docs/PERFORMANCE.md). Bounded: past `INTERNED` entries it starts afresh (entries already cached keep their
/// copies, new ones share anew).
#[derive(Default)]
struct Interner {
    strings: HashSet<Arc<str>, foldhash::fast::RandomState>,
    locations: HashMap<Box<str>, Arc<HeaderValue>, foldhash::fast::RandomState>,
}

const INTERNED: usize = 16_384;

impl Interner {
    fn string(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return Arc::clone(shared);
        }
        if self.strings.len() >= INTERNED {
            self.strings.clear();
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(Arc::clone(&shared));
        shared
    }

    fn location(&mut self, url: &str) -> Option<Arc<HeaderValue>> {
        if let Some(value) = self.locations.get(url) {
            return Some(value.clone());
        }
        // Target URLs are validated ASCII at creation; a value that still fails here (a record written
        // by hand into Redis) is treated as having no target rather than crashing the redirect.
        let value = Arc::new(HeaderValue::from_str(url).ok()?);
        if self.locations.len() >= INTERNED {
            self.locations.clear();
        }
        self.locations.insert(Box::from(url), value.clone());
        Some(value)
    }
}

impl LinkCache {
    /// Milliseconds since the cache was created.
    #[inline]
    fn now_ds(&self) -> u32 {
        u32::try_from(self.born.elapsed().as_millis() / 100).unwrap_or(u32::MAX)
    }

    fn prepare(&self, link: &Link, fresh_until_ds: u32, epoch: u32) -> CachedLink {
        let mut interner = self.interner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        CachedLink {
            code: Arc::from(link.code.as_str()),
            workspace_id: interner.string(&link.workspace_id),
            broadcast_id: link.broadcast_id.as_deref().map(|b| interner.string(b)),
            recipient: link.recipient.as_deref().map(Arc::from),
            recipient_key: recipient_key(link.recipient.as_deref().unwrap_or(&link.code)),
            location: link.target_url.as_deref().and_then(|u| interner.location(u)),
            kind: link.kind,
            expires: link.expires_at.map_or(0, |at| Compact::from_unix(at.timestamp())),
            sent: Compact::from_unix_ms(link.sent().timestamp_millis()),
            delivered: link.delivered_at.map_or(0, |at| Compact::from_unix_ms(at.timestamp_millis())),
            bot_slot: link.bot_slot.unwrap_or(0),
            disabled: link.state_at(chrono::Utc::now()) == LinkState::Disabled,
            track: link.track_conversions,
            fresh_until_ds,
            epoch,
            refreshing: AtomicBool::new(false),
            bot_listed: AtomicU64::new(0),
        }
    }
}

#[cfg(test)]
impl CachedLink {
    /// A cached link (code `abc`, workspace `ws`) for other modules' unit tests.
    pub fn for_tests() -> Arc<CachedLink> {
        let cache = LinkCache::new(16, Duration::from_secs(60), 16, Duration::from_secs(1));
        cache.insert_link(&tests::link("abc"), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn link(code: &str) -> Link {
        Link {
            code: code.into(),
            workspace_id: "ws".into(),
            kind: LinkKind::Redirect,
            target_url: Some(format!("https://example.com/{code}")),
            broadcast_id: None,
            recipient: None,
            message_id: None,
            sender: None,
            message_ref: None,
            created_at: chrono::Utc::now(),
            sent_at: None,
            expires_at: None,
            disabled_at: None,
            delivered_at: None,
            delivery_status: None,
            ..Default::default()
        }
    }

    #[test]
    fn a_cached_link_fits_the_128_byte_allocation_class() {
        // With the `Arc` header (16 bytes) an entry must stay within 128 bytes: the next allocator
        // size class is 160, and a million links would cost 32 MB more. (It was 112 until the bot
        // fold state's 8 bytes: docs/PERFORMANCE.md, session 8.)
        assert!(std::mem::size_of::<CachedLink>() <= 112, "{}", std::mem::size_of::<CachedLink>());
    }

    #[test]
    fn a_bot_repeat_within_the_window_folds_and_anything_else_is_listed() {
        let l = CachedLink::for_tests();
        const T: i64 = 1_764_000_000;
        assert!(!l.bot_repeats(7, T, 60), "the first bot hit is listed");
        assert!(l.bot_repeats(7, T + 59, 60), "the same bot 59 s later folds");
        assert!(!l.bot_repeats(8, T + 59, 60), "another bot is listed");
        assert!(!l.bot_repeats(7, T + 60, 60), "the first bot again is listed: the last listed was the other");
        assert!(l.bot_repeats(7, T + 119, 60));
        assert!(!l.bot_repeats(7, T + 120, 60), "60 s after its listed hit it is listed again");
        assert!(!l.bot_repeats(7, T, 60), "a clock stepping back lists");
        assert!(!l.bot_repeats(7, T, 0) && !l.bot_repeats(7, T, 0), "window 0 lists every hit");
    }

    #[test]
    fn a_refresh_keeps_the_listed_bot() {
        let c = cache(10);
        let l = link("aaaaaaaa");
        let first = c.insert_link(&l, c.generation());
        assert!(!first.bot_repeats(7, 1_764_000_000, 60));
        let refreshed = c.insert_link(&l, c.generation());
        assert!(!Arc::ptr_eq(&first, &refreshed), "a refresh makes a new entry");
        assert!(refreshed.bot_repeats(7, 1_764_000_001, 60), "the repeat still folds after the refresh");
    }

    #[test]
    fn refilling_a_cached_code_replaces_the_entry() {
        let c = cache(10);
        let mut l = link("aaaaaaaa");
        c.insert_link(&l, c.generation());
        l.target_url = Some("https://example.com/new".into());
        c.insert_link(&l, c.generation());
        assert_eq!(c.len(), 1);
        let Lookup::Fresh(got) = c.lookup("aaaaaaaa") else { panic!("expected a hit") };
        assert_eq!(got.location.as_deref().unwrap().to_str().unwrap(), "https://example.com/new");
    }

    #[test]
    fn links_of_a_broadcast_share_their_strings() {
        let c = cache(10);
        let mut a = link("aaaaaaaa");
        let mut b = link("bbbbbbbb");
        for l in [&mut a, &mut b] {
            l.broadcast_id = Some("fall".into());
            l.target_url = Some("https://example.com/shared".into());
        }
        let (a, b) = (c.insert_link(&a, c.generation()), c.insert_link(&b, c.generation()));
        assert!(Arc::ptr_eq(&a.workspace_id, &b.workspace_id));
        assert!(Arc::ptr_eq(a.broadcast_id.as_ref().unwrap(), b.broadcast_id.as_ref().unwrap()));
        assert!(Arc::ptr_eq(a.location.as_ref().unwrap(), b.location.as_ref().unwrap()));
        assert_eq!(&*a.code, "aaaaaaaa");
    }

    fn cache(capacity: usize) -> LinkCache {
        LinkCache::new(capacity, Duration::from_secs(60), 4, Duration::from_secs(60))
    }

    #[test]
    fn hit_miss_and_negative() {
        let c = cache(10);
        assert!(matches!(c.lookup("aaaaaaaa"), Lookup::Unknown));
        let g = c.generation();
        c.insert_link(&link("aaaaaaaa"), g);
        match c.lookup("aaaaaaaa") {
            Lookup::Fresh(l) => {
                assert_eq!(l.location.as_deref().unwrap().to_str().unwrap(), "https://example.com/aaaaaaaa")
            }
            other => panic!("{other:?}"),
        }
        c.insert_missing("bbbbbbbb", g);
        assert!(matches!(c.lookup("bbbbbbbb"), Lookup::Missing));
        c.created("bbbbbbbb");
        assert!(matches!(c.lookup("bbbbbbbb"), Lookup::Unknown));
    }

    #[test]
    fn bounded_fifo_eviction() {
        let c = cache(3);
        for code in ["c1", "c2", "c3", "c4", "c5"] {
            c.insert_link(&link(code), c.generation());
        }
        assert_eq!(c.len(), 3);
        assert!(matches!(c.lookup("c1"), Lookup::Unknown));
        assert!(matches!(c.lookup("c2"), Lookup::Unknown));
        assert!(matches!(c.lookup("c5"), Lookup::Fresh(_)));
        // Re-inserting an existing key does not grow the cache.
        c.insert_link(&link("c5"), c.generation());
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn negative_entries_cannot_evict_links() {
        let c = cache(3);
        c.insert_link(&link("real"), c.generation());
        for i in 0..1000 {
            c.insert_missing(&format!("rand{i}"), c.generation());
        }
        assert!(c.missing_len() <= 4);
        assert!(matches!(c.lookup("real"), Lookup::Fresh(_)));
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_cached() {
        let c = cache(10);
        let before = c.generation();
        c.invalidate("aaaaaaaa");
        c.insert_link(&link("aaaaaaaa"), before);
        assert!(matches!(c.lookup("aaaaaaaa"), Lookup::Unknown));
    }

    #[test]
    fn invalidate_all_makes_entries_stale_but_servable() {
        let c = cache(10);
        c.insert_link(&link("aaaaaaaa"), c.generation());
        c.invalidate_all();
        let Lookup::Stale(l) = c.lookup("aaaaaaaa") else { panic!("expected stale") };
        assert!(l.begin_refresh());
        assert!(!l.begin_refresh(), "only one refresh at a time");
    }

    #[test]
    fn ttl_expiry_makes_entries_stale() {
        let c = LinkCache::new(10, Duration::ZERO, 4, Duration::ZERO);
        c.insert_link(&link("aaaaaaaa"), c.generation());
        assert!(matches!(c.lookup("aaaaaaaa"), Lookup::Stale(_)));
        c.insert_missing("bbbbbbbb", c.generation());
        assert!(matches!(c.lookup("bbbbbbbb"), Lookup::Unknown), "zero negative TTL disables negative caching");
    }

    #[test]
    fn expiry_and_disable_are_reflected() {
        let c = cache(10);
        let mut l = link("aaaaaaaa");
        l.expires_at = Some(chrono::Utc::now() + chrono::Duration::seconds(100));
        let cached = c.insert_link(&l, c.generation());
        let now = chrono::Utc::now().timestamp();
        assert!(cached.is_live(|| now));
        assert!(!cached.is_live(|| now + 200));
        l.disabled_at = Some(chrono::Utc::now());
        assert!(!c.insert_link(&l, c.generation()).is_live(|| now));
    }
}
