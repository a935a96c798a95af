//! One module per resource. Handlers are thin: extract, call one store (or service) function,
//! render the result.

pub mod audit;
pub mod domains;
pub mod env;
pub mod family;
pub mod internal;
pub mod ops;
pub mod releases;
pub mod resources;
pub mod restart;
pub mod stacks;
pub mod streams;
pub mod tokens;
pub mod upload;
pub mod vault;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use stackyard_core::StackSlug;
use stackyard_core::model::{Access, StackDetail};
use stackyard_core::store::Store;

/// A slug from the path. A malformed one cannot name any stack, so it is a plain 404.
pub fn parse_slug(raw: &str) -> Result<StackSlug, ApiError> {
    StackSlug::parse(raw).map_err(|_| ApiError::not_found())
}

/// The stack `access` may see, or 404: a missing stack and another team's look the same.
pub async fn load_stack<S: Store>(
    state: &AppState<S>,
    access: Access,
    slug: &StackSlug,
) -> ApiResult<StackDetail> {
    state
        .store
        .get_stack(access, slug)
        .await
        .map_err(|e| ApiError::store("fetch_failed", &e))?
        .ok_or_else(ApiError::not_found)
}

/// `?limit=&cursor=` of the cursor-paged listings (stacks, resources).
#[derive(Debug, serde::Deserialize)]
pub struct PageQuery {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// `?limit=` clamped to 1..=200 (default 50).
pub fn page_limit(limit: Option<i64>) -> i64 {
    limit.unwrap_or(50).clamp(1, 200)
}
