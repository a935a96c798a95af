//! The OpenAPI document, built by `router` from the same list that routes the handlers. Each
//! handler's `#[utoipa::path]` states its success bodies and its own error codes; `Document::add`
//! completes every operation with what all routes share, so no route can forget it: the error
//! envelope as the body of every 4xx/5xx, the answers the extractors and middleware give
//! (`invalid_query`, `invalid_body`, `unsupported_media_type`, `payload_too_large`,
//! `unauthorized`, idempotency conflicts, …), and the headers they send (`X-Request-Id`,
//! `Retry-After`, `Idempotent-Replay`). Imports no route module.

use stackyard_api::{ErrorEnvelope, StackEventData};
use std::collections::BTreeMap;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::{HttpMethod, Operation, ParameterIn, Paths};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr, Response,
    Tag,
};
use utoipa::{PartialSchema, ToSchema};

/// The bearer-token security scheme's name in the document.
pub const BEARER: &str = "bearer";

/// Paths and component schemas collected route by route.
#[derive(Default)]
pub struct Document {
    paths: Paths,
    schemas: Vec<(String, RefOr<Schema>)>,
}

impl Document {
    /// Adds the operation `P` documents, completed with the shared answers.
    pub fn add<P>(&mut self, path: &str, methods: Vec<HttpMethod>)
    where
        P: utoipa::Path + utoipa::__dev::SchemaReferences + for<'t> utoipa::__dev::Tags<'t>,
    {
        let mut operation = P::operation();
        let tags = P::tags();
        if !tags.is_empty() {
            operation.tags = Some(tags.iter().map(|t| (*t).to_owned()).collect());
        }
        P::schemas(&mut self.schemas);
        complete(&mut operation);
        self.paths.add_path_operation(path, methods, operation);
    }

    pub fn build(mut self) -> OpenApi {
        self.schemas
            .push((ErrorEnvelope::name().into_owned(), ErrorEnvelope::schema()));
        // The JSON inside each events-stream `data:`, which the stream's item schema only names.
        self.schemas.push((
            StackEventData::name().into_owned(),
            StackEventData::schema(),
        ));
        let schemas: BTreeMap<_, _> = self.schemas.into_iter().collect();
        let components = ComponentsBuilder::new()
            .schemas_from_iter(schemas)
            .security_scheme(
                BEARER,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("A team's API token: `Authorization: Bearer <token>`."))
                        .build(),
                ),
            )
            .build();
        OpenApiBuilder::new()
            .info(
                InfoBuilder::new()
                    .title("Stackyard")
                    .version(env!("CARGO_PKG_VERSION"))
                    .description(Some("Self-hosted control plane for multi-service stacks; wire-compatible with the InstaNode stacks API. Every 4xx/5xx body is the `ErrorEnvelope`; every response carries `X-Request-Id`."))
                    .build(),
            )
            .paths(self.paths)
            .components(Some(components))
            .tags(Some(
                ["stacks", "env", "tokens", "audit", "ops"]
                    .into_iter()
                    .map(Tag::new)
                    .collect::<Vec<_>>(),
            ))
            .build()
    }
}

/// What the operation's parameters and body say about the answers its extractors give.
struct Shape {
    query: bool,
    idempotent: bool,
    json_body: bool,
    any_body: bool,
    authenticated: bool,
}

impl Shape {
    fn of(op: &Operation) -> Shape {
        let params: Vec<_> = op
            .parameters
            .iter()
            .flatten()
            .filter_map(|p| match p {
                RefOr::T(p) => Some(p),
                RefOr::Ref(_) => None,
            })
            .collect();
        let body_types: Vec<&str> = op
            .request_body
            .iter()
            .filter_map(|b| match b {
                RefOr::T(b) => Some(b.content.keys().map(String::as_str)),
                RefOr::Ref(_) => None,
            })
            .flatten()
            .collect();
        Shape {
            query: params
                .iter()
                .any(|p| matches!(p.parameter_in, ParameterIn::Query)),
            idempotent: params.iter().any(|p| {
                matches!(p.parameter_in, ParameterIn::Header)
                    && p.name.eq_ignore_ascii_case("Idempotency-Key")
            }),
            json_body: body_types.contains(&"application/json"),
            any_body: !body_types.is_empty(),
            authenticated: op.security.as_ref().is_some_and(|s| !s.is_empty()),
        }
    }
}

/// Adds the shared answers to `op` and gives every error answer the envelope body.
fn complete(op: &mut Operation) {
    let shape = Shape::of(op);
    for param in op.parameters.iter_mut().flatten() {
        if let RefOr::T(p) = param
            && p.name.eq_ignore_ascii_case("Idempotency-Key")
        {
            p.schema = Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[!-~]{1,255}$"))
                    .into(),
            );
        }
    }
    if shape.query {
        error(
            op,
            400,
            "invalid_query",
            "a query parameter has the wrong type",
        );
    }
    if shape.json_body {
        error(
            op,
            400,
            "invalid_body",
            "the body is not JSON of the documented shape",
        );
        error(
            op,
            415,
            "unsupported_media_type",
            "the body is not `application/json`",
        );
    }
    if shape.any_body {
        error(op, 413, "payload_too_large", "the body is over 50 MiB");
    }
    if shape.authenticated {
        error(
            op,
            401,
            "unauthorized",
            "no token where one is required, or a token that is malformed, unknown or revoked (never a silent downgrade to anonymous)",
        );
    }
    if shape.idempotent {
        error(
            op,
            400,
            "invalid_idempotency_key",
            "`Idempotency-Key` is not 1-255 visible ASCII characters",
        );
        error(
            op,
            409,
            "idempotency_in_progress",
            "the first request with this `Idempotency-Key` is still running",
        );
        error(
            op,
            422,
            "idempotency_key_reused",
            "this `Idempotency-Key` was used with a different request",
        );
    }
    error(
        op,
        431,
        "headers_too_large",
        "the request headers are over 64 KiB",
    );
    error(
        op,
        500,
        "internal_error",
        "the server failed (a bug; the details are logged, not sent)",
    );

    for (status, response) in op.responses.responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        let code: u16 = status.parse().unwrap_or(0);
        response.headers.insert(
            "X-Request-Id".into(),
            header("The request's id: the caller's if it sent a sane one, else a new one."),
        );
        if code >= 400 {
            response.content.insert(
                "application/json".into(),
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(ErrorEnvelope::name())))
                    .build()
                    .into(),
            );
        }
        if code == 429 || code == 503 {
            response.headers.insert(
                "Retry-After".into(),
                header_of(
                    Type::Integer,
                    "Seconds to wait before retrying; also `retry_after_seconds` in the body.",
                ),
            );
        }
        if (200..300).contains(&code) && shape.idempotent {
            response.headers.insert(
                "Idempotent-Replay".into(),
                header("`true` when this is the stored answer to an earlier request with the same `Idempotency-Key`."),
            );
        }
    }
}

/// Documents that `op` may answer `status` with error `code`: merged into the response the
/// handler declared for that status, or a new one.
fn error(op: &mut Operation, status: u16, code: &str, when: &str) {
    let entry = op
        .responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| RefOr::T(Response::new("")));
    if let RefOr::T(response) = entry
        && !response.description.contains(code)
    {
        let line = format!("`{code}`: {when}");
        response.description = if response.description.is_empty() {
            line
        } else {
            format!("{}; {line}", response.description)
        };
    }
}

fn header(description: &str) -> RefOr<Header> {
    header_of(Type::String, description)
}

fn header_of(ty: Type, description: &str) -> RefOr<Header> {
    RefOr::T(
        HeaderBuilder::new()
            .schema(Some(
                utoipa::openapi::schema::ObjectBuilder::new().schema_type(ty),
            ))
            .description(Some(description))
            .build(),
    )
}
