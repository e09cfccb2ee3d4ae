//! The redirect hot path in isolation: code validation, cache lookup (hit, negative hit), the full
//! `resolve` + response build (cache hit, and cache miss read from the embedded store), and code
//! generation.
//!
//! Run: `cargo bench --bench resolve`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use hyper::Method;
use linkhit::code::CodePolicy;
use linkhit::model::{Link, LinkKind};
use linkhit::redirect::cache::LinkCache;
use linkhit::redirect::resolve::Resolver;
use linkhit::redirect::respond;
use linkhit::store::memory::MemoryStore;

const LINKS: usize = 1_000_000;

fn link(code: String) -> Link {
    Link {
        target_url: Some(format!("https://shop.example.com/fall-campaign?utm_source=sms&c={code}")),
        code,
        workspace_id: "ws_bench".into(),
        kind: LinkKind::Redirect,
        broadcast_id: None,
        recipient: None,
        message_id: None,
        sender: None,
        message_ref: None,
        created_at: Utc::now(),
        sent_at: None,
        expires_at: None,
        disabled_at: None,
        delivered_at: None,
        delivery_status: None,
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let policy = CodePolicy::checked(8, 8);
    policy.set_key(*b"0123456789abcdef");
    let cache = LinkCache::new(LINKS, Duration::from_secs(3600), 100_000, Duration::from_secs(3600));
    let codes: Vec<String> = (0..LINKS).map(|_| policy.generate()).collect();
    for code in &codes {
        cache.insert_link(&link(code.clone()), cache.generation());
    }
    let missing: Vec<String> = (0..10_000).map(|_| policy.generate()).collect();
    for code in &missing {
        cache.insert_missing(code, cache.generation());
    }
    let resolver = Arc::new(Resolver::new(
        cache,
        Arc::new(MemoryStore::default()),
        policy.clone(),
        linkhit::click_id::ClickIds::new(Duration::from_secs(60)),
    ));
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();

    let mut i = 0usize;
    c.bench_function("code/is_valid", |b| {
        b.iter(|| {
            i = (i + 1) % LINKS;
            policy.is_valid(black_box(&codes[i]))
        })
    });
    c.bench_function("cache/lookup_hit_1M", |b| {
        b.iter(|| {
            i = (i + 7919) % LINKS;
            black_box(resolver.cache.lookup(black_box(&codes[i])))
        })
    });
    c.bench_function("cache/lookup_negative_hit", |b| {
        b.iter(|| {
            i = (i + 1) % missing.len();
            black_box(resolver.cache.lookup(black_box(&missing[i])))
        })
    });
    c.bench_function("resolve+respond/hit_1M", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 7919) % LINKS;
            let code = &codes[i];
            let resolver = &resolver;
            async move {
                let resolved = resolver.resolve(code).await;
                let outcome = respond::outcome(&resolved, || 0);
                let link = match &resolved {
                    linkhit::redirect::resolve::Resolved::Link(l) => Some(l.as_ref()),
                    _ => None,
                };
                black_box(respond::response(outcome, link, &Method::GET, None))
            }
        })
    });
    // A 1-entry cache over a store of 100,000 links: every resolve misses, reads the (embedded) store
    // and fills the cache. The Redis miss path adds a round trip: see `bench.py`'s cache-miss scenario.
    let stored: Vec<Link> = codes.iter().take(100_000).map(|code| link(code.clone())).collect();
    let store = Arc::new(MemoryStore::default());
    rt.block_on(linkhit::store::Store::insert_links(store.as_ref(), &stored)).unwrap();
    let cold = Arc::new(Resolver::new(
        LinkCache::new(1, Duration::from_secs(3600), 1, Duration::ZERO),
        store,
        policy.clone(),
        linkhit::click_id::ClickIds::new(Duration::from_secs(60)),
    ));
    c.bench_function("resolve/miss_embedded_store", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 7919) % stored.len();
            let code = &stored[i].code;
            let cold = &cold;
            async move { black_box(cold.resolve(code).await) }
        })
    });
    c.bench_function("code/generate", |b| b.iter(|| black_box(policy.generate())));
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
