//! Admin routes: create workspaces and API keys. Guarded by the admin bearer token.

use chrono::Utc;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{ApiResult, authorize_admin, json, parse_json, read_body};
use crate::app::App;
use crate::auth;
use crate::error::ApiError;
use crate::model::{ApiKeyRecord, Permission, Workspace};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateWorkspace {
    name: Option<serde_json::Value>,
}

/// `POST /api/v1/workspaces` → 201 `{"workspace_id", "api_key"}`; the key holds every permission.
pub async fn create_workspace(app: &App, req: Request<Incoming>) -> ApiResult {
    authorize_admin(app, req.headers())?;
    let body: CreateWorkspace = parse_json(&read_body(req, app.config.max_body_bytes).await?)?;
    let name = match body.name {
        Some(serde_json::Value::String(name)) if crate::validate::is_reasonable_text(name.trim(), 200) => {
            name.trim().to_owned()
        }
        _ => {
            return Err(ApiError::bad_request(
                "INVALID_NAME",
                "name must be a non-empty string of at most 200 characters",
            ));
        }
    };
    let workspace = Workspace { id: auth::new_workspace_id(), name, created_at: Utc::now() };
    app.store.create_workspace(&workspace).await?;
    let api_key = issue_key(app, &workspace.id, Permission::ALL.to_vec()).await?;
    json(
        StatusCode::CREATED,
        &json!({
            "workspace_id": workspace.id,
            "name": workspace.name,
            "api_key": api_key,
            "permissions": Permission::ALL.map(Permission::as_str),
            "created_at": crate::model::rfc3339(workspace.created_at),
        }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    permissions: Option<serde_json::Value>,
}

/// `POST /api/v1/workspaces/{id}/keys` → 201 `{"api_key"}` with the listed permissions.
pub async fn create_key(app: &App, req: Request<Incoming>, workspace_id: &str) -> ApiResult {
    authorize_admin(app, req.headers())?;
    let body: CreateKey = parse_json(&read_body(req, app.config.max_body_bytes).await?)?;
    let permissions = parse_permissions(body.permissions)?;
    if app.store.get_workspace(workspace_id).await?.is_none() {
        return Err(ApiError::not_found("WORKSPACE_NOT_FOUND", "no such workspace"));
    }
    let api_key = issue_key(app, workspace_id, permissions.clone()).await?;
    json(
        StatusCode::CREATED,
        &json!({
            "api_key": api_key,
            "workspace_id": workspace_id,
            "permissions": permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        }),
    )
}

/// A non-empty list of known permission names, without duplicates.
fn parse_permissions(raw: Option<serde_json::Value>) -> Result<Vec<Permission>, ApiError> {
    let invalid = |what: String| {
        ApiError::bad_request(
            "INVALID_PERMISSIONS",
            format!(
                "{what}; permissions must be a non-empty list of: links.write, links.read, stats.read, webhooks.write, webhooks.read"
            ),
        )
    };
    let Some(serde_json::Value::Array(items)) = raw else {
        return Err(invalid("permissions is missing or not a list".into()));
    };
    if items.is_empty() {
        return Err(invalid("permissions is empty".into()));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let name = item.as_str().ok_or_else(|| invalid(format!("{item} is not a string")))?;
        let permission = Permission::parse(name).ok_or_else(|| invalid(format!("unknown permission `{name}`")))?;
        if !out.contains(&permission) {
            out.push(permission);
        }
    }
    Ok(out)
}

async fn issue_key(app: &App, workspace_id: &str, permissions: Vec<Permission>) -> Result<String, ApiError> {
    let raw = auth::new_api_key();
    let record = ApiKeyRecord {
        key_hash: auth::hash_key(&raw),
        key_prefix: auth::key_prefix(&raw),
        workspace_id: workspace_id.to_owned(),
        permissions,
        created_at: Utc::now(),
    };
    app.store.put_api_key(&record).await?;
    tracing::info!(workspace_id, key_prefix = %record.key_prefix, "API key issued");
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn permission_lists() {
        assert_eq!(parse_permissions(Some(json!(["stats.read"]))).unwrap(), vec![Permission::StatsRead]);
        assert_eq!(parse_permissions(Some(json!(["links.read", "links.read"]))).unwrap(), vec![Permission::LinksRead]);
        for bad in [json!([]), json!(["admin"]), json!("links.read"), json!([1]), json!(null)] {
            assert_eq!(parse_permissions(Some(bad.clone())).unwrap_err().code, "INVALID_PERMISSIONS", "{bad}");
        }
        assert_eq!(parse_permissions(None).unwrap_err().code, "INVALID_PERMISSIONS");
    }
}
