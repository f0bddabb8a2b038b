//! Refusals decided from the request's headers alone, before a route, an extractor
//! or the body is touched (`front::Front` asks [`refusal`] first).
//!
//! - A body declared (`Content-Length`) over the server's limit is 413 at once. The
//!   body limit alone reads up to the limit first, and a client that declared more
//!   and sent nothing, or waited for `100 Continue`, held the request until the
//!   request timeout (503 `overloaded`, "a write may still take effect": wrong on
//!   both counts). Refused here, no `100 Continue` is sent either.
//! - A header that names one thing given twice (`Authorization`, `Content-Type`,
//!   `Idempotency-Key`, `X-Actor`) is 400 naming it: the first one silently won,
//!   so `Authorization: <admin>` then `Authorization: <viewer>` acted as the admin.
//! - A body the server would read as something it is not is 415: a
//!   `Content-Encoding` (surge decodes none) or a `charset` other than UTF-8.
//! - Headers over [`HEADER_BYTES_MAX`] are 431 naming `headers`: they were taken up
//!   to hyper's buffer (about 400 KiB), past which hyper answers 431 itself, with no
//!   body, as it does for more than 100 headers or a target over 64 KiB. (A target
//!   gets no tighter limit: a path naming a 40,000-byte SKU must reach the route,
//!   which refuses it naming the field.)

use axum::http::{HeaderMap, StatusCode, header};

use crate::error::ApiError;

/// Headers that name one thing each: given more than once, the request is refused.
const SINGLE_HEADERS: [(&str, &str); 4] = [
    ("authorization", "Authorization"),
    ("content-type", "Content-Type"),
    ("idempotency-key", "Idempotency-Key"),
    ("x-actor", "X-Actor"),
];

/// The most header bytes taken: each header's name and value, plus the four bytes of
/// `": "` and the line end, summed.
pub const HEADER_BYTES_MAX: usize = 64 * 1024;

/// Why a request with these headers is refused, if it is.
pub fn refusal(headers: &HeaderMap, body_limit_bytes: u64) -> Option<ApiError> {
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > HEADER_BYTES_MAX {
        return Some(too_large(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers",
            format!(
                "headers: {header_bytes} bytes, more than the server's limit of {HEADER_BYTES_MAX}"
            ),
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > body_limit_bytes) {
        return Some(too_large(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body",
            format!("body: larger than the server's limit of {body_limit_bytes} bytes"),
        ));
    }
    for (name, shown) in SINGLE_HEADERS {
        if headers.get_all(name).iter().nth(1).is_some() {
            return Some(ApiError::validation(shown, "given more than once"));
        }
    }
    if names_a_coding_but(headers, header::CONTENT_ENCODING, "identity") {
        return Some(unsupported(
            "Content-Encoding",
            "Content-Encoding: the body must be sent as it is (no encoding)",
        ));
    }
    // hyper frames `gzip, chunked` as chunked and hands the body on still encoded:
    // refused like a `Content-Encoding`, or a compressed body would be read as text.
    if names_a_coding_but(headers, header::TRANSFER_ENCODING, "chunked") {
        return Some(unsupported(
            "Transfer-Encoding",
            "Transfer-Encoding: only chunked framing is taken (no compression)",
        ));
    }
    let charset = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(charset_of);
    if charset.is_some_and(|c| !c.eq_ignore_ascii_case("utf-8") && !c.eq_ignore_ascii_case("utf8"))
    {
        return Some(unsupported(
            "Content-Type",
            "Content-Type: the charset must be utf-8",
        ));
    }
    None
}

/// Whether the `name` headers list a coding other than `allowed` (or are unreadable).
fn names_a_coding_but(headers: &HeaderMap, name: header::HeaderName, allowed: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str().map_or(true, |v| {
            v.split(',')
                .any(|coding| !coding.trim().eq_ignore_ascii_case(allowed))
        })
    })
}

/// A `validation_failed` with this status, naming `field`.
fn too_large(status: StatusCode, field: &str, detail: String) -> ApiError {
    ApiError {
        field: Some(field.into()),
        ..ApiError::new(status, "validation_failed", detail)
    }
}

/// 415 naming the header.
fn unsupported(field: &str, detail: &str) -> ApiError {
    ApiError {
        field: Some(field.into()),
        ..ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "validation_failed",
            detail,
        )
    }
}

/// The `charset` parameter of a media type (`text/plain; charset="latin1"`), if any.
fn charset_of(content_type: &str) -> Option<&str> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("a header value"));
        }
        map
    }

    fn refused(pairs: &[(&'static str, &str)]) -> Option<(StatusCode, Option<String>)> {
        refusal(&headers(pairs), 1024).map(|e| (e.status, e.field))
    }

    #[test]
    fn headers_over_the_limit_are_refused_naming_them() {
        // "x-big: <value>\r\n" is 5 + 4 bytes beside the value.
        let at_limit = "v".repeat(HEADER_BYTES_MAX - 9);
        assert_eq!(refused(&[("x-big", &at_limit)]), None);
        let over = format!("{at_limit}v");
        assert_eq!(
            refused(&[("x-big", &over)]),
            Some((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                Some("headers".to_string())
            ))
        );
    }

    #[test]
    fn headers_alone_decide_these_refusals() {
        let field = |f: &str| Some(f.to_string());
        assert_eq!(refused(&[("content-length", "1024")]), None);
        assert_eq!(
            refused(&[("content-length", "1025")]),
            Some((StatusCode::PAYLOAD_TOO_LARGE, field("body")))
        );
        assert_eq!(
            refused(&[("content-length", "99999999999999999999")]),
            None,
            "not a u64: hyper refuses it before us"
        );
        assert_eq!(
            refused(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
            Some((StatusCode::BAD_REQUEST, field("Authorization")))
        );
        assert_eq!(
            refused(&[("idempotency-key", "k"), ("idempotency-key", "k")]),
            Some((StatusCode::BAD_REQUEST, field("Idempotency-Key")))
        );
        assert_eq!(
            refused(&[("x-actor", "a"), ("x-actor", "b")]),
            Some((StatusCode::BAD_REQUEST, field("X-Actor")))
        );
        assert_eq!(
            refused(&[
                ("content-type", "application/json"),
                ("content-type", "application/json")
            ]),
            Some((StatusCode::BAD_REQUEST, field("Content-Type")))
        );
        assert_eq!(
            refused(&[("content-encoding", "gzip")]),
            Some((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                field("Content-Encoding")
            ))
        );
        assert_eq!(refused(&[("content-encoding", "identity")]), None);
        for coded in ["gzip, chunked", "deflate,chunked", "identity"] {
            assert_eq!(
                refused(&[("transfer-encoding", coded)]),
                Some((
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    field("Transfer-Encoding")
                )),
                "{coded}"
            );
        }
        assert_eq!(refused(&[("transfer-encoding", "chunked")]), None);
        assert_eq!(refused(&[("transfer-encoding", "Chunked")]), None);
        for charset in ["utf-16", "latin1", "\"iso-8859-1\""] {
            let value = format!("application/json; charset={charset}");
            assert_eq!(
                refused(&[("content-type", &value)]),
                Some((StatusCode::UNSUPPORTED_MEDIA_TYPE, field("Content-Type"))),
                "{charset}"
            );
        }
        for fine in [
            "application/json",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "application/json; charset=utf8",
        ] {
            assert_eq!(refused(&[("content-type", fine)]), None, "{fine}");
        }
        assert_eq!(refused(&[]), None);
    }
}
