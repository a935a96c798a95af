//! The OpenAPI document served at `/openapi.json`, assembled from the handlers' annotations.

use crate::routes::{audit, env, ops, releases, stacks, streams, tokens};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Stackyard", description = "Self-hosted control plane for multi-service stacks; wire-compatible with the InstaNode stacks API."),
    paths(
        stacks::create, stacks::get_compat, stacks::get_v1, stacks::list, stacks::delete,
        releases::redeploy, releases::list, streams::logs, streams::events,
        env::patch, env::get, env::versions, env::rollback,
        tokens::whoami, tokens::list, tokens::create, tokens::revoke,
        audit::list,
        ops::healthz, ops::readyz, ops::metrics, ops::openapi,
    ),
    tags((name = "stacks"), (name = "env"), (name = "tokens"), (name = "audit"), (name = "ops"))
)]
struct ApiDoc;

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
