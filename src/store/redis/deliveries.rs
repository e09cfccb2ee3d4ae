//! Delivery reports: the indexes that find a link by message id or by (broadcast, recipient), written
//! when links are inserted, and the recording of reports on links and broadcasts.

use std::collections::HashMap;

use redis::Value;

use super::RedisStore;
use crate::counting;
use crate::model::{Delivery, Link, LinkRef};
use crate::redis_conn::hash_tag;
use crate::store::StoreError;

/// Field/value pairs per `HSET` when indexing inserted links.
const INDEX_CHUNK: usize = 1000;

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// The index commands for freshly inserted links (one `HSET` per key and chunk).
pub(super) fn index_commands(store: &RedisStore, links: &[&Link]) -> Vec<(String, redis::Cmd)> {
    let mut by_key: HashMap<String, Vec<(&str, &str)>> = HashMap::new();
    // Delivery reports (and the console's list of a broadcast's links) are about the message's redirect
    // links; an opt-out link sharing its message id or recipient must not take them.
    for link in links.iter().filter(|l| l.kind == crate::model::LinkKind::Redirect) {
        if let Some(m) = &link.message_id {
            by_key.entry(store.keys.message_index(&link.workspace_id)).or_default().push((m, &link.code));
        }
        if let (Some(b), Some(r)) = (&link.broadcast_id, &link.recipient) {
            by_key.entry(store.keys.recipient_index(&link.workspace_id, b)).or_default().push((r, &link.code));
        }
    }
    let mut tagged = Vec::new();
    for (key, pairs) in by_key {
        for chunk in pairs.chunks(INDEX_CHUNK) {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&key);
            for (field, code) in chunk {
                cmd.arg(*field).arg(*code);
            }
            tagged.push((hash_tag(&key).to_owned(), cmd));
        }
    }
    tagged
}

pub(super) async fn find_links(
    store: &RedisStore,
    workspace_id: &str,
    refs: &[LinkRef],
) -> Result<Vec<Option<String>>, StoreError> {
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    let tagged = refs
        .iter()
        .map(|r| {
            let (key, field) = match r {
                LinkRef::MessageId(m) => (store.keys.message_index(workspace_id), m.as_str()),
                LinkRef::Recipient { broadcast_id, recipient } => {
                    (store.keys.recipient_index(workspace_id, broadcast_id), recipient.as_str())
                }
            };
            let mut cmd = redis::cmd("HGET");
            cmd.arg(&key).arg(field);
            (hash_tag(&key).to_owned(), cmd)
        })
        .collect();
    store
        .spread(store.timeout * 20, tagged, &[])
        .await?
        .into_iter()
        .map(|v| redis::from_redis_value::<Option<String>>(v).map_err(corrupt))
        .collect()
}

pub(super) async fn record_deliveries(store: &RedisStore, deliveries: &[Delivery]) -> Result<Vec<Link>, StoreError> {
    if deliveries.is_empty() {
        return Ok(Vec::new());
    }
    let codes: Vec<&str> = deliveries.iter().map(|d| d.code.as_str()).collect();
    let links = crate::store::Store::get_links(store, &codes).await?;
    let mut updated: HashMap<String, Link> = HashMap::new();
    for (d, link) in deliveries.iter().zip(links) {
        let Some(link) = updated.remove(&d.code).or(link) else { continue };
        let mut link = link;
        counting::apply_delivery(&mut link, d);
        updated.insert(d.code.clone(), link);
    }
    let mut tagged = Vec::new();
    for link in updated.values() {
        let mut set = redis::cmd("SET");
        set.arg(store.keys.link(&link.code)).arg(serde_json::to_vec(link).map_err(corrupt)?).arg("XX");
        tagged.push((link.code.clone(), set));
        if link.delivered_at.is_some()
            && let (Some(b), Some(r)) = (&link.broadcast_id, &link.recipient)
        {
            let key = store.keys.broadcast_delivered(&link.workspace_id, b);
            let mut add = redis::cmd("SADD");
            add.arg(&key).arg(r);
            tagged.push((hash_tag(&key).to_owned(), add));
        }
        // Every instance reloads the link (its delivery time feeds the classifier).
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(store.keys.invalidation_channel()).arg(&link.code);
        tagged.push((link.code.clone(), publish));
    }
    let replies = store.spread(store.timeout * 20, tagged, &[]).await?;
    if replies.iter().any(|v| matches!(v, Value::ServerError(_))) {
        return Err(StoreError::Unavailable("a delivery report was not stored".into()));
    }
    Ok(updated.into_values().collect())
}
