//! The hottest read of a sale, `GET /v1/skus/{sku}` ("how many are left"), answered
//! in front of axum's router.
//!
//! axum's router matches the path a second time (the metrics layer matched it
//! first), percent-decodes every path parameter into its own allocation, and
//! stores them in the request's extensions (one more map); the `Path` extractor
//! then deserializes them again. For the stock read that was about a tenth of
//! the request's instructions (BENCHMARKS.md, "The stock read in front of the router").
//! [`stock_read`] (called by `front::Front`) answers the plain case itself, with the same functions the
//! routed handler uses (`authenticate`, the stock board, `sku_answer`), and
//! hands everything else to the router unchanged: another method, a query
//! string, a `%` or `/` in the id, a caller the handler would refuse, a board
//! that is not current. So every answer it gives is the one the route gives (a
//! test compares them), and every refusal still comes from the route.

use axum::body::Body;
use axum::http::{Method, Request};
use axum::response::Response;

use crate::auth::{Access, AnyRole, authenticate};
use crate::state::AppState;

/// The route [`stock_read`] answers, as the router knows it.
pub const STOCK_READ_PREFIX: &str = "/v1/skus/";

/// The answer to a plain `GET /v1/skus/{sku}` from a caller the route admits, when
/// the stock board can give it (`Engine::read_sku`); `None` for anything else (the
/// router takes it).
pub(crate) fn stock_read(state: &AppState, request: &Request<Body>) -> Option<Response> {
    if request.method() != Method::GET || request.uri().query().is_some() {
        return None;
    }
    let sku = request.uri().path().strip_prefix(STOCK_READ_PREFIX)?;
    // The router would percent-decode a `%`; a `/` is another route or none.
    if sku.is_empty() || sku.bytes().any(|b| b == b'/' || b == b'%') {
        return None;
    }
    let principal = authenticate(state, request.headers()).ok()?;
    if !AnyRole::ROLES.contains(&principal.role) {
        return None;
    }
    match state.engine().ok()?.read_sku(sku)? {
        Ok(view) => Some(crate::routes::sku_answer(view)),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiConfig, AuthMode, Tokens};
    use surge_engine::{Command, Durability, Engine, EngineConfig, Query};

    fn get(path: &str, token: &str) -> Request<Body> {
        Request::get(path)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request")
    }

    /// The plain read is answered here; each other shape goes on to the router.
    #[test]
    fn only_the_plain_read_of_a_known_sku_is_answered_in_front_of_the_router() {
        // The stock board is the follower's, and `none` keeps no follower.
        let dir = tempfile::tempdir().expect("tempdir");
        let (engine, _) = Engine::open(EngineConfig {
            durability: Durability::Sync,
            data_dir: dir.path().to_path_buf(),
            ..EngineConfig::default()
        })
        .expect("engine opens");
        let define = Command::DefineSku {
            sku: "S1".into(),
            name: String::new(),
            on_hand: 5,
            low_stock_threshold: 0,
        };
        engine
            .submit(define, None)
            .expect("queued")
            .wait()
            .expect("answered")
            .outcome
            .expect("defined");
        // A read through the follower returns once it has applied the definition,
        // and the follower publishes the board before it answers.
        engine
            .query(Query::GetSku { sku: "S1".into() })
            .expect("queued")
            .wait()
            .expect("answered")
            .expect("known");
        let mut tokens = Tokens::default();
        tokens.parse_env("viewer:vw").expect("tokens");
        let state = AppState::with_engine(ApiConfig::default(), AuthMode::Tokens(tokens), engine);

        let answer = stock_read(&state, &get("/v1/skus/S1", "vw")).expect("answered here");
        assert_eq!(answer.status(), 200);
        let head = Request::head("/v1/skus/S1")
            .header("authorization", "Bearer vw")
            .body(Body::empty())
            .expect("request");
        for (why, request) in [
            ("HEAD", head),
            ("a query string", get("/v1/skus/S1?", "vw")),
            ("a percent-encoded id", get("/v1/skus/%53%31", "vw")),
            ("a longer path", get("/v1/skus/S1/customers/c1", "vw")),
            ("no id", get("/v1/skus/", "vw")),
            ("an unknown SKU", get("/v1/skus/S2", "vw")),
            ("an unknown token", get("/v1/skus/S1", "nope")),
            ("another route", get("/v1/skusS1", "vw")),
        ] {
            assert!(stock_read(&state, &request).is_none(), "{why}");
        }
        state.engine().expect("engine").shutdown();
    }
}
