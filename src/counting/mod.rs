//! Counting rules: what a batch of classified hits means for the counters, as pure functions over
//! `model` records. Both stores call these, so that `human_hits`, `first_click`, the timeline buckets and
//! opt-outs mean the same whichever store counts them.
//!
//! These are rules about records, not a pipeline stage: nothing here does I/O or knows a key layout.
//!
//! Architecture Invariant: `counting` imports only `model`; the stores import `counting`, never the
//! reverse.

use std::collections::{BTreeMap, HashMap};

use crate::model::{Class, ClickRecord, ClickTally, LinkKind, OptOut};

/// A batch grouped the way the stores count it: per link and per broadcast, batch order kept inside
/// each group, and the hits that may record an opt-out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Groups<'a> {
    /// (code, indices of its hits), in order of first appearance. Inline up to two: a batch of a flood
    /// is mostly links hit once, and an allocation per link cost more than grouping it.
    pub links: Vec<(&'a str, Members)>,
    /// ((workspace, broadcast), indices of its hits on redirect links), in order of first appearance.
    /// Opt-out links are not engagement: their hits count on the link, not in the broadcast.
    pub broadcasts: Vec<((&'a str, &'a str), Vec<usize>)>,
    /// ((workspace, broadcast), indices of human hits on its opt-out links with a recipient).
    pub broadcast_opt_outs: Vec<((&'a str, &'a str), Vec<usize>)>,
    /// Indices of human hits on opt-out links with a recipient: each may record a new opt-out.
    pub opt_outs: Vec<usize>,
}

/// A link's hits in a batch (indices), two inline.
pub type Members = smallvec::SmallVec<[usize; 2]>;

/// Groups a batch by link and by broadcast.
pub fn group(clicks: &[ClickRecord]) -> Groups<'_> {
    let mut groups = Groups { links: Vec::with_capacity(clicks.len()), ..Groups::default() };
    // Sized for the batch: a flood's batch has as many links as hits, and growing the map rehashed it.
    let mut link_index: Fast<&str, usize> = Fast::with_capacity_and_hasher(clicks.len(), Default::default());
    let mut broadcast_index: Fast<(&str, &str), usize> = Fast::default();
    for (i, click) in clicks.iter().enumerate() {
        let g = *link_index.entry(&click.code).or_insert_with(|| {
            groups.links.push((&click.code, Members::new()));
            groups.links.len() - 1
        });
        groups.links[g].1.push(i);
        if let Some(b) = &click.broadcast_id
            && click.kind == LinkKind::Redirect
        {
            let key = (&*click.workspace_id, &**b);
            let g = *broadcast_index.entry(key).or_insert_with(|| {
                groups.broadcasts.push((key, Vec::new()));
                groups.broadcasts.len() - 1
            });
            groups.broadcasts[g].1.push(i);
        }
        if records_opt_out(click) {
            groups.opt_outs.push(i);
            if let Some(b) = &click.broadcast_id {
                let key = (&*click.workspace_id, &**b);
                match groups.broadcast_opt_outs.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, list)) => list.push(i),
                    None => groups.broadcast_opt_outs.push((key, vec![i])),
                }
            }
        }
    }
    groups
}

/// Whether a hit may record an opt-out: a human hit on an opt-out link that names its recipient.
/// A bot hit never opts anyone out.
pub fn records_opt_out(click: &ClickRecord) -> bool {
    click.is_human() && click.kind == LinkKind::OptOut && click.recipient.is_some()
}

/// The opt-out recorded for a human hit on an opt-out link.
pub fn opt_out_of(click: &ClickRecord, recipient: &str) -> OptOut {
    OptOut {
        recipient: recipient.to_owned(),
        at: click.at,
        source: crate::model::OPT_OUT_LINK.to_owned(),
        code: click.code.to_string(),
        broadcast_id: click.broadcast_id.as_deref().map(str::to_owned),
        keyword: None,
        message_id: None,
        sender: None,
        pending: false,
    }
}

/// A map with a fast, randomly seeded hash, for per-batch bookkeeping.
pub type Fast<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Per-click tallies for a batch, given what the store answered per link and per broadcast.
///
/// - `human_after[code]`: the link's human hits after the whole batch; `all_after[code]`: its hits of
///   both classes (known for links with a human hit in the batch, the only ones events are made of);
/// - `first_in_broadcast[i]`: for click `i` (human, with broadcast and recipient), whether it added the
///   recipient to the broadcast's unique set;
/// - `opted_out[i]`: whether click `i` recorded a new opt-out.
///
/// Only hits of links with a human hit in the batch are tallied (events are made of human hits); the
/// others get zeros, so a batch of bots costs no hashing here.
pub fn tallies<S: std::hash::BuildHasher>(
    clicks: &[ClickRecord],
    human_after: &HashMap<&str, u64, S>,
    all_after: &HashMap<&str, u64, S>,
    first_in_broadcast: &[bool],
    opted_out: &[bool],
) -> Vec<ClickTally> {
    // Events are made of human hits only, so only the links with a human hit in the batch need a tally
    // (the stores answer only those); a bot hit on another link gets zeros. A batch of bots hashes nothing.
    let mut human_in_batch: Fast<&str, u64> = Fast::default();
    for c in clicks.iter().filter(|c| c.is_human()) {
        *human_in_batch.entry(&*c.code).or_default() += 1;
    }
    if human_in_batch.is_empty() {
        return vec![ClickTally::default(); clicks.len()];
    }
    let mut all_in_batch: Fast<&str, u64> = Fast::default();
    for c in clicks {
        if human_in_batch.contains_key(&*c.code) {
            *all_in_batch.entry(&*c.code).or_default() += 1;
        }
    }
    let mut seen: Fast<&str, (u64, u64)> = Fast::default();
    clicks
        .iter()
        .enumerate()
        .map(|(i, click)| {
            let code: &str = &click.code;
            let Some(&human_in) = human_in_batch.get(code) else {
                return ClickTally { opted_out: opted_out[i], ..ClickTally::default() };
            };
            let after = human_after.get(code).copied().unwrap_or(0);
            let before = after.saturating_sub(human_in);
            let (human_so_far, all_so_far) = seen.entry(code).or_default();
            if click.is_human() {
                *human_so_far += 1;
            }
            *all_so_far += 1;
            let human_hits = before + *human_so_far;
            let all = all_after.get(code).copied().unwrap_or(0);
            let all_before = all.saturating_sub(all_in_batch.get(code).copied().unwrap_or(0));
            let hits = all_before + *all_so_far;
            let first_click = click.is_human()
                && if click.broadcast_id.is_some() && click.recipient.is_some() {
                    first_in_broadcast[i]
                } else {
                    human_hits == 1
                };
            ClickTally { human_hits, hits, first_click, opted_out: opted_out[i] }
        })
        .collect()
}

/// What a delivery report does to its link: the status is the latest report's; `delivered_at` is the
/// first `delivered` report's time.
pub fn apply_delivery(link: &mut crate::model::Link, delivery: &crate::model::Delivery) {
    link.delivery_status = Some(delivery.status.clone());
    if delivery.status == "delivered" && link.delivered_at.is_none() {
        link.delivered_at = Some(delivery.at);
    }
}

/// A conversion value in millionths, the unit stores sum it in (exact; `None` beyond ±9·10^12 or with
/// more than six decimals, which the API refuses).
pub fn micro_units(value: rust_decimal::Decimal) -> Option<i64> {
    let scaled = value.checked_mul(rust_decimal::Decimal::from(1_000_000))?;
    if !scaled.fract().is_zero() {
        return None;
    }
    let n = i64::try_from(scaled).ok()?;
    (n.unsigned_abs() < 9_000_000_000_000_000_000).then_some(n)
}

/// A sum in millionths as a decimal (`49900000` → `49.9`).
pub fn from_micro_units(n: i64) -> rust_decimal::Decimal {
    rust_decimal::Decimal::new(n, 6).normalize()
}

/// The unix minute (its first second) a hit falls in: the timeline's unit.
pub fn minute_of(click: &ClickRecord) -> i64 {
    click.at.timestamp().div_euclid(60) * 60
}

/// Hits of a batch per (unix minute start, class), for the broadcast timelines.
pub fn minute_buckets<'a>(clicks: impl Iterator<Item = &'a ClickRecord>) -> BTreeMap<(i64, Class), u64> {
    let mut buckets = BTreeMap::new();
    for click in clicks {
        *buckets.entry((minute_of(click), click.class)).or_default() += 1;
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(code: &str, broadcast: Option<&str>, recipient: Option<&str>, class: Class, at: &str) -> ClickRecord {
        ClickRecord {
            code: code.into(),
            workspace_id: "ws".into(),
            broadcast_id: broadcast.map(Into::into),
            recipient: recipient.map(Into::into),
            kind: LinkKind::Redirect,
            at: at.parse().unwrap(),
            class,
            reason: "test".into(),
            method: "GET".into(),
            user_agent: None,
            ip: None,
            signals: None,
            click_id: None,
            folded: false,
            bot_slot: None,
        }
    }

    const T: &str = "2026-11-29T10:00:30Z";

    #[test]
    fn grouping_keeps_batch_order_per_link_and_broadcast() {
        let mut opt_out = hit("c", Some("b1"), Some("+1"), Class::Human, T);
        opt_out.kind = LinkKind::OptOut;
        let mut bot_opt_out = opt_out.clone();
        bot_opt_out.class = Class::Bot;
        let mut anonymous_opt_out = opt_out.clone();
        anonymous_opt_out.recipient = None;
        let batch = [
            hit("a", Some("b1"), Some("+1"), Class::Human, T),
            hit("b", None, None, Class::Bot, T),
            hit("a", Some("b1"), Some("+1"), Class::Bot, T),
            opt_out,
            bot_opt_out,
            anonymous_opt_out,
        ];
        let g = group(&batch);
        let links: Vec<(&str, Vec<usize>)> = g.links.iter().map(|(c, m)| (*c, m.to_vec())).collect();
        assert_eq!(links, vec![("a", vec![0, 2]), ("b", vec![1]), ("c", vec![3, 4, 5])]);
        assert_eq!(g.broadcasts, vec![(("ws", "b1"), vec![0, 2])], "opt-out links are not engagement");
        assert_eq!(g.opt_outs, vec![3], "only a human hit naming its recipient opts out");
        assert_eq!(g.broadcast_opt_outs, vec![(("ws", "b1"), vec![3])]);
    }

    #[test]
    fn tallies_table() {
        // (batch, human hits after the batch per link, first-in-broadcast flags, expected (human_hits, first_click))
        type Case = (Vec<ClickRecord>, Vec<(&'static str, u64)>, Vec<bool>, Vec<(u64, bool)>);
        let cases: Vec<Case> = vec![
            // Two human hits of a fresh link without broadcast: the first is the first click.
            (
                vec![hit("a", None, None, Class::Human, T), hit("a", None, None, Class::Human, T)],
                vec![("a", 2)],
                vec![false, false],
                vec![(1, true), (2, false)],
            ),
            // A link with 5 human hits before: a bot hit reports the human hits so far.
            (
                vec![hit("a", None, None, Class::Bot, T), hit("a", None, None, Class::Human, T)],
                vec![("a", 6)],
                vec![false, false],
                vec![(5, false), (6, false)],
            ),
            // Broadcast links: first_click comes from the store's unique set, not the link's count.
            (
                vec![
                    hit("a", Some("b"), Some("+1"), Class::Human, T),
                    hit("b", Some("b"), Some("+1"), Class::Human, T),
                ],
                vec![("a", 1), ("b", 1)],
                vec![true, false],
                vec![(1, true), (1, false)],
            ),
        ];
        for (batch, after, first, want) in cases {
            let after: HashMap<&str, u64> = after.into_iter().collect();
            let opted = vec![false; batch.len()];
            let got: Vec<(u64, bool)> = tallies(&batch, &after, &HashMap::new(), &first, &opted)
                .iter()
                .map(|t| (t.human_hits, t.first_click))
                .collect();
            assert_eq!(got, want, "{batch:?}");
        }
    }

    #[test]
    fn links_without_a_human_hit_in_the_batch_get_zeros() {
        let batch = [hit("a", None, None, Class::Bot, T), hit("b", None, None, Class::Bot, T)];
        let counts: HashMap<&str, u64> = [("a", 9), ("b", 4)].into_iter().collect();
        let got = tallies(&batch, &counts, &counts, &[false; 2], &[false; 2]);
        assert_eq!(got, vec![ClickTally::default(); 2], "a batch of bots tallies nothing");
        let mixed = [hit("a", None, None, Class::Bot, T), hit("b", None, None, Class::Human, T)];
        let human: HashMap<&str, u64> = [("b", 3)].into_iter().collect();
        let all: HashMap<&str, u64> = [("b", 5)].into_iter().collect();
        let got: Vec<(u64, u64)> =
            tallies(&mixed, &human, &all, &[false; 2], &[false; 2]).iter().map(|t| (t.human_hits, t.hits)).collect();
        assert_eq!(got, vec![(0, 0), (3, 5)]);
    }

    #[test]
    fn all_hits_count_both_classes_in_batch_order() {
        let batch = [
            hit("a", None, None, Class::Bot, T),
            hit("a", None, None, Class::Human, T),
            hit("a", None, None, Class::Human, T),
        ];
        // 10 hits before the batch, 13 after.
        let all: HashMap<&str, u64> = [("a", 13)].into_iter().collect();
        let human: HashMap<&str, u64> = [("a", 7)].into_iter().collect();
        let got: Vec<(u64, u64)> =
            tallies(&batch, &human, &all, &[false; 3], &[false; 3]).iter().map(|t| (t.human_hits, t.hits)).collect();
        assert_eq!(got, vec![(5, 11), (6, 12), (7, 13)]);
    }

    #[test]
    fn minute_buckets_split_by_class() {
        let batch = [
            hit("a", None, None, Class::Human, "2026-11-29T10:00:01Z"),
            hit("a", None, None, Class::Human, "2026-11-29T10:00:59Z"),
            hit("a", None, None, Class::Bot, "2026-11-29T10:01:00Z"),
        ];
        let minute: i64 = "2026-11-29T10:00:00Z".parse::<chrono::DateTime<chrono::Utc>>().unwrap().timestamp();
        let buckets: Vec<_> = minute_buckets(batch.iter()).into_iter().collect();
        assert_eq!(buckets, vec![((minute, Class::Human), 2), ((minute + 60, Class::Bot), 1)]);
    }
}
