//! Who may call what: bearer tokens with scopes, and a per-token rate limit.
//!
//! A token is a random string the server never stores: the configuration holds its SHA-256
//! (`[[api.tokens]] name, scopes, sha256`). Once any token is configured, every route but the
//! open ones ([`Access::Open`]) needs `Authorization: Bearer <token>`: 401 without a valid one,
//! 403 when the token lacks the route's scope. Each route's access is declared once, next to
//! it, in its handler's `#[utoipa::path]` annotation (see [`super::routes`]); a route missing
//! from that declaration needs `admin` (closed by default).

use super::error::{ApiError, ErrorCode};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What a token may do. `admin` includes the other two; `read` and `write` are independent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read tasks and the backlog (and `/metrics`, unless `api.open_metrics`).
    Read,
    /// Create and cancel tasks.
    Write,
    /// Everything, and the cluster's status.
    Admin,
}

impl Scope {
    /// The name used in the configuration and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "unknown scope {other:?}: the scopes are read, write and admin"
            )),
        }
    }
}

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, readiness, the document).
    Open,
    /// `/metrics`: a `read` token, or anyone with `api.open_metrics`.
    Metrics,
    /// A token with this scope (or `admin`).
    Needs(Scope),
}

/// `[[api.tokens]]`: one token the API admits.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds it, for logs and messages (`ci`, `billing-service`).
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// The token's SHA-256, 64 hex digits (`rota admin token create` prints it).
    pub sha256: String,
    /// Requests per second this token may make (bursts up to a second's worth); unset:
    /// `api.rate_limit_per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<u32>,
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash is not the token, but it has no business in logs either.
        f.debug_struct("TokenEntry")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("rate_limit_per_second", &self.rate_limit_per_second)
            .finish_non_exhaustive()
    }
}

impl TokenEntry {
    /// Checks the entry; errors say which part is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(format!(
                "token name {:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        if self.scopes.is_empty() {
            return Err(format!("token {:?} has no scopes", self.name));
        }
        if digest_from_hex(&self.sha256).is_none() {
            return Err(format!(
                "token {:?}: sha256 must be 64 hex digits (the SHA-256 of the token, as \
                 `rota admin token create` prints it)",
                self.name
            ));
        }
        if self.rate_limit_per_second == Some(0) {
            return Err(format!(
                "token {:?}: rate_limit_per_second must be at least 1",
                self.name
            ));
        }
        Ok(())
    }
}

/// A new token: `rota_` and 32 random bytes in hex.
pub fn generate_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no random numbers from the system: {e}"))?;
    Ok(format!("rota_{}", hex(&bytes)))
}

/// The hex SHA-256 of `token`, as `[[api.tokens]] sha256` holds it.
pub fn token_sha256(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest_from_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

struct Known {
    name: String,
    scopes: Vec<Scope>,
    digest: [u8; 32],
}

/// The API's gate: the tokens it admits and the rate limits.
pub struct Gate {
    tokens: Vec<Known>,
    open_metrics: bool,
    /// One limiter per distinct rate; keyed by token name (or by client address without tokens).
    limiters: Vec<(u32, DefaultKeyedRateLimiter<String>)>,
    default_rate: Option<u32>,
    token_rates: Vec<Option<u32>>,
}

impl Gate {
    /// The gate `api` describes (its tokens were validated with the configuration).
    pub fn new(api: &crate::config::ApiConfig) -> Self {
        let tokens: Vec<Known> = api
            .tokens
            .iter()
            .filter_map(|t| {
                Some(Known {
                    name: t.name.clone(),
                    scopes: t.scopes.clone(),
                    digest: digest_from_hex(&t.sha256)?,
                })
            })
            .collect();
        let default_rate = (api.rate_limit_per_second > 0).then_some(api.rate_limit_per_second);
        let token_rates: Vec<Option<u32>> = api
            .tokens
            .iter()
            .map(|t| t.rate_limit_per_second.or(default_rate))
            .collect();
        let mut rates: Vec<u32> = token_rates.iter().flatten().copied().collect();
        rates.extend(default_rate);
        rates.sort_unstable();
        rates.dedup();
        let limiters = rates
            .into_iter()
            .filter_map(|rate| {
                let quota = Quota::per_second(NonZeroU32::new(rate)?);
                Some((rate, governor::RateLimiter::keyed(quota)))
            })
            .collect();
        Self {
            tokens,
            open_metrics: api.open_metrics,
            limiters,
            default_rate,
            token_rates,
        }
    }

    /// Whether any token is configured (otherwise every route is open).
    pub fn enforcing(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The token `presented` is, compared in constant time against every configured one.
    fn identify(&self, presented: &str) -> Option<usize> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        // No early exit: every comparison runs whichever matches.
        for (i, known) in self.tokens.iter().enumerate() {
            if bool::from(known.digest.ct_eq(&digest)) {
                found = Some(i);
            }
        }
        found
    }

    /// Decides a request for a route with `access`, carrying `authorization` (the header's
    /// value), from `peer`: the caller's key for the rate limit, or the refusal.
    fn admit(
        &self,
        access: Access,
        route: &str,
        authorization: Option<&HeaderValue>,
        peer: Option<SocketAddr>,
    ) -> Result<Option<(String, Option<u32>)>, ApiError> {
        let anonymous = || {
            let key = format!(
                "address {}",
                peer.map_or("unknown".into(), |p| p.ip().to_string())
            );
            Some((key, self.default_rate))
        };
        if !self.enforcing() {
            return Ok(anonymous());
        }
        let needed = match access {
            Access::Open => return Ok(anonymous()),
            Access::Metrics if self.open_metrics => return Ok(anonymous()),
            Access::Metrics => Scope::Read,
            Access::Needs(scope) => scope,
        };
        let presented = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty());
        let Some(presented) = presented else {
            return Err(unauthorized(if authorization.is_some() {
                "the Authorization header must be `Bearer <token>`"
            } else {
                "this route needs a token: send `Authorization: Bearer <token>`"
            }));
        };
        let Some(index) = self.identify(presented) else {
            return Err(unauthorized("the token is not valid"));
        };
        let known = &self.tokens[index];
        if !known.scopes.contains(&Scope::Admin) && !known.scopes.contains(&needed) {
            return Err(ApiError {
                status: StatusCode::FORBIDDEN,
                code: ErrorCode::Forbidden,
                message: format!(
                    "token {:?} lacks the {} scope, which {route} needs",
                    known.name,
                    needed.name()
                ),
            });
        }
        Ok(Some((
            format!("token {}", known.name),
            self.token_rates[index],
        )))
    }

    fn limited(&self, key: &String, rate: u32) -> bool {
        let Some((_, limiter)) = self.limiters.iter().find(|(r, _)| *r == rate) else {
            return false;
        };
        let limited = limiter.check_key(key).is_err();
        // Keyed by client address, the table would grow with every address ever seen: forget
        // the keys whose bucket has refilled.
        if limiter.len() > 4_096 {
            limiter.retain_recent();
        }
        limited
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: ErrorCode::Unauthorized,
        message: message.into(),
    }
}

/// The middleware: admits a request to its route or answers 401, 403 or 429.
pub async fn guard(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    // No tokens and no rate limit (the default of `rota dev`): nothing to decide, and nothing
    // to spend on it per request.
    if !gate.enforcing() && gate.default_rate.is_none() {
        return next.run(request).await;
    }
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = request.method().as_str().to_ascii_lowercase();
    let access = path
        .as_deref()
        .map_or(Access::Open, |path| super::access_of(&method, path));
    let route = format!(
        "{} {}",
        request.method(),
        path.as_deref().unwrap_or("(unknown route)")
    );
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let admitted = gate.admit(
        access,
        &route,
        request.headers().get(header::AUTHORIZATION),
        peer,
    );
    match admitted {
        Err(refused) => {
            let mut response = refused.into_response();
            if response.status() == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"rota\""),
                );
            }
            response
        }
        Ok(Some((key, Some(rate)))) if gate.limited(&key, rate) => {
            let mut response = ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: ErrorCode::RateLimited,
                message: format!("more than {rate} requests per second from {key}; slow down"),
            }
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        Ok(_) => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_hashes_to_what_the_gate_admits() {
        let token = generate_token().unwrap();
        assert!(
            token.starts_with("rota_") && token.len() == 5 + 64,
            "{token}"
        );
        assert_ne!(token, generate_token().unwrap());
        let entry = TokenEntry {
            name: "ci".into(),
            scopes: vec![Scope::Read],
            sha256: token_sha256(&token),
            rate_limit_per_second: None,
        };
        entry.validate().unwrap();
        let api = crate::config::ApiConfig {
            tokens: vec![entry],
            ..Default::default()
        };
        let gate = Gate::new(&api);
        assert_eq!(gate.identify(&token), Some(0));
        assert_eq!(gate.identify(&format!("{token}x")), None);
        let bearer = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        let read = Access::Needs(Scope::Read);
        let write = Access::Needs(Scope::Write);
        assert!(gate.admit(read, "GET /tasks", Some(&bearer), None).is_ok());
        let refused = gate
            .admit(write, "POST /tasks", Some(&bearer), None)
            .unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(!refused.message.contains(&token), "{}", refused.message);
        let refused = gate.admit(read, "GET /tasks", None, None).unwrap_err();
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        let basic = HeaderValue::from_static("Basic dXNlcjpwYXNz");
        let refused = gate
            .admit(read, "GET /tasks", Some(&basic), None)
            .unwrap_err();
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert!(gate.admit(Access::Open, "GET /healthz", None, None).is_ok());
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        let mut entry = TokenEntry {
            name: "ci".into(),
            scopes: vec![Scope::Read],
            sha256: "abc".into(),
            rate_limit_per_second: None,
        };
        assert!(entry.validate().unwrap_err().contains("64 hex"));
        entry.sha256 = token_sha256("x");
        entry.scopes.clear();
        assert!(entry.validate().unwrap_err().contains("no scopes"));
        entry.scopes.push(Scope::Write);
        entry.name = "a b".into();
        assert!(entry.validate().unwrap_err().contains("name"));
        assert!(
            "delete"
                .parse::<Scope>()
                .unwrap_err()
                .contains("read, write and admin")
        );
    }
}
