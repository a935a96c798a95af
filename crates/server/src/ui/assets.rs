//! The embedded static files, served under a name that carries a hash of their content
//! (`app.3f2a9c1e.css`), so each can be cached for a year and a new build is fetched at once.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

struct File {
    /// `app.<hash>.css`
    name: String,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// The URLs the templates link to.
#[derive(Debug)]
pub struct Assets {
    pub css: String,
    pub htmx: String,
    pub js: String,
}

struct Embedded {
    files: Vec<File>,
    urls: Assets,
}

fn file(stem: &str, ext: &str, content_type: &'static str, bytes: &'static [u8]) -> File {
    let hash = hex::encode(&Sha256::digest(bytes)[..6]);
    File {
        name: format!("{stem}.{hash}.{ext}"),
        content_type,
        bytes,
    }
}

static EMBEDDED: LazyLock<Embedded> = LazyLock::new(|| {
    const JS: &str = "text/javascript; charset=utf-8";
    let files = vec![
        file(
            "app",
            "css",
            "text/css; charset=utf-8",
            include_bytes!("../../ui/static/app.css"),
        ),
        // htmx 2.0.11 from the npm registry (BSD0, ui/static/htmx.LICENSE), unmodified.
        file(
            "htmx",
            "js",
            JS,
            include_bytes!("../../ui/static/htmx.min.js"),
        ),
        file("app", "js", JS, include_bytes!("../../ui/static/app.js")),
    ];
    let url = |i: usize| format!("/ui/static/{}", files[i].name);
    let urls = Assets {
        css: url(0),
        htmx: url(1),
        js: url(2),
    };
    Embedded { files, urls }
});

pub fn get() -> &'static Assets {
    &EMBEDDED.urls
}

/// `GET /ui/static/{file}`: only the current hashed names exist.
pub async fn serve(Path(name): Path<String>) -> Response {
    let Some(f) = EMBEDDED.files.iter().find(|f| f.name == name) else {
        return super::UiError::NotFound.into_response();
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(f.content_type),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        f.bytes,
    )
        .into_response()
}
