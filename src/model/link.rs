//! Links, their counters, workspaces, API keys and permissions.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a short link does when a recipient opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    /// `302` to the target URL.
    #[default]
    Redirect,
    /// Records the recipient's opt-out and answers a confirmation page.
    OptOut,
}

impl LinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkKind::Redirect => "redirect",
            LinkKind::OptOut => "opt_out",
        }
    }
}

/// One short link. Immutable once created except for `disabled_at` and the delivery report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Link {
    pub code: String,
    pub workspace_id: String,
    #[serde(default)]
    pub kind: LinkKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_ref: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When the SMS carrying the link was sent (`None`: at creation). The classifier uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<DateTime<Utc>>,
    /// The delivery report of the platform, if one came: when, and its status (`delivered`, `failed`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_status: Option<String>,
    /// The sub-account the link belongs to (its events use that sub-account's webhook configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_account_id: Option<String>,
    /// Redirects add `lh_click=<click id>` to the target, for conversions (`/track`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub track_conversions: bool,
    /// The text of the message that carried the link (Burst's `source_message.message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// MMS subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// MMS media URLs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_urls: Vec<String>,
    /// The link's place (from 1) in the store's dense bot-hit counters, given by the store at creation
    /// (Redis on a single node: `store::redis::keys`); a flood's bot repeats are counted there without a
    /// key lookup per hit. `None`: the link's bot hits are counted in a key of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_slot: Option<u32>,
}

impl Link {
    /// When its SMS went out: `sent_at`, or the creation time.
    pub fn sent(&self) -> DateTime<Utc> {
        self.sent_at.unwrap_or(self.created_at)
    }

    /// `"MMS"` when the message had a subject or media, else `"SMS"`.
    pub fn message_type(&self) -> &'static str {
        if self.subject.is_some() || !self.content_urls.is_empty() { "MMS" } else { "SMS" }
    }

    /// The state a redirect of this link answers with at `now`.
    pub fn state_at(&self, now: DateTime<Utc>) -> LinkState {
        if self.disabled_at.is_some() {
            LinkState::Disabled
        } else if self.expires_at.is_some_and(|at| at <= now) {
            LinkState::Expired
        } else {
            LinkState::Active
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Active,
    Disabled,
    Expired,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Active => "active",
            LinkState::Disabled => "disabled",
            LinkState::Expired => "expired",
        }
    }
}

/// Hit counters of one link. A *click* is a human hit: `first_click_at`/`last_click_at` ignore bots.
/// `unique_clicks` is 1 once the link has a human hit (one link serves one recipient).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    pub hits: u64,
    pub human_hits: u64,
    pub bot_hits: u64,
    pub unique_clicks: u64,
    pub first_click_at: Option<DateTime<Utc>>,
    pub last_click_at: Option<DateTime<Utc>>,
    /// Conversions attributed to the link, and their value per currency (exact decimals).
    #[serde(default)]
    pub conversions: u64,
    #[serde(default)]
    pub conversion_value: std::collections::BTreeMap<String, rust_decimal::Decimal>,
}

/// Counters of one broadcast: sums over its links, plus `unique_clicks`, the number of distinct
/// recipients with at least one human hit (exact).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastStats {
    pub links: u64,
    pub hits: u64,
    pub human_hits: u64,
    pub bot_hits: u64,
    pub unique_clicks: u64,
    /// Bot hits per reason (`preview:whatsapp`, `network:hosting:aws`, `sweep`, …).
    #[serde(default)]
    pub bot_reasons: std::collections::BTreeMap<String, u64>,
    /// Recipients with a `delivered` report.
    #[serde(default)]
    pub delivered: u64,
    /// Recipients who opted out through this broadcast (its opt-out links, or an inbound STOP naming it).
    #[serde(default)]
    pub opt_outs: u64,
    /// The broadcast's opt-out links (not in `links`: opt-out links are not engagement).
    #[serde(default)]
    pub opt_out_links: u64,
    #[serde(default)]
    pub conversions: u64,
    #[serde(default)]
    pub conversion_value: std::collections::BTreeMap<String, rust_decimal::Decimal>,
}

/// How a delivery report names its link.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LinkRef {
    MessageId(String),
    Recipient { broadcast_id: String, recipient: String },
}

/// One delivery report, resolved to its link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub code: String,
    pub status: String,
    pub at: DateTime<Utc>,
}

/// A recipient who opted out, through an opt-out link (`source: "link"`) or by texting a keyword the SMS
/// platform passed on (`"sms_inbound"`). The first opt-out counts until the recipient opts back in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptOut {
    pub recipient: String,
    pub at: DateTime<Utc>,
    pub source: String,
    /// The opt-out link's code (empty for an inbound SMS).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The number the STOP was sent to (an inbound opt-out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// An inbound opt-out whose event is not queued yet (settled once it is).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

/// Where an opt-out came from.
pub const OPT_OUT_LINK: &str = "link";
pub const OPT_OUT_SMS: &str = "sms_inbound";

/// One conversion (a purchase, a sign-up…) attributed to a link and, through `/track`, to one click.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversion {
    /// What makes it count once: `click:<click id>:<name>` for `/track`, `id:<caller's id>` for the API.
    pub dedup: String,
    /// The event id of its webhook event (UUID v5 of `dedup`).
    pub event_id: String,
    pub workspace_id: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub click_id: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<rust_decimal::Decimal>,
    pub currency: String,
    pub at: DateTime<Utc>,
}

/// What recording a conversion did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Counted now.
    New,
    /// Counted before; nothing changed. `emitted`: its event was queued back then.
    Duplicate { emitted: bool },
    /// Not counted: its click id has converted the most times a click may.
    Refused,
}

/// A tenant: every link and key belongs to exactly one workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// What the store keeps for an API key: never the key itself, only its SHA-256 (see `auth`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Hex SHA-256 of the raw key; the store's lookup key.
    pub key_hash: String,
    /// The first characters of the key, to tell keys apart in logs without revealing them.
    pub key_prefix: String,
    pub workspace_id: String,
    pub permissions: Vec<Permission>,
    pub created_at: DateTime<Utc>,
}

/// The permissions of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Permission {
    #[serde(rename = "links.write")]
    LinksWrite,
    #[serde(rename = "links.read")]
    LinksRead,
    #[serde(rename = "stats.read")]
    StatsRead,
    #[serde(rename = "webhooks.write")]
    WebhooksWrite,
    #[serde(rename = "webhooks.read")]
    WebhooksRead,
    #[serde(rename = "conversions.write")]
    ConversionsWrite,
    #[serde(rename = "opt_outs.write")]
    OptOutsWrite,
}

impl Permission {
    pub const ALL: [Permission; 7] = [
        Permission::LinksWrite,
        Permission::LinksRead,
        Permission::StatsRead,
        Permission::WebhooksWrite,
        Permission::WebhooksRead,
        Permission::ConversionsWrite,
        Permission::OptOutsWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::LinksWrite => "links.write",
            Permission::LinksRead => "links.read",
            Permission::StatsRead => "stats.read",
            Permission::WebhooksWrite => "webhooks.write",
            Permission::WebhooksRead => "webhooks.read",
            Permission::ConversionsWrite => "conversions.write",
            Permission::OptOutsWrite => "opt_outs.write",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_round_trip() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
        }
        assert_eq!(Permission::parse("links.delete"), None);
    }

    #[test]
    fn link_state() {
        let now = Utc::now();
        let mut link = Link {
            code: "abcdefgh".into(),
            workspace_id: "ws".into(),
            kind: LinkKind::Redirect,
            target_url: Some("https://example.com/".into()),
            broadcast_id: None,
            recipient: None,
            message_id: None,
            sender: None,
            message_ref: None,
            created_at: now,
            sent_at: None,
            expires_at: None,
            disabled_at: None,
            delivered_at: None,
            delivery_status: None,
            ..Link::default()
        };
        assert_eq!(link.state_at(now), LinkState::Active);
        link.expires_at = Some(now - chrono::Duration::seconds(1));
        assert_eq!(link.state_at(now), LinkState::Expired);
        link.disabled_at = Some(now);
        assert_eq!(link.state_at(now), LinkState::Disabled);
    }
}
