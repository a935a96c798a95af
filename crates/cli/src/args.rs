//! Checks of the arguments several commands take, made before anything is sent.

use crate::error::{CliError, Result};
use crate::output::clean;

/// Checks a stack id locally, so a typo is a usage error rather than a confusing 404.
pub fn parse_slug(s: &str) -> Result<String> {
    stackyard_core::StackSlug::parse(s.trim())
        .map(|s| s.into_string())
        .map_err(|e| {
            CliError::usage(format!("{:?} is not a stack id: {e}", clean(s))).with_hint(
                "stack ids look like stk-0123456789abcdef01234567; `stackyard ls` lists yours",
            )
        })
}
