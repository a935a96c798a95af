//! One module per resource. Handlers are thin: extract, call one store (or service) function,
//! render the result.

pub mod audit;
pub mod env;
pub mod ops;
pub mod releases;
pub mod stacks;
pub mod streams;
pub mod tokens;
pub mod upload;
pub mod views;

use crate::error::ApiError;
use stackyard_core::StackSlug;

/// A slug from the path. A malformed one cannot name any stack, so it is a plain 404.
pub fn parse_slug(raw: &str) -> Result<StackSlug, ApiError> {
    StackSlug::parse(raw).map_err(|_| ApiError::not_found())
}

/// `?limit=` clamped to 1..=200 (default 50).
pub fn page_limit(limit: Option<i64>) -> i64 {
    limit.unwrap_or(50).clamp(1, 200)
}
