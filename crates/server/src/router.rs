//! The one route list. Each entry registers a handler on the axum router under the methods and
//! path its `#[utoipa::path]` declares and adds that operation to the OpenAPI document served at
//! `/openapi.json`, so a route cannot be served undocumented, nor documented unserved (the one
//! exception: `/internal/…`, Stackyard's own machinery, served but kept out of the public
//! document). Then the fallbacks (404/405 envelopes) and the layers every request goes through.

use crate::error::ApiError;
use crate::middleware;
use crate::middleware::MAX_BODY_BYTES;
use crate::openapi::Document;
use crate::routes::ops::OpenApiJson;
use crate::routes::{
    audit, domains, env, family, internal, ops, releases, resources, restart, stacks, streams,
    tokens, vault,
};
use crate::state::AppState;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::routing::{MethodFilter, MethodRouter};
use axum::{Extension, Router};
use stackyard_core::store::Store;
use utoipa::openapi::path::HttpMethod;

/// Every route. `module::handler as __path_handler`: the handler, and the type its
/// `#[utoipa::path]` generates (checked against the handler's name when the router is built).
macro_rules! api {
    ($($module:ident :: $handler:ident $(::<$s:ident>)? as $doc:ident),+ $(,)?) => {
        Api::new()
            $( .route::<$module::$doc, _, _>(stringify!($handler), $module::$handler $(::<$s>)?) )+
    };
}

pub fn router<S: Store>(state: AppState<S>) -> Router {
    let Api { router, doc } = api! {
        stacks::create::<S> as __path_create,
        stacks::get_compat::<S> as __path_get_compat,
        stacks::delete::<S> as __path_delete,
        stacks::list::<S> as __path_list,
        stacks::get_v1::<S> as __path_get_v1,
        releases::redeploy::<S> as __path_redeploy,
        releases::list::<S> as __path_list,
        family::family::<S> as __path_family,
        family::promote::<S> as __path_promote,
        family::approve::<S> as __path_approve,
        family::reject::<S> as __path_reject,
        family::list::<S> as __path_list,
        domains::add::<S> as __path_add,
        domains::list::<S> as __path_list,
        domains::verify::<S> as __path_verify,
        domains::remove::<S> as __path_remove,
        restart::restart::<S> as __path_restart,
        streams::logs::<S> as __path_logs,
        streams::events::<S> as __path_events,
        env::patch::<S> as __path_patch,
        env::get::<S> as __path_get,
        env::versions::<S> as __path_versions,
        env::rollback::<S> as __path_rollback,
        tokens::whoami::<S> as __path_whoami,
        tokens::list::<S> as __path_list,
        tokens::create::<S> as __path_create,
        tokens::revoke::<S> as __path_revoke,
        audit::list::<S> as __path_list,
        resources::create_db::<S> as __path_create_db,
        resources::create_cache::<S> as __path_create_cache,
        resources::list::<S> as __path_list,
        resources::get::<S> as __path_get,
        resources::delete::<S> as __path_delete,
        vault::copy::<S> as __path_copy,
        vault::put::<S> as __path_put,
        vault::get::<S> as __path_get,
        vault::delete::<S> as __path_delete,
        vault::rotate::<S> as __path_rotate,
        vault::list::<S> as __path_list,
        ops::healthz as __path_healthz,
        ops::readyz::<S> as __path_readyz,
        ops::metrics::<S> as __path_metrics,
        ops::openapi as __path_openapi,
    };
    let document = OpenApiJson(serde_json::to_vec(&doc.build()).unwrap_or_default().into());
    let api = router
        // Stackyard's own machinery, outside the route list so that the public document does
        // not show it; the same layers (envelope, limits) as every route.
        .route(
            "/internal/artifacts/{digest}",
            axum::routing::get(internal::artifact::<S>),
        )
        .fallback(|| async { ApiError::from_status(StatusCode::NOT_FOUND) })
        .method_not_allowed_fallback(|| async {
            ApiError::from_status(StatusCode::METHOD_NOT_ALLOWED)
        })
        .layer(Extension(document))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            middleware::panic_response,
        ))
        .layer(axum::middleware::from_fn(middleware::envelope))
        .with_state(state.clone());
    // The dashboard answers HTML under `/ui` with its own layers; it reaches the API only
    // through `api` itself, in-process. Everything else is the API's.
    Router::new()
        .route(
            "/ui/",
            axum::routing::get(|| async { axum::response::Redirect::to("/ui/stacks") }),
        )
        .nest("/ui", crate::ui::router(state, api.clone()))
        .fallback_service(api)
}

/// A router and the document of its routes, built together.
struct Api<S: Store> {
    router: Router<AppState<S>>,
    doc: Document,
}

impl<S: Store> Api<S> {
    fn new() -> Self {
        Self {
            router: Router::new(),
            doc: Document::default(),
        }
    }

    /// Routes `handler` as operation `P` declares it and documents it.
    fn route<P, H, T>(mut self, name: &str, handler: H) -> Self
    where
        P: utoipa::Path + utoipa::__dev::SchemaReferences + for<'t> utoipa::__dev::Tags<'t>,
        H: Handler<T, AppState<S>>,
        T: 'static,
    {
        let operation_id = P::operation().operation_id;
        assert_eq!(
            operation_id.as_deref(),
            Some(name),
            "route list entry `{name}` names another handler's documentation"
        );
        let path = P::path();
        let methods = P::methods();
        let method_router = methods
            .iter()
            .fold(MethodRouter::new(), |r, m| r.on(filter(m), handler.clone()));
        self.router = self.router.route(&path, method_router);
        self.doc.add::<P>(&path, methods);
        self
    }
}

fn filter(method: &HttpMethod) -> MethodFilter {
    match method {
        HttpMethod::Get => MethodFilter::GET,
        HttpMethod::Post => MethodFilter::POST,
        HttpMethod::Put => MethodFilter::PUT,
        HttpMethod::Delete => MethodFilter::DELETE,
        HttpMethod::Options => MethodFilter::OPTIONS,
        HttpMethod::Head => MethodFilter::HEAD,
        HttpMethod::Patch => MethodFilter::PATCH,
        HttpMethod::Trace => MethodFilter::TRACE,
    }
}
