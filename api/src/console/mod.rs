//! The operator console served at `GET /`: plain HTML, CSS and two JavaScript modules
//! (the app and its zh-CN / en dictionaries), embedded with `include_str!`, so the binary is all there is to deploy and the page
//! works offline. The routes are public: the page itself asks for a token and sends
//! it on every API call (kept in the browser's session storage).

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};

use crate::state::AppState;

pub const INDEX_HTML: &str = include_str!("index.html");
pub const APP_JS: &str = include_str!("app.js");
pub const APP_CSS: &str = include_str!("app.css");
pub const I18N_JS: &str = include_str!("i18n.js");

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

#[utoipa::path(get, path = "/", tag = "operations",
    description = "The operator console: one page, its script and styles embedded in the binary and served under `/console/`. Loading it needs no token; the page asks for one and sends it on every API call.",
    responses((status = 200, description = "The console's page", content_type = "text/html", body = String)))]
pub async fn index() -> Response {
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

async fn i18n_js() -> Response {
    asset(I18N_JS, "text/javascript; charset=utf-8")
}

async fn app_css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/", get(index)),
        ("/console/app.js", get(app_js)),
        ("/console/app.css", get(app_css)),
        ("/console/i18n.js", get(i18n_js)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_loads_only_embedded_assets() {
        assert!(INDEX_HTML.contains(r#"src="/console/app.js""#));
        assert!(INDEX_HTML.contains(r#"href="/console/app.css""#));
        assert!(APP_JS.contains("from './i18n.js'"));
        for text in [INDEX_HTML, APP_JS, APP_CSS, I18N_JS] {
            for remote in ["src=\"http", "href=\"http", "url(http", "@import", "//cdn"] {
                assert!(!text.contains(remote), "the console loads {remote}...");
            }
            assert!(!text.contains("<script>"), "no inline script (CSP)");
        }
    }

    /// The keys of one dictionary in i18n.js: its `'key': value` lines.
    fn dictionary_keys(body: &str) -> Vec<&str> {
        body.lines()
            .filter_map(|l| l.strip_prefix("  '"))
            .filter_map(|l| l.split_once("': "))
            .map(|(key, _)| key)
            .collect()
    }

    #[test]
    fn both_languages_have_the_same_keys() {
        let (en, zh) = I18N_JS
            .split_once("const zh = {")
            .expect("i18n.js holds `const zh = {`");
        let en = en
            .split_once("const en = {")
            .expect("i18n.js holds `const en = {`")
            .1;
        let zh = zh.split_once("\n};").expect("the zh dictionary ends").0;
        let (en, zh) = (dictionary_keys(en), dictionary_keys(zh));
        assert!(en.len() > 300, "only {} English keys found", en.len());
        let missing_zh: Vec<_> = en.iter().filter(|k| !zh.contains(k)).collect();
        let missing_en: Vec<_> = zh.iter().filter(|k| !en.contains(k)).collect();
        assert!(missing_zh.is_empty(), "no Chinese for {missing_zh:?}");
        assert!(missing_en.is_empty(), "no English for {missing_en:?}");
        assert_eq!(en.len(), zh.len(), "a key is repeated");
    }
}
