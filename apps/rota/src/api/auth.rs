//! Who may call what: bearer tokens with scopes, and a per-token rate limit.
//!
//! A token is a random string the server never stores: the configuration holds its SHA-256
//! (`[[api.tokens]] name, scopes, sha256`). Once any token is configured, every route but the
//! open ones ([`Access::Open`]) needs `Authorization: Bearer <token>`: 401 without a valid one,
//! 403 when the token lacks the route's scope. Each route's access is declared once, next to
//! it, in its handler's `#[utoipa::path]` annotation (see [`super::routes`]); a route missing
//! from that declaration needs `admin` (closed by default).

use super::error::{ApiError, ErrorCode};
use crate::tokens::digest_from_hex;
pub use crate::tokens::{Scope, TokenEntry, generate_token, token_sha256};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use subtle::ConstantTimeEq;

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
