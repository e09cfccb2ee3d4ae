//! The Redis outbox's promises, against a real Redis: leases survive their worker, retries come back
//! when due, nothing is acknowledged early.

mod common;

use std::time::Duration;

use chrono::Utc;
use linkhit::model::{EventKind, Job};
use linkhit::webhook::queue::{Queue, RedisQueue};

fn job(id: &str) -> Job {
    Job {
        event_id: id.into(),
        workspace_id: "ws".into(),
        kind: EventKind::Click,
        payload: format!("{{\"id\":\"{id}\"}}"),
        attempt: 0,
        created_at: Utc::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_workers_leases_are_reclaimed() {
    let redis = common::RedisServer::start();
    let a = RedisQueue::open(&redis.url(), "t", "worker-a", Duration::from_millis(200)).unwrap();
    let b = RedisQueue::open(&redis.url(), "t", "worker-b", Duration::from_millis(200)).unwrap();
    a.ensure_group().await.unwrap();
    a.push(&[job("e1"), job("e2")]).await.unwrap();
    let leased = a.pull(10).await.unwrap();
    assert_eq!(leased.len(), 2);
    // Worker A "crashes": never acknowledges. Nothing is idle long enough to reclaim yet.
    assert!(b.reclaim(10).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reclaimed = b.reclaim(10).await.unwrap();
    let mut ids: Vec<_> = reclaimed.iter().map(|l| l.job.event_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["e1", "e2"]);
    assert!(b.pull(10).await.unwrap().is_empty(), "leased entries are never handed out as new");
    for lease in &reclaimed {
        b.ack(lease).await.unwrap();
    }
    assert_eq!(b.stats().await.unwrap().ready, 0, "acknowledged entries are deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_wait_in_the_sorted_set_until_due() {
    let redis = common::RedisServer::start();
    let q = RedisQueue::open(&redis.url(), "t", "w", Duration::from_secs(60)).unwrap();
    q.ensure_group().await.unwrap();
    q.push(&[job("r1")]).await.unwrap();
    let lease = q.pull(1).await.unwrap().remove(0);
    let next = Job { attempt: 1, ..lease.job.clone() };
    q.retry(&lease, &next, Utc::now() + chrono::Duration::milliseconds(300)).await.unwrap();
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.ready, stats.scheduled), (0, 1));
    assert_eq!(q.promote().await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(q.promote().await.unwrap(), 1);
    let again = q.pull(1).await.unwrap();
    assert_eq!((again[0].job.event_id.as_str(), again[0].job.attempt), ("r1", 1));
    q.dead_letter(&again[0]).await.unwrap();
    let mut conn = redis.conn();
    let dead: Vec<String> = redis::cmd("LRANGE").arg("t:wh:{q}:dead").arg(0).arg(-1).query(&mut conn).unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].contains("\"r1\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_recreates_its_group() {
    let redis = common::RedisServer::start();
    let q = RedisQueue::open(&redis.url(), "t", "w", Duration::from_secs(60)).unwrap();
    // No ensure_group: the first pull finds no group, creates it, and later pulls work.
    assert!(q.pull(1).await.unwrap().is_empty());
    q.push(&[job("g1")]).await.unwrap();
    assert_eq!(q.pull(1).await.unwrap()[0].job.event_id, "g1");
}
