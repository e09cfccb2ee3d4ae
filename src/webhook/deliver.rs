//! One delivery attempt: an SSRF-guarded `POST` with the Standard Webhooks headers and the workspace's
//! authorization, timed and classified.
//!
//! The HTTP client is shared (pooled keep-alive connections), never follows redirects (a `3xx` is a
//! failed attempt: following it could lead anywhere), ignores proxy variables, and resolves host names
//! through [`GuardedResolver`](super::ssrf::GuardedResolver), so the address connected to is the address
//! checked. OAuth 2 client-credentials tokens are cached per (workspace, token URL, client id) until
//! shortly before they expire, each under its own lock, and refreshed once when the receiver answers 401.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hyper::StatusCode;
use tokio::sync::Mutex;

use super::{sign, ssrf};
use crate::model::Job;
use crate::model::{CredentialsLocation, OAuth, WebhookSettings};

/// What the receiver (or the way to it) answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP status; `retry_after` is the `Retry-After` of a 429 or 503, bounded to an hour.
    Status { code: u16, retry_after: Option<Duration> },
    /// No HTTP answer: refused before sending (SSRF, bad URL, no OAuth token) or a transport error. The
    /// text is secret-free.
    Failed(String),
}

/// One attempt: what was answered and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub answer: Answer,
    pub elapsed_ms: u64,
}

impl Attempt {
    /// A 2xx answer.
    pub fn succeeded(&self) -> bool {
        matches!(self.answer, Answer::Status { code, .. } if (200..300).contains(&code))
    }

    pub fn status(&self) -> Option<u16> {
        match self.answer {
            Answer::Status { code, .. } => Some(code),
            Answer::Failed(_) => None,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self.answer {
            Answer::Status { retry_after, .. } => retry_after,
            Answer::Failed(_) => None,
        }
    }

    /// What went wrong, for the delivery log: `None` for a 2xx.
    pub fn error(&self) -> Option<String> {
        match &self.answer {
            Answer::Status { code, .. } if (200..300).contains(code) => None,
            Answer::Status { code, .. } => Some(format!(
                "receiver answered {}",
                StatusCode::from_u16(*code).map_or_else(|_| code.to_string(), |s| s.to_string())
            )),
            Answer::Failed(error) => Some(error.clone()),
        }
    }
}

type TokenKey = (String, String, String);

/// Token cache entries kept before idle, expired ones are dropped.
const MAX_TOKEN_ENTRIES: usize = 10_000;

#[derive(Debug, Clone)]
struct Token {
    value: String,
    expires: Instant,
}

pub struct Deliverer {
    client: reqwest::Client,
    allow_private: bool,
    user_agent: String,
    /// Cached OAuth tokens by (workspace, token URL, client id), each behind its own lock: one token
    /// endpoint that hangs holds up only the deliveries that need its token. A token is never shared
    /// across workspaces, even for the same endpoint and client id.
    tokens: DashMap<TokenKey, Arc<Mutex<Option<Token>>>>,
}

impl Deliverer {
    pub fn new(timeout: Duration, allow_private: bool) -> anyhow::Result<Self> {
        // rustls needs a process-wide crypto provider; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_max_idle_per_host(32)
            .pool_idle_timeout(Duration::from_secs(60))
            .dns_resolver(Arc::new(ssrf::GuardedResolver::new(allow_private)))
            .build()?;
        Ok(Self {
            client,
            allow_private,
            user_agent: format!("linkhit/{}", env!("CARGO_PKG_VERSION")),
            tokens: DashMap::new(),
        })
    }

    /// Sends `job` to `url` once (twice when an OAuth token was refused and refreshed).
    pub async fn attempt(&self, settings: &WebhookSettings, workspace_id: &str, url: &str, job: &Job) -> Attempt {
        let started = Instant::now();
        let mut answer = self.send(settings, workspace_id, url, job, false).await;
        if matches!(answer, Answer::Status { code: 401, .. }) && settings.oauth.is_some() {
            answer = self.send(settings, workspace_id, url, job, true).await;
        }
        Attempt { answer, elapsed_ms: started.elapsed().as_millis() as u64 }
    }

    async fn send(
        &self,
        settings: &WebhookSettings,
        workspace_id: &str,
        url: &str,
        job: &Job,
        fresh_token: bool,
    ) -> Answer {
        let fail = Answer::Failed;
        let parsed = match url::Url::parse(url) {
            Ok(u) => u,
            Err(e) => return fail(format!("invalid URL: {e}")),
        };
        if let Err(e) = ssrf::check_before_send(&parsed, self.allow_private) {
            return fail(format!("refused: {e}"));
        }
        let timestamp = chrono::Utc::now().timestamp();
        let mut request = self
            .client
            .post(parsed)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, &self.user_agent)
            .header("webhook-id", &job.event_id)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(key) = settings.signing_secret.as_deref().and_then(sign::secret_key) {
            request = request
                .header("webhook-signature", sign::signature(&key, &job.event_id, timestamp, job.payload.as_bytes()));
        }
        if let Some(oauth) = &settings.oauth {
            match self.token(workspace_id, oauth, fresh_token).await {
                Ok(token) => request = request.bearer_auth(token),
                Err(e) => return fail(format!("oauth token: {e}")),
            }
        } else if let Some(auth) = &settings.http_authorization
            && settings.authorization_allowed_for(url)
        {
            // Never to a destination it was not stored for (checked at `PUT` too).
            request = request.header(hyper::header::AUTHORIZATION, auth);
        }
        match request.body(job.payload.clone()).send().await {
            Ok(response) => {
                let status = response.status();
                let retry_after = matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE)
                    .then(|| {
                        response
                            .headers()
                            .get(hyper::header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(parse_retry_after)
                    })
                    .flatten();
                Answer::Status { code: status.as_u16(), retry_after }
            }
            Err(e) => fail(describe(&e)),
        }
    }

    /// A cached or freshly fetched OAuth access token.
    async fn token(&self, workspace_id: &str, oauth: &OAuth, refresh: bool) -> Result<String, String> {
        let key = (workspace_id.to_owned(), oauth.url.clone(), oauth.client_id.clone());
        if self.tokens.len() > MAX_TOKEN_ENTRIES {
            let now = Instant::now();
            self.tokens.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || slot.try_lock().is_ok_and(|t| t.as_ref().is_some_and(|t| t.expires > now))
            });
        }
        let slot = Arc::clone(&self.tokens.entry(key).or_default());
        // Held across the token request: concurrent deliveries of this workspace wait for one fetch
        // instead of each fetching a token.
        let mut cached = slot.lock().await;
        if !refresh
            && let Some(token) = cached.as_ref()
            && token.expires > Instant::now()
        {
            return Ok(token.value.clone());
        }
        *cached = None;
        let parsed = url::Url::parse(&oauth.url).map_err(|e| e.to_string())?;
        ssrf::check_before_send(&parsed, self.allow_private).map_err(|e| e.to_string())?;
        let mut pairs: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &oauth.scope {
            pairs.push(("scope", scope));
        }
        let mut request = self
            .client
            .post(parsed)
            .header(hyper::header::USER_AGENT, &self.user_agent)
            .header(hyper::header::ACCEPT, "application/json");
        match oauth.credentials_location {
            CredentialsLocation::Header => request = request.basic_auth(&oauth.client_id, Some(&oauth.client_secret)),
            CredentialsLocation::Body => {
                pairs.push(("client_id", &oauth.client_id));
                pairs.push(("client_secret", &oauth.client_secret));
            }
        }
        let form = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        let response = request
            .header(hyper::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("token endpoint answered {status}"));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: String,
            expires_in: Option<u64>,
        }
        let body: TokenResponse = response.json().await.map_err(|e| format!("unreadable token response: {e}"))?;
        // Renew a little early so a token never expires in flight; default lifetime: one hour.
        let lifetime = Duration::from_secs(body.expires_in.unwrap_or(3600));
        let expires = Instant::now() + lifetime.saturating_sub(lifetime.min(Duration::from_secs(30)));
        *cached = Some(Token { value: body.access_token.clone(), expires });
        Ok(body.access_token)
    }
}

/// `Retry-After` as seconds or an HTTP date, capped at one hour.
pub fn parse_retry_after(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let delay = if let Ok(secs) = raw.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO)
    };
    Some(delay.min(Duration::from_secs(3600)))
}

/// A short, secret-free description of a transport error.
fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        let mut source: Option<&dyn std::error::Error> = Some(err);
        let mut deepest = String::new();
        while let Some(e) = source {
            deepest = e.to_string();
            source = e.source();
        }
        format!("connection failed: {deepest}")
    } else {
        // The deepest cause, without the URL (it may carry credentials).
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(err);
        let mut deepest = "request failed".to_owned();
        while let Some(e) = source {
            deepest = format!("request failed: {e}");
            source = e.source();
        }
        deepest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_values() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("999999"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO), "a past date means now");
        assert_eq!(parse_retry_after("soon"), None);
    }
}
