//! The HTTP edge in front of the routes: which hosts are answered (DNS-rebinding guard), API-key
//! authentication of `/v1/*`, the 503 for requests that arrive during shutdown, `Content-Type`
//! and declared-size checks of POST bodies, CORS, and the body read timeout handed to the JSON
//! extractor. Everything here runs before a handler, so a rejected request never reaches
//! validation or the engine.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::{ApiError, ServerError};
use crate::metrics::Metrics;

/// Largest request body accepted (2 MiB: a full context of text is far smaller).
pub const DEFAULT_MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Default time a client has to send a request's headers (also closes idle keep-alive sockets).
pub const DEFAULT_HEADER_TIMEOUT_S: f64 = 10.0;
/// Default time a client has to send a request's body once its headers arrived.
pub const DEFAULT_BODY_TIMEOUT_S: f64 = 30.0;

/// API keys accepted as `Authorization: Bearer KEY`. Debug output shows the count only, so that
/// logging a config never prints a secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKeys(Vec<String>);

impl ApiKeys {
    /// Keys from flag values and env entries; each value may hold several comma-separated keys.
    /// Blank entries are dropped (a trailing comma must not create the empty key).
    pub fn new<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self(
            values
                .into_iter()
                .flat_map(|v| {
                    v.as_ref()
                        .split(',')
                        .map(|k| k.trim().to_string())
                        .collect::<Vec<_>>()
                })
                .filter(|k| !k.is_empty())
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `given` is one of the keys. Every key is compared, each in constant time for
    /// equal lengths (`subtle`), so the time taken does not reveal how much of a key matched;
    /// it may reveal a key's length, which is not secret enough to matter.
    pub fn accepts(&self, given: &str) -> bool {
        let mut found = subtle::Choice::from(0);
        for key in &self.0 {
            found |= key.as_bytes().ct_eq(given.as_bytes());
        }
        bool::from(found)
    }
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

/// The HTTP edge's settings (from `lapsd serve` flags; tests set them directly).
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Keys `/v1/*` requires; empty = no authentication.
    pub api_keys: ApiKeys,
    /// Host names the `Host` header may carry (any port); `None` = the default for the bind
    /// address (loopback names on a loopback bind, anything otherwise); `*` allows any.
    pub allowed_hosts: Option<Vec<String>>,
    /// Origins allowed to call the API from a browser; empty = no CORS headers at all.
    pub cors_origins: Vec<String>,
    /// Time to receive a request's headers; also how long an idle connection stays open.
    pub header_timeout_s: f64,
    /// Time to receive a request's body once the handler starts reading it.
    pub body_timeout_s: f64,
    /// Largest body accepted; a larger declared `Content-Length` is refused before reading.
    pub max_body_bytes: usize,
    /// Most characters in a prompt (`--max-prompt-chars`); `None` = no limit beyond the body's.
    pub max_prompt_chars: Option<usize>,
    /// `/metrics` also exports the load gauges under vLLM's names (`--metrics-compat vllm`),
    /// for routers and autoscalers that read only those.
    pub metrics_compat_vllm: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            api_keys: ApiKeys::default(),
            allowed_hosts: None,
            cors_origins: Vec::new(),
            header_timeout_s: DEFAULT_HEADER_TIMEOUT_S,
            body_timeout_s: DEFAULT_BODY_TIMEOUT_S,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_prompt_chars: None,
            metrics_compat_vllm: false,
        }
    }
}

impl HttpConfig {
    /// Checks the settings (timeouts positive and finite, origins valid header values).
    pub fn check(&self) -> Result<(), ServerError> {
        for (name, value) in [
            ("--header-timeout-s", self.header_timeout_s),
            ("--body-timeout-s", self.body_timeout_s),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(ServerError::InvalidSetting(format!(
                    "{name} must be a positive number of seconds, got {value}"
                )));
            }
        }
        if self.max_body_bytes == 0 {
            return Err(ServerError::InvalidSetting(
                "the body limit must be at least 1 byte".into(),
            ));
        }
        cors_layer(&self.cors_origins)?;
        Ok(())
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.header_timeout_s)
    }
}

/// Which `Host` header values are answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPolicy {
    Any,
    /// Lower-case host names without port (IPv6 without brackets).
    Only(Vec<String>),
}

/// Names a loopback server answers to by default: a web page on another origin that resolves
/// its own name to 127.0.0.1 (DNS rebinding) sends its own name in `Host` and is refused.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

impl HostPolicy {
    /// The policy for `allowed` (`--allowed-hosts`) on a server bound to `bind_ip`.
    pub fn resolve(allowed: Option<&[String]>, bind_ip: IpAddr) -> Self {
        match allowed {
            Some(list) if list.iter().any(|h| h.trim() == "*") => HostPolicy::Any,
            Some(list) => HostPolicy::Only(
                list.iter()
                    .map(|h| normalize_host(h.trim()))
                    .filter(|h| !h.is_empty())
                    .collect(),
            ),
            None if bind_ip.is_loopback() => {
                HostPolicy::Only(LOOPBACK_NAMES.iter().map(|h| h.to_string()).collect())
            }
            None => HostPolicy::Any,
        }
    }

    /// Ok, or the 403 naming the host that was sent.
    fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let HostPolicy::Only(names) = self else {
            return Ok(());
        };
        let sent = headers.get(header::HOST).map(|v| v.to_str());
        let host = match sent {
            Some(Ok(h)) => h,
            None => {
                return Err(ApiError::HostNotAllowed {
                    message: "the request has no Host header; this server answers only for named hosts (--allowed-hosts)".into(),
                })
            }
            Some(Err(_)) => "(not valid text)",
        };
        if names.iter().any(|n| *n == normalize_host(host)) {
            return Ok(());
        }
        // The value is the client's own; cap it so the error stays small.
        let shown: String = host.chars().take(100).collect();
        Err(ApiError::HostNotAllowed {
            message: format!(
                "host {shown:?} is not allowed; this server answers for {} (--allowed-hosts)",
                names.join(", ")
            ),
        })
    }
}

/// `Host` header value or `--allowed-hosts` entry -> lower-case name without port or brackets.
fn normalize_host(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if let Some(rest) = host.strip_prefix('[') {
        // [v6] or [v6]:port
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    match host.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((name, port)) if !name.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => {
            name.to_string()
        }
        _ => host,
    }
}

/// What the edge guard needs.
#[derive(Clone)]
pub struct EdgeState {
    pub api_keys: Arc<ApiKeys>,
    pub hosts: HostPolicy,
    pub shutting_down: Arc<AtomicBool>,
    pub max_body_bytes: usize,
    /// Refusals are counted in `lapsd_requests_rejected_total{reason}` (reason = the error kind).
    pub metrics: Arc<Metrics>,
}

/// The body read timeout, put in every request's extensions for the JSON extractor.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

/// Middleware: host, shutdown, authentication, then POST body checks, in that order (a client
/// without a valid key learns nothing about what else was wrong).
pub async fn guard(State(edge): State<EdgeState>, request: Request, next: Next) -> Response {
    match check(&edge, &request) {
        Ok(()) => next.run(request).await,
        Err(e) => {
            edge.metrics
                .requests_rejected
                .with_label_values(&[e.kind()])
                .inc();
            e.into_response()
        }
    }
}

fn check(edge: &EdgeState, request: &Request) -> Result<(), ApiError> {
    edge.hosts.check(request.headers())?;
    let api = request.uri().path().starts_with("/v1/");
    if api && edge.shutting_down.load(Ordering::Acquire) {
        return Err(ApiError::ShuttingDown);
    }
    if api && !edge.api_keys.is_empty() {
        authenticate(&edge.api_keys, request.headers())?;
    }
    if request.method() == Method::POST {
        check_content_type(request.headers())?;
        check_declared_length(request.headers(), edge.max_body_bytes)?;
    }
    Ok(())
}

fn authenticate(keys: &ApiKeys, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::Unauthorized {
            message: "no API key: send it as `Authorization: Bearer KEY`".into(),
        });
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        })
        .ok_or_else(|| ApiError::Unauthorized {
            message: "the Authorization header must be `Bearer KEY`".into(),
        })?;
    if keys.accepts(given) {
        Ok(())
    } else {
        // The key is never echoed (OpenAI shows a masked one; we show none).
        Err(ApiError::Unauthorized {
            message: "incorrect API key".into(),
        })
    }
}

/// POST bodies must be declared JSON; parameters such as `charset` are allowed. A missing
/// header is refused too: a browser's cross-site "simple" request can omit it.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType {
            got: "no Content-Type header".into(),
        });
    };
    let text = value.to_str().unwrap_or("");
    let essence = text.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        let shown: String = text.chars().take(100).collect();
        Err(ApiError::UnsupportedMediaType {
            got: format!("{shown:?}"),
        })
    }
}

/// A declared `Content-Length` over the limit is refused before a byte of the body is read.
fn check_declared_length(headers: &HeaderMap, max_bytes: usize) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(len) if len > max_bytes as u64 => Err(ApiError::PayloadTooLarge {
            message: format!("Content-Length {len} exceeds the limit of {max_bytes} bytes"),
        }),
        _ => Ok(()),
    }
}

/// CORS for `origins` (`*` = any origin), or an error naming an origin that is not a valid
/// header value. `None` when no origin is given: no CORS headers are sent.
pub fn cors_layer(origins: &[String]) -> Result<Option<CorsLayer>, ServerError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o.trim() == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o.trim().trim_end_matches('/')).map_err(|source| {
                    ServerError::CorsOrigin {
                        origin: o.clone(),
                        source,
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(Duration::from_secs(600)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).expect("valid value"));
        }
        h
    }

    #[test]
    fn keys_split_on_commas_and_compare_exactly() {
        let keys = ApiKeys::new(["a1, b2,", "c3"]);
        assert_eq!(keys.len(), 3);
        assert!(keys.accepts("b2") && keys.accepts("c3"));
        assert!(!keys.accepts("b") && !keys.accepts("b22") && !keys.accepts(""));
        assert_eq!(format!("{keys:?}"), "ApiKeys(3 keys)");
    }

    #[test]
    fn bearer_scheme_is_required() {
        let keys = ApiKeys::new(["k"]);
        let ok = headers(&[(header::AUTHORIZATION, "Bearer k")]);
        assert_eq!(authenticate(&keys, &ok), Ok(()));
        let lower = headers(&[(header::AUTHORIZATION, "bearer k")]);
        assert_eq!(authenticate(&keys, &lower), Ok(()));
        for bad in ["k", "Basic k", "Bearer x"] {
            let h = headers(&[(header::AUTHORIZATION, bad)]);
            let e = authenticate(&keys, &h).expect_err(bad);
            assert_eq!(e.status(), axum::http::StatusCode::UNAUTHORIZED);
        }
    }

    #[test]
    fn loopback_bind_answers_loopback_names_only() {
        let p = HostPolicy::resolve(None, IpAddr::V4(Ipv4Addr::LOCALHOST));
        for ok in [
            "localhost:8000",
            "127.0.0.1",
            "LOCALHOST",
            "[::1]:80",
            "[::1]",
        ] {
            assert_eq!(p.check(&headers(&[(header::HOST, ok)])), Ok(()), "{ok}");
        }
        let e = p
            .check(&headers(&[(header::HOST, "evil.example:8000")]))
            .expect_err("rebinding host");
        assert!(e.to_string().contains("evil.example:8000"), "{e}");
        assert!(p.check(&HeaderMap::new()).is_err());
        let any = HostPolicy::resolve(None, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!(any, HostPolicy::Any);
        let listed = HostPolicy::resolve(
            Some(&["api.example".to_string()]),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        );
        assert_eq!(
            listed.check(&headers(&[(header::HOST, "api.example:443")])),
            Ok(())
        );
        assert!(listed
            .check(&headers(&[(header::HOST, "localhost")]))
            .is_err());
    }

    #[test]
    fn content_type_must_be_json_with_any_parameters() {
        let json = headers(&[(header::CONTENT_TYPE, "Application/JSON; charset=utf-8")]);
        assert_eq!(check_content_type(&json), Ok(()));
        let form = headers(&[(header::CONTENT_TYPE, "text/plain")]);
        assert!(check_content_type(&form).is_err());
        assert!(check_content_type(&HeaderMap::new()).is_err());
    }

    #[test]
    fn invalid_settings_are_named() {
        let bad = HttpConfig {
            body_timeout_s: 0.0,
            ..HttpConfig::default()
        };
        let e = bad.check().expect_err("zero timeout");
        assert!(e.to_string().contains("--body-timeout-s"), "{e}");
        let bad = HttpConfig {
            cors_origins: vec!["http://a\nb".into()],
            ..HttpConfig::default()
        };
        assert!(bad.check().is_err());
    }
}
