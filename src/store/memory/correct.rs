//! Verdict corrections in the embedded store: the same rules as the Redis script's correction operations.

use super::ClickState;
use crate::counting;
use crate::model::{Class, ClickRecord, LinkKind};

/// Moves a counted human hit to the bots (a verdict flipped during the hold window): the same rules as
/// the Redis script's correction operations.
pub(super) fn correct(state: &mut ClickState, click: &ClickRecord) {
    if let Some(agg) = state.links.get_mut(&click.code) {
        agg.stats.human_hits = agg.stats.human_hits.saturating_sub(1);
        agg.stats.bot_hits += 1;
        if agg.stats.human_hits == 0 {
            agg.stats.unique_clicks = 0;
            agg.stats.first_click_at = None;
            agg.stats.last_click_at = None;
        }
    }
    if let Some(agg) = state.links.get_mut(&click.code)
        && let Some(id) = &click.click_id
        && let Some(class) = agg.click_ids.get_mut(id)
    {
        *class = Class::Bot;
    }
    if let Some(broadcast) = &click.broadcast_id
        && click.kind == LinkKind::Redirect
    {
        let b = super::broadcast_agg(&mut state.broadcasts, &click.workspace_id, broadcast);
        b.human_hits = b.human_hits.saturating_sub(1);
        b.bot_hits += 1;
        *b.bot_reasons.entry(click.reason.to_string()).or_default() += 1;
        let minute = b.timeline.entry(counting::minute_of(click)).or_default();
        minute.0 = minute.0.saturating_sub(1);
        minute.1 += 1;
        if let Some(recipient) = &click.recipient {
            let count = b.recipients.entry(recipient.clone()).or_default();
            *count -= 1;
            if *count == 0 {
                b.unique = b.unique.saturating_sub(1);
            }
        }
    }
    if click.kind == LinkKind::OptOut
        && let Some(recipient) = &click.recipient
        && let Some((list, seen)) = state.opt_outs.get_mut(&*click.workspace_id)
    {
        let recorded = counting::opt_out_of(click, recipient);
        if let Some(i) =
            list.iter().position(|o| *o.recipient == **recipient && o.code == recorded.code && o.at == recorded.at)
        {
            list.remove(i);
            seen.remove(&**recipient);
        }
    }
    if click.kind == LinkKind::OptOut
        && let (Some(broadcast), Some(recipient)) = (&click.broadcast_id, &click.recipient)
        && let Some(b) = state.broadcasts.get_mut(&super::Pair(&click.workspace_id, broadcast))
    {
        b.opt_outs.remove(&**recipient);
    }
}
