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

/// One short link. Immutable once created except for `disabled_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl Link {
    /// When its SMS went out: `sent_at`, or the creation time.
    pub fn sent(&self) -> DateTime<Utc> {
        self.sent_at.unwrap_or(self.created_at)
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

/// A recipient who opted out through an opt-out link (the first time counts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptOut {
    pub recipient: String,
    pub at: DateTime<Utc>,
    pub source: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_id: Option<String>,
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
}

impl Permission {
    pub const ALL: [Permission; 5] = [
        Permission::LinksWrite,
        Permission::LinksRead,
        Permission::StatsRead,
        Permission::WebhooksWrite,
        Permission::WebhooksRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::LinksWrite => "links.write",
            Permission::LinksRead => "links.read",
            Permission::StatsRead => "stats.read",
            Permission::WebhooksWrite => "webhooks.write",
            Permission::WebhooksRead => "webhooks.read",
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
        };
        assert_eq!(link.state_at(now), LinkState::Active);
        link.expires_at = Some(now - chrono::Duration::seconds(1));
        assert_eq!(link.state_at(now), LinkState::Expired);
        link.disabled_at = Some(now);
        assert_eq!(link.state_at(now), LinkState::Disabled);
    }
}
