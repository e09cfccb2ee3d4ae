//! Counters of redirect outcomes, resolved once so the hot path does no registry lookup.

use metrics::Counter;

use super::respond::Outcome;

/// Counter handles for redirect outcomes, resolved once so the hot path does no registry lookup.
pub struct RedirectMetrics {
    counters: [Counter; 6],
}

impl Default for RedirectMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RedirectMetrics {
    pub fn new() -> Self {
        let c = |status: &'static str| metrics::counter!("linkhit_redirects_total", "status" => status);
        Self { counters: [c("302"), c("200"), c("404"), c("410"), c("503"), c("405")] }
    }

    #[inline]
    pub fn record(&self, outcome: Outcome) {
        let i = match outcome {
            Outcome::Redirected => 0,
            Outcome::OptOutPage => 1,
            Outcome::NotFound => 2,
            Outcome::Gone => 3,
            Outcome::Unavailable => 4,
            Outcome::MethodNotAllowed => 5,
        };
        self.counters[i].increment(1);
    }
}
