//! The verdict of a hit from all its evidence: the user agent (`classify`), the client's network
//! (`network`), how soon after its SMS went out (or was delivered) the link was hit, and whether the
//! client is sweeping many recipients' links (`sweep`). Pure: the same evidence always gives the same
//! verdict, and every verdict carries the signals that made it (`timing:3s_after_send`, …).
//!
//! Order, first match wins:
//! 1. a bot user agent, `HEAD` or prefetch stays a bot (its UA reason);
//! 2. a network the operator calls human is human (`network:operator_human`);
//! 3. a network the operator calls bot, or a hosting/cloud network, is a bot (`network:…`) — unless it is
//!    a privacy relay's egress (people on phones), which is never held against a hit;
//! 4. a hit within seconds of its SMS's delivery (`timing:Ns_after_delivery`) or sending
//!    (`timing:Ns_after_send`; also a hit *before* the send) is a bot: link previews and scanners fetch at
//!    delivery, people read first;
//! 5. a sweep (the same client hitting many recipients' links of a broadcast at once, soon after send) is
//!    a bot (reason `sweep`, signal `sweep:N_recipients`);
//! 6. otherwise the user agent's verdict stands.

use std::sync::Arc;
use std::time::Duration;

use super::classify::Verdict;
use super::network::Network;
use crate::model::Class;

/// The timing rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// A hit this soon after the send is a bot.
    pub fast_after_send: Duration,
    /// A hit this soon after a reported delivery is a bot.
    pub fast_after_delivery: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self { fast_after_send: Duration::from_secs(10), fast_after_delivery: Duration::from_secs(5) }
    }
}

/// What is known about a hit besides its user agent.
#[derive(Debug, Clone, Default)]
pub struct Evidence<'a> {
    pub network: Option<&'a Network>,
    /// Milliseconds from the send to the hit (negative: the hit came first).
    pub since_send_ms: Option<i64>,
    /// Milliseconds from the reported delivery to the hit.
    pub since_delivery_ms: Option<i64>,
    /// Distinct recipients of the broadcast this client hit within the sweep window, this one included,
    /// when that makes a sweep.
    pub sweep: Option<usize>,
}

/// A verdict and the signals behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub class: Class,
    pub reason: Arc<str>,
    /// Every signal seen, comma-separated (`network:hosting:aws,timing:2s_after_send`); empty if none.
    pub signals: String,
}

/// How far a hit may seem to precede its send before that is held against it (clock skew, rounding).
const CLOCK_SLACK_MS: i64 = 2_000;

/// Judges a hit. Pure.
pub fn judge(ua: &Verdict, evidence: &Evidence<'_>, timing: &Timing) -> Judged {
    let mut signals: Vec<String> = Vec::new();
    if let Some(network) = evidence.network {
        signals.push(network.signal());
    }
    let fast = |since: Option<i64>, limit: Duration| since.filter(|&ms| ms < limit.as_millis() as i64);
    let after_delivery = fast(evidence.since_delivery_ms, timing.fast_after_delivery)
        .map(|ms| format!("timing:{}s_after_delivery", ms.max(0) / 1000));
    let after_send = evidence.since_send_ms.and_then(|ms| {
        // A couple of seconds' slack: the platform's clock and ours differ, and cached times are rounded
        // to the second.
        if ms < -CLOCK_SLACK_MS {
            Some("timing:before_send".to_owned())
        } else {
            fast(Some(ms.max(0)), timing.fast_after_send).map(|ms| format!("timing:{}s_after_send", ms / 1000))
        }
    });
    signals.extend(after_delivery.iter().chain(after_send.iter()).cloned());
    let sweep = evidence.sweep.map(|n| format!("sweep:{n}_recipients"));
    signals.extend(sweep.iter().cloned());
    // The reason names the rule; the signal says how many recipients it saw.
    let sweep = sweep.map(|_| "sweep".to_owned());
    let joined = signals.join(",");
    let verdict = |class: Class, reason: &str| Judged { class, reason: Arc::from(reason), signals: joined.clone() };
    if ua.class == Class::Bot {
        return Judged { class: Class::Bot, reason: Arc::clone(&ua.reason), signals: joined };
    }
    match evidence.network {
        Some(Network::OperatorHuman) => return verdict(Class::Human, "network:operator_human"),
        Some(n @ (Network::OperatorBot(_) | Network::Hosting(_))) => return verdict(Class::Bot, &n.signal()),
        Some(Network::Relay(_)) | None => {}
    }
    if let Some(reason) = after_delivery.or(after_send) {
        return verdict(Class::Bot, &reason);
    }
    if let Some(reason) = sweep {
        return verdict(Class::Bot, &reason);
    }
    Judged { class: Class::Human, reason: Arc::clone(&ua.reason), signals: joined }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn human() -> Verdict {
        Verdict { class: Class::Human, reason: Arc::from("browser:Safari") }
    }

    #[test]
    fn evidence_table() {
        let hosting = Network::Hosting(Arc::from("aws"));
        let relay = Network::Relay(Arc::from("apple"));
        let office = Network::OperatorHuman;
        let bot_ua = Verdict { class: Class::Bot, reason: Arc::from("preview:whatsapp") };
        let min = 60_000;
        #[rustfmt::skip]
        let cases: Vec<(Verdict, Evidence<'_>, Class, &str)> = vec![
            (human(), Evidence { since_send_ms: Some(10 * min), ..Default::default() }, Class::Human, "browser:Safari"),
            (bot_ua.clone(), Evidence { since_send_ms: Some(10 * min), ..Default::default() }, Class::Bot, "preview:whatsapp"),
            (human(), Evidence { network: Some(&hosting), since_send_ms: Some(10 * min), ..Default::default() }, Class::Bot, "network:hosting:aws"),
            (human(), Evidence { network: Some(&relay), since_send_ms: Some(10 * min), ..Default::default() }, Class::Human, "browser:Safari"),
            (human(), Evidence { network: Some(&relay), since_send_ms: Some(2_000), ..Default::default() }, Class::Bot, "timing:2s_after_send"),
            (human(), Evidence { network: Some(&office), since_send_ms: Some(2_000), ..Default::default() }, Class::Human, "network:operator_human"),
            (human(), Evidence { since_send_ms: Some(9_999), ..Default::default() }, Class::Bot, "timing:9s_after_send"),
            (human(), Evidence { since_send_ms: Some(10_000), ..Default::default() }, Class::Human, "browser:Safari"),
            (human(), Evidence { since_send_ms: Some(-5_000), ..Default::default() }, Class::Bot, "timing:before_send"),
            (human(), Evidence { since_send_ms: Some(-400), ..Default::default() }, Class::Bot, "timing:0s_after_send"),
            (human(), Evidence { since_send_ms: Some(60_000), since_delivery_ms: Some(1_500), ..Default::default() }, Class::Bot, "timing:1s_after_delivery"),
            (human(), Evidence { since_send_ms: Some(60_000), since_delivery_ms: Some(45_000), ..Default::default() }, Class::Human, "browser:Safari"),
            (human(), Evidence { since_send_ms: Some(40_000), sweep: Some(4), ..Default::default() }, Class::Bot, "sweep"),
        ];
        for (ua, evidence, class, reason) in cases {
            let j = judge(&ua, &evidence, &Timing::default());
            assert_eq!((j.class, &*j.reason), (class, reason), "{evidence:?}");
        }
        let j = judge(
            &human(),
            &Evidence { network: Some(&hosting), since_send_ms: Some(1_000), ..Default::default() },
            &Timing::default(),
        );
        assert_eq!(j.signals, "network:hosting:aws,timing:1s_after_send", "every signal is kept");
    }
}
