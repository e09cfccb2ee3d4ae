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

use std::sync::{Arc, LazyLock};
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
    /// Every signal seen, comma-separated (`network:hosting:aws,timing:2s_after_send`); `None` if none.
    pub signals: Option<Arc<str>>,
}

/// How far a hit may seem to precede its send before that is held against it (clock skew, rounding).
const CLOCK_SLACK_MS: i64 = 2_000;

/// Timing reasons for hits up to this many seconds after the send or delivery are made once and shared
/// (the rule's limits are seconds to tens of seconds); later ones are formatted.
const SHARED_SECONDS: i64 = 120;

/// A timing reason (`timing:3s_after_send`), shared when it is a common one: judging runs for every hit.
fn timing_reason(seconds: i64, after: &'static str) -> Arc<str> {
    static AFTER_SEND: LazyLock<Vec<Arc<str>>> = LazyLock::new(|| made("send"));
    static AFTER_DELIVERY: LazyLock<Vec<Arc<str>>> = LazyLock::new(|| made("delivery"));
    fn made(after: &str) -> Vec<Arc<str>> {
        (0..SHARED_SECONDS).map(|s| Arc::from(format!("timing:{s}s_after_{after}"))).collect()
    }
    let shared = if after == "send" { &AFTER_SEND } else { &AFTER_DELIVERY };
    match usize::try_from(seconds).ok().and_then(|s| shared.get(s)) {
        Some(reason) => Arc::clone(reason),
        None => Arc::from(format!("timing:{seconds}s_after_{after}")),
    }
}

/// Room for a hit's usual signals (`network:hosting:aws,timing:2s_after_send,sweep:12_recipients`).
const SIGNALS_CAPACITY: usize = 128;

thread_local! {
    /// Where a verdict's signals are written before they become one shared text: one allocation per
    /// hit with signals, none without (judging runs for every hit).
    static SCRATCH: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(SIGNALS_CAPACITY));
}

/// Signals joined with commas, written by `write` into the scratch buffer.
fn joined(write: impl FnOnce(&mut dyn FnMut(&[&str]))) -> Option<Arc<str>> {
    SCRATCH.with_borrow_mut(|text| {
        text.clear();
        write(&mut |parts: &[&str]| {
            if !text.is_empty() {
                text.push(',');
            }
            parts.iter().for_each(|part| text.push_str(part));
        });
        (!text.is_empty()).then(|| Arc::from(text.as_str()))
    })
}

/// The sweep's signal (`sweep:12_recipients`).
fn sweep_signal(n: usize, signal: &mut dyn FnMut(&[&str])) {
    // The reason names the rule; the signal says how many recipients it saw.
    signal(&["sweep:", itoa::Buffer::new().format(n), "_recipients"]);
}

/// A reason that is always the same text, made once.
macro_rules! shared_reason {
    ($text:literal) => {{
        static REASON: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from($text));
        Arc::clone(&REASON)
    }};
}

/// Judges a hit. Pure.
pub fn judge(ua: &Verdict, evidence: &Evidence<'_>, timing: &Timing) -> Judged {
    let network = evidence.network.map(Network::signal);
    let fast = |since: Option<i64>, limit: Duration| since.filter(|&ms| ms < limit.as_millis() as i64);
    let after_delivery = fast(evidence.since_delivery_ms, timing.fast_after_delivery)
        .map(|ms| timing_reason(ms.max(0) / 1000, "delivery"));
    let after_send = evidence.since_send_ms.and_then(|ms| {
        // A couple of seconds' slack: the platform's clock and ours differ, and cached times are rounded
        // to the second.
        if ms < -CLOCK_SLACK_MS {
            Some(shared_reason!("timing:before_send"))
        } else {
            fast(Some(ms.max(0)), timing.fast_after_send).map(|ms| timing_reason(ms / 1000, "send"))
        }
    });
    let signals = joined(|signal| {
        if let Some(network) = &network {
            signal(&[network]);
        }
        for timing in after_delivery.iter().chain(after_send.iter()) {
            signal(&[timing]);
        }
        if let Some(n) = evidence.sweep {
            sweep_signal(n, signal);
        }
    });
    let verdict = |class: Class, reason: Arc<str>| Judged { class, reason, signals };
    if ua.class == Class::Bot {
        return verdict(Class::Bot, Arc::clone(&ua.reason));
    }
    match (evidence.network, network) {
        (Some(Network::OperatorHuman), _) => return verdict(Class::Human, shared_reason!("network:operator_human")),
        (Some(Network::OperatorBot(_) | Network::Hosting(_)), Some(text)) => {
            return verdict(Class::Bot, Arc::from(text));
        }
        _ => {}
    }
    if let Some(reason) = after_delivery.or(after_send) {
        return verdict(Class::Bot, reason);
    }
    if evidence.sweep.is_some() {
        return verdict(Class::Bot, shared_reason!("sweep"));
    }
    verdict(Class::Human, Arc::clone(&ua.reason))
}

/// What a sweep of `recipients` found after `judged` (made without it) does to the verdict, without
/// judging again when that is already known: a bot stays the same bot (the sweep rule comes after every
/// bot rule) and gains the sweep's signal, which comes last. `None`: a human verdict — judge again.
pub fn with_sweep(judged: &Judged, recipients: usize) -> Option<Judged> {
    if judged.class != Class::Bot {
        return None;
    }
    let signals = joined(|signal| {
        if let Some(earlier) = &judged.signals {
            signal(&[earlier]);
        }
        sweep_signal(recipients, signal);
    });
    Some(Judged { class: Class::Bot, reason: Arc::clone(&judged.reason), signals })
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
        assert_eq!(j.signals.as_deref(), Some("network:hosting:aws,timing:1s_after_send"), "every signal is kept");
        assert_eq!(judge(&human(), &Evidence::default(), &Timing::default()).signals, None);
    }

    /// `with_sweep` is `judge` with the sweep added, for every verdict it answers; it answers for bots only.
    #[test]
    fn a_sweep_added_to_a_bot_verdict_is_the_verdict_judged_with_it() {
        let hosting = Network::Hosting(Arc::from("aws"));
        let bot_ua = Verdict { class: Class::Bot, reason: Arc::from("preview:whatsapp") };
        let min = 60_000;
        let cases: Vec<(Verdict, Evidence<'_>)> = vec![
            (bot_ua.clone(), Evidence { since_send_ms: Some(10 * min), ..Default::default() }),
            (bot_ua.clone(), Evidence { network: Some(&hosting), since_send_ms: Some(1_000), ..Default::default() }),
            (bot_ua, Evidence::default()),
            (human(), Evidence { network: Some(&hosting), ..Default::default() }),
            (human(), Evidence { since_send_ms: Some(3_000), since_delivery_ms: Some(1_000), ..Default::default() }),
            (human(), Evidence { since_send_ms: Some(40_000), ..Default::default() }),
        ];
        let mut answered = 0;
        for (ua, evidence) in cases {
            let before = judge(&ua, &evidence, &Timing::default());
            let swept = Evidence { sweep: Some(12), ..evidence.clone() };
            let judged_again = judge(&ua, &swept, &Timing::default());
            match with_sweep(&before, 12) {
                Some(added) => {
                    assert_eq!(added, judged_again, "{evidence:?}");
                    answered += 1;
                }
                None => assert_eq!(before.class, Class::Human, "only a human verdict is judged again"),
            }
        }
        assert_eq!(answered, 5);
    }
}
