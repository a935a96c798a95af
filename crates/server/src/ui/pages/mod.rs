//! The dashboard's pages, one module per page (dashboard.md's table): each routes its page and
//! the forms it posts.

mod audit;
mod env;
mod logs;
mod stack;
mod stacks;
mod tokens;

use super::UiState;
use axum::Router;
use stackyard_core::store::Store;

pub fn routes<S: Store>() -> Router<UiState<S>> {
    Router::new()
        .merge(stacks::routes())
        .merge(stack::routes())
        .merge(env::routes())
        .merge(logs::routes())
        .merge(audit::routes())
        .merge(tokens::routes())
}
