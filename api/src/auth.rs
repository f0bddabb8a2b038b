//! Bearer tokens, roles and actors.
//!
//! Tokens are compared in constant time (every configured token is compared, with
//! no early exit) and never logged. Which role may do what is decided by the
//! [`Access`] marker of each handler's [`Auth`] extractor, before the body is read,
//! so a caller without the role gets 403 whatever it sent.
//!
//! A token may carry a name (`operator tk-7f3a lily` in a tokens file). Its caller is
//! then `operator:lily`, set by the server: an `X-Actor` header no longer names the
//! actor but whom it acted for, logged as one string (`operator:lily cs-7`, see
//! `surge_engine::actor_on_behalf_of`) and shown as `"actor"` and `"on_behalf_of"`.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;
use surge_engine::limits::ACTOR_LEN_MAX;

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Storefront,
    Operator,
    Admin,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Storefront => "storefront",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "storefront" => Some(Role::Storefront),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// Longest token accepted in configuration.
const TOKEN_LEN_MAX: usize = 256;
/// Longest token name: `role:name` must fit an actor whatever the role.
pub const TOKEN_NAME_LEN_MAX: usize = 32;
const _: () = assert!("storefront".len() + 1 + TOKEN_NAME_LEN_MAX <= ACTOR_LEN_MAX);

/// One configured token.
#[derive(Clone)]
struct Entry {
    role: Role,
    token: Vec<u8>,
    /// The person or system the token belongs to: the actor is then `role:name`.
    name: Option<String>,
}

/// The configured tokens. `Debug` never prints them.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<Entry>,
    /// What loading found wrong but took ([`Tokens::warnings`]).
    warnings: Vec<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.entries.len())
    }
}

impl Tokens {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn add(&mut self, role: Role, token: &str) -> Result<(), String> {
        self.add_named(role, token, None)
    }

    /// A token whose caller is `role:name`.
    pub fn add_named(&mut self, role: Role, token: &str, name: Option<&str>) -> Result<(), String> {
        self.add_from(None, role, token, name)
    }

    /// [`Tokens::add_named`], naming where the entry came from (`source`: the
    /// variable, the file's line) in a warning about it.
    fn add_from(
        &mut self,
        source: Option<&str>,
        role: Role,
        token: &str,
        name: Option<&str>,
    ) -> Result<(), String> {
        if let Some(name) = name {
            check_token_name(name)?;
        }
        if token.is_empty() || token.len() > TOKEN_LEN_MAX {
            return Err(format!(
                "a {} token must be 1..={TOKEN_LEN_MAX} bytes",
                role.as_str()
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "a {} token must be printable ASCII without spaces",
                role.as_str()
            ));
        }
        if let Some(earlier) = self.entries.iter().find(|e| e.token == token.as_bytes()) {
            // Two entries for one token: the first wins, as it always did (setups
            // that give one token `admin` and `storefront` keep working), but no
            // longer silently (`admin` then `viewer` acted as the admin without a
            // word). Said at start-up, without the secret.
            self.warnings.push(format!(
                "{}a {} token is given twice: an earlier entry has the same token as {}, \
                 and that entry wins",
                source.map(|s| format!("{s}: ")).unwrap_or_default(),
                role.as_str(),
                earlier.role.as_str()
            ));
            return Ok(());
        }
        self.entries.push(Entry {
            role,
            token: token.as_bytes().to_vec(),
            name: name.map(str::to_string),
        });
        Ok(())
    }

    /// `SURGE_TOKENS`: comma-separated `role:token` pairs. The token is everything
    /// after the first `:` (it may hold more), so this form names no token: named
    /// tokens live in the tokens file.
    pub fn parse_env(&mut self, text: &str) -> Result<(), String> {
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (role, token) = pair
                .split_once(':')
                .ok_or("SURGE_TOKENS: each entry must be role:token")?;
            let role = Role::parse(role.trim())
                .ok_or_else(|| format!("SURGE_TOKENS: unknown role {:?}", role.trim()))?;
            self.add_from(Some("SURGE_TOKENS"), role, token.trim(), None)?;
        }
        Ok(())
    }

    /// A tokens file: one `role token` or `role token name` per line, `#` starts a
    /// comment.
    pub fn parse_file(&mut self, text: &str) -> Result<(), String> {
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(role), Some(token), name, None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                return Err(format!(
                    "tokens file line {}: expected `role token` or `role token name`",
                    n + 1
                ));
            };
            let role = Role::parse(role)
                .ok_or_else(|| format!("tokens file line {}: unknown role {role:?}", n + 1))?;
            let at = format!("tokens file line {}", n + 1);
            self.add_from(Some(&at), role, token, name)
                .map_err(|e| format!("{at}: {e}"))?;
        }
        Ok(())
    }

    /// What loading the tokens found wrong but took (a token given twice), to be
    /// said at start-up.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The role of a presented token. Every entry is compared, whatever matches.
    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        self.lookup(presented).map(|(role, _)| role)
    }

    /// The role and name of a presented token. Every entry is compared, whatever
    /// matches.
    pub fn lookup(&self, presented: &[u8]) -> Option<(Role, Option<&str>)> {
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.token.as_slice().ct_eq(presented)) && found.is_none() {
                found = Some((entry.role, entry.name.as_deref()));
            }
        }
        found
    }
}

/// A token name: 1..=32 bytes of printable ASCII without spaces (it becomes the
/// `name` of `role:name`, and a space separates an actor from whom it acted for).
fn check_token_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > TOKEN_NAME_LEN_MAX {
        return Err(format!(
            "a token name must be 1..={TOKEN_NAME_LEN_MAX} bytes, not {}",
            name.len()
        ));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "token name {name:?}: must be printable ASCII without spaces"
        ));
    }
    Ok(())
}

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub enum AuthMode {
    /// No tokens configured, loopback only: every request acts as admin.
    Open,
    Tokens(Tokens),
}

/// Who is calling: a role, and the actor recorded in order history.
#[derive(Debug, Clone)]
pub struct Principal {
    pub role: Role,
    /// The actor as logged. Unnamed token: the role name, refined by an `X-Actor`
    /// header (`operator:alice`). Named token: `role:name`, followed by a space and
    /// the `X-Actor` it acted on behalf of, if any (`operator:lily cs-7`).
    pub actor: String,
}

/// Which roles an endpoint admits.
pub trait Access {
    const ROLES: &'static [Role];
    const WHAT: &'static str;
}

/// Reads of single SKUs, reservations and orders: every role.
pub struct AnyRole;
/// Lists, exports, stats and the event feed: viewer, operator, admin.
pub struct Reader;
/// Reservations, creating, paying and cancelling orders, batches.
pub struct Storefront;
/// Fulfilment transitions, returns, refunds, stock adjustments.
pub struct Operator;
/// SKU definitions and admin endpoints.
pub struct Admin;

impl Access for AnyRole {
    const ROLES: &'static [Role] = &[Role::Storefront, Role::Operator, Role::Admin, Role::Viewer];
    const WHAT: &'static str = "any role";
}
impl Access for Reader {
    const ROLES: &'static [Role] = &[Role::Viewer, Role::Operator, Role::Admin];
    const WHAT: &'static str = "viewer, operator or admin";
}
impl Access for Storefront {
    const ROLES: &'static [Role] = &[Role::Storefront, Role::Operator, Role::Admin];
    const WHAT: &'static str = "storefront, operator or admin";
}
impl Access for Operator {
    const ROLES: &'static [Role] = &[Role::Operator, Role::Admin];
    const WHAT: &'static str = "operator or admin";
}
impl Access for Admin {
    const ROLES: &'static [Role] = &[Role::Admin];
    const WHAT: &'static str = "admin";
}

/// Extractor: the caller, admitted by `A`. Rejects with 401 / 403 / 400 (bad `X-Actor`).
pub struct Auth<A>(pub Principal, pub PhantomData<A>);

pub fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let (role, name) = caller(state, headers)?;
    principal(role, name, headers)
}

/// The caller's role, and its token's name if it has one: 401 when there is none.
fn caller<'a>(
    state: &'a AppState,
    headers: &HeaderMap,
) -> Result<(Role, Option<&'a str>), ApiError> {
    Ok(match state.auth() {
        AuthMode::Open => (Role::Admin, None),
        AuthMode::Tokens(tokens) => {
            let header = headers
                .get(axum::http::header::AUTHORIZATION)
                .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
            let token = header
                .to_str()
                .ok()
                .and_then(|h| {
                    let (scheme, rest) = h.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
                })
                .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <token>`"))?;
            tokens
                .lookup(token.as_bytes())
                .ok_or_else(|| ApiError::unauthorized("unknown token"))?
        }
    })
}

/// The caller with the actor it acts as (its `X-Actor` checked): 400 for a bad one.
fn principal(role: Role, name: Option<&str>, headers: &HeaderMap) -> Result<Principal, ApiError> {
    // A header name given as text is parsed on every look-up; this one is made once.
    const X_ACTOR: axum::http::HeaderName = axum::http::HeaderName::from_static("x-actor");
    let x_actor = match headers.get(X_ACTOR) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or_else(|| {
                    ApiError::validation("X-Actor", "must be printable ASCII without spaces")
                })?,
        ),
    };
    let actor = match (name, x_actor) {
        (None, None) => role.as_str().to_string(),
        (None, Some(x_actor)) => {
            let actor = format!("{}:{x_actor}", role.as_str());
            if actor.len() > ACTOR_LEN_MAX {
                return Err(ApiError::validation(
                    "X-Actor",
                    format!("role:actor must be at most {ACTOR_LEN_MAX} bytes"),
                ));
            }
            actor
        }
        // A named token: the server sets the actor; X-Actor is whom it acted for.
        (Some(name), x_actor) => {
            if let Some(x_actor) = x_actor
                && x_actor.len() > ACTOR_LEN_MAX
            {
                return Err(ApiError::validation(
                    "X-Actor",
                    format!("must be at most {ACTOR_LEN_MAX} bytes"),
                ));
            }
            surge_engine::actor_on_behalf_of(&format!("{}:{name}", role.as_str()), x_actor)
        }
    };
    Ok(Principal { role, actor })
}

impl<A: Access> FromRequestParts<AppState> for Auth<A> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // 401, then 403, then a malformed `X-Actor` (400): a caller without the
        // role learns only that.
        let (role, name) = caller(state, &parts.headers)?;
        if !A::ROLES.contains(&role) {
            return Err(ApiError::forbidden(format!(
                "role {} may not do this (needs {})",
                role.as_str(),
                A::WHAT
            )));
        }
        Ok(Auth(principal(role, name, &parts.headers)?, PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_env_and_file() {
        let mut t = Tokens::default();
        t.parse_env("admin:s3cret, storefront:abc123").unwrap();
        t.parse_file("# comment\noperator op-token # trailing\n\nviewer v1\n")
            .unwrap();
        assert_eq!(t.role_of(b"s3cret"), Some(Role::Admin));
        assert_eq!(t.role_of(b"abc123"), Some(Role::Storefront));
        assert_eq!(t.role_of(b"op-token"), Some(Role::Operator));
        assert_eq!(t.role_of(b"v1"), Some(Role::Viewer));
        assert_eq!(t.role_of(b"s3cre"), None);
        assert!(Tokens::default().parse_env("root:x").is_err());
        assert!(Tokens::default().parse_file("admin").is_err());
        assert!(format!("{t:?}").find("s3cret").is_none());
    }

    #[test]
    fn named_tokens() {
        let mut t = Tokens::default();
        t.parse_file("operator tk-7f3a lily\nviewer v-1 # unnamed\n")
            .unwrap();
        // The environment form names nothing: a token may hold `:`.
        t.parse_env("admin:adm-1:root, storefront:sf-1").unwrap();
        assert_eq!(t.lookup(b"tk-7f3a"), Some((Role::Operator, Some("lily"))));
        assert_eq!(t.lookup(b"v-1"), Some((Role::Viewer, None)));
        assert_eq!(t.lookup(b"adm-1:root"), Some((Role::Admin, None)));
        assert_eq!(t.lookup(b"sf-1"), Some((Role::Storefront, None)));
        let long = "n".repeat(TOKEN_NAME_LEN_MAX + 1);
        let e = Tokens::default()
            .parse_file(&format!("operator tk {long}"))
            .unwrap_err();
        assert!(e.contains("line 1") && e.contains("1..=32 bytes"), "{e}");
        assert!(
            Tokens::default()
                .parse_file(&format!("operator tk {}", "n".repeat(TOKEN_NAME_LEN_MAX)))
                .is_ok()
        );
        let e = Tokens::default()
            .parse_file("operator tk l\u{e9}a")
            .unwrap_err();
        assert!(e.contains("printable ASCII"), "{e}");
        assert!(
            Tokens::default()
                .parse_file("operator tk lily extra")
                .is_err()
        );
    }

    /// One token in two entries: the first entry wins, as before, and a warning
    /// names the line and both roles but not the token (it was silent).
    #[test]
    fn a_token_given_twice_is_said_and_the_first_entry_wins() {
        let mut t = Tokens::default();
        t.parse_file("admin tk-same\nviewer v-1\nviewer tk-same # typo\n")
            .unwrap();
        assert_eq!(t.role_of(b"tk-same"), Some(Role::Admin));
        assert_eq!(t.len(), 2);
        let [w] = t.warnings() else {
            panic!("{:?}", t.warnings())
        };
        assert!(w.contains("line 3"), "{w}");
        assert!(w.contains("viewer") && w.contains("admin"), "{w}");
        assert!(!w.contains("tk-same"), "the secret is printed: {w}");
        let mut t = Tokens::default();
        t.parse_file("operator op-1 lily\n").unwrap();
        t.parse_env("storefront:op-1").unwrap();
        assert_eq!(t.lookup(b"op-1"), Some((Role::Operator, Some("lily"))));
        let [w] = t.warnings() else {
            panic!("{:?}", t.warnings())
        };
        assert!(w.starts_with("SURGE_TOKENS: a storefront token"), "{w}");
        let mut t = Tokens::default();
        t.parse_env("admin:a,storefront:b").unwrap();
        assert!(t.warnings().is_empty());
    }
}
