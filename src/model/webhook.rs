//! Webhook records: what happened (`EventKind`), one event to deliver (`Job`), one delivery attempt as
//! logged (`DeliveryLog`), and a workspace's stored configuration (`WebhookSettings`), with its masked
//! view. The `PUT` rules that change the configuration live in `webhook::settings`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Click,
    OptOut,
    Conversion,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Click => "click",
            EventKind::OptOut => "opt_out",
            EventKind::Conversion => "conversion",
        }
    }
}

/// What `hits` in `LINK_HIT` and `fields` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HitsCount {
    /// The link's human hits (previews and scanners are not visits).
    #[default]
    Human,
    /// Every hit, as Burst counts visits.
    All,
}

/// How recipients appear in payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RecipientFormat {
    /// `+61435790000`.
    #[default]
    E164,
    /// `61435790000`: international digits without `+`, as Burst's samples write them.
    Digits,
}

/// One event to deliver. The payload is rendered once, when the event is accepted, so every attempt
/// sends (and signs) the same bytes; `event_id` is the idempotency key and never changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub event_id: String,
    pub workspace_id: String,
    pub kind: EventKind,
    pub payload: String,
    /// Attempts already made.
    #[serde(default)]
    pub attempt: u32,
    pub created_at: DateTime<Utc>,
    /// The sub-account whose webhook configuration applies (`None`: the workspace's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_account_id: Option<String>,
    /// The link the event is about: its per-link event budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The channel URL when the event was accepted (shown with dead letters; delivery uses the
    /// configuration in force when it is attempted).
    #[serde(default)]
    pub url: String,
    /// Not delivered before this (the click hold window); `None`: at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<DateTime<Utc>>,
}

impl Job {
    /// The outbox partition within its workspace: one queue per channel and sub-account, so a slow
    /// or flooded receiver delays only its own events.
    pub fn partition(&self) -> String {
        format!("{}/{}", self.kind.as_str(), self.sub_account_id.as_deref().unwrap_or("*"))
    }
}

/// Why an event was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    /// The last attempt of the retry schedule failed.
    RetriesExhausted,
    /// The link's event budget (`LINKHIT_WEBHOOK_LINK_BUDGET`) was spent: a flooded link.
    LinkBudget,
    /// The workspace's backlog was at its cap (`LINKHIT_WEBHOOK_MAX_BACKLOG`).
    BacklogFull,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::RetriesExhausted => "retries_exhausted",
            DeadReason::LinkBudget => "link_budget",
            DeadReason::BacklogFull => "backlog_full",
        }
    }
}

/// A dead-lettered event, as `GET /api/v1/webhooks/dead-letters` shows it (the job is kept whole so a
/// replay re-queues it with its original event id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub reason: DeadReason,
    /// When it was dead-lettered, unix ms.
    pub at_ms: i64,
    pub job: Job,
}

/// What became of a logged attempt (or of a decision not to attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogOutcome {
    Delivered,
    RetryScheduled,
    DeadLettered,
    /// The channel was switched off after the event was accepted.
    Cancelled,
    /// A `POST /api/v1/webhooks/test` send.
    Test,
}

/// One delivery attempt (or a decision not to attempt), as `GET /api/v1/webhooks/logs` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryLog {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub url: String,
    pub attempt: u32,
    /// The JSON sent, as text.
    pub payload: String,
    pub response_code: Option<u16>,
    pub response_time_ms: u64,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
    pub outcome: LogOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The sub-account whose configuration the event used (`None`: the workspace's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_account_id: Option<String>,
}

/// The mask shown instead of a secret.
pub const MASK: &str = "***";
/// Payload format of a workspace's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Format {
    /// 8x8's `short_url_clicked` envelope.
    #[default]
    #[serde(rename = "8x8")]
    EightByEight,
    /// Burst-style `LINK_HIT` / `OPT_OUT`.
    #[serde(rename = "link_hit")]
    LinkHit,
    /// A flat object of the selected `click_fields`.
    #[serde(rename = "fields")]
    Fields,
}

impl Format {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "8x8" => Some(Self::EightByEight),
            "link_hit" => Some(Self::LinkHit),
            "fields" => Some(Self::Fields),
            _ => None,
        }
    }
}

/// Field names allowed in `click_fields`.
pub const CLICK_FIELDS: [&str; 18] = [
    "event_id",
    "occurred_at",
    "code",
    "short_url",
    "target_url",
    "broadcast_id",
    "recipient",
    "message_id",
    "sender",
    "message_ref",
    "user_agent",
    "ip",
    "device",
    "os",
    "browser",
    "hits",
    "first_click",
    "workspace_id",
];

/// Field names allowed in `conversion_fields`: the click fields and the conversion's own.
pub const CONVERSION_FIELDS: [&str; 22] = {
    let own = ["name", "value", "currency", "click_id"];
    let mut all = [""; 22];
    let mut i = 0;
    while i < CLICK_FIELDS.len() {
        all[i] = CLICK_FIELDS[i];
        i += 1;
    }
    while i < all.len() {
        all[i] = own[i - CLICK_FIELDS.len()];
        i += 1;
    }
    all
};

/// The fields of a conversion in the `fields` format when none were chosen.
pub const DEFAULT_CONVERSION_FIELDS: [&str; 9] =
    ["event_id", "occurred_at", "short_url", "recipient", "message_id", "click_id", "name", "value", "currency"];

/// The fields of the `fields` format when none were chosen.
pub const DEFAULT_CLICK_FIELDS: [&str; 7] =
    ["event_id", "occurred_at", "short_url", "target_url", "recipient", "message_id", "hits"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CredentialsLocation {
    /// HTTP Basic `client_id:client_secret` (RFC 6749 §2.3.1's preferred form).
    #[default]
    Header,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

/// OAuth 2 client-credentials settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuth {
    pub url: String,
    pub client_id: String,
    pub client_secret: String,
    #[serde(default)]
    pub credentials_location: CredentialsLocation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// The stored configuration of one workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookSettings {
    pub click_url: Option<String>,
    pub opt_out_url: Option<String>,
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub click_fields: Option<Vec<String>>,
    #[serde(default)]
    pub unique_clicks_only: bool,
    pub signing_secret: Option<String>,
    pub http_authorization: Option<String>,
    pub oauth: Option<OAuth>,
    pub enabled: bool,
    pub updated_at: Option<DateTime<Utc>>,
    /// The destinations (`scheme://host:port`) `http_authorization` was stored for; it is sent to no
    /// other. `None` in records of earlier versions: the origins of the URLs stored with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_origins: Option<std::collections::BTreeSet<String>>,
    #[serde(default)]
    pub hits: HitsCount,
    #[serde(default)]
    pub conversion_url: Option<String>,
    #[serde(default)]
    pub conversion_fields: Option<Vec<String>>,
    #[serde(default)]
    pub recipient_format: RecipientFormat,
    /// The sub-account this configuration is for (`None`: the workspace-wide one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_account_id: Option<String>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            click_url: None,
            opt_out_url: None,
            format: Format::default(),
            click_fields: None,
            unique_clicks_only: false,
            signing_secret: None,
            http_authorization: None,
            oauth: None,
            enabled: true,
            updated_at: None,
            authorization_origins: None,
            hits: HitsCount::default(),
            conversion_url: None,
            conversion_fields: None,
            recipient_format: RecipientFormat::default(),
            sub_account_id: None,
        }
    }
}

/// `scheme://host:port` of a URL (the unit a secret is bound to), or the text itself if it is no URL.
pub fn origin(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!("{}://{}:{}", u.scheme(), u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(0)),
        Err(_) => url.to_owned(),
    }
}

impl WebhookSettings {
    /// The click fields in effect for the `fields` format.
    pub fn effective_click_fields(&self) -> Vec<&str> {
        match &self.click_fields {
            Some(fields) => fields.iter().map(String::as_str).collect(),
            None => DEFAULT_CLICK_FIELDS.to_vec(),
        }
    }

    /// The conversion fields in effect for the `fields` format.
    pub fn effective_conversion_fields(&self) -> Vec<&str> {
        match &self.conversion_fields {
            Some(fields) => fields.iter().map(String::as_str).collect(),
            None => DEFAULT_CONVERSION_FIELDS.to_vec(),
        }
    }

    /// The destinations the channels' URLs point at.
    pub fn channel_origins(&self) -> std::collections::BTreeSet<String> {
        [&self.click_url, &self.opt_out_url, &self.conversion_url].into_iter().flatten().map(|u| origin(u)).collect()
    }

    /// The destinations `http_authorization` may be sent to.
    pub fn authorization_bound_origins(&self) -> std::collections::BTreeSet<String> {
        self.authorization_origins.clone().unwrap_or_else(|| self.channel_origins())
    }

    /// Whether `http_authorization` may be sent to `url`.
    pub fn authorization_allowed_for(&self, url: &str) -> bool {
        self.authorization_bound_origins().contains(&origin(url))
    }

    /// The URL of a channel, if that channel is on.
    pub fn url_for(&self, kind: EventKind) -> Option<&str> {
        if !self.enabled {
            return None;
        }
        match kind {
            EventKind::Click => self.click_url.as_deref(),
            EventKind::OptOut => self.opt_out_url.as_deref(),
            EventKind::Conversion => self.conversion_url.as_deref(),
        }
    }

    /// The configuration as the API shows it: every secret replaced by `"***"`.
    pub fn masked(&self) -> Value {
        let mask = |s: &Option<String>| s.as_ref().map(|_| MASK);
        serde_json::json!({
            "click_url": self.click_url,
            "opt_out_url": self.opt_out_url,
            "format": self.format,
            "click_fields": self.effective_click_fields(),
            "unique_clicks_only": self.unique_clicks_only,
            "signing_secret": mask(&self.signing_secret),
            "http_authorization": mask(&self.http_authorization),
            "oauth": self.oauth.as_ref().map(|o| serde_json::json!({
                "url": o.url,
                "client_id": o.client_id,
                "client_secret": MASK,
                "credentials_location": o.credentials_location,
                "scope": o.scope,
            })),
            "enabled": self.enabled,
            "hits": self.hits,
            "conversion_url": self.conversion_url,
            "conversion_fields": self.effective_conversion_fields(),
            "recipient_format": self.recipient_format,
            "sub_account_id": self.sub_account_id,
            "updated_at": self.updated_at.map(crate::model::rfc3339),
        })
    }
}
