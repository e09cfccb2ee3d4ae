//! Cache invalidations between instances: `PUBLISH` on disable (in `mod.rs`), and here the one
//! subscription per process that turns messages into [`Invalidation`]s, resubscribing after failures.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::RedisStore;
use crate::backoff::Backoff;
use crate::store::Invalidation;

pub(super) fn invalidations(store: &RedisStore, shutdown: CancellationToken) -> Option<mpsc::Receiver<Invalidation>> {
    let (tx, rx) = mpsc::channel(4096);
    let clients = store.pool.pubsub_clients();
    let channel = store.keys.invalidation_channel();
    let timeout = store.timeout;
    tokio::spawn(async move {
        shutdown.run_until_cancelled(subscribe_forever(clients, channel, timeout, tx)).await;
    });
    Some(rx)
}

/// Keeps one subscription to the invalidation channel alive, reconnecting with backoff. After every
/// (re)subscription it sends `Invalidation::All`, since messages published meanwhile are lost.
/// With a cluster, it subscribes on one seed node after the other (`PUBLISH` reaches every node).
async fn subscribe_forever(
    clients: Vec<redis::Client>,
    channel: String,
    timeout: Duration,
    tx: mpsc::Sender<Invalidation>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    for client in clients.iter().cycle() {
        let subscribed = async {
            let mut pubsub = tokio::time::timeout(timeout, client.get_async_pubsub()).await.ok()?.ok()?;
            tokio::time::timeout(timeout, pubsub.subscribe(&channel)).await.ok()?.ok()?;
            Some(pubsub)
        }
        .await;
        match subscribed {
            Some(pubsub) => {
                backoff.reset();
                tracing::debug!(%channel, "subscribed to cache invalidations");
                if tx.send(Invalidation::All).await.is_err() {
                    return;
                }
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let Ok(code) = msg.get_payload::<String>() else {
                        continue;
                    };
                    if tx.send(Invalidation::Code(code)).await.is_err() {
                        return;
                    }
                }
                tracing::warn!("cache invalidation subscription lost; reconnecting");
            }
            None => {
                backoff.wait().await;
            }
        }
    }
}
