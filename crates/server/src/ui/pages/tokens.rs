//! The team's API tokens (`/ui/tokens`): the team (`GET /api/v1/whoami`), its live tokens, a
//! form that creates one (`POST /api/v1/tokens`, its secret shown in that answer only) and a
//! revoke button per token (`DELETE /api/v1/tokens/{id}`).

use crate::ui::{ApiFailure, Layout, Nav, Session, UiResult, UiState, render_with, see_other};
use crate::ui::{encode, when};
use askama::Template;
use axum::extract::{Path, Query};
use axum::http::{Method, StatusCode};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use stackyard_api::{
    CreateTokenRequest, CreatedToken, RevokedToken, TeamInfo, TokenItem, TokenList, Whoami,
};
use stackyard_core::store::Store;

pub fn routes<S: Store>() -> Router<UiState<S>> {
    Router::new()
        .route("/tokens", get(page).post(create))
        .route("/tokens/{id}/revoke", post(revoke))
}

#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    notice: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct CreateForm {
    #[serde(default)]
    name: String,
}

/// One token as the table shows it.
#[derive(Debug, PartialEq)]
struct Row {
    id: i64,
    name: String,
    created: String,
    /// The token this dashboard session was opened with: revoking it signs the user out.
    current: bool,
    /// The token just created (its secret is shown above the table).
    new: bool,
}

/// The token created by this very request. Its secret lives only in this answer: it is not
/// kept, logged or put in a URL.
struct NewToken {
    name: String,
    token: String,
}

#[derive(Template)]
#[template(path = "ui/tokens.html")]
struct TokensView {
    layout: Layout,
    team: TeamInfo,
    max_stacks: String,
    rows: Vec<Row>,
    created: Option<NewToken>,
    /// The name field's value, kept when the API refused it.
    name: String,
    error: Option<ApiFailure>,
    notice: Option<&'static str>,
}

/// What the page shows besides the outcome of a form: the team and its tokens.
async fn read(session: &Session) -> Result<(TeamInfo, Vec<TokenItem>), ApiFailure> {
    let (me, list) = tokio::join!(
        session.api.get::<Whoami>("/api/v1/whoami"),
        session.api.get::<TokenList>("/api/v1/tokens"),
    );
    Ok((me?.team, list?.items))
}

/// Renders the page with `status`: the outcome of a form (`created`, `error`) over the team's
/// current tokens.
async fn show(
    session: &Session,
    status: StatusCode,
    created: Option<(i64, NewToken)>,
    name: String,
    error: Option<ApiFailure>,
    notice: Option<&'static str>,
) -> UiResult {
    let (team, tokens, error) = match read(session).await {
        Ok((team, tokens)) => (team, tokens, error),
        // The token exists and its secret is in no other answer: show it even when the list
        // cannot be read, with that failure in place of the list.
        Err(f) if created.is_some() && f.status != StatusCode::UNAUTHORIZED => {
            (TeamInfo::from(&session.principal.team), Vec::new(), Some(f))
        }
        Err(f) => return Err(f.into()),
    };
    let new_id = created.as_ref().map(|(id, _)| *id);
    Ok(render_with(
        status,
        &TokensView {
            layout: Layout::new(session, Nav::Tokens),
            max_stacks: cap(team.max_stacks),
            team,
            rows: rows(&tokens, session.principal.token.id, new_id),
            created: created.map(|(_, t)| t),
            name,
            error,
            notice,
        },
    ))
}

/// `GET /ui/tokens`.
async fn page(session: Session, Query(q): Query<PageQuery>) -> UiResult {
    let notice = q.notice.as_deref().and_then(crate::ui::notice);
    show(&session, StatusCode::OK, None, String::new(), None, notice).await
}

/// `POST /ui/tokens`: answered with the page itself (201), never a redirect, so the secret is
/// in this one answer and a reload cannot show it again. A refused name re-renders the form
/// with the API's message.
async fn create(session: Session, Form(form): Form<CreateForm>) -> UiResult {
    let body = CreateTokenRequest { name: form.name };
    match session
        .api
        .call::<CreatedToken, _>(Method::POST, "/api/v1/tokens", Some(&body), &[])
        .await
    {
        Ok(t) => {
            let created = NewToken {
                name: t.name,
                token: t.token,
            };
            show(
                &session,
                StatusCode::CREATED,
                Some((t.id, created)),
                String::new(),
                None,
                None,
            )
            .await
        }
        Err(f) if f.is_refusal() => show(&session, f.status, None, body.name, Some(f), None).await,
        Err(f) => Err(f.into()),
    }
}

/// `POST /ui/tokens/{id}/revoke`. Revoking the session's own token ends the session, so the
/// redirect then lands on the sign-in page.
async fn revoke(session: Session, Path(id): Path<String>) -> UiResult {
    let path = format!("/api/v1/tokens/{}", encode(&id));
    match session
        .api
        .call::<RevokedToken, ()>(Method::DELETE, &path, None, &[])
        .await
    {
        Ok(_) => Ok(see_other("/ui/tokens?notice=token_revoked")),
        Err(f) if f.is_refusal() => {
            show(&session, f.status, None, String::new(), Some(f), None).await
        }
        Err(f) => Err(f.into()),
    }
}

/// The table's rows, marking the session's own token and the one just created.
fn rows(tokens: &[TokenItem], current: i64, new: Option<i64>) -> Vec<Row> {
    tokens
        .iter()
        .map(|t| Row {
            id: t.id,
            name: t.name.clone(),
            created: when(&t.created_at),
            current: t.id == current,
            new: Some(t.id) == new,
        })
        .collect()
}

/// A team's stack cap as a sentence fragment.
fn cap(max_stacks: Option<i64>) -> String {
    match max_stacks {
        Some(n) => n.to_string(),
        None => "no limit".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: i64, name: &str) -> TokenItem {
        TokenItem {
            id,
            name: name.into(),
            created_at: "2026-12-06T01:48:24.123Z".into(),
        }
    }

    #[test]
    fn rows_mark_the_sessions_own_token_and_the_new_one() {
        let r = rows(
            &[item(1, "admin"), item(2, "ci"), item(3, "laptop")],
            1,
            Some(3),
        );
        assert_eq!(
            r.iter()
                .map(|r| (r.id, r.current, r.new))
                .collect::<Vec<_>>(),
            [(1, true, false), (2, false, false), (3, false, true)]
        );
        assert_eq!(r[1].name, "ci");
        assert_eq!(r[1].created, "2026-12-06 01:48 UTC");
    }

    #[test]
    fn rows_mark_nothing_when_the_session_token_is_not_listed() {
        let r = rows(&[item(2, "ci")], 9, None);
        assert!(!r[0].current && !r[0].new);
    }

    #[test]
    fn an_uncapped_team_says_so() {
        assert_eq!(cap(Some(5)), "5");
        assert_eq!(cap(None), "no limit");
    }
}
