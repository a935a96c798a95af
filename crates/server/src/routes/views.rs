//! JSON shapes of the API responses, in one place so the compat field names are easy to audit
//! against `shared/spec/api.md`.

use serde_json::{Value, json};
use stackyard_core::model::{AuditEntry, ReleaseInfo, Service, Stack, StackDetail, TokenInfo};

pub fn release(r: &ReleaseInfo) -> Value {
    json!({
        "version": r.version,
        "name": format!("v{}", r.version),
        "status": r.status,
        "env_version": r.env_version,
        "created_at": r.created_at.to_rfc3339(),
    })
}

pub fn service(s: &Service) -> Value {
    json!({
        "name": s.name,
        "status": s.status,
        "expose": s.expose,
        "port": s.port,
        "url": s.url,
        "error": s.error,
    })
}

/// `GET /stacks/:slug`.
pub fn stack_detail(d: &StackDetail) -> Value {
    let s = &d.stack;
    let mut v = json!({
        "ok": true,
        "stack_id": s.slug,
        "name": s.name,
        "env": s.environment,
        "status": s.status,
        "tier": s.tier,
        "services": d.services.iter().map(service).collect::<Vec<_>>(),
        "env_version": s.env_version,
        "release": d.release.as_ref().map(release),
        "created_at": s.created_at.to_rfc3339(),
        "updated_at": s.updated_at.to_rfc3339(),
    });
    if let Some(e) = &s.error {
        v["error"] = json!(e);
    }
    if let Some(t) = s.expires_at {
        v["expires_at"] = json!(t.to_rfc3339());
    }
    v
}

/// An item of `GET /api/v1/stacks`.
pub fn stack_summary(s: &Stack) -> Value {
    json!({
        "stack_id": s.slug,
        "name": s.name,
        "status": s.status,
        "tier": s.tier,
        "env": s.environment,
        "created_at": s.created_at.to_rfc3339(),
        "updated_at": s.updated_at.to_rfc3339(),
    })
}

pub fn token(t: &TokenInfo) -> Value {
    json!({ "id": t.id, "name": t.name, "created_at": t.created_at.to_rfc3339() })
}

pub fn audit_entry(a: &AuditEntry) -> Value {
    json!({
        "id": a.id,
        "at": a.at.to_rfc3339(),
        "actor": a.actor,
        "kind": a.kind,
        "stack_id": a.stack_id,
        "request_id": a.request_id,
        "metadata": a.metadata,
    })
}
