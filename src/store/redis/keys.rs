//! Redis key names: the only place that knows them.
//!
//! Key layout (all under the configurable prefix `P`, default `lh`). Keys are designed for Redis Cluster:
//! everything about one link shares the hash tag `{code}`, so per-link multi-key operations stay in one
//! slot, while different links spread over the whole cluster.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:link:{CODE}` | string | the link as JSON |
//! | `P:cnt:{CODE}` | hash | `human_hits`, `first_click_at`, `last_click_at` (unix ms), `conversions`, `cv:<CURRENCY>` (conversion value in millionths); data from earlier builds also holds `bot_hits` (added to `P:bots`) and an equal `hits` field (ignored) |
//! | `P:bots:{CODE}` | string | the link's bot hits (an integer: `INCRBY` on it is the cheapest exact counter Redis has per key); hits = human + bot + the link's bot slot |
//! | `P:bslots:{N}` | string | dense bot-hit counters (single node only): a signed 64-bit integer per bot slot (`BITFIELD … i64 #OFFSET`), slots `N·2²⁰ + OFFSET`. A link created on a single node gets a slot (`Link::bot_slot`, and in `P:bslot-of`); its unlisted bot repeats, a flood's hits, are counted there — one `BITFIELD` per batch instead of a key lookup per hit (docs/PERFORMANCE.md, session 14). 8 bytes per link, never freed |
//! | `P:bslot-of` | hash | code → bot slot, written with the link in one script (single node): what reads go by, whatever the link's JSON says (a build without bot slots rewriting it drops the field) |
//! | `P:bslot-next` | string | the last bot slot given out (`INCRBY` by a batch of links) |
//! | `P:clicks:{CODE}` | list | recent clicks as compact JSON (`ClickRecord::recent_json`), newest first, capped |
//! | `P:bc:{WS:BROADCAST}` | hash | `links` (redirect links), `opt_out_links`, `hits`, `human_hits`, `bot_hits`, `unique_clicks` (redirect links only), `conversions`, `cv:<CURRENCY>` |
//! | `P:bcu:{WS:BROADCAST}` | set | recipients with at least one human hit (exact unique clicks) |
//! | `P:bch:{WS:BROADCAST}` | hash | recipient → human hits (a verdict correction takes one back; at 0 the recipient leaves `bcu`) |
//! | `P:bcr:{WS:BROADCAST}` | hash | bot reason → bot hits |
//! | `P:bcd:{WS:BROADCAST}` | set | recipients with a `delivered` report |
//! | `P:bcl:{WS:BROADCAST}` | hash | recipient → code of the broadcast's link (delivery reports) |
//! | `P:msg:{WS}` | hash | message id → code (delivery reports) |
//! | `P:tl:{WS:BROADCAST}` | hash | per minute: field `<unix minute>:h` / `:b` (hits), `:c` (conversions) |
//! | `P:bcs:{WS}` | set | the workspace's broadcast ids |
//! | `P:optout:{WS}` | hash | recipient → current opt-out as JSON (deleted when the recipient opts back in) |
//! | `P:bco:{WS:BROADCAST}` | set | recipients who opted out through the broadcast |
//! | `P:cid:{CODE}` | hash | click id → verdict (`human`/`bot`) of the link's first 1,000 tracked hits, for the conversions-on-bot-hits metric |
//! | `P:conv:{TAG}:DEDUP` | string | a conversion counted in the slot of `TAG` (the link's code, or `WS:BROADCAST`); `1` once its event was queued (link slot); expires with the click id TTL |
//! | `P:whcfg:{WS}` | string | the workspace's webhook settings as JSON (secrets included) |
//! | `P:whcfg:{WS}:sub:SUB` | string | a sub-account's webhook settings (the workspace's apply where none) |
//! | `P:whlog:{WS}` | list | webhook delivery log entries as JSON, newest first, capped |
//! | `P:ws:{WS}` | string | the workspace as JSON |
//! | `P:key:HASH` | string | an API key record as JSON (HASH = hex SHA-256 of the key) |
//! | `P:codekey` | string | hex key of the codes' check characters, created once (`SET NX`) |
//! | `P:invalidate` | pub/sub channel | codes whose cached copies must be dropped |
//! | `P:guard:{TAG}:BATCH` | string | the reply of counting batch `BATCH` in the slot of hash tag `TAG` (JSON), until the batch is released or `LINKHIT_COMMIT_GUARD_TTL` passes |
//!
//! The webhook outbox is `webhook::queue`'s business.

/// Bot slots per `P:bslots` key: 2²⁰ (8 MB of counters each; a Redis string holds at most 512 MB). The
/// counting script divides by 2²⁰ too.
pub(super) const BOT_SLOT_BITS: u32 = 20;

/// Key names. The only place that knows them.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }
    pub fn link(&self, code: &str) -> String {
        format!("{}:link:{{{code}}}", self.prefix)
    }
    pub fn counters(&self, code: &str) -> String {
        [&self.prefix, ":cnt:{", code, "}"].concat()
    }
    /// The link's bot hits, a string of their own (see the table).
    pub fn bots(&self, code: &str) -> String {
        self.bots_parts(code).concat()
    }
    /// The dense bot-hit counters holding bot slot `slot`, and the slot's offset in them (see the table).
    pub fn bot_slots(&self, slot: u32) -> (String, u32) {
        (format!("{}:bslots:{{{}}}", self.prefix, Self::bot_shard(slot)), Self::bot_offset(slot))
    }
    /// Which `P:bslots` key holds bot slot `slot`.
    pub fn bot_shard(slot: u32) -> u32 {
        slot >> BOT_SLOT_BITS
    }
    /// Where in its `P:bslots` key bot slot `slot` is (in `i64`s).
    pub fn bot_offset(slot: u32) -> u32 {
        slot & ((1 << BOT_SLOT_BITS) - 1)
    }
    /// The last bot slot given out.
    pub fn bot_slot_next(&self) -> String {
        format!("{}:bslot-next", self.prefix)
    }
    /// Code → bot slot.
    pub fn bot_slot_of(&self) -> String {
        format!("{}:bslot-of", self.prefix)
    }
    /// What [`Self::bot_slots`] keys start with (the counting script adds `N}`).
    pub fn bot_slots_prefix(&self) -> String {
        format!("{}:bslots:{{", self.prefix)
    }
    /// [`Self::bots`] in pieces, for a caller writing it into a buffer of its own.
    pub fn bots_parts<'a>(&'a self, code: &'a str) -> [&'a str; 4] {
        [&self.prefix, ":bots:{", code, "}"]
    }
    pub fn broadcast(&self, workspace_id: &str, broadcast_id: &str) -> String {
        format!("{}:bc:{{{workspace_id}:{broadcast_id}}}", self.prefix)
    }
    pub fn broadcast_uniques(&self, workspace_id: &str, broadcast_id: &str) -> String {
        format!("{}:bcu:{{{workspace_id}:{broadcast_id}}}", self.prefix)
    }
    /// Human hits per recipient of a broadcast (a verdict correction takes one back).
    pub fn broadcast_recipient_hits(&self, workspace_id: &str, broadcast_id: &str) -> String {
        format!("{}:bch:{{{workspace_id}:{broadcast_id}}}", self.prefix)
    }
    /// Recipients of a broadcast with a `delivered` report.
    pub fn broadcast_delivered(&self, workspace_id: &str, broadcast_id: &str) -> String {
        format!("{}:bcd:{{{workspace_id}:{broadcast_id}}}", self.prefix)
    }
    /// Recipient → code of a broadcast's links (delivery reports).
    pub fn recipient_index(&self, workspace_id: &str, broadcast_id: &str) -> String {
        format!("{}:bcl:{{{workspace_id}:{broadcast_id}}}", self.prefix)
    }
    /// Message id → code of a workspace's links (delivery reports).
    pub fn message_index(&self, workspace_id: &str) -> String {
        format!("{}:msg:{{{workspace_id}}}", self.prefix)
    }
    /// Bot hits per reason of a broadcast.
    pub fn broadcast_bot_reasons(&self, workspace_id: &str, broadcast_id: &str) -> String {
        format!("{}:bcr:{{{workspace_id}:{broadcast_id}}}", self.prefix)
    }
    pub fn timeline(&self, workspace_id: &str, broadcast_id: &str) -> String {
        format!("{}:tl:{{{workspace_id}:{broadcast_id}}}", self.prefix)
    }
    pub fn broadcasts(&self, workspace_id: &str) -> String {
        format!("{}:bcs:{{{workspace_id}}}", self.prefix)
    }
    pub fn recent_clicks(&self, code: &str) -> String {
        [&self.prefix, ":clicks:{", code, "}"].concat()
    }
    /// A workspace's webhook settings, or one sub-account's (`P:whcfg:{WS}:sub:SUB`).
    pub fn webhook_settings(&self, workspace_id: &str, sub_account_id: Option<&str>) -> String {
        match sub_account_id {
            None => format!("{}:whcfg:{{{workspace_id}}}", self.prefix),
            Some(sub) => format!("{}:whcfg:{{{workspace_id}}}:sub:{sub}", self.prefix),
        }
    }
    pub fn webhook_logs(&self, workspace_id: &str) -> String {
        format!("{}:whlog:{{{workspace_id}}}", self.prefix)
    }
    pub fn opt_outs(&self, workspace_id: &str) -> String {
        format!("{}:optout:{{{workspace_id}}}", self.prefix)
    }
    /// Recipients who opted out through a broadcast.
    pub fn broadcast_opt_outs(&self, workspace_id: &str, broadcast_id: &str) -> String {
        format!("{}:bco:{{{workspace_id}:{broadcast_id}}}", self.prefix)
    }
    /// Click id → verdict of a link's tracked hits.
    pub fn click_ids(&self, code: &str) -> String {
        [&self.prefix, ":cid:{", code, "}"].concat()
    }
    /// The mark of a conversion counted in the slot of hash tag `tag`.
    pub fn conversion(&self, tag: &str, dedup: &str) -> String {
        format!("{}:conv:{{{tag}}}:{dedup}", self.prefix)
    }
    pub fn workspace(&self, id: &str) -> String {
        format!("{}:ws:{{{id}}}", self.prefix)
    }
    pub fn api_key(&self, hash: &str) -> String {
        format!("{}:key:{hash}", self.prefix)
    }
    pub fn code_key(&self) -> String {
        format!("{}:codekey", self.prefix)
    }
    /// The guard of batch `batch_id` in the slot of hash tag `tag`.
    pub fn guard(&self, tag: &str, batch_id: &str) -> String {
        format!("{}:guard:{{{tag}}}:{batch_id}", self.prefix)
    }
    pub fn invalidation_channel(&self) -> String {
        format!("{}:invalidate", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_link_keys_share_a_hash_tag() {
        let keys = Keys::new("lh");
        assert_eq!(keys.link("abcDEF12"), "lh:link:{abcDEF12}");
        assert_eq!(keys.counters("abcDEF12"), "lh:cnt:{abcDEF12}");
        assert_eq!(keys.bots("abcDEF12"), "lh:bots:{abcDEF12}");
        assert_eq!(keys.bot_slots(5), ("lh:bslots:{0}".to_owned(), 5));
        assert_eq!(keys.bot_slots((3 << 20) + 7), ("lh:bslots:{3}".to_owned(), 7));
        assert_eq!(format!("{}3}}", keys.bot_slots_prefix()), keys.bot_slots(3 << 20).0, "as the script builds it");
        // The counting script finds a slot's key and offset by dividing by 2^20 itself.
        let script = include_str!("counting.lua");
        assert!(script.contains(&format!("slot / {}", 1u32 << BOT_SLOT_BITS)), "the script's shard size");
        assert!(script.contains(&format!("slot % {}", 1u32 << BOT_SLOT_BITS)), "the script's shard size");
        assert_eq!(keys.broadcast("ws_1", "fall"), "lh:bc:{ws_1:fall}");
        assert_eq!(keys.invalidation_channel(), "lh:invalidate");
    }
}
