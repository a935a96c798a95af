//! A stack's env page (`/ui/stacks/{slug}/env`): the masked map, its version and history, and
//! the forms that change it. Every write is the API's `PATCH /stacks/{slug}/env` (or its
//! rollback) sent with `If-Match` set to the version the page showed, so an edit made on a stale
//! page is refused (412) and answered with the current map instead of overwriting it. A reveal
//! is the API's audited `?reveal=true` read, of which the page shows one value only.
//!
//! Submitted values are never logged, and echoed back into a page only when the API would show
//! them unmasked anyway (`is_secret`), and never on a conflict.

use crate::ui::{
    ApiFailure, Layout, Nav, Session, UiError, UiResult, UiState, render_with, see_other,
};
use crate::ui::{encode, when};
use askama::Template;
use axum::extract::{Path, Query};
use axum::http::{Method, StatusCode, header};
use axum::routing::{get, post};
use axum::{Form, Router};
use futures_util::future::join3;
use serde::Deserialize;
use stackyard_api::{
    EnvPatchRequest, EnvRead, EnvVersionPage, EnvWriteResponse, RollbackRequest, StackDetail,
};
use stackyard_core::env::is_secret;
use stackyard_core::store::Store;
use std::collections::BTreeMap;

pub fn routes<S: Store>() -> Router<UiState<S>> {
    Router::new()
        .route("/stacks/{slug}/env", get(page).post(write))
        .route("/stacks/{slug}/env/rollback", post(rollback))
        .route("/stacks/{slug}/env/reveal", post(reveal))
}

#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    cursor: Option<String>,
    notice: Option<String>,
}

/// One row of the map as the page shows it.
struct Row {
    key: String,
    /// As the API sent it: `***` for a secret-looking one.
    value: String,
    /// Its value is the one revealed, shown once in its own box: the row points there.
    revealed: bool,
}

/// One version of the history (key names only).
struct HistoryRow {
    version: i64,
    when: String,
    actor: String,
    set: Vec<String>,
    deleted: Vec<String>,
}

/// What a dry run said the write would do.
struct Preview {
    set: Vec<String>,
    deleted: Vec<String>,
    version: i64,
}

/// A write refused because the env moved on: the version the page showed and the current one.
struct Conflict {
    from: i64,
    to: i64,
}

/// The one value a reveal shows.
struct Revealed {
    key: String,
    value: String,
}

#[derive(Template)]
#[template(path = "ui/env.html")]
struct EnvPage {
    layout: Layout,
    slug: String,
    name: String,
    version: i64,
    rows: Vec<Row>,
    history: Vec<HistoryRow>,
    total_versions: i64,
    /// The history's next page, as this page's `?cursor=`.
    older: Option<String>,
    notice: Option<&'static str>,
    error: Option<ApiFailure>,
    conflict: Option<Conflict>,
    preview: Option<Preview>,
    revealed: Option<Revealed>,
    /// What the set form is filled with.
    key: String,
    value: String,
}

/// What a page shows besides the stack's current state.
#[derive(Default)]
struct Extras {
    notice: Option<&'static str>,
    error: Option<ApiFailure>,
    conflict_from: Option<i64>,
    preview: Option<Preview>,
    revealed: Option<Revealed>,
    key: String,
    value: String,
}

/// Reads the stack, its env and a page of its history (concurrently) and renders the page with
/// `extras`, answering `status`.
async fn show(
    session: &Session,
    slug: &str,
    cursor: Option<&str>,
    status: StatusCode,
    extras: Extras,
) -> UiResult {
    let slug = encode(slug);
    let mut versions = format!("/stacks/{slug}/env/versions");
    if let Some(c) = cursor.filter(|c| !c.is_empty()) {
        versions.push_str(&format!("?cursor={}", encode(c)));
    }
    let (stack, env, history) = join3(
        session
            .api
            .get::<StackDetail>(&format!("/api/v1/stacks/{slug}")),
        session
            .api
            .get::<EnvRead<'static>>(&format!("/stacks/{slug}/env")),
        session.api.get::<EnvVersionPage>(&versions),
    )
    .await;
    let (stack, env, history) = (stack?, env?, history?);
    let (total_versions, older) = (history.total, history.next_cursor);
    let revealed_key = extras.revealed.as_ref().map(|r| r.key.as_str());
    let rows = env
        .env
        .iter()
        .map(|(k, v)| Row {
            key: k.to_owned(),
            value: v.to_owned(),
            revealed: Some(k) == revealed_key,
        })
        .collect();
    let history = history
        .items
        .into_iter()
        .map(|v| HistoryRow {
            when: when(&v.created_at),
            version: v.version,
            actor: v.actor,
            set: v.set,
            deleted: v.deleted,
        })
        .collect();
    let page = EnvPage {
        layout: Layout::new(session, Nav::Stacks),
        slug: stack.stack_id,
        name: stack.name,
        version: env.version,
        rows,
        history,
        total_versions,
        older,
        notice: extras.notice,
        error: extras.error,
        conflict: extras.conflict_from.map(|from| Conflict {
            from,
            to: env.version,
        }),
        preview: extras.preview,
        revealed: extras.revealed,
        key: extras.key,
        value: extras.value,
    };
    Ok(render_with(status, &page))
}

async fn page(session: Session, Path(slug): Path<String>, Query(q): Query<PageQuery>) -> UiResult {
    let extras = Extras {
        notice: q.notice.as_deref().and_then(crate::ui::notice),
        ..Extras::default()
    };
    show(&session, &slug, q.cursor.as_deref(), StatusCode::OK, extras).await
}

/// What the set form's buttons (and each row's "Unset") ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Save,
    Preview,
    Unset,
}

impl Action {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "save" => Some(Action::Save),
            "preview" => Some(Action::Preview),
            "unset" => Some(Action::Unset),
            _ => None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct SetForm {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    /// The env version the page showed.
    #[serde(default)]
    version: String,
    #[serde(default)]
    action: String,
}

/// The version a form carries, as the page wrote it.
fn parse_version(s: &str) -> Option<i64> {
    s.trim().parse::<i64>().ok().filter(|v| *v >= 0)
}

/// `If-Match`'s value for `version`: quoted, as the API's `ETag`.
fn if_match(version: i64) -> String {
    format!("\"{version}\"")
}

/// A textarea's value as typed: browsers send every line break as CRLF (HTML's form encoding),
/// which would put a `\r` in every multi-line value (a PEM key, a JSON blob) that was never
/// typed. A lone `\r` is kept.
fn typed_value(submitted: &str) -> String {
    submitted.replace("\r\n", "\n")
}

/// Whether the set form may be filled again with `value` for `key`: only if the API would show
/// it unmasked anyway.
fn may_echo(key: &str, value: &str) -> String {
    if is_secret(key, value) {
        String::new()
    } else {
        value.to_owned()
    }
}

/// Where a successful write goes: the page, with a notice saying whether a version was written.
fn after_write(slug: &str, changed: bool, notice: &str) -> String {
    let notice = if changed { notice } else { "env_unchanged" };
    format!("/ui/stacks/{}/env?notice={notice}", encode(slug))
}

/// `POST /ui/stacks/{slug}/env`: save, preview (dry run) or unset one key, as the version the
/// page showed.
async fn write(session: Session, Path(slug): Path<String>, Form(f): Form<SetForm>) -> UiResult {
    let key = f.key.trim().to_owned();
    let value = typed_value(&f.value);
    let refill = Extras {
        key: key.clone(),
        value: may_echo(&key, &value),
        ..Extras::default()
    };
    let (Some(action), Some(version)) = (Action::parse(&f.action), parse_version(&f.version))
    else {
        let extras = Extras {
            error: Some(ApiFailure::form(
                "This form is out of date; the page has been reloaded, try again.",
            )),
            ..refill
        };
        return show(&session, &slug, None, StatusCode::BAD_REQUEST, extras).await;
    };
    let body = EnvPatchRequest {
        env: BTreeMap::from([(
            key.clone(),
            (action != Action::Unset).then(|| value.clone()),
        )]),
    };
    let mut path = format!("/stacks/{}/env", encode(&slug));
    if action == Action::Preview {
        path.push_str("?dry_run=true");
    }
    let answer = session
        .api
        .call::<EnvWriteResponse<'static>, _>(
            Method::PATCH,
            &path,
            Some(&body),
            &[(header::IF_MATCH, if_match(version))],
        )
        .await;
    match answer {
        Ok(w) if action == Action::Preview => {
            let extras = Extras {
                preview: Some(Preview {
                    set: w.changed.set.into_owned(),
                    deleted: w.changed.deleted.into_owned(),
                    version: w.version,
                }),
                ..refill
            };
            show(&session, &slug, None, StatusCode::OK, extras).await
        }
        Ok(w) => {
            let changed = !(w.changed.set.is_empty() && w.changed.deleted.is_empty());
            Ok(see_other(&after_write(&slug, changed, "env_saved")))
        }
        Err(f) => refused(&session, &slug, version, f, refill).await,
    }
}

/// A write the API refused: a conflict or another 4xx is shown on the page (with the current
/// map); anything else is the error page.
async fn refused(
    session: &Session,
    slug: &str,
    version: i64,
    f: ApiFailure,
    refill: Extras,
) -> UiResult {
    if f.status == StatusCode::PRECONDITION_FAILED && f.code() == "version_mismatch" {
        // Whatever was typed was meant for a map that no longer exists: only the key is kept.
        let extras = Extras {
            conflict_from: Some(version),
            key: refill.key,
            ..Extras::default()
        };
        return show(session, slug, None, f.status, extras).await;
    }
    if f.is_refusal() {
        let status = f.status;
        let extras = Extras {
            error: Some(f),
            ..refill
        };
        return show(session, slug, None, status, extras).await;
    }
    Err(UiError::from(f))
}

#[derive(Debug, Default, Deserialize)]
struct RollbackForm {
    /// The version to go back to.
    #[serde(default)]
    to: String,
    /// The env version the page showed.
    #[serde(default)]
    version: String,
}

/// `POST /ui/stacks/{slug}/env/rollback`: the map of version `to` becomes current, as a new
/// version, if the env is still at the version the page showed.
async fn rollback(
    session: Session,
    Path(slug): Path<String>,
    Form(f): Form<RollbackForm>,
) -> UiResult {
    let (Some(to), Some(version)) = (parse_version(&f.to), parse_version(&f.version)) else {
        let extras = Extras {
            error: Some(ApiFailure::form(
                "This form is out of date; the page has been reloaded, try again.",
            )),
            ..Extras::default()
        };
        return show(&session, &slug, None, StatusCode::BAD_REQUEST, extras).await;
    };
    let answer = session
        .api
        .call::<EnvWriteResponse<'static>, _>(
            Method::POST,
            &format!("/stacks/{}/env/rollback", encode(&slug)),
            Some(&RollbackRequest { version: to }),
            &[(header::IF_MATCH, if_match(version))],
        )
        .await;
    match answer {
        Ok(w) => {
            let changed = !(w.changed.set.is_empty() && w.changed.deleted.is_empty());
            Ok(see_other(&after_write(&slug, changed, "rolled_back")))
        }
        Err(f) => refused(&session, &slug, version, f, Extras::default()).await,
    }
}

#[derive(Debug, Default, Deserialize)]
struct RevealForm {
    #[serde(default)]
    key: String,
}

/// `POST /ui/stacks/{slug}/env/reveal`: the API's audited reveal, of which the page shows the
/// one value asked for (the rest stay masked; the clear map is dropped here).
async fn reveal(session: Session, Path(slug): Path<String>, Form(f): Form<RevealForm>) -> UiResult {
    let key = f.key.trim().to_owned();
    let path = format!("/stacks/{}/env", encode(&slug));
    // A key that is not there is refused before the audited read, so a reveal row always
    // stands for a value someone saw.
    let masked: EnvRead<'static> = session.api.get(&path).await?;
    let clear = match masked.env.get(&key) {
        Some(_) => Some(
            session
                .api
                .get::<EnvRead<'static>>(&format!("{path}?reveal=true"))
                .await?,
        ),
        None => None,
    };
    let extras = match clear.as_ref().and_then(|c| c.env.get(&key)) {
        Some(value) => Extras {
            revealed: Some(Revealed {
                key,
                value: value.to_owned(),
            }),
            ..Extras::default()
        },
        None => Extras {
            error: Some(ApiFailure::refused(
                StatusCode::NOT_FOUND,
                "not_found",
                "That key is not in the env (any more): nothing was revealed.",
            )),
            ..Extras::default()
        },
    };
    let status = if extras.revealed.is_some() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    show(&session, &slug, None, status, extras).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_the_three_the_forms_send() {
        assert_eq!(Action::parse("save"), Some(Action::Save));
        assert_eq!(Action::parse("preview"), Some(Action::Preview));
        assert_eq!(Action::parse("unset"), Some(Action::Unset));
        assert_eq!(Action::parse("Save"), None);
        assert_eq!(Action::parse(""), None);
    }

    #[test]
    fn a_form_version_is_a_non_negative_integer() {
        assert_eq!(parse_version("3"), Some(3));
        assert_eq!(parse_version(" 0 "), Some(0));
        assert_eq!(parse_version("-1"), None);
        assert_eq!(parse_version("3.0"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn if_match_is_quoted_like_the_etag() {
        assert_eq!(if_match(7), "\"7\"");
    }

    #[test]
    fn textarea_line_breaks_are_the_ones_typed() {
        assert_eq!(typed_value("a\r\nb\r\n"), "a\nb\n");
        assert_eq!(typed_value("a\rb"), "a\rb");
        assert_eq!(typed_value("plain"), "plain");
    }

    #[test]
    fn secret_values_are_never_echoed_back() {
        assert_eq!(may_echo("GREETING", "hello"), "hello");
        assert_eq!(may_echo("API_TOKEN", "t0k3n"), "");
        assert_eq!(may_echo("db_password", "hunter2"), "");
        assert_eq!(may_echo("UPSTREAM", "https://u:p@example.com/"), "");
    }

    #[test]
    fn a_write_that_changed_nothing_says_so() {
        assert_eq!(
            after_write("stk-a1", true, "env_saved"),
            "/ui/stacks/stk-a1/env?notice=env_saved"
        );
        assert_eq!(
            after_write("stk-a1", false, "rolled_back"),
            "/ui/stacks/stk-a1/env?notice=env_unchanged"
        );
        assert_eq!(
            after_write("a/b", true, "env_saved"),
            "/ui/stacks/a%2Fb/env?notice=env_saved"
        );
    }
}
