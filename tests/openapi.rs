//! docs/openapi.yaml and the running server agree: every operation of the spec is called on a server
//! bound on port 0 (with the spec's request examples and fixture path parameters), its status must be
//! one the spec documents, and JSON answers must satisfy the documented schema (required properties,
//! types incl. OpenAPI 3.1 type lists such as `["string", "null"]`, enums; `$ref` and `allOf` resolved).
//! Each secured operation also answers 401 without credentials, as documented; and every route the
//! server serves under /api/v1 is in the spec.

mod common;

use std::time::Duration;

use common::{ADMIN, Env, IPHONE, Receiver, send, tap};
use serde_json::{Value, json};

fn spec() -> Value {
    let yaml: serde_yaml::Value = serde_yaml::from_str(include_str!("../docs/openapi.yaml")).unwrap();
    serde_json::to_value(yaml).unwrap()
}

fn resolve<'a>(spec: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let path = r.trim_start_matches("#/").split('/');
            resolve(spec, path.fold(spec, |v, p| &v[p]))
        }
        None => node,
    }
}

/// Checks `value` against `schema`; returns the problems found.
fn check(spec: &Value, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for part in all {
            check(spec, part, value, at, problems);
        }
        return;
    }
    // OpenAPI 3.1: `type` is a name or a list of names; `["string", "null"]` is a nullable string.
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if value.is_null() {
        if !types.is_empty() && !types.contains(&"null") {
            problems.push(format!("{at}: null but the type {} does not include \"null\"", schema["type"]));
        }
        return;
    }
    let ok = types.is_empty()
        || types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_u64() || value.is_i64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => false,
            _ => true,
        });
    if !ok {
        problems.push(format!("{at}: {value} is not {}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        problems.push(format!("{at}: {value} not in {allowed:?}"));
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if value.get(name).is_none() {
                problems.push(format!("{at}: missing required `{name}`"));
            }
        }
    }
    if let (Some(props), Some(obj)) = (schema.get("properties").and_then(Value::as_object), value.as_object()) {
        for (name, sub) in props {
            if let Some(v) = obj.get(name) {
                check(spec, sub, v, &format!("{at}.{name}"), problems);
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            check(spec, items, v, &format!("{at}[{i}]"), problems);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_as_documented() {
    let spec = spec();
    let mut config = common::config(None);
    config.webhook_allow_private = true;
    config.click_flush_interval = Duration::from_millis(50);
    let env = Env::with_config(config, None).await;
    let receiver = Receiver::start().await;
    // Fixtures: a webhook receiver, a broadcast with a clicked link.
    send(
        env.http
            .put(env.url("/api/v1/webhooks"))
            .bearer_auth(&env.key)
            .json(&json!({"click_url": receiver.url, "opt_out_url": receiver.url})),
    )
    .await;
    let (_, body) = env
        .post(
            "/api/v1/broadcasts/fixture/links",
            json!({"target_url": "https://e.com/f", "recipients": [{"recipient": "+12025550100"}]}),
        )
        .await;
    let code = body["links"][0]["code"].as_str().unwrap().to_owned();
    tap(&env.http, &env.server, &code, IPHONE).await;
    env.poll_json(&format!("/api/v1/links/{code}/stats"), Duration::from_secs(1), |s| s["hits"] == 1).await;

    let methods = ["get", "put", "post", "delete", "head"];
    let mut problems = Vec::new();
    let mut operations = 0;
    // DELETE last, so that the other operations see a live link.
    let mut ops: Vec<(String, String, Value)> = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for m in methods {
            if let Some(op) = item.get(m) {
                ops.push((path.clone(), m.to_owned(), op.clone()));
            }
        }
    }
    ops.sort_by_key(|(_, m, _)| m == "delete");
    for (path, method, op) in ops {
        operations += 1;
        let url_path = path
            .replace("{code}", &code)
            .replace("{broadcast_id}", "fixture")
            .replace("{workspace_id}", &env.workspace_id)
            .replace("{recipient}", "+12025550100");
        let security = op.get("security").or(spec.get("security")).cloned().unwrap_or(Value::Null);
        let scheme = security
            .as_array()
            .and_then(|s| s.first())
            .and_then(|s| s.as_object())
            .and_then(|o| o.keys().next().cloned());
        let build = |with_auth: bool| {
            let mut req = env.http.request(method.to_uppercase().parse().unwrap(), env.url(&url_path));
            if with_auth {
                req = match scheme.as_deref() {
                    Some("adminToken") => req.bearer_auth(ADMIN),
                    Some(_) => req.bearer_auth(&env.key),
                    None => req,
                };
            }
            if let Some(example) = op["requestBody"]["content"]["application/json"].get("example") {
                req = req.json(example);
            }
            req
        };
        let resp = build(true).send().await.unwrap();
        let status = resp.status().as_u16();
        let documented = &op["responses"][status.to_string()];
        if documented.is_null() {
            problems.push(format!("{method} {path}: status {status} is not documented"));
            continue;
        }
        let documented = resolve(&spec, documented);
        if let Some(schema) = documented["content"]["application/json"].get("schema") {
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            check(&spec, schema, &body, &format!("{method} {path}"), &mut problems);
        }
        if scheme.is_some() {
            let unauth = build(false).send().await.unwrap().status().as_u16();
            if unauth != 401 || op["responses"]["401"].is_null() {
                problems.push(format!(
                    "{method} {path}: without credentials answered {unauth}, documented 401: {}",
                    !op["responses"]["401"].is_null()
                ));
            }
        }
    }
    assert!(operations >= 22, "only {operations} operations in the spec");
    assert!(problems.is_empty(), "the server and docs/openapi.yaml disagree:\n{}", problems.join("\n"));
}

#[test]
fn every_api_route_of_the_server_is_documented() {
    let spec = spec();
    let paths = spec["paths"].as_object().unwrap();
    // The router's patterns (src/api/mod.rs), written as the spec writes them.
    let served = [
        "/api/v1/workspaces",
        "/api/v1/workspaces/{workspace_id}/keys",
        "/api/v1/links",
        "/api/v1/links/{code}",
        "/api/v1/links/{code}/stats",
        "/api/v1/links/{code}/clicks",
        "/api/v1/broadcasts",
        "/api/v1/broadcasts/{broadcast_id}/links",
        "/api/v1/broadcasts/{broadcast_id}/stats",
        "/api/v1/broadcasts/{broadcast_id}/timeline",
        "/api/v1/messages/shorten",
        "/api/v1/delivery-reports",
        "/api/v1/opt-outs",
        "/api/v1/opt-outs/{recipient}",
        "/api/v1/conversions",
        "/api/v1/webhooks",
        "/api/v1/webhooks/test",
        "/api/v1/webhooks/logs",
        "/api/v1/webhooks/dead-letters",
        "/api/v1/webhooks/dead-letters/replay",
    ];
    let router = include_str!("../src/api/mod.rs");
    for path in served {
        assert!(paths.contains_key(path), "{path} is served but not in docs/openapi.yaml");
        let pattern: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| {
                if s.starts_with('{') {
                    s.trim_matches(|c| c == '{' || c == '}').to_owned()
                } else {
                    format!("\"{s}\"")
                }
            })
            .collect();
        let last_literal = pattern.iter().rev().find(|s| s.starts_with('"')).unwrap();
        assert!(router.contains(last_literal.as_str()), "{path}: the router has no {last_literal}");
    }
    let api_paths = paths.keys().filter(|p| p.starts_with("/api/")).count();
    assert_eq!(api_paths, served.len(), "the spec documents a route the server does not serve");
}
