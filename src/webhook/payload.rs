//! Payload formatting: the three formats of the contract, as pure functions of an event's facts.
//!
//! `8x8` and `link_hit` are fixed envelopes; `fields` is a flat object holding exactly the selected
//! names. Values a link does not have (a `message_id` never given) are JSON `null`, never omitted, so
//! receivers see a stable shape.

use serde_json::{Map, Value, json};

use crate::model::EventKind;
use crate::model::Format;

/// Everything a payload may mention about one event.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    pub event_id: &'a str,
    pub occurred_at: &'a str,
    pub code: &'a str,
    pub short_url: &'a str,
    pub target_url: Option<&'a str>,
    pub broadcast_id: Option<&'a str>,
    pub recipient: Option<&'a str>,
    pub message_id: Option<&'a str>,
    pub sender: Option<&'a str>,
    pub message_ref: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub ip: Option<&'a str>,
    /// The link's hits including this click: human hits, or all of them (the `hits` setting).
    pub hits: u64,
    pub first_click: bool,
    pub workspace_id: &'a str,
    /// Where an opt-out came from: `"link"` or `"sms_inbound"`.
    pub source: &'a str,
    /// `"SMS"` or `"MMS"`, and the message's text and MMS parts when known.
    pub message_type: &'a str,
    pub message: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub content_urls: &'a [String],
    /// A conversion's own facts.
    pub conversion: Option<ConversionFacts<'a>>,
}

/// What a conversion adds to its click's facts.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConversionFacts<'a> {
    pub name: &'a str,
    pub value: Option<f64>,
    pub currency: &'a str,
    pub click_id: Option<&'a str>,
}

/// Renders one event.
pub fn render(format: Format, click_fields: &[&str], kind: EventKind, f: &Facts<'_>) -> Value {
    match (format, kind) {
        (Format::EightByEight, EventKind::Click) => json!({
            "namespace": "SMS",
            "eventType": "short_url_clicked",
            "description": "Short URL from SMS clicked",
            "payload": {
                "eventId": f.event_id,
                "occurredAt": f.occurred_at,
                "umid": f.message_id,
                "destination": f.recipient,
                "shortUrl": f.short_url,
                "targetUrl": f.target_url,
            }
        }),
        (Format::EightByEight, EventKind::OptOut) => json!({
            "namespace": "SMS",
            "eventType": "opt_out",
            "description": if f.source == crate::model::OPT_OUT_SMS {
                "Recipient opted out by SMS"
            } else {
                "Recipient opted out via short URL"
            },
            "payload": {
                "eventId": f.event_id,
                "occurredAt": f.occurred_at,
                "umid": f.message_id,
                "destination": f.recipient,
                "source": f.source,
            }
        }),
        (Format::EightByEight, EventKind::Conversion) => {
            let c = f.conversion.unwrap_or_default();
            json!({
                "namespace": "SMS",
                "eventType": "conversion",
                "description": "Conversion after short URL click",
                "payload": {
                    "eventId": f.event_id,
                    "occurredAt": f.occurred_at,
                    "umid": f.message_id,
                    "destination": f.recipient,
                    "shortUrl": f.short_url,
                    "targetUrl": f.target_url,
                    "name": c.name,
                    "value": c.value,
                    "currency": c.currency,
                }
            })
        }
        (Format::LinkHit, EventKind::Conversion) => {
            let c = f.conversion.unwrap_or_default();
            json!({
                "event_type": "CONVERSION",
                "timestamp": f.occurred_at,
                "conversion": {
                    "name": c.name,
                    "value": c.value,
                    "currency": c.currency,
                    "url": f.target_url,
                    "source_message": source_message(f),
                }
            })
        }
        (Format::LinkHit, EventKind::Click) => json!({
            "event_type": "LINK_HIT",
            "timestamp": f.occurred_at,
            "link_hit": {
                "hits": f.hits,
                "url": f.target_url,
                "source_message": source_message(f),
            }
        }),
        (Format::LinkHit, EventKind::OptOut) => json!({
            "event_type": "OPT_OUT",
            "timestamp": f.occurred_at,
            "opt_out": {
                "source": if f.source == crate::model::OPT_OUT_SMS { "SMS_INBOUND" } else { "LINK_HIT" },
                "source_message": source_message(f),
            }
        }),
        (Format::Fields, EventKind::Click | EventKind::Conversion) => {
            // Parse the user agent once, and only if a device field was chosen.
            let wants_device = click_fields.iter().any(|n| matches!(*n, "device" | "os" | "browser"));
            let device =
                if wants_device { f.user_agent.and_then(|ua| woothee::parser::Parser::new().parse(ua)) } else { None };
            Value::Object(
                click_fields.iter().map(|name| ((*name).to_owned(), field(name, f, device.as_ref()))).collect(),
            )
        }
        // The `fields` selection describes clicks; an opt-out keeps the flat style with the facts an
        // opt-out has.
        (Format::Fields, EventKind::OptOut) => {
            let mut m = Map::new();
            for name in [
                "event_id",
                "occurred_at",
                "code",
                "short_url",
                "broadcast_id",
                "recipient",
                "message_id",
                "sender",
                "message_ref",
                "workspace_id",
            ] {
                m.insert(name.to_owned(), field(name, f, None));
            }
            m.insert("event_type".to_owned(), json!("opt_out"));
            m.insert("source".to_owned(), json!(f.source));
            Value::Object(m)
        }
    }
}

fn source_message(f: &Facts<'_>) -> Value {
    let mut m = json!({
        "type": f.message_type,
        "id": f.message_id,
        "message": f.message,
        "message_ref": f.message_ref,
        "recipient": f.recipient,
        "sender": f.sender,
    });
    if f.message_type == "MMS" {
        m["subject"] = json!(f.subject);
        m["content_urls"] = json!(f.content_urls);
    }
    m
}

/// One named field of the `fields` format.
fn field(name: &str, f: &Facts<'_>, device: Option<&woothee::parser::WootheeResult<'_>>) -> Value {
    match name {
        "event_id" => json!(f.event_id),
        "occurred_at" => json!(f.occurred_at),
        "code" => json!(f.code),
        "short_url" => json!(f.short_url),
        "target_url" => json!(f.target_url),
        "broadcast_id" => json!(f.broadcast_id),
        "recipient" => json!(f.recipient),
        "message_id" => json!(f.message_id),
        "sender" => json!(f.sender),
        "message_ref" => json!(f.message_ref),
        "user_agent" => json!(f.user_agent),
        "ip" => json!(f.ip),
        "device" => json!(device.map(|d| d.category)),
        "os" => json!(device.map(|d| d.os)),
        "browser" => json!(device.map(|d| d.name)),
        "hits" => json!(f.hits),
        "first_click" => json!(f.first_click),
        "workspace_id" => json!(f.workspace_id),
        "name" => json!(f.conversion.map(|c| c.name)),
        "value" => json!(f.conversion.and_then(|c| c.value)),
        "currency" => json!(f.conversion.map(|c| c.currency)),
        "click_id" => json!(f.conversion.and_then(|c| c.click_id)),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts<'static> {
        Facts {
            event_id: "4b0e7a57-5d58-4a9e-9d3b-0c5f7d9f1e11",
            occurred_at: "2026-11-29T12:00:00Z",
            code: "Ab3_x-9Q",
            short_url: "https://s.example/Ab3_x-9Q",
            target_url: Some("https://shop.example/fall"),
            broadcast_id: Some("fall_campaign"),
            recipient: Some("+12025550293"),
            message_id: Some("9e09ac86-0d6f-4d8a-8a3e-1d2f1f1c0a11"),
            sender: Some("61481074191"),
            message_ref: Some("D701"),
            user_agent: Some(
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
            ),
            ip: Some("203.0.113.0"),
            hits: 3,
            first_click: false,
            workspace_id: "ws_1",
            source: "link",
            message_type: "SMS",
            message: None,
            subject: None,
            content_urls: &[],
            conversion: None,
        }
    }

    fn literal(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn eight_by_eight_click() {
        assert_eq!(
            render(Format::EightByEight, &[], EventKind::Click, &facts()),
            literal(
                r#"{"namespace": "SMS", "eventType": "short_url_clicked", "description": "Short URL from SMS clicked",
                "payload": {"eventId": "4b0e7a57-5d58-4a9e-9d3b-0c5f7d9f1e11", "occurredAt": "2026-11-29T12:00:00Z",
                            "umid": "9e09ac86-0d6f-4d8a-8a3e-1d2f1f1c0a11", "destination": "+12025550293",
                            "shortUrl": "https://s.example/Ab3_x-9Q", "targetUrl": "https://shop.example/fall"}}"#
            )
        );
    }

    #[test]
    fn eight_by_eight_opt_out() {
        assert_eq!(
            render(Format::EightByEight, &[], EventKind::OptOut, &facts()),
            literal(
                r#"{"namespace": "SMS", "eventType": "opt_out", "description": "Recipient opted out via short URL",
                "payload": {"eventId": "4b0e7a57-5d58-4a9e-9d3b-0c5f7d9f1e11", "occurredAt": "2026-11-29T12:00:00Z",
                            "umid": "9e09ac86-0d6f-4d8a-8a3e-1d2f1f1c0a11", "destination": "+12025550293", "source": "link"}}"#
            )
        );
    }

    #[test]
    fn link_hit_click_and_opt_out() {
        assert_eq!(
            render(Format::LinkHit, &[], EventKind::Click, &facts()),
            literal(
                r#"{"event_type": "LINK_HIT", "timestamp": "2026-11-29T12:00:00Z",
                "link_hit": {"hits": 3, "url": "https://shop.example/fall",
                  "source_message": {"type": "SMS", "id": "9e09ac86-0d6f-4d8a-8a3e-1d2f1f1c0a11", "message": null, "message_ref": "D701",
                                     "recipient": "+12025550293", "sender": "61481074191"}}}"#
            )
        );
        assert_eq!(
            render(Format::LinkHit, &[], EventKind::OptOut, &facts()),
            literal(
                r#"{"event_type": "OPT_OUT", "timestamp": "2026-11-29T12:00:00Z",
                "opt_out": {"source": "LINK_HIT",
                  "source_message": {"type": "SMS", "id": "9e09ac86-0d6f-4d8a-8a3e-1d2f1f1c0a11", "message": null, "message_ref": "D701",
                                     "recipient": "+12025550293", "sender": "61481074191"}}}"#
            )
        );
    }

    #[test]
    fn fields_hold_exactly_the_selection() {
        let all: Vec<&str> = crate::model::CLICK_FIELDS.to_vec();
        assert_eq!(
            render(Format::Fields, &all, EventKind::Click, &facts()),
            literal(
                r#"{"event_id": "4b0e7a57-5d58-4a9e-9d3b-0c5f7d9f1e11", "occurred_at": "2026-11-29T12:00:00Z",
                "code": "Ab3_x-9Q", "short_url": "https://s.example/Ab3_x-9Q", "target_url": "https://shop.example/fall",
                "broadcast_id": "fall_campaign", "recipient": "+12025550293", "message_id": "9e09ac86-0d6f-4d8a-8a3e-1d2f1f1c0a11",
                "sender": "61481074191", "message_ref": "D701",
                "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
                "ip": "203.0.113.0", "device": "smartphone", "os": "iPhone", "browser": "Safari",
                "hits": 3, "first_click": false, "workspace_id": "ws_1"}"#
            )
        );
        assert_eq!(
            render(Format::Fields, &["hits", "recipient"], EventKind::Click, &facts()),
            literal(r#"{"hits": 3, "recipient": "+12025550293"}"#)
        );
    }

    #[test]
    fn missing_facts_are_null() {
        let f = Facts { message_id: None, sender: None, ..facts() };
        let v = render(Format::LinkHit, &[], EventKind::Click, &f);
        assert_eq!(v["link_hit"]["source_message"]["id"], Value::Null);
        assert_eq!(v["link_hit"]["source_message"]["sender"], Value::Null);
    }

    #[test]
    fn burst_samples_mms_and_inbound_opt_out() {
        // Burst's MMS LINK_HIT sample (vendor docs), whole-second timestamp.
        let urls = vec!["https://res.cloudinary.com/burstsms/image/upload/v1618798563/284KB_qgqtbe.jpg".to_owned()];
        let f = Facts {
            occurred_at: "2021-05-06T05:19:42Z",
            target_url: Some("https://www.example.com/abc"),
            message_id: Some("b50e4dc1-e57f-459c-a15c-526bee00a4c4"),
            message: Some("Hey, Check this out! http://clckme.info/KYhSsuIH Opt-out reply STOP"),
            message_ref: Some("D701"),
            recipient: Some("61435790000"),
            sender: Some("61481074191"),
            message_type: "MMS",
            subject: Some("Hello"),
            content_urls: &urls,
            hits: 1,
            ..facts()
        };
        assert_eq!(
            render(Format::LinkHit, &[], EventKind::Click, &f),
            literal(
                r#"{"event_type": "LINK_HIT", "timestamp": "2021-05-06T05:19:42Z",
                "link_hit": {"hits": 1, "url": "https://www.example.com/abc",
                  "source_message": {"type": "MMS", "id": "b50e4dc1-e57f-459c-a15c-526bee00a4c4",
                    "message": "Hey, Check this out! http://clckme.info/KYhSsuIH Opt-out reply STOP",
                    "message_ref": "D701", "recipient": "61435790000", "sender": "61481074191", "subject": "Hello",
                    "content_urls": ["https://res.cloudinary.com/burstsms/image/upload/v1618798563/284KB_qgqtbe.jpg"]}}}"#
            )
        );
        let f = Facts { source: crate::model::OPT_OUT_SMS, ..facts() };
        assert_eq!(render(Format::LinkHit, &[], EventKind::OptOut, &f)["opt_out"]["source"], "SMS_INBOUND");
        assert_eq!(render(Format::EightByEight, &[], EventKind::OptOut, &f)["payload"]["source"], "sms_inbound");
        assert_eq!(render(Format::Fields, &[], EventKind::OptOut, &f)["source"], "sms_inbound");
    }

    #[test]
    fn conversions_in_the_three_formats() {
        let f = Facts {
            conversion: Some(ConversionFacts {
                name: "purchase",
                value: Some(49.9),
                currency: "USD",
                click_id: Some("Ab3_x-9Q.AAAA"),
            }),
            ..facts()
        };
        assert_eq!(
            render(Format::EightByEight, &[], EventKind::Conversion, &f),
            literal(
                r#"{"namespace": "SMS", "eventType": "conversion", "description": "Conversion after short URL click",
                "payload": {"eventId": "4b0e7a57-5d58-4a9e-9d3b-0c5f7d9f1e11", "occurredAt": "2026-11-29T12:00:00Z",
                            "umid": "9e09ac86-0d6f-4d8a-8a3e-1d2f1f1c0a11", "destination": "+12025550293",
                            "shortUrl": "https://s.example/Ab3_x-9Q", "targetUrl": "https://shop.example/fall",
                            "name": "purchase", "value": 49.9, "currency": "USD"}}"#
            )
        );
        let v = render(Format::LinkHit, &[], EventKind::Conversion, &f);
        assert_eq!(v["event_type"], "CONVERSION");
        assert_eq!(v["conversion"]["name"], "purchase");
        assert_eq!(v["conversion"]["value"], 49.9);
        assert_eq!(v["conversion"]["url"], "https://shop.example/fall");
        assert_eq!(v["conversion"]["source_message"]["id"], "9e09ac86-0d6f-4d8a-8a3e-1d2f1f1c0a11");
        assert_eq!(
            render(Format::Fields, &["click_id", "name", "value", "currency", "recipient"], EventKind::Conversion, &f),
            literal(
                r#"{"click_id": "Ab3_x-9Q.AAAA", "name": "purchase", "value": 49.9, "currency": "USD",
                    "recipient": "+12025550293"}"#
            )
        );
    }
}
