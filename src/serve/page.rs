//! The web page at `/`: one HTML file compiled into the binary (no CDN, nothing built at run
//! time) that streams a completion and shows the masked positions resolve step by step, alone or
//! two models side by side on the same seed.

use axum::http::header;
use axum::response::IntoResponse;

/// The page's HTML, script and style.
pub const PAGE: &str = include_str!("static/index.html");

/// `GET /`.
pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}
