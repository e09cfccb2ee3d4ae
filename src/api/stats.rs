//! Stats routes (`stats.read`): link and broadcast counters, recent clicks, opt-outs.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;

use super::{ApiResult, LinkStatsView, authorize, json, limit, money, opt_out_view, owned_link};
use crate::app::App;
use crate::error::ApiError;
use crate::model::{Permission, rfc3339};

/// `GET /api/v1/links/{code}/stats`
pub async fn link(app: &App, req: Request<Incoming>, code: &str) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::StatsRead).await?;
    let link = owned_link(app, &caller.workspace_id, code).await?;
    let stats = app.store.link_stats(&link.code).await?;
    #[derive(Serialize)]
    struct Out<'a> {
        code: &'a str,
        #[serde(flatten)]
        stats: LinkStatsView,
    }
    json(StatusCode::OK, &Out { code: &link.code, stats: LinkStatsView::from(&stats) })
}

/// `GET /api/v1/broadcasts/{broadcast_id}/stats`
pub async fn broadcast(app: &App, req: Request<Incoming>, broadcast_id: &str) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::StatsRead).await?;
    let stats = app
        .store
        .broadcast_stats(&caller.workspace_id, broadcast_id)
        .await?
        .ok_or_else(|| ApiError::not_found("BROADCAST_NOT_FOUND", "no links in this broadcast"))?;
    json(
        StatusCode::OK,
        &serde_json::json!({
            "broadcast_id": broadcast_id,
            "links": stats.links,
            "hits": stats.hits,
            "human_hits": stats.human_hits,
            "bot_hits": stats.bot_hits,
            "unique_clicks": stats.unique_clicks,
            "delivered": stats.delivered,
            "bot_reasons": stats.bot_reasons,
            "opt_outs": stats.opt_outs,
            "opt_out_links": stats.opt_out_links,
            "conversions": stats.conversions,
            "conversion_value": money(&stats.conversion_value),
        }),
    )
}

/// `GET /api/v1/broadcasts/{broadcast_id}/links?limit=50&offset=0&recipient=…`: the broadcast's
/// redirect links by recipient, with their counters; `recipient` searches (contains).
pub async fn broadcast_links(app: &App, req: Request<Incoming>, broadcast_id: &str) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::StatsRead).await?;
    let limit = limit(&req, 50, 200)?;
    let mut offset = 0;
    let mut search = None;
    for (k, v) in url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "offset" => {
                offset = v
                    .parse::<usize>()
                    .map_err(|_| ApiError::bad_request("INVALID_OFFSET", "offset must be a non-negative integer"))?
            }
            "recipient" if !v.is_empty() => {
                if v.chars().count() > 32 {
                    return Err(ApiError::bad_request(
                        "INVALID_RECIPIENT",
                        "recipient search is at most 32 characters",
                    ));
                }
                search = Some(v.into_owned());
            }
            _ => {}
        }
    }
    if app.store.broadcast_stats(&caller.workspace_id, broadcast_id).await?.is_none() {
        return Err(ApiError::not_found("BROADCAST_NOT_FOUND", "no links in this broadcast"));
    }
    let slot = tokio::time::timeout(std::time::Duration::from_secs(5), app.listing_slots.acquire())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "BUSY", "too many link listings in progress; retry shortly")
        })?;
    let (total, page) =
        app.store.broadcast_recipients(&caller.workspace_id, broadcast_id, search.as_deref(), offset, limit).await?;
    drop(slot);
    let codes: Vec<&str> = page.iter().map(|(_, c)| c.as_str()).collect();
    let links = app.store.get_links(&codes).await?;
    let stats = futures_util::future::try_join_all(codes.iter().map(|c| app.store.link_stats(c))).await?;
    let now = chrono::Utc::now();
    let items: Vec<_> = links
        .iter()
        .zip(&stats)
        .filter_map(|(link, s)| {
            let link = link.as_ref()?;
            Some(serde_json::json!({
                "code": link.code,
                "short_url": app.short_url(&link.code),
                "recipient": link.recipient,
                "message_id": link.message_id,
                "status": link.state_at(now).as_str(),
                "delivery_status": link.delivery_status,
                "delivered_at": link.delivered_at.map(rfc3339),
                "hits": s.hits,
                "human_hits": s.human_hits,
                "bot_hits": s.bot_hits,
                "conversions": s.conversions,
                "last_click_at": s.last_click_at.map(rfc3339),
            }))
        })
        .collect();
    json(
        StatusCode::OK,
        &serde_json::json!({"broadcast_id": broadcast_id, "total": total, "offset": offset, "links": items}),
    )
}

/// `GET /api/v1/links/{code}/clicks?limit=50`: newest first.
pub async fn clicks(app: &App, req: Request<Incoming>, code: &str) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::StatsRead).await?;
    let max = app.config.recent_clicks.max(1);
    let limit = limit(&req, 50, max)?;
    let link = owned_link(app, &caller.workspace_id, code).await?;
    let clicks = app.store.recent_clicks(&link.code, limit).await?;
    let clicks: Vec<_> = clicks
        .iter()
        .map(|c| {
            serde_json::json!({
                "at": rfc3339(c.at),
                "class": c.class.as_str(),
                "reason": c.reason,
                "user_agent": c.user_agent,
                "ip": c.ip,
                "signals": c.signals.as_deref().map(|s| s.split(',').collect::<Vec<_>>()).unwrap_or_default(),
                "method": c.method,
                "click_id": c.click_id,
            })
        })
        .collect();
    json(StatusCode::OK, &serde_json::json!({ "code": link.code, "clicks": clicks }))
}

/// `GET /api/v1/opt-outs?limit=1000`: newest first.
pub async fn opt_outs(app: &App, req: Request<Incoming>) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::StatsRead).await?;
    let limit = limit(&req, 1000, 100_000)?;
    let opt_outs = app.store.opt_outs(&caller.workspace_id, limit).await?;
    let opt_outs: Vec<_> = opt_outs.iter().map(opt_out_view).collect();
    json(StatusCode::OK, &serde_json::json!({ "opt_outs": opt_outs }))
}

/// `GET /api/v1/broadcasts`: every broadcast of the workspace with its counters and click-through rate
/// (unique clicks / links).
pub async fn broadcasts(app: &App, req: Request<Incoming>) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::StatsRead).await?;
    let list = app.store.list_broadcasts(&caller.workspace_id).await?;
    let items: Vec<_> = list
        .iter()
        .map(|(id, s)| {
            serde_json::json!({
                "broadcast_id": id,
                "links": s.links,
                "hits": s.hits,
                "human_hits": s.human_hits,
                "bot_hits": s.bot_hits,
                "unique_clicks": s.unique_clicks,
                "opt_outs": s.opt_outs,
                "conversions": s.conversions,
                "conversion_value": money(&s.conversion_value),
                "click_through_rate": if s.links == 0 { 0.0 } else { s.unique_clicks as f64 / s.links as f64 },
            })
        })
        .collect();
    json(StatusCode::OK, &serde_json::json!({ "broadcasts": items }))
}

/// Bucket sizes of the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Minute,
    Hour,
    Day,
}

impl Bucket {
    fn seconds(self) -> i64 {
        match self {
            Bucket::Minute => 60,
            Bucket::Hour => 3_600,
            Bucket::Day => 86_400,
        }
    }
}

/// Most buckets a timeline answers with its gaps filled (two months of hours; a day of minutes).
const MAX_FILLED: usize = 1_500;

/// Sums per-minute counts (`(minute, human, bot, conversions)`) into `bucket`s (UTC-aligned), oldest
/// first, with the empty buckets between the first and the last as zeros (so a chart is
/// time-proportional) unless that would exceed `MAX_FILLED` buckets.
pub fn bucketize(minutes: &[(i64, u64, u64, u64)], bucket: Bucket) -> Vec<(i64, u64, u64, u64)> {
    let mut out: Vec<(i64, u64, u64, u64)> = Vec::new();
    for &(minute, human, bot, conversions) in minutes {
        let start = minute.div_euclid(bucket.seconds()) * bucket.seconds();
        match out.last_mut() {
            Some(last) if last.0 == start => {
                last.1 += human;
                last.2 += bot;
                last.3 += conversions;
            }
            _ => out.push((start, human, bot, conversions)),
        }
    }
    let (Some(first), Some(last)) = (out.first().copied(), out.last().copied()) else { return out };
    let span = ((last.0 - first.0) / bucket.seconds()) as usize + 1;
    if span > MAX_FILLED || span == out.len() {
        return out;
    }
    let mut filled = Vec::with_capacity(span);
    let mut points = out.into_iter().peekable();
    let mut at = first.0;
    while filled.len() < span {
        match points.peek() {
            Some(p) if p.0 == at => filled.extend(points.next()),
            _ => filled.push((at, 0, 0, 0)),
        }
        at += bucket.seconds();
    }
    filled
}

/// `GET /api/v1/broadcasts/{broadcast_id}/timeline?bucket=minute|hour|day`: human and bot hits per
/// bucket, from counters the click pipeline maintains per minute.
pub async fn timeline(app: &App, req: Request<Incoming>, broadcast_id: &str) -> ApiResult {
    let caller = authorize(app, req.headers(), Permission::StatsRead).await?;
    let bucket = match req.uri().query().and_then(|q| q.split('&').find_map(|p| p.strip_prefix("bucket="))) {
        None | Some("hour") => Bucket::Hour,
        Some("minute") => Bucket::Minute,
        Some("day") => Bucket::Day,
        Some(_) => return Err(ApiError::bad_request("INVALID_BUCKET", "bucket must be minute, hour or day")),
    };
    if app.store.broadcast_stats(&caller.workspace_id, broadcast_id).await?.is_none() {
        return Err(ApiError::not_found("BROADCAST_NOT_FOUND", "no links in this broadcast"));
    }
    let minutes = app.store.broadcast_timeline(&caller.workspace_id, broadcast_id).await?;
    let points: Vec<_> = bucketize(&minutes, bucket)
        .into_iter()
        .map(|(start, human, bot, conversions)| {
            serde_json::json!({
                "at": chrono::DateTime::from_timestamp(start, 0).map(rfc3339),
                "human": human,
                "bot": bot,
                "conversions": conversions,
            })
        })
        .collect();
    let name = match bucket {
        Bucket::Minute => "minute",
        Bucket::Hour => "hour",
        Bucket::Day => "day",
    };
    json(StatusCode::OK, &serde_json::json!({ "broadcast_id": broadcast_id, "bucket": name, "points": points }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_sum_minutes() {
        let day = 86_400;
        let minutes = [(day, 1, 2, 0), (day + 60, 3, 0, 1), (day + 3_600, 1, 1, 0), (2 * day + 120, 5, 5, 2)];
        let by_minute = bucketize(&minutes, Bucket::Minute);
        assert_eq!(by_minute.len(), 1_443, "every minute from the first to the last");
        assert_eq!(by_minute.iter().filter(|m| m.1 + m.2 + m.3 > 0).copied().collect::<Vec<_>>(), minutes.to_vec());
        assert_eq!(
            bucketize(&[(day, 1, 0, 0), (day + 180, 2, 0, 0)], Bucket::Minute),
            vec![(day, 1, 0, 0), (day + 60, 0, 0, 0), (day + 120, 0, 0, 0), (day + 180, 2, 0, 0)],
            "empty buckets in between are zeros"
        );
        assert_eq!(bucketize(&[(0, 1, 0, 0), (60 * 2_000, 1, 0, 0)], Bucket::Minute).len(), 2, "too long to fill");
        let hours = bucketize(&minutes, Bucket::Hour);
        assert_eq!(hours.len(), 25);
        assert_eq!((hours[0], hours[1], hours[24]), ((day, 4, 2, 1), (day + 3_600, 1, 1, 0), (2 * day, 5, 5, 2)));
        assert!(hours[2..24].iter().all(|h| h.1 + h.2 + h.3 == 0));
        assert_eq!(bucketize(&minutes, Bucket::Day), vec![(day, 5, 3, 1), (2 * day, 5, 5, 2)]);
        assert!(bucketize(&[], Bucket::Day).is_empty());
    }
}
