//! Extractors whose rejections are problem+json: JSON bodies (415 / 413 / 400 naming
//! the field), query strings, and the `Idempotency-Key` header.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use surge_engine::limits::IDEMPOTENCY_KEY_LEN_MAX;
use surge_engine::{EngineHandle, IdempotencyKey};

use crate::error::{ApiError, IDEMPOTENCY_KEY};
use crate::state::AppState;
use std::time::Duration;

/// A JSON body, with its raw bytes (for idempotency fingerprints).
pub struct ApiJson<T>(pub T, pub Bytes);

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let suffix_json = subtype.len() >= 5
        && subtype.is_char_boundary(subtype.len() - 5)
        && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json");
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || suffix_json)
}

/// The field a serde error is about: the path, plus the name inside
/// "unknown field `x`" / "missing field `x`" / "duplicate field `x`" messages,
/// which serde reports at the level of the enclosing object.
fn field_of(path: &serde_path_to_error::Path, message: &str) -> String {
    let mut field = path.to_string();
    // `?` is a position serde could not name (a syntax error after a value):
    // the field is what encloses it.
    while field == "?" || field.ends_with(".?") {
        field.truncate(field.len().saturating_sub(2));
    }
    if field == "." {
        field.clear();
    }
    for prefix in ["unknown field `", "missing field `", "duplicate field `"] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some(name) = rest.split('`').next()
        {
            if !field.is_empty() && !field.ends_with(&format!(".{name}")) && field != name {
                field.push('.');
                field.push_str(name);
            } else if field.is_empty() {
                field = name.to_string();
            }
        }
    }
    if field.is_empty() {
        "body".to_string()
    } else {
        field
    }
}

/// What the shape check found.
enum Shape {
    Fine,
    /// A value that must be an object is not; the path names it (`lines[2]`).
    NotObject(String),
    /// Not well-formed: left to serde, which names the problem better.
    Malformed,
}

/// Nesting deeper than this is left to serde (whose own limit is 128).
const SHAPE_DEPTH_MAX: usize = 128;

/// Request bodies are objects, and no array in them holds arrays. serde would also
/// read a struct from a JSON array, field by field in order; the contract calls that
/// a wrong type. Request DTOs nest structs only as array elements (`lines`, `ops`),
/// so these two rules close that door. One pass over the bytes, before serde.
fn check_shape(bytes: &[u8]) -> Shape {
    // An array can only hold an array where the body has two `[`: a body with at
    // most one (a reservation, an order, however many lines) needs only its first
    // byte looked at, and one scan for `[` (which stops at the second, early in a
    // batch) instead of the walk.
    let first = bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    let mut brackets = bytes.iter().filter(|&&b| b == b'[');
    let at_most_one = brackets.next().is_none() || brackets.next().is_none();
    if first == Some(&b'{') && at_most_one {
        return Shape::Fine;
    }
    walk_shape(bytes)
}

/// The whole check, value by value.
fn walk_shape(bytes: &[u8]) -> Shape {
    let mut pos = 0;
    let mut path = Vec::new();
    match shape_value(bytes, &mut pos, &mut path, true, 0) {
        Ok(()) => Shape::Fine,
        Err(shape) => shape,
    }
}

/// One step of the path to the value being checked: kept as slices and numbers,
/// and rendered (`lines[0].qty`) only when a value is refused.
enum Step<'a> {
    Key(&'a [u8]),
    Index(usize),
}

fn render_path(path: &[Step<'_>]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&String::from_utf8_lossy(key));
            }
            Step::Index(index) => {
                use std::fmt::Write as _;
                let _ = write!(out, "[{index}]");
            }
        }
    }
    out
}

fn skip_ws(bytes: &[u8], pos: &mut usize) {
    while *pos < bytes.len() && matches!(bytes[*pos], b' ' | b'\t' | b'\n' | b'\r') {
        *pos += 1;
    }
}

/// Skip a string starting at `"`; returns its raw contents.
fn shape_string<'a>(bytes: &'a [u8], pos: &mut usize) -> Result<&'a [u8], Shape> {
    let start = *pos + 1;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => {
                *pos = i + 1;
                return Ok(&bytes[start..i]);
            }
            _ => i += 1,
        }
    }
    Err(Shape::Malformed)
}

fn shape_value<'a>(
    bytes: &'a [u8],
    pos: &mut usize,
    path: &mut Vec<Step<'a>>,
    must_be_object: bool,
    depth: usize,
) -> Result<(), Shape> {
    if depth > SHAPE_DEPTH_MAX {
        return Err(Shape::Malformed);
    }
    skip_ws(bytes, pos);
    let Some(&first) = bytes.get(*pos) else {
        return Err(Shape::Malformed);
    };
    // The top level must be an object; an array element may be anything but an
    // array (an array of arrays is how a struct would be smuggled in by position).
    let refused = if depth == 0 {
        first != b'{'
    } else {
        must_be_object && first == b'['
    };
    if refused {
        let name = if path.is_empty() {
            "body".to_string()
        } else {
            render_path(path)
        };
        return Err(Shape::NotObject(name));
    }
    match first {
        b'{' => {
            *pos += 1;
            loop {
                skip_ws(bytes, pos);
                match bytes.get(*pos) {
                    Some(b'}') => {
                        *pos += 1;
                        return Ok(());
                    }
                    Some(b'"') => {}
                    _ => return Err(Shape::Malformed),
                }
                let key = shape_string(bytes, pos)?;
                skip_ws(bytes, pos);
                if bytes.get(*pos) != Some(&b':') {
                    return Err(Shape::Malformed);
                }
                *pos += 1;
                path.push(Step::Key(key));
                shape_value(bytes, pos, path, false, depth + 1)?;
                path.pop();
                skip_ws(bytes, pos);
                match bytes.get(*pos) {
                    Some(b',') => *pos += 1,
                    Some(b'}') => {
                        *pos += 1;
                        return Ok(());
                    }
                    _ => return Err(Shape::Malformed),
                }
            }
        }
        b'[' => {
            *pos += 1;
            let mut index = 0usize;
            loop {
                skip_ws(bytes, pos);
                if bytes.get(*pos) == Some(&b']') {
                    *pos += 1;
                    return Ok(());
                }
                path.push(Step::Index(index));
                shape_value(bytes, pos, path, true, depth + 1)?;
                path.pop();
                index += 1;
                skip_ws(bytes, pos);
                match bytes.get(*pos) {
                    Some(b',') => *pos += 1,
                    Some(b']') => {
                        *pos += 1;
                        return Ok(());
                    }
                    _ => return Err(Shape::Malformed),
                }
            }
        }
        b'"' => shape_string(bytes, pos).map(|_| ()),
        _ => {
            while *pos < bytes.len()
                && !matches!(
                    bytes[*pos],
                    b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'
                )
            {
                *pos += 1;
            }
            Ok(())
        }
    }
}

/// Parse JSON bytes into `T`, naming the offending field on failure; `prefix` is
/// prepended to field paths (`ops[3].`).
pub fn parse_json<'de, T: Deserialize<'de>>(bytes: &'de [u8], prefix: &str) -> Result<T, ApiError> {
    parse_shaped(bytes, &|| prefix.to_string())
}

/// [`parse_json`] with the prefix made only for an error.
fn parse_shaped<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
    prefix: &dyn Fn() -> String,
) -> Result<T, ApiError> {
    if let Shape::NotObject(path) = check_shape(bytes) {
        let prefix_text = prefix();
        let field = if prefix_text.is_empty() {
            path
        } else if path == "body" {
            prefix_text.trim_end_matches('.').to_string()
        } else {
            format!("{prefix_text}{path}")
        };
        // An array inside an array under a field that takes no array at all (a
        // `note` sent as `[[1]]`): serde's own refusal of that field says what it
        // takes ("invalid type: sequence, expected a string"), where the shape's
        // would name the inner element as if it were to be an object.
        if let Err(refused) = deserialize::<T>(bytes, prefix)
            && refused
                .field
                .as_deref()
                .is_some_and(|outer| encloses(outer, &field))
        {
            return Err(refused);
        }
        return Err(ApiError::validation(field, "must be a JSON object"));
    }
    deserialize(bytes, prefix)
}

/// Whether the field path `outer` names a value that holds the one at `inner`
/// (`note` holds `note[0]`; `lines[0]` holds `lines[0].sku`, not `lines[01]`).
fn encloses(outer: &str, inner: &str) -> bool {
    inner
        .strip_prefix(outer)
        .is_some_and(|rest| rest.starts_with(['[', '.']))
}

/// Parse a batch's envelope (`{"ops": [...]}`, each op kept as its text): only the
/// body itself must be an object here. Each op's own shape is judged by
/// [`parse_op`], so an op holding an array of arrays fails alone, as any other
/// malformed op does, and the batch's other ops go on.
pub fn parse_batch_envelope<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::validation("body", "must be a JSON object"));
    }
    deserialize(bytes, &String::new)
}

/// Parse one op of a batch (whose envelope [`parse_batch_envelope`] read), with its
/// shape checked as a whole body's is; the `ops[i].` prefix is built only for an
/// error.
pub fn parse_op<T: DeserializeOwned>(bytes: &[u8], index: usize) -> Result<T, ApiError> {
    op_object(bytes, index)?;
    parse_shaped(bytes, &|| format!("ops[{index}]."))
}

/// Read only an op's name (`T` takes `op` and ignores the rest): the op itself is
/// then parsed, and its shape judged, by [`parse_op`] as its name says.
pub fn parse_op_name<T: DeserializeOwned>(bytes: &[u8], index: usize) -> Result<T, ApiError> {
    op_object(bytes, index)?;
    deserialize(bytes, &|| format!("ops[{index}]."))
}

fn op_object(bytes: &[u8], index: usize) -> Result<(), ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::validation(
            format!("ops[{index}]"),
            "must be a JSON object",
        ));
    }
    Ok(())
}

fn deserialize<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
    prefix: &dyn Fn() -> String,
) -> Result<T, ApiError> {
    // Most bodies are well-formed: parse them without tracking the path, which costs
    // about as much again as the parse. A refused body is parsed a second time below,
    // tracked, and refused with the same serde error and its field named.
    let mut plain = serde_json::Deserializer::from_slice(bytes);
    if let Ok(value) = T::deserialize(&mut plain)
        && plain.end().is_ok()
    {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let message = e.inner().to_string();
        let field = format!("{}{}", prefix(), field_of(e.path(), &message));
        ApiError::validation(field, message)
    })?;
    de.end().map_err(|e| {
        let prefix = prefix();
        let name = if prefix.is_empty() {
            "body".to_string()
        } else {
            prefix.trim_end_matches('.').to_string()
        };
        ApiError::validation(name, e.to_string())
    })?;
    Ok(value)
}

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let JsonBytes(bytes) = JsonBytes::from_request(request, state).await?;
        let value = parse_json(&bytes, "")?;
        Ok(ApiJson(value, bytes))
    }
}

impl<T: DeserializeOwned> ApiJson<T> {
    /// The body of an action whose fields are all optional (a refund's
    /// `refund_ref`, a hold release's `note`): no body at all, with no JSON
    /// `Content-Type`, reads as `{}`, as it does where an endpoint takes no body. An
    /// action with a required field is refused as ever (415 without a JSON body).
    pub async fn from_request_or_empty(
        request: Request,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        if has_json_content_type(request.headers()) {
            return ApiJson::from_request(request, state).await;
        }
        let bytes = body_bytes(request, state).await?;
        match serde_json::from_slice::<T>(b"{}") {
            Ok(value) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(ApiJson(value, bytes)),
            _ => Err(not_json()),
        }
    }
}

/// A JSON body's bytes, not yet parsed: the `Content-Type` and the size checked
/// (415 / 413), for a handler that parses into values borrowing from them.
pub struct JsonBytes(pub Bytes);

impl FromRequest<AppState> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        check_json_content_type(request.headers())?;
        body_bytes(request, state).await.map(JsonBytes)
    }
}

/// 415 unless the `Content-Type` is JSON (`application/json` or `+json`).
fn check_json_content_type(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    if has_json_content_type(headers) {
        return Ok(());
    }
    Err(not_json())
}

fn has_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json)
}

/// 415: the body is not JSON.
fn not_json() -> ApiError {
    ApiError {
        field: Some("Content-Type".into()),
        ..ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "validation_failed",
            "Content-Type: the body must be application/json",
        )
    }
}

/// The body's bytes, within the server's limit (413 beyond it) and its body timeout
/// (408 past it: a client that sends its body slowly, or declares more than it
/// sends, is told so, not answered 503 "a write may still take effect" at the
/// request timeout). The timer is armed only if the body is not there at once.
async fn body_bytes(request: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let limit_ms = state.config().body_timeout_ms;
    let read = Bytes::from_request(request, state);
    let Ok(read) = tokio::time::timeout(Duration::from_millis(limit_ms), read).await else {
        return Err(ApiError::body_timed_out(limit_ms));
    };
    read.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError {
                field: Some("body".into()),
                ..ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "validation_failed",
                    "body: larger than the server's limit",
                )
            }
        } else {
            ApiError::validation("body", e.body_text())
        }
    })
}

/// The body of an endpoint that takes none: nothing, or an empty JSON object (which
/// some clients send with every POST). Anything else is refused as a body is where
/// one is read (415 for one that is not JSON; 400 for malformed JSON, or naming a
/// field), so that a mistaken body never passes unread.
pub struct NoBody;

/// Declares no field, and takes none.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

impl FromRequest<AppState> for NoBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        // A flag, not the refusal: the usual commit or release has no body and
        // no JSON Content-Type, and must not build (and drop) an error each time.
        let json = has_json_content_type(request.headers());
        let bytes = body_bytes(request, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(NoBody);
        }
        if !json {
            return Err(not_json());
        }
        parse_json::<NoFields>(&bytes, "").map(|_| NoBody)
    }
}

/// A query string parsed into `T`, a struct of named parameters. A parameter the
/// struct does not declare is refused (400 `validation_failed` naming it), as unknown
/// JSON fields are: a mistyped filter must never widen a list or an export to
/// everything. `T` must be a plain struct (no `#[serde(flatten)]`), so that its
/// parameter names are known: see [`declared_fields`].
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        parse_query(query).map(ApiQuery)
    }
}

/// Parse a query string into `T`, refusing parameters `T` does not declare.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    check_utf8_parameters(query)?;
    let declared = declared_fields::<T>();
    // A struct with `flatten` reads a map and declares nothing: such a type has no
    // place here (the unit tests check every parameter struct of the API).
    debug_assert!(
        declared.is_some(),
        "query parameters must be a plain struct"
    );
    if let Some(fields) = declared {
        for (name, _) in form_urlencoded_parse(query) {
            if !fields.contains(&name.as_ref()) {
                return Err(unknown_parameter(&name, fields));
            }
        }
    }
    let de = serde_urlencoded::Deserializer::new(form_urlencoded_parse(query));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let message = e.inner().to_string();
        ApiError::validation(field_of(e.path(), &message), message)
    })
}

/// Longest parameter name echoed back in a refusal.
const PARAMETER_ECHO_LEN_MAX: usize = 64;

/// A parameter's name as a refusal names it: cut to [`PARAMETER_ECHO_LEN_MAX`]
/// bytes, `query` when empty.
fn parameter_field(name: &str) -> &str {
    let mut shown = name;
    if shown.len() > PARAMETER_ECHO_LEN_MAX {
        let mut end = PARAMETER_ECHO_LEN_MAX;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown = &shown[..end];
    }
    if shown.is_empty() { "query" } else { shown }
}

fn unknown_parameter(name: &str, fields: &[&str]) -> ApiError {
    let field = parameter_field(name);
    let detail = if fields.is_empty() {
        "unknown query parameter: this endpoint takes none".to_string()
    } else {
        format!(
            "unknown query parameter (expected one of: {})",
            fields.join(", ")
        )
    };
    ApiError::validation(field, detail)
}

/// Path parameters; one that cannot be read (a percent-encoding that is not UTF-8,
/// say) is refused as 400 `validation_failed` naming it, like a body's field.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(path_error(&rejection)),
        }
    }
}

fn path_error(rejection: &axum::extract::rejection::PathRejection) -> ApiError {
    use axum::extract::path::ErrorKind;
    use axum::extract::rejection::PathRejection;
    let PathRejection::FailedToDeserializePathParams(failed) = rejection else {
        return ApiError::validation("path", rejection.body_text());
    };
    match failed.kind() {
        ErrorKind::InvalidUtf8InPathParam { key } => {
            ApiError::validation(key.as_str(), "not UTF-8 once percent-decoded")
        }
        ErrorKind::ParseErrorAtKey { key, .. } | ErrorKind::DeserializeError { key, .. } => {
            ApiError::validation(key.as_str(), failed.body_text())
        }
        _ => ApiError::validation("path", failed.body_text()),
    }
}

/// The query string of an endpoint that takes no parameters: any is refused.
pub struct NoQuery;

/// Declares no parameter.
#[derive(Debug, serde::Deserialize)]
struct NoParams {}

impl<S: Send + Sync> FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        match parts.uri.query() {
            None => Ok(NoQuery),
            Some(query) => parse_query::<NoParams>(query).map(|_| NoQuery),
        }
    }
}

/// The field names a struct's `Deserialize` declares. A derived impl asks for a
/// struct with its field names (after `rename`) before reading anything, so a
/// deserializer that only records them and stops learns them without input. `None`
/// for a type that is not read as a struct (a map, or a struct with `flatten`).
pub fn declared_fields<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
    match T::deserialize(FieldProbe) {
        Err(ProbeEnd(fields)) => fields,
        Ok(_) => None,
    }
}

/// A deserializer that answers nothing: it records the fields of the struct asked for.
struct FieldProbe;

/// How a [`FieldProbe`] ends: with the declared fields, or without (not a struct).
#[derive(Debug)]
struct ProbeEnd(Option<&'static [&'static str]>);

impl std::fmt::Display for ProbeEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field probe")
    }
}

impl std::error::Error for ProbeEnd {}

impl serde::de::Error for ProbeEnd {
    fn custom<M: std::fmt::Display>(_message: M) -> Self {
        ProbeEnd(None)
    }
}

impl<'de> serde::Deserializer<'de> for FieldProbe {
    type Error = ProbeEnd;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        _visitor: V,
    ) -> Result<V::Value, ProbeEnd> {
        Err(ProbeEnd(None))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, ProbeEnd> {
        Err(ProbeEnd(Some(fields)))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
        enum identifier ignored_any
    }
}

fn form_urlencoded_parse(query: &str) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(query.as_bytes())
}

/// Refuses a parameter whose name or value is not UTF-8 once percent-decoded
/// (`customer_id=%FF`), naming it, as a path parameter is: the parser would
/// replace the bytes with U+FFFD and answer for another value.
fn check_utf8_parameters(query: &str) -> Result<(), ApiError> {
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name_ok = percent_decoded_is_utf8(name);
        if name_ok && percent_decoded_is_utf8(value) {
            continue;
        }
        let name = if name_ok {
            form_urlencoded_parse(name)
                .next()
                .map_or_else(String::new, |(n, _)| n.into_owned())
        } else {
            String::new()
        };
        return Err(ApiError::validation(
            parameter_field(&name),
            "not UTF-8 once percent-decoded",
        ));
    }
    Ok(())
}

/// Whether `text`, with its `%XX` escapes decoded, is UTF-8 (a `%` without two
/// hex digits stays as it is, as the form decoding reads it).
fn percent_decoded_is_utf8(text: &str) -> bool {
    !text.contains('%')
        || percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .is_ok()
}

/// The optional `Idempotency-Key` header with what the fingerprint needs.
pub struct Idem(Option<IdemKey>);

/// A request's key with the method and path its fingerprint covers: kept only
/// when the request carries a key.
struct IdemKey {
    key: String,
    method: String,
    path: String,
    /// The caller's `Authorization` header: in the fingerprint, so that another
    /// caller's request under the same key is a conflict (422), never answered with
    /// the first caller's stored response.
    caller: Vec<u8>,
}

/// Between a batch's key and an op's index in the key of the op: not ASCII, so no
/// `Idempotency-Key` header can spell a key of that form.
const BATCH_OP_KEY_SEPARATOR: char = '\u{b7}';

impl Idem {
    /// The engine's key: fingerprint = method, path and body bytes.
    pub fn key(&self, body: &[u8]) -> Option<IdempotencyKey> {
        let idem = self.0.as_ref()?;
        Some(IdempotencyKey {
            key: idem.key.clone(),
            fingerprint: EngineHandle::fingerprint(&[
                idem.method.as_bytes(),
                idem.path.as_bytes(),
                &idem.caller,
                body,
            ]),
        })
    }

    /// The request's key as sent, if any.
    pub fn sent(&self) -> Option<&str> {
        self.0.as_ref().map(|idem| idem.key.as_str())
    }

    /// The longest key a batch of up to `ops_max` ops takes: each op's key is the
    /// batch's, a separator and the op's index, within the engine's key limit.
    pub fn batch_key_len_max(ops_max: usize) -> usize {
        let index_digits = ops_max.saturating_sub(1).max(1).ilog10() as usize + 1;
        IDEMPOTENCY_KEY_LEN_MAX.saturating_sub(BATCH_OP_KEY_SEPARATOR.len_utf8() + index_digits)
    }

    /// The keys of a batch's ops, if the batch was sent with a key: its body is
    /// fingerprinted here once, each op's fingerprint carried on from it
    /// ([`BatchKeys::op`]).
    pub fn batch_keys(&self, body: &[u8]) -> Option<BatchKeys> {
        let idem = self.0.as_ref()?;
        Some(BatchKeys {
            key: idem.key.clone(),
            shared: EngineHandle::fingerprint(&[
                idem.method.as_bytes(),
                idem.path.as_bytes(),
                &idem.caller,
                body,
            ]),
        })
    }
}

/// The keys of the ops of one batch sent with an `Idempotency-Key`.
pub struct BatchKeys {
    key: String,
    /// The fingerprint of what every op's shares: method, path, caller, the whole
    /// body. Hashed once: hashing the body again for each op made a keyed batch
    /// quadratic in its size (10,000 ops took 7.9 s on the HTTP thread).
    shared: u64,
}

impl BatchKeys {
    /// The key of op `index`: the batch's key itself for the first op applied
    /// (`first`), else the batch's key, a separator and the index; fingerprint =
    /// method, path, caller, the whole body and the index, so a batch repeated
    /// under its key with another body conflicts in every op, and a repeat whose
    /// first applied op moved (an op the API refused before and takes now)
    /// conflicts instead of answering one op with another's answer.
    pub fn op(&self, index: usize, first: bool) -> IdempotencyKey {
        IdempotencyKey {
            key: if first {
                self.key.clone()
            } else {
                format!("{}{BATCH_OP_KEY_SEPARATOR}{index}", self.key)
            },
            fingerprint: EngineHandle::fingerprint_on(
                self.shared,
                &[&(index as u64).to_le_bytes()],
            ),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Idem {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        // A header name given as text is parsed on every look-up; this one is made once.
        const KEY: axum::http::HeaderName = axum::http::HeaderName::from_static("idempotency-key");
        let key = match parts.headers.get(KEY) {
            None => None,
            Some(v) => {
                let key = v
                    .to_str()
                    .ok()
                    .filter(|k| {
                        !k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
                    })
                    .ok_or_else(|| {
                        ApiError::validation(IDEMPOTENCY_KEY, "must be printable ASCII")
                    })?;
                if key.len() > IDEMPOTENCY_KEY_LEN_MAX {
                    return Err(ApiError::validation(
                        IDEMPOTENCY_KEY,
                        format!("must be at most {IDEMPOTENCY_KEY_LEN_MAX} bytes"),
                    ));
                }
                Some(IdemKey {
                    key: key.to_string(),
                    method: parts.method.as_str().to_string(),
                    path: parts.uri.path().to_string(),
                    caller: parts
                        .headers
                        .get(header::AUTHORIZATION)
                        .map_or_else(Vec::new, |v| v.as_bytes().to_vec()),
                })
            }
        };
        Ok(Idem(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch's own key goes to its first applied op, fingerprinted with that
    /// op's index: a repeat whose first applied op moved conflicts with the first
    /// time, rather than answering one op with another's stored answer.
    #[test]
    fn a_batch_key_is_bound_to_the_op_that_took_it() {
        let idem = Idem(Some(IdemKey {
            key: "K".into(),
            method: "POST".into(),
            path: "/v1/batch".into(),
            caller: b"Bearer t".to_vec(),
        }));
        let body = br#"{"ops":[]}"#;
        let keys = idem.batch_keys(body).expect("keyed");
        let first = keys.op(1, true);
        let moved = keys.op(0, true);
        assert_eq!((first.key.as_str(), moved.key.as_str()), ("K", "K"));
        assert_ne!(first.fingerprint, moved.fingerprint);
        let later = keys.op(2, false);
        assert_eq!(later.key, "K\u{b7}2");
        assert!(Idem(None).batch_keys(body).is_none());
        // The fingerprint is the one the whole parts give, hashed in one go (so a
        // key remembered before the body was hashed once answers a retry alike).
        assert_eq!(
            later.fingerprint,
            EngineHandle::fingerprint(&[
                b"POST",
                b"/v1/batch",
                b"Bearer t",
                body,
                &2u64.to_le_bytes()
            ])
        );
    }

    #[test]
    fn json_media_types_are_recognised_in_any_case() {
        for (content_type, json) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("  application/json ;x=y", true),
            ("application/problem+json", true),
            ("APPLICATION/Merge-Patch+JSON", true),
            ("application/+json", true),
            ("application/x/y+json", true),
            ("application/json/x", false),
            ("text/json", false),
            ("application/jsonx", false),
            ("application/xml", false),
            ("json", false),
            ("", false),
            ("application/é+json", true),
            ("application/xé", false),
        ] {
            assert_eq!(is_json(content_type), json, "{content_type:?}");
        }
    }

    /// A syntax error serde places after a value (`?`) names what encloses it.
    #[test]
    fn a_syntax_error_names_the_enclosing_field_not_a_question_mark() {
        for (body, field) in [
            (r#"{"lines":[{"sku":"F","qty":1}] /* c */}"#, "body"),
            (r#"{"lines":[{"sku":"F","qty":1,}]}"#, "lines[0]"),
            (r#"{"lines":[{"sku":"F","qty":"1"}]}"#, "lines[0].qty"),
        ] {
            let refused =
                parse_json::<crate::dto::ReserveReq>(body.as_bytes(), "").expect_err("refused");
            assert_eq!(refused.field.as_deref(), Some(field), "for {body}");
        }
    }

    #[test]
    fn a_refused_shape_is_named_by_its_path() {
        for (body, path) in [
            ("[]", Some("body")),
            ("  \"a\"", Some("body")),
            (r#"{"lines":[["A",1]]}"#, Some("lines[0]")),
            (
                r#"{"ops":[{"op":"reserve"},{"lines":[{"sku":"A"},[1]]}]}"#,
                Some("ops[1].lines[1]"),
            ),
            (r#"{"a":{"b\"c":{"d":[{}, [] ]}}}"#, Some("a.b\\\"c.d[1]")),
            (r#"{"lines":[{"sku":"A","qty":1}],"ttl_ms":5}"#, None),
            (r#"{"lines":[[]"#, Some("lines[0]")),
            // One `[` at most: only the first byte decides.
            (
                r#" {"lines":[{"sku":"A","qty":1},{"sku":"[","qty":2}]}"#,
                None,
            ),
            (r#"{"lines":["#, None),
            (r#"{"ttl_ms":5}"#, None),
            ("\n\t[", Some("body")),
            ("", None),
            (r#"{"lines":[{"sku":"[["}]}"#, None),
        ] {
            let expected = path.map(str::to_string);
            let refused = |shape| match shape {
                Shape::NotObject(path) => Some(path),
                Shape::Fine | Shape::Malformed => None,
            };
            assert_eq!(
                refused(check_shape(body.as_bytes())),
                expected,
                "for {body}"
            );
            assert_eq!(
                refused(walk_shape(body.as_bytes())),
                expected,
                "the whole walk, for {body}"
            );
        }
    }

    /// Every parameter struct of the API is a plain struct, so its unknown parameters
    /// are refused.
    #[test]
    fn every_parameter_struct_declares_its_fields() {
        fn names<T: DeserializeOwned>() -> Vec<&'static str> {
            declared_fields::<T>().expect("a plain struct").to_vec()
        }
        assert_eq!(names::<NoParams>(), Vec::<&str>::new());
        assert_eq!(names::<crate::routes::SkuListParams>(), ["cursor", "limit"]);
        assert_eq!(names::<crate::events::EventParams>(), ["after", "limit"]);
        assert!(names::<crate::routes::OrderListParams>().contains(&"created_from"));
        assert!(names::<crate::routes::StatsParams>().contains(&"top"));
        let xlsx = names::<crate::export::XlsxExportParams>();
        assert!(
            xlsx.contains(&"status") && !xlsx.contains(&"bom"),
            "{xlsx:?}"
        );
        assert_eq!(
            declared_fields::<std::collections::HashMap<String, String>>(),
            None
        );
    }

    #[test]
    fn unknown_parameters_are_refused_by_name() {
        let e = parse_query::<crate::routes::SkuListParams>("limit=2&limt=3").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("limt"));
        assert!(e.detail.contains("unknown query parameter"), "{}", e.detail);
        let e = parse_query::<NoParams>("x=1").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("x"));
        let long = "é".repeat(100);
        let e = parse_query::<NoParams>(&format!("{long}=1")).unwrap_err();
        assert!(e.field.unwrap().len() <= PARAMETER_ECHO_LEN_MAX);
        assert!(parse_query::<NoParams>("").is_ok());
        let p = parse_query::<crate::routes::SkuListParams>("limit=2").unwrap();
        assert_eq!(p.limit.as_deref(), Some("2"));
    }

    /// A value or name that is not UTF-8 once decoded is refused by name, not
    /// replaced by U+FFFD and answered for another value (outside probe 8).
    #[test]
    fn a_parameter_not_utf8_once_decoded_is_refused_by_name() {
        type Orders = crate::routes::OrderListParams;
        for (query, field) in [
            ("customer_id=%FF", "customer_id"),
            ("status=paid&sku=%C3%28", "sku"),
            ("%FF=1", "query"),
            ("customer_id=a%E4%B8", "customer_id"),
        ] {
            let e = parse_query::<Orders>(query).expect_err(query);
            assert_eq!(e.field.as_deref(), Some(field), "{query}");
            assert!(e.detail.contains("not UTF-8"), "{query}: {}", e.detail);
        }
        for query in [
            "customer_id=%E4%B8%AD",
            "customer_id=100%",
            "customer_id=%zz",
            "sku=a+b",
        ] {
            assert!(parse_query::<Orders>(query).is_ok(), "{query}");
        }
    }
}
