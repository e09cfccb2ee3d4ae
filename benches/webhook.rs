//! Per-event costs off the hot path: payload rendering per format, Standard Webhooks signing; and the
//! one pipeline cost on the hot path, the capture enqueue.
//!
//! Run: `cargo bench --bench webhook`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use linkhit::model::EventKind;
use linkhit::model::{CLICK_FIELDS, Format};
use linkhit::webhook::payload::{Facts, render};
use linkhit::webhook::sign;

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
        message_type: "SMS",
        source: "link",
        ..Facts::default()
    }
}

fn bench(c: &mut Criterion) {
    let f = facts();
    for (name, format) in [("8x8", Format::EightByEight), ("link_hit", Format::LinkHit), ("fields_all", Format::Fields)]
    {
        c.bench_function(&format!("payload/{name}"), |b| {
            b.iter(|| black_box(render(format, &CLICK_FIELDS, EventKind::Click, black_box(&f)).to_string()))
        });
    }
    let body = render(Format::EightByEight, &[], EventKind::Click, &f).to_string();
    let key = sign::secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    c.bench_function("sign/standard_webhooks", |b| {
        b.iter(|| {
            black_box(sign::signature(&key, "4b0e7a57-5d58-4a9e-9d3b-0c5f7d9f1e11", 1_764_417_600, body.as_bytes()))
        })
    });

    // The capture hand-off exactly as the redirect does it: build the Hit, one try_send.
    let cache = linkhit::redirect::cache::LinkCache::new(10, Duration::from_secs(60), 10, Duration::from_secs(60));
    let link = linkhit::model::Link {
        code: "Ab3_x-9Q".into(),
        workspace_id: "ws_1".into(),
        kind: linkhit::model::LinkKind::Redirect,
        target_url: Some("https://shop.example/fall".into()),
        broadcast_id: Some("fall".into()),
        recipient: Some("+12025550293".into()),
        message_id: None,
        sender: None,
        message_ref: None,
        created_at: chrono::Utc::now(),
        sent_at: None,
        expires_at: None,
        disabled_at: None,
        delivered_at: None,
        delivery_status: None,
        ..Default::default()
    };
    let cached = cache.insert_link(&link, cache.generation());
    let mut headers = hyper::HeaderMap::new();
    headers.insert(hyper::header::USER_AGENT, f.user_agent.unwrap().parse().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::channel(65_536);
    let capture = linkhit::redirect::capture::Capture::new(Some(tx));
    let peer = Some(std::net::IpAddr::from([203, 0, 113, 7]));
    let mut n = 0u32;
    c.bench_function("capture/record", |b| {
        b.iter(|| {
            capture.record(linkhit::redirect::capture::Hit::from_request(cached.clone(), false, &headers, peer));
            n += 1;
            if n == 60_000 {
                n = 0;
                while rx.try_recv().is_ok() {}
            }
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
