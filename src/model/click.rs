//! Classified hits: the record the pipeline counts, journals and shows, and what counting told.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::link::LinkKind;

/// Human or bot: the verdict of a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Human,
    Bot,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Human => "human",
            Class::Bot => "bot",
        }
    }
}

/// The method of a hit as a click keeps it: one of two shared texts.
pub fn method_text(head: bool) -> Arc<str> {
    static GET: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("GET"));
    static HEAD: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("HEAD"));
    Arc::clone(if head { &HEAD } else { &GET })
}

/// One classified hit: what the store counts, the journal spills and `GET …/clicks` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickRecord {
    pub code: Arc<str>,
    pub workspace_id: Arc<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_id: Option<Arc<str>>,
    /// The link's recipient, on human hits (and hits judged human then flipped): what unique clicks,
    /// opt-outs and events need. A bot hit leaves it out — nothing counts a bot per recipient — which
    /// spares the click pipeline a cache miss per hit on the recipient's allocation (docs/PERFORMANCE.md,
    /// session 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<Arc<str>>,
    #[serde(default)]
    pub kind: LinkKind,
    /// Written as RFC 3339 text; read as that or as epoch nanoseconds (the journal's lines,
    /// [`ClickRecord::journal_ref`]).
    #[serde(deserialize_with = "nanos_or_text")]
    pub at: DateTime<Utc>,
    pub class: Class,
    pub reason: Arc<str>,
    pub method: Arc<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<Arc<str>>,
    /// Anonymised unless the operator keeps full addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Arc<str>>,
    /// The evidence behind the verdict besides the user agent (`network:hosting:aws,timing:2s_after_send`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signals: Option<Arc<str>>,
    /// The click id the redirect added to the target (`lh_click`), on links tracking conversions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub click_id: Option<Arc<str>>,
    /// A bot's repeat on the link within `LINKHIT_RECENT_FOLD` of its listed hit: counted like any hit,
    /// not listed in the link's recent clicks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub folded: bool,
    /// The link's [`crate::model::Link::bot_slot`], as the link was cached when the hit came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_slot: Option<u32>,
}

impl ClickRecord {
    pub fn is_human(&self) -> bool {
        self.class == Class::Human
    }

    /// The JSON a store keeps in the link's recent-clicks list: only what the link does not already
    /// say (about half the bytes of the whole record), the time as epoch milliseconds (`"at":1764410400123`,
    /// 13 bytes instead of 26 and no calendar arithmetic per hit).
    pub fn recent_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        self.write_recent_json_with(&mut out, &mut EscapedTexts::default());
        out
    }

    /// [`Self::recent_json`], appended to `out` (a store building one request for a whole batch), with
    /// the batch's shared texts (reason, method, user agent) escaped once per batch in `texts` rather than
    /// once per hit: escaping them was most of a Redis commit's per-hit work (callgrind,
    /// docs/PERFORMANCE.md session 7). The same bytes either way.
    pub fn write_recent_json_with(&self, out: &mut Vec<u8>, texts: &mut EscapedTexts) {
        texts.learn(&self.reason);
        texts.learn(&self.method);
        if let Some(ua) = &self.user_agent {
            texts.learn(ua);
        }
        let recent = RecentClickRef {
            at: self.at.timestamp_millis(),
            class: self.class,
            reason: texts.get(&self.reason),
            method: texts.get(&self.method),
            user_agent: self.user_agent.as_ref().map(|ua| texts.get(ua)),
            ip: self.ip.as_deref(),
            signals: self.signals.as_deref(),
            click_id: self.click_id.as_deref(),
        };
        serde_json::to_writer(out, &recent).expect("a recent click always serializes");
    }

    /// Shows `texts` the record's shared texts, for [`Self::journal_ref`].
    pub fn learn_journal_texts(&self, texts: &mut EscapedTexts) {
        texts.learn(&self.workspace_id);
        if let Some(broadcast) = &self.broadcast_id {
            texts.learn(broadcast);
        }
        texts.learn(&self.reason);
        texts.learn(&self.method);
        if let Some(ua) = &self.user_agent {
            texts.learn(ua);
        }
    }

    /// The record as the journal writes it: the fields of its `Serialize`, with the texts a batch's
    /// hits share (workspace, broadcast, reason, method, user agent) escaped once per batch in `texts`
    /// (shown them by [`Self::learn_journal_texts`]) and the time as epoch nanoseconds, not RFC 3339
    /// text. Escaping and calendar formatting were most of the work of journaling a hit
    /// (docs/PERFORMANCE.md, session 13). Reads back as the same record.
    pub fn journal_ref<'a>(&'a self, texts: &'a EscapedTexts) -> impl Serialize + 'a {
        JournalClickRef {
            code: &self.code,
            workspace_id: texts.get(&self.workspace_id),
            broadcast_id: self.broadcast_id.as_ref().map(|b| texts.get(b)),
            recipient: self.recipient.as_deref(),
            kind: self.kind,
            at: match self.at.timestamp_nanos_opt() {
                Some(nanos) => At::Nanos(nanos),
                // Outside 1677–2262: as text.
                None => At::Text(self.at),
            },
            class: self.class,
            reason: texts.get(&self.reason),
            method: texts.get(&self.method),
            user_agent: self.user_agent.as_ref().map(|ua| texts.get(ua)),
            ip: self.ip.as_deref(),
            signals: self.signals.as_deref(),
            click_id: self.click_id.as_deref(),
            folded: self.folded,
            bot_slot: self.bot_slot,
        }
    }

    pub fn to_recent(&self) -> RecentClick {
        RecentClick {
            at: self.at,
            class: self.class,
            reason: self.reason.clone(),
            method: self.method.clone(),
            user_agent: self.user_agent.clone(),
            ip: self.ip.clone(),
            signals: self.signals.clone(),
            click_id: self.click_id.clone(),
        }
    }
}

/// One of a link's recent clicks, as `GET /api/v1/links/{code}/clicks` shows it. Parses both the
/// compact form [`ClickRecord::recent_json`] writes and a whole [`ClickRecord`] (earlier versions).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RecentClick {
    #[serde(deserialize_with = "millis_or_text")]
    pub at: DateTime<Utc>,
    pub class: Class,
    pub reason: Arc<str>,
    pub method: Arc<str>,
    #[serde(default)]
    pub user_agent: Option<Arc<str>>,
    #[serde(default)]
    pub ip: Option<Arc<str>>,
    #[serde(default)]
    pub signals: Option<Arc<str>>,
    #[serde(default)]
    pub click_id: Option<Arc<str>>,
}

/// `at` as the compact form writes it (epoch milliseconds) or as RFC 3339 text (whole records of
/// earlier versions, and compact ones before the milliseconds form).
fn millis_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum At {
        Millis(i64),
        Text(DateTime<Utc>),
    }
    match At::deserialize(d)? {
        At::Text(at) => Ok(at),
        At::Millis(ms) => {
            DateTime::from_timestamp_millis(ms).ok_or_else(|| serde::de::Error::custom("time out of range"))
        }
    }
}

/// A time as the journal writes it.
#[derive(Serialize)]
#[serde(untagged)]
enum At {
    Nanos(i64),
    Text(DateTime<Utc>),
}

/// [`ClickRecord`] as the journal writes it ([`ClickRecord::journal_ref`]): the same field names.
#[derive(Serialize)]
struct JournalClickRef<'a> {
    code: &'a str,
    workspace_id: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    broadcast_id: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recipient: Option<&'a str>,
    kind: LinkKind,
    at: At,
    class: Class,
    reason: &'a RawValue,
    method: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signals: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    click_id: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    folded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    bot_slot: Option<u32>,
}

/// A record's `at`: RFC 3339 text (its `Serialize`, and journals of earlier versions) or epoch
/// nanoseconds (the journal's lines). A visitor, not an untagged enum: that would buffer the value.
fn nanos_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an RFC 3339 time or epoch nanoseconds")
        }

        fn visit_i64<E: serde::de::Error>(self, nanos: i64) -> Result<Self::Value, E> {
            Ok(DateTime::from_timestamp_nanos(nanos))
        }

        fn visit_u64<E: serde::de::Error>(self, nanos: u64) -> Result<Self::Value, E> {
            i64::try_from(nanos).map(DateTime::from_timestamp_nanos).map_err(|_| E::custom("time out of range"))
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            text.parse().map_err(E::custom)
        }
    }
    d.deserialize_any(Visitor)
}

#[derive(Serialize)]
struct RecentClickRef<'a> {
    at: i64,
    class: Class,
    reason: &'a RawValue,
    method: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signals: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    click_id: Option<&'a str>,
}

/// Shared texts (`Arc<str>`s a batch's clicks have in common) as JSON strings, escaped once. Keyed by the
/// allocation, not the text, so finding one hashes no text; holds each `Arc` so that no address is
/// reused while it lives. For one batch: it grows with the distinct texts it is shown.
#[derive(Default)]
pub struct EscapedTexts(HashMap<usize, (Arc<str>, Box<RawValue>), foldhash::fast::RandomState>);

/// A shared text's identity: its allocation's address (the maps keyed by it hold the `Arc`, so the
/// address is not reused while they live). Finding it hashes no text.
pub fn text_address(text: &Arc<str>) -> usize {
    Arc::as_ptr(text).cast::<u8>() as usize
}

impl EscapedTexts {
    fn learn(&mut self, text: &Arc<str>) {
        self.0.entry(text_address(text)).or_insert_with(|| {
            let json = serde_json::value::to_raw_value(&**text).expect("a string always serializes");
            (Arc::clone(text), json)
        });
    }

    /// A text [`Self::learn`] was shown.
    fn get(&self, text: &Arc<str>) -> &RawValue {
        &self.0[&text_address(text)].1
    }
}

/// Classified hits counted as one unit. The id makes counting idempotent: a store that already applied
/// the batch `id` applies nothing the second time and answers what it answered the first time
/// (`Store::record_batch`). Ids are unique per process run (`<run id>-<sequence>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub id: String,
    pub clicks: Vec<ClickRecord>,
    /// Hits of earlier batches whose verdict flipped from human to bot during the hold window (a sweep
    /// seen later): counted again as bots — moved between the classes, never in both — in the same
    /// idempotent commit as the batch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrections: Vec<Correction>,
}

/// One hit moved from human to bot: the record as it now stands (class bot, its new reason) and the
/// event its human verdict queued, to withdraw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correction {
    pub click: ClickRecord,
    pub event_id: String,
}

/// What counting one click told us, for the webhook payloads. Known for the hits of links with a human hit
/// in the batch (events are made of human hits); zeros for the others (`counting::tallies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClickTally {
    /// The link's human hits including this click (for a bot hit: the human hits so far).
    pub human_hits: u64,
    /// The link's hits of both classes including this click.
    pub hits: u64,
    /// First human hit of its (broadcast, recipient); for links without both, of the link.
    pub first_click: bool,
    /// This click recorded a new opt-out.
    pub opted_out: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn click() -> ClickRecord {
        ClickRecord {
            code: "abc".into(),
            workspace_id: "ws".into(),
            broadcast_id: Some("b".into()),
            recipient: Some("+12025550293".into()),
            kind: LinkKind::Redirect,
            at: "2026-11-29T10:00:00.123Z".parse().unwrap(),
            class: Class::Bot,
            reason: "preview:whatsapp".into(),
            method: "GET".into(),
            user_agent: Some("WhatsApp/2.23".into()),
            ip: Some("203.0.113.0".into()),
            signals: None,
            click_id: None,
            folded: false,
            bot_slot: None,
        }
    }

    #[test]
    fn a_folded_hit_survives_the_journal_and_old_lines_are_listed() {
        let mut c = click();
        let line = serde_json::to_string(&c).unwrap();
        assert!(!line.contains("folded"), "a listed hit writes nothing new: {line}");
        assert_eq!(serde_json::from_str::<ClickRecord>(&line).unwrap(), c, "a line without it reads as listed");
        c.folded = true;
        let line = serde_json::to_string(&c).unwrap();
        assert!(line.contains(r#""folded":true"#), "{line}");
        assert_eq!(serde_json::from_str::<ClickRecord>(&line).unwrap(), c);
    }

    #[test]
    fn recent_json_is_compact_and_reads_back() {
        let c = click();
        let json: serde_json::Value = serde_json::from_slice(&c.recent_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"at": 1795946400123_i64, "class": "bot", "reason": "preview:whatsapp",
                               "method": "GET", "user_agent": "WhatsApp/2.23", "ip": "203.0.113.0"}),
            "the link's own fields are not repeated in its list"
        );
        let back: RecentClick = serde_json::from_slice(&c.recent_json()).unwrap();
        assert_eq!(back, c.to_recent());
    }

    #[test]
    fn shared_texts_escaped_once_write_the_same_bytes() {
        let mut c = click();
        c.user_agent = Some(r#"Odd "agent" \ with	tab and é"#.into());
        c.signals = Some("timing:1s_after_send,sweep:4_recipients".into());
        c.click_id = Some("ck_1".into());
        let mut texts = EscapedTexts::default();
        let mut twice = Vec::new();
        c.write_recent_json_with(&mut twice, &mut texts);
        c.write_recent_json_with(&mut twice, &mut texts);
        assert_eq!(texts.0.len(), 3, "reason, method and user agent, once each");
        // What the serialization of plain strings writes (the form before the shared texts).
        #[derive(Serialize)]
        struct Plain<'a> {
            at: i64,
            class: Class,
            reason: &'a str,
            method: &'a str,
            user_agent: &'a str,
            ip: &'a str,
            signals: &'a str,
            click_id: &'a str,
        }
        let plain = serde_json::to_vec(&Plain {
            at: 1795946400123,
            class: Class::Bot,
            reason: "preview:whatsapp",
            method: "GET",
            user_agent: r#"Odd "agent" \ with	tab and é"#,
            ip: "203.0.113.0",
            signals: "timing:1s_after_send,sweep:4_recipients",
            click_id: "ck_1",
        })
        .unwrap();
        assert_eq!(twice, [plain.clone(), plain].concat(), "the bytes a plain serialization writes");
        let back: RecentClick = serde_json::from_slice(&c.recent_json()).unwrap();
        assert_eq!(back, c.to_recent());
    }

    #[test]
    fn compact_records_with_text_times_still_read() {
        let c = click();
        let earlier = br#"{"at":"2026-11-29T10:00:00.123Z","class":"bot","reason":"preview:whatsapp","method":"GET","user_agent":"WhatsApp/2.23","ip":"203.0.113.0"}"#;
        let back: RecentClick = serde_json::from_slice(earlier).unwrap();
        assert_eq!(back, c.to_recent());
        let out_of_range = br#"{"at":9223372036854775807,"class":"bot","reason":"r","method":"GET"}"#;
        assert!(serde_json::from_slice::<RecentClick>(out_of_range).is_err());
    }

    #[test]
    fn whole_records_of_earlier_versions_still_read() {
        let c = click();
        let back: RecentClick = serde_json::from_slice(&serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(back, c.to_recent());
    }
}
