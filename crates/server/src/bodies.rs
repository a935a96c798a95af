//! The response bodies an idempotent replay must return byte for byte: one function per route
//! renders the typed body (`stackyard_api`) to the `String` that is both sent live and stored
//! with the change, so the two cannot differ. Pure: imports no other module of the server.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use stackyard_api::{CreatedResource, CreatedStack, EnvWriteResponse, Redeployed};
use stackyard_core::StackSlug;
use stackyard_core::model::{EnvOutcome, ReleaseInfo, StackStatus};

/// `POST /stacks/new` 202.
pub fn create_body(body: &CreatedStack) -> String {
    stackyard_api::to_json_string(body, 512)
}

/// `POST /stacks/:slug/redeploy` 202; also rendered by the store under the stack's lock for the
/// idempotency record (the release number is only known there).
pub fn redeploy_body(slug: &StackSlug, info: &ReleaseInfo, note: &str) -> String {
    let body = Redeployed {
        ok: true,
        stack_id: slug.to_string(),
        status: StackStatus::Building,
        release: info.into(),
        note: note.to_owned(),
    };
    stackyard_api::to_json_string(&body, 256)
}

/// `PATCH /stacks/:slug/env` and `POST /stacks/:slug/env/rollback` 200 (`dry_run`: their dry
/// runs); also rendered by the store in the batch's transaction for each write's idempotency
/// record. The masked map is streamed from the outcome's `EnvMap`, not copied.
pub fn env_body(slug: &StackSlug, o: &EnvOutcome, dry_run: bool) -> String {
    EnvWriteResponse::new(slug.as_str(), o, dry_run).to_json()
}

/// `POST /db/new` and `POST /cache/new` 201.
pub fn resource_body(body: &CreatedResource) -> String {
    stackyard_api::to_json_string(body, 512)
}

/// A rendered body as a JSON response.
pub fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}
