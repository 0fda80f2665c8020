//! API tokens as the configuration holds them (`[[api.tokens]]`): who holds each, what it may do
//! ([`Scope`]), and the SHA-256 the server compares (it never stores a token); and how a new
//! token is made. The API's gate (`api::auth`) admits requests by them.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

pub(crate) fn digest_from_hex(text: &str) -> Option<[u8; 32]> {
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
