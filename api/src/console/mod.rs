//! The operator console served at `GET /`: plain HTML, CSS and one JavaScript module,
//! embedded with `include_str!`, so the binary is all there is to deploy and the page
//! works offline. The routes are public: the page itself asks for a token and sends
//! it on every API call (kept in the browser's session storage).

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::state::AppState;

pub const INDEX_HTML: &str = include_str!("index.html");
pub const APP_JS: &str = include_str!("app.js");
pub const APP_CSS: &str = include_str!("app.css");

/// The page may only load what the binary serves: no CDN, no inline script.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'; object-src 'none'; \
                   base-uri 'none'; frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Assets change with the binary; revalidate rather than cache across upgrades.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn index() -> Response {
    let mut response = asset(INDEX_HTML, "text/html; charset=utf-8");
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

async fn app_css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/console/app.js", get(app_js))
        .route("/console/app.css", get(app_css))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_loads_only_embedded_assets() {
        assert!(INDEX_HTML.contains(r#"src="/console/app.js""#));
        assert!(INDEX_HTML.contains(r#"href="/console/app.css""#));
        for text in [INDEX_HTML, APP_JS, APP_CSS] {
            for remote in ["src=\"http", "href=\"http", "url(http", "@import", "//cdn"] {
                assert!(!text.contains(remote), "the console loads {remote}...");
            }
            assert!(!text.contains("<script>"), "no inline script (CSP)");
        }
    }
}
