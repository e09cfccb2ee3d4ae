//! Counting throughput: `record_batch` batches into the embedded store and into a real Redis
//! (a private `redis-server` started on a free port). Reports hits per second via criterion's
//! throughput.
//!
//! Also the journal's line for a batch (`journal_line`): written the way `Journal::encode` writes it
//! and the way earlier versions did (the records' own serialization), and read back, both forms.
//!
//! Run: `cargo bench --bench pipeline` (needs `redis-server` on PATH); `cargo bench --bench pipeline --
//! journal_line` for the journal alone.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use linkhit::click::journal::{Entry, EntryRef, Journal};
use linkhit::model::LinkKind;
use linkhit::model::{Batch, Class, ClickRecord};
use linkhit::store::SharedStore;
use linkhit::store::memory::MemoryStore;
use linkhit::store::redis::RedisStore;

const BATCH: usize = 1_000;

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> (Redis, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH");
    let url = format!("redis://127.0.0.1:{port}/");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (Redis(child), url)
}

/// A batch like real traffic: 1,000 hits over 500 links of 5 broadcasts, 70% human.
fn batch() -> Vec<ClickRecord> {
    (0..BATCH)
        .map(|i| ClickRecord {
            code: format!("code{:04}", i % 500).into(),
            workspace_id: "ws_bench".into(),
            broadcast_id: Some(format!("b{}", i % 5).into()),
            recipient: Some(format!("+1202555{:04}", i % 500).into()),
            kind: LinkKind::Redirect,
            at: Utc::now(),
            class: if i % 10 < 7 { Class::Human } else { Class::Bot },
            reason: "browser:Safari".into(),
            method: "GET".into(),
            user_agent: Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15".into()),
            ip: Some("203.0.113.0".into()),
            signals: None,
            click_id: None,
            folded: false,
            bot_slot: None,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (_redis, url) = start_redis();
    let _runtime = rt.enter(); // the Redis connection manager is bound to a runtime
    let stores: Vec<(&str, SharedStore)> = vec![
        ("embedded", Arc::new(MemoryStore::default())),
        ("redis", Arc::new(RedisStore::open(&url, "bench", Duration::from_secs(5)).unwrap())),
    ];
    let clicks = batch();
    let mut group = c.benchmark_group("record_batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    let seq = std::sync::atomic::AtomicU64::new(0);
    for (name, store) in &stores {
        group.bench_function(*name, |b| {
            // A fresh id per iteration (a repeated id is answered from its guard, counting nothing), and
            // released afterwards as the pipeline does.
            b.to_async(&rt).iter_batched(
                || Batch {
                    id: format!("bench-{}", seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
                    clicks: clicks.clone(),
                    corrections: Vec::new(),
                },
                |batch| async move {
                    let tallies = store.record_batch(&batch, 100).await.unwrap();
                    store.release_batch(&batch);
                    tallies
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// A batch as intake seals it on a preview flood: 250 bot hits on distinct links, sharing the texts
/// intake shares (workspace and broadcast from the cached link, reason, method and user agent from the
/// verdict, the client address from the last hit's).
fn flood_batch() -> Batch {
    let workspace: Arc<str> = "ws_bench".into();
    let broadcast: Arc<str> = "b1".into();
    let reason: Arc<str> = "preview:facebook".into();
    let method: Arc<str> = "GET".into();
    let ua: Arc<str> = "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)".into();
    let ip: Arc<str> = "203.0.113.0".into();
    let clicks = (0..250)
        .map(|i| ClickRecord {
            code: format!("Xc{i:06}").into(),
            workspace_id: Arc::clone(&workspace),
            broadcast_id: Some(Arc::clone(&broadcast)),
            recipient: None,
            kind: LinkKind::Redirect,
            at: Utc::now(),
            class: Class::Bot,
            reason: Arc::clone(&reason),
            method: Arc::clone(&method),
            user_agent: Some(Arc::clone(&ua)),
            ip: Some(Arc::clone(&ip)),
            signals: None,
            click_id: None,
            folded: false,
            bot_slot: None,
        })
        .collect();
    Batch { id: "0123456789abcdef0123456789abcdef-42".into(), clicks, corrections: Vec::new() }
}

fn journal_line(c: &mut Criterion) {
    let batch = flood_batch();
    let mut line = Vec::new();
    Journal::encode(&EntryRef { batch: &batch, attempted_at: None }, &mut line).unwrap();
    let records_line = serde_json::to_vec(&Entry { batch: batch.clone(), attempted_at: None }).unwrap();
    let mut group = c.benchmark_group("journal_line");
    group.throughput(Throughput::Elements(batch.clicks.len() as u64));
    let mut buf = Vec::with_capacity(line.len() * 2);
    group.bench_function("encode", |b| {
        b.iter(|| {
            buf.clear();
            Journal::encode(&EntryRef { batch: &batch, attempted_at: None }, &mut buf).unwrap();
            buf.len()
        })
    });
    group.bench_function("encode_records", |b| {
        b.iter(|| {
            buf.clear();
            serde_json::to_writer(&mut buf, &EntryRef { batch: &batch, attempted_at: None }).unwrap();
            buf.len()
        })
    });
    group.bench_function("read", |b| b.iter(|| serde_json::from_slice::<Entry>(&line).unwrap()));
    group.bench_function("read_records", |b| b.iter(|| serde_json::from_slice::<Entry>(&records_line).unwrap()));
    group.finish();
    println!("journal_line bytes per batch: encode {}, records {}", line.len(), records_line.len());
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = bench, journal_line
}
criterion_main!(benches);
