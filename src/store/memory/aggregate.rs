//! The embedded store's per-link aggregate.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::model::{Class, LinkStats, RecentClick};

/// A link's counters. Every counted hit finds its link's entry in a map of all links, so the entry is
/// kept small — the counters a bot hit touches and the recent list inline, the rest boxed — 88 bytes
/// with its key instead of 192 (10 MB less per 100,000 links; the click thread's time per hit moved
/// within the benchmark's noise, docs/PERFORMANCE.md session 7).
#[derive(Default)]
pub(super) struct LinkAgg {
    pub hits: u64,
    pub human_hits: u64,
    pub bot_hits: u64,
    /// Only what the link does not already say (no copy of its code, workspace, broadcast, recipient).
    pub recent: VecDeque<RecentClick>,
    /// First and last human click, unique clicks, conversions; made by the first human hit or conversion
    /// (its own `hits`, `human_hits`, `bot_hits` are not used).
    pub more: Option<Box<LinkStats>>,
    /// Click ids remembered with their verdict; most links track no conversions.
    #[expect(clippy::box_collection, reason = "an empty map is 48 bytes in every link's entry; a box is 8")]
    pub click_ids: Option<Box<HashMap<Arc<str>, Class>>>,
}

impl LinkAgg {
    pub fn more(&mut self) -> &mut LinkStats {
        self.more.get_or_insert_default()
    }

    pub fn stats(&self) -> LinkStats {
        LinkStats {
            hits: self.hits,
            human_hits: self.human_hits,
            bot_hits: self.bot_hits,
            ..self.more.as_deref().cloned().unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_entry_is_small() {
        assert_eq!(std::mem::size_of::<(Arc<str>, LinkAgg)>(), 88, "key, three counters, the recent list, two boxes");
    }

    #[test]
    fn stats_combine_the_counters_and_the_rest() {
        let mut agg = LinkAgg { hits: 3, human_hits: 1, bot_hits: 2, ..LinkAgg::default() };
        assert_eq!(agg.stats(), LinkStats { hits: 3, human_hits: 1, bot_hits: 2, ..LinkStats::default() });
        agg.more().conversions = 4;
        agg.more().unique_clicks = 1;
        let stats = agg.stats();
        assert_eq!(
            (stats.hits, stats.human_hits, stats.bot_hits, stats.conversions, stats.unique_clicks),
            (3, 1, 2, 4, 1)
        );
    }
}
