//! The operator console served at `GET /`. Its assets live beside this file and are
//! embedded with `include_str!`, so the binary is all there is to deploy. For now a
//! placeholder page; the console proper replaces `index.html` (and adds assets here
//! with routes in [`routes`]).

use axum::Router;
use axum::response::Html;
use axum::routing::get;

use crate::state::AppState;

pub const INDEX_HTML: &str = include_str!("index.html");

pub fn routes() -> Router<AppState> {
    Router::new().route("/", get(|| async { Html(INDEX_HTML) }))
}
