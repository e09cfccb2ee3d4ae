//! The outbox's promises through the `Queue` trait, on both implementations (a real Redis for
//! `RedisQueue`): partitions, leases that run out and come back, retries that wait until due, holds
//! and withdrawals, duplicates, the per-link budget, the backlog cap, capped dead letters and their
//! replay with the original event ids, and an index that never loses a partition.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use linkhit::model::{DeadReason, EventKind, Job};
use linkhit::webhook::queue::{Limits, MemoryQueue, Partition, Pushed, Queue, RedisQueue};

fn job(id: &str, ws: &str, code: &str) -> Job {
    Job {
        event_id: id.into(),
        workspace_id: ws.into(),
        kind: EventKind::Click,
        payload: format!("{{\"id\":\"{id}\"}}"),
        attempt: 0,
        created_at: Utc::now(),
        sub_account_id: None,
        code: Some(code.into()),
        url: "https://hooks.example/click".into(),
        due_at: None,
    }
}

/// Both queues with the same limits; the Redis server lives as long as the queue is used.
fn queues(limits: Limits) -> Vec<(&'static str, Arc<dyn Queue>, Option<common::RedisServer>)> {
    let redis = common::RedisServer::start();
    let q = RedisQueue::open(&redis.url(), "t", limits).unwrap();
    vec![("memory", Arc::new(MemoryQueue::new(limits)), None), ("redis", Arc::new(q), Some(redis))]
}

async fn due_of(q: &dyn Queue, ws: &str) -> Option<Partition> {
    q.due(100).await.unwrap().into_iter().find(|p| p.workspace_id == ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_run_out_and_retries_wait_until_due() {
    for (name, q, _redis) in queues(Limits::default()) {
        q.push(&[job("e1", "w", "a"), job("e2", "w", "b")]).await.unwrap();
        let p = due_of(q.as_ref(), "w").await.expect(name);
        assert_eq!((p.name.as_str(), p.kind()), ("click/*", Some(EventKind::Click)), "{name}");
        let leased = q.take(&p, 10, Duration::from_millis(300)).await.unwrap();
        assert_eq!(leased.len(), 2, "{name}");
        assert!(q.take(&p, 10, Duration::from_millis(300)).await.unwrap().is_empty(), "{name}: leased = not due");
        // The worker "crashes": its leases run out and the jobs are due again.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let again = q.take(&p, 10, Duration::from_secs(60)).await.unwrap();
        let mut ids: Vec<_> = again.iter().map(|l| l.job.event_id.clone()).collect();
        ids.sort();
        assert_eq!(ids, ["e1", "e2"], "{name}");
        q.ack(&again[0]).await.unwrap();
        let next = Job { attempt: 1, ..again[1].job.clone() };
        q.retry(&again[1], &next, Utc::now() + chrono::Duration::milliseconds(300)).await.unwrap();
        assert!(q.take(&p, 10, Duration::from_secs(60)).await.unwrap().is_empty(), "{name}: not due yet");
        tokio::time::sleep(Duration::from_millis(350)).await;
        let retried = q.take(&p, 10, Duration::from_secs(60)).await.unwrap();
        assert_eq!((retried.len(), retried[0].job.attempt), (1, 1), "{name}");
        q.ack(&retried[0]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(q.take(&p, 10, Duration::from_secs(60)).await.unwrap().is_empty(), "{name}: acknowledged = gone");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_backlog_duplicates_holds_and_dead_letters() {
    let limits = Limits { link_burst: 3, link_per_minute: 1, max_backlog: 5, dead_letters: 4 };
    for (name, q, _redis) in queues(limits) {
        // One flooded link: 3 events, then the budget dead-letters the rest.
        let flood: Vec<Job> = (0..6).map(|i| job(&format!("f{i}"), "w", "flooded")).collect();
        let pushed = q.push(&flood).await.unwrap();
        assert_eq!(&pushed[..3], &[Pushed::Queued; 3], "{name}");
        assert_eq!(&pushed[3..], &[Pushed::DeadLettered(DeadReason::LinkBudget); 3], "{name}");
        // Another link of the workspace still gets through, up to the backlog cap of 5.
        let others: Vec<Job> = (0..3).map(|i| job(&format!("o{i}"), "w", &format!("link{i}"))).collect();
        let pushed = q.push(&others).await.unwrap();
        assert_eq!(pushed, [Pushed::Queued, Pushed::Queued, Pushed::DeadLettered(DeadReason::BacklogFull)], "{name}");
        // The same event id again is not queued twice.
        assert_eq!(q.push(&[job("o0", "w", "link0")]).await.unwrap(), [Pushed::Duplicate], "{name}");
        // Dead letters are capped: 4 of the 4 dead-lettered kept, newest first.
        let dead = q.dead_letters("w", 10).await.unwrap();
        let ids: Vec<&str> = dead.iter().map(|d| d.job.event_id.as_str()).collect();
        assert_eq!(ids, ["o2", "f5", "f4", "f3"], "{name}");
        assert_eq!(dead[0].reason, DeadReason::BacklogFull, "{name}");
        // Another workspace is not affected by w's backlog.
        assert_eq!(q.push(&[job("x", "w2", "x")]).await.unwrap(), [Pushed::Queued], "{name}");

        // A held job is not due, and can be withdrawn until it is.
        let mut held = job("held", "w3", "h");
        held.due_at = Some(Utc::now() + chrono::Duration::seconds(30));
        q.push(&[held.clone()]).await.unwrap();
        assert!(due_of(q.as_ref(), "w3").await.is_none(), "{name}: held");
        assert_eq!(q.withdraw("w3", &[("held".into(), held.partition())]).await.unwrap(), 1, "{name}");
        assert_eq!(q.withdraw("w3", &[("held".into(), held.partition())]).await.unwrap(), 0, "{name}");

        // Replay: dead letters leave the list and come back with their ids and a fresh attempt count.
        let p = due_of(q.as_ref(), "w").await.unwrap();
        for lease in q.take(&p, 10, Duration::from_secs(60)).await.unwrap() {
            q.ack(&lease).await.unwrap();
        }
        assert_eq!(q.replay_dead_letters("w", None, None).await.unwrap(), 4, "{name}");
        assert!(q.dead_letters("w", 10).await.unwrap().is_empty(), "{name}");
        assert_eq!(q.replay_dead_letters("w", None, None).await.unwrap(), 0, "{name}: replayed once");
        let p = due_of(q.as_ref(), "w").await.expect(name);
        let mut replayed: Vec<String> =
            q.take(&p, 10, Duration::from_secs(60)).await.unwrap().into_iter().map(|l| l.job.event_id).collect();
        replayed.sort();
        assert_eq!(replayed, ["f3", "f4", "f5", "o2"], "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_racing_a_drained_partition_is_never_orphaned() {
    for (name, q, _redis) in queues(Limits { link_burst: 0, ..Limits::default() }) {
        let mut taken = std::collections::BTreeSet::new();
        let take_all = async |q: &Arc<dyn Queue>, taken: &mut std::collections::BTreeSet<String>| {
            if let Some(p) = due_of(q.as_ref(), "race").await {
                for lease in q.take(&p, 10, Duration::from_secs(60)).await.unwrap() {
                    q.ack(&lease).await.unwrap();
                    taken.insert(lease.job.event_id);
                }
            }
        };
        // Many rounds of: a worker drains the partition while a push arrives.
        for round in 0..50 {
            q.push(&[job(&format!("a{round:02}"), "race", "c")]).await.unwrap();
            let p = due_of(q.as_ref(), "race").await.unwrap_or_else(|| panic!("{name} round {round}: lost"));
            let racing = [job(&format!("b{round:02}"), "race", "c")];
            let (pushed, leases) = tokio::join!(q.push(&racing), q.take(&p, 10, Duration::from_secs(60)));
            pushed.unwrap();
            for lease in leases.unwrap() {
                q.ack(&lease).await.unwrap();
                taken.insert(lease.job.event_id);
            }
            take_all(&q, &mut taken).await;
        }
        // A score raised by a racing worker is at most a second ahead.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        take_all(&q, &mut taken).await;
        let pushed: std::collections::BTreeSet<String> =
            (0..50).flat_map(|r| [format!("a{r:02}"), format!("b{r:02}")]).collect();
        let missing: Vec<_> = pushed.difference(&taken).collect();
        assert!(missing.is_empty(), "{name}: jobs never found again: {missing:?}");
    }
}
