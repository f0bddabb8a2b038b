//! The HTTP client: hyper 1 with hyper-util's keep-alive pool, no convenience layer.

use std::net::ToSocketAddrs;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A parsed `http://host:port` base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `http://host:port` without a trailing slash.
    pub base: String,
    pub host: String,
    pub port: u16,
}

/// Parse `scheme://host[:port]` (an optional trailing `/`), for `http` or `redis`.
pub fn parse_base(url: &str, scheme: &str, default_port: u16) -> anyhow::Result<BaseUrl> {
    let prefix = format!("{scheme}://");
    let Some(rest) = url.strip_prefix(&prefix) else {
        bail!("{url}: expected a {prefix}host:port URL");
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') || rest.is_empty() {
        bail!("{url}: expected {prefix}host:port with no path or credentials");
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, tail) = v6.split_once(']').context("unclosed [ in host")?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().context("bad port")?,
            None if tail.is_empty() => default_port,
            None => bail!("{url}: bad host"),
        };
        (h.to_string(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().context("bad port")?),
            None => (rest.to_string(), default_port),
        }
    };
    let host_part = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    Ok(BaseUrl {
        base: format!("{scheme}://{host_part}:{port}"),
        host,
        port,
    })
}

/// Refuse a host that is not a loopback address unless explicitly allowed: a drill
/// pushes past peak load, and pointing one at a shared machine by mistake hurts.
pub fn check_loopback(url: &BaseUrl, allow_non_loopback: bool) -> anyhow::Result<()> {
    if allow_non_loopback {
        return Ok(());
    }
    let addrs: Vec<_> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", url.host))?
        .collect();
    if addrs.is_empty() || !addrs.iter().all(|a| a.ip().is_loopback()) {
        bail!(
            "refusing non-loopback target {} (pass --allow-non-loopback if you really mean it)",
            url.base
        );
    }
    Ok(())
}

/// What came back: the status and the whole body.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub body: Bytes,
}

impl Resp {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The problem+json `code`, or `http_<status>` when the body has none.
    pub fn problem_code(&self) -> String {
        self.json()
            .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| format!("http_{}", self.status))
    }
}

/// A request that got no HTTP answer: its effect on the server is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAnswer {
    Timeout,
    Transport,
}

impl NoAnswer {
    pub fn code(self) -> &'static str {
        match self {
            NoAnswer::Timeout => "timeout",
            NoAnswer::Transport => "transport_error",
        }
    }
}

pub type Answer = Result<Resp, NoAnswer>;

#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    auth: Option<String>,
    timeout: Duration,
}

impl HttpClient {
    pub fn new(
        base: &BaseUrl,
        token: Option<&str>,
        connections: usize,
        timeout: Duration,
    ) -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(connections.max(1))
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        HttpClient {
            client,
            base: base.base.clone(),
            auth: token.map(|t| format!("Bearer {t}")),
            timeout,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Answer {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Answer {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        if let Some(auth) = &self.auth {
            builder = builder.header(hyper::header::AUTHORIZATION, auth.as_str());
        }
        let bytes = match body {
            Some(v) => {
                builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).expect("JSON values serialize"))
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(bytes))
            .expect("request parts are valid");
        let call = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|_| NoAnswer::Transport)?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|_| NoAnswer::Transport)?
                .to_bytes();
            Ok(Resp { status, body })
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(answer) => answer,
            Err(_) => Err(NoAnswer::Timeout),
        }
    }
}

/// Percent-encode a path or query component (ids we make are already safe; this is
/// for anything that came from elsewhere).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let u = parse_base("http://127.0.0.1:9000/", "http", 80).unwrap();
        assert_eq!(u.base, "http://127.0.0.1:9000");
        assert!(check_loopback(&u, false).is_ok());
        let u = parse_base("redis://[::1]:6379", "redis", 6379).unwrap();
        assert_eq!(u.host, "::1");
        assert!(check_loopback(&u, false).is_ok());
        let u = parse_base("http://10.1.2.3:80", "http", 80).unwrap();
        assert!(check_loopback(&u, false).is_err());
        assert!(check_loopback(&u, true).is_ok());
        assert!(parse_base("https://127.0.0.1", "http", 80).is_err());
        assert!(parse_base("http://u:p@127.0.0.1", "http", 80).is_err());
    }
}
