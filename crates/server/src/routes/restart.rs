//! `POST /stacks/:slug/restart`: restart the live release's services in place (all of them, or
//! the one the optional body names), as a durable `restart` job.

use crate::auth::{Caller, TeamCaller, audit_ctx};
use crate::error::{ApiError, ApiResult};
use crate::extract::OptionalJsonBody;
use crate::middleware::RequestId;
use crate::routes::parse_slug;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use stackyard_api::{RestartRequest, Restarted};
use stackyard_core::ServiceName;
use stackyard_core::store::{RestartError, RestartQueued, Store};

#[utoipa::path(post, path = "/stacks/{slug}/restart", tag = "stacks",
    description = "Restarts the live release's services in place, one after another (same code, env, port and URL; no new release): every service, or the one `service` names. Also clears a crash-looped `failed` service. Auth required.",
    security(("bearer" = [])),
    params(("slug" = String, Path, description = "The stack's id (`stk-…`)")),
    request_body(content = Option<RestartRequest>, content_type = "application/json", description = "Optional: without a body (or with an empty one) every service restarts"),
    responses((status = 202, description = "Accepted; the restart job is queued and the services are `restarting`", body = Restarted),
        (status = 400, description = "`unknown_service`: the live release has no service by that name"),
        (status = 404, description = "`not_found`: no stack with that id for this team"),
        (status = 409, description = "`stack_deleting`: the stack is being deleted; `not_running`: the stack is not running a live release (a deploy runs, or none went live)"),
        (status = 503, description = "`persist_failed`: the store is unavailable")))]
pub async fn restart<S: Store>(
    State(state): State<AppState<S>>,
    TeamCaller(p): TeamCaller,
    rid: RequestId,
    Path(slug): Path<String>,
    // `null` is a body too: the whole stack, like no body.
    OptionalJsonBody(body): OptionalJsonBody<Option<RestartRequest>>,
) -> ApiResult<(StatusCode, Json<Restarted>)> {
    let slug = parse_slug(&slug)?;
    let service = match body.flatten().and_then(|b| b.service) {
        None => None,
        Some(raw) => Some(ServiceName::parse(&raw).map_err(|_| unknown_service(None))?),
    };
    let caller = Caller::Team(p);
    let queued = state
        .store
        .request_restart(caller.access(), &slug, service, audit_ctx(&caller, &rid))
        .await
        .map_err(restart_error)?;
    state.jobs_ready.notify_one();
    let RestartQueued {
        stack,
        release,
        services,
    } = queued;
    Ok((
        StatusCode::ACCEPTED,
        Json(Restarted {
            ok: true,
            stack_id: stack.slug.to_string(),
            status: stack.status,
            release: (&release).into(),
            services: services.iter().map(ToString::to_string).collect(),
        }),
    ))
}

fn unknown_service(name: Option<&ServiceName>) -> ApiError {
    let message = match name {
        Some(n) => format!("The live release has no service `{n}`."),
        None => {
            "`service` is not a valid service name, so it names no service of the live release."
                .to_owned()
        }
    };
    ApiError::bad_request("unknown_service", message).with_action(
        "Name one of the stack's services (GET /stacks/<id> lists them), or send no body to restart them all.",
    )
}

fn restart_error(e: RestartError) -> ApiError {
    match e {
        RestartError::NotFound => ApiError::not_found(),
        RestartError::Deleting => ApiError::new(
            StatusCode::CONFLICT,
            "stack_deleting",
            "The stack is being deleted; there is nothing to restart.",
        )
        .with_action("Create a new stack instead; this one is being torn down."),
        RestartError::NotRunning { status } => ApiError::new(
            StatusCode::CONFLICT,
            "not_running",
            format!("The stack is not running a live release (it is {status}), so there is nothing to restart."),
        )
        .with_action("Wait until its deploy has finished (GET /stacks/<id>) and retry; a stack whose first deploy failed needs a redeploy instead."),
        RestartError::UnknownService(name) => unknown_service(Some(&name)),
        RestartError::Store(e) => ApiError::store("persist_failed", &e),
    }
}
