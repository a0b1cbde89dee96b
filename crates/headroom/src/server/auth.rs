//! Who may do what. Three kinds of bearer token:
//!
//! - the admin token manages everything;
//! - service tokens make decisions and reservations (for every account, or
//!   for the subjects of one account);
//! - subject tokens read that subject's own usage and its account's balance.
//!
//! Only SHA-256 hashes of tokens are stored: the admin token's in
//! `<data-dir>/admin.token`, the others in `<data-dir>/tokens.json`. A token
//! is shown once, when it is made. Hashes are compared in constant time.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use headroom_core::{AccountId, SubjectId};

use super::error::ApiError;

pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const TOKENS_FILE: &str = "tokens.json";

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    /// `account`: the only account whose subjects it may decide for.
    Service {
        account: Option<AccountId>,
    },
    Subject {
        subject: SubjectId,
        account: AccountId,
    },
}

impl Principal {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            _ => Err(ApiError::forbidden("this route needs the admin token")),
        }
    }

    /// May decide and reserve; `account` is checked later, when known.
    pub fn require_decider(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin | Principal::Service { .. } => Ok(()),
            Principal::Subject { .. } => Err(ApiError::forbidden("a subject token may only read its own usage")),
        }
    }

    /// The one account this principal is limited to, if any.
    pub fn account_scope(&self) -> Option<&AccountId> {
        match self {
            Principal::Admin | Principal::Service { account: None } => None,
            Principal::Service { account: Some(account) } | Principal::Subject { account, .. } => Some(account),
        }
    }

    pub fn may_act_for(&self, account: &AccountId) -> Result<(), ApiError> {
        match self.account_scope() {
            Some(scope) if scope != account => Err(ApiError::forbidden("this token may not act for that account")),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub kind: TokenKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<SubjectId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountId>,
    /// Hex SHA-256 of the whole token.
    pub hash: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    Service,
    Subject,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Service => "service",
            TokenKind::Subject => "subject",
        }
    }
}

pub struct Tokens {
    admin_hash: [u8; 32],
    path: PathBuf,
    /// By token id; the id is the token's public prefix.
    records: RwLock<BTreeMap<String, TokenRecord>>,
    writing: Mutex<()>,
    /// With PostgreSQL, tokens live there, for every node; `records` caches
    /// them (a token never changes once made).
    shared: Option<std::sync::Arc<headroom_store::PostgresStore>>,
}

/// What a presented token is.
pub enum Authenticated {
    Principal(Principal),
    /// Its id is not known here yet: look in the database, then again.
    LookUp(String),
    Invalid,
}

/// What starting up did about the admin token.
pub enum AdminToken {
    /// From `HEADROOM_ADMIN_TOKEN`.
    FromEnvironment,
    /// Its hash was found in the data directory.
    Stored,
    /// Made now: show it once.
    Generated(String),
}

impl Tokens {
    /// Loads the token hashes; makes and stores an admin token if there is
    /// none and `HEADROOM_ADMIN_TOKEN` is not given.
    pub fn open(directory: &Path, from_environment: Option<&str>) -> Result<(Tokens, AdminToken), String> {
        let admin_path = directory.join(ADMIN_TOKEN_FILE);
        let (admin_hash, admin) = match from_environment {
            Some(token) if token.len() < 16 => {
                return Err("HEADROOM_ADMIN_TOKEN must be at least 16 characters long".to_string());
            }
            Some(token) => {
                // Stored too, so that an older generated token cannot come
                // back to life when the variable is unset later.
                let stored = std::fs::read_to_string(&admin_path).ok().and_then(|text| parse_hash(text.trim()));
                if stored != Some(hash(token)) {
                    write_private(&admin_path, format!("{}\n", hex(&hash(token))).as_bytes())?;
                }
                (hash(token), AdminToken::FromEnvironment)
            }
            None => match std::fs::read_to_string(&admin_path) {
                Ok(stored) => (
                    parse_hash(stored.trim())
                        .ok_or_else(|| format!("{} does not hold a SHA-256 hash in hex", admin_path.display()))?,
                    AdminToken::Stored,
                ),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    let token = format!("hr_admin_{}", random_hex(32)?);
                    write_private(&admin_path, format!("{}\n", hex(&hash(&token))).as_bytes())?;
                    (hash(&token), AdminToken::Generated(token))
                }
                Err(error) => return Err(format!("{}: {error}", admin_path.display())),
            },
        };
        let path = directory.join(TOKENS_FILE);
        let records = match std::fs::read(&path) {
            Ok(bytes) => {
                let list: Vec<TokenRecord> = serde_json::from_slice(&bytes)
                    .map_err(|error| format!("{} is not a token list: {error}", path.display()))?;
                list.into_iter().map(|record| (record.id.clone(), record)).collect()
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => return Err(format!("{}: {error}", path.display())),
        };
        let tokens = Tokens { admin_hash, path, records: RwLock::new(records), writing: Mutex::new(()), shared: None };
        Ok((tokens, admin))
    }

    /// Keeps service and subject tokens in PostgreSQL, for every node.
    pub fn shared_through(mut self, store: std::sync::Arc<headroom_store::PostgresStore>) -> Tokens {
        self.shared = Some(store);
        self
    }

    /// Who holds `token`, as far as this node knows.
    pub fn authenticate(&self, token: &str) -> Authenticated {
        let presented = hash(token);
        if constant_time_eq(&presented, &self.admin_hash) {
            return Authenticated::Principal(Principal::Admin);
        }
        // `hr_<id>_<secret>`: the id finds the record, the hash decides.
        let Some(id) = token.strip_prefix("hr_").and_then(|rest| rest.split('_').next()) else {
            return Authenticated::Invalid;
        };
        let records = self.records.read().expect("not poisoned");
        let Some(record) = records.get(id) else {
            return match &self.shared {
                Some(_) if is_token_id(id) => Authenticated::LookUp(id.to_string()),
                _ => Authenticated::Invalid,
            };
        };
        let matches = parse_hash(&record.hash).is_some_and(|stored| constant_time_eq(&presented, &stored));
        let principal = match record.kind {
            _ if !matches => None,
            TokenKind::Service => Some(Principal::Service { account: record.account.clone() }),
            TokenKind::Subject => record
                .subject
                .clone()
                .zip(record.account.clone())
                .map(|(subject, account)| Principal::Subject { subject, account }),
        };
        principal.map_or(Authenticated::Invalid, Authenticated::Principal)
    }

    /// Fetches a token made on another node into this node's cache; false
    /// if there is no such token.
    pub fn look_up(&self, id: &str) -> Result<bool, String> {
        let Some(store) = &self.shared else { return Ok(false) };
        let Some(text) = store.token(id).map_err(|error| error.to_string())? else { return Ok(false) };
        let record: TokenRecord =
            serde_json::from_str(&text).map_err(|error| format!("token {id} is stored unreadably: {error}"))?;
        self.records.write().expect("not poisoned").insert(id.to_string(), record);
        Ok(true)
    }

    /// Makes a token and stores its hash durably before returning it.
    pub fn create(
        &self,
        kind: TokenKind,
        subject: Option<SubjectId>,
        account: Option<AccountId>,
        created_at: String,
    ) -> Result<(TokenRecord, String), String> {
        let id = random_hex(8)?;
        let token = format!("hr_{id}_{}", random_hex(32)?);
        let record = TokenRecord { id: id.clone(), kind, subject, account, hash: hex(&hash(&token)), created_at };
        if let Some(store) = &self.shared {
            let text = serde_json::to_string(&record).map_err(|error| error.to_string())?;
            store.put_token(&id, &text).map_err(|error| error.to_string())?;
            self.records.write().expect("not poisoned").insert(id, record.clone());
            return Ok((record, token));
        }
        // One writer at a time; readers keep authenticating while the file syncs.
        let _writing = self.writing.lock().expect("not poisoned");
        let mut next = self.records.read().expect("not poisoned").clone();
        next.insert(id, record.clone());
        let list: Vec<&TokenRecord> = next.values().collect();
        let bytes = serde_json::to_vec_pretty(&list).map_err(|error| error.to_string())?;
        write_private(&self.path, &bytes)?;
        *self.records.write().expect("not poisoned") = next;
        Ok((record, token))
    }
}

/// Ids are 16 hex digits (see [`Tokens::create`]); nothing else is looked
/// up in the database.
fn is_token_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|byte| byte.is_ascii_hexdigit())
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).ok()?;
    }
    Some(bytes)
}

fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).map_err(|error| format!("no randomness for a token: {error}"))?;
    Ok(hex(&buffer))
}

/// Compares without an early exit, so that timing tells nothing.
fn constant_time_eq(one: &[u8; 32], other: &[u8; 32]) -> bool {
    let difference = one.iter().zip(other).fold(0u8, |difference, (a, b)| difference | (a ^ b));
    std::hint::black_box(difference) == 0
}

/// Writes a file readable by its owner only, atomically: a temporary file,
/// synced, renamed over the old one, and the directory synced.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension("tmp");
    let failed = |error: std::io::Error| format!("{}: {error}", temporary.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(failed)?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(failed)?;
    std::fs::rename(&temporary, path).map_err(|error| format!("{}: {error}", path.display()))?;
    let directory = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(directory)
        .and_then(|directory| directory.sync_all())
        .map_err(|error| format!("{}: {error}", directory.display()))
}

impl FromRequestParts<super::AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &super::AppState) -> Result<Principal, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing the Authorization header (Bearer <token>)"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be Bearer <token>"))?;
        let invalid = || ApiError::unauthorized("the token is not valid");
        match state.tokens.authenticate(token) {
            Authenticated::Principal(principal) => Ok(principal),
            Authenticated::Invalid => Err(invalid()),
            Authenticated::LookUp(id) => {
                let tokens = state.tokens.clone();
                let found = tokio::task::spawn_blocking(move || tokens.look_up(&id)).await.unwrap_or(Ok(false));
                match found {
                    Ok(true) => match state.tokens.authenticate(token) {
                        Authenticated::Principal(principal) => Ok(principal),
                        _ => Err(invalid()),
                    },
                    Ok(false) => Err(invalid()),
                    Err(error) => {
                        tracing::error!(%error, "looking up a token failed");
                        Err(ApiError::new(
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "storage_unavailable",
                            "the token could not be checked; retry later",
                        ))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_compare_whole() {
        let one = hash("a token");
        let mut other = one;
        assert!(constant_time_eq(&one, &other));
        other[31] ^= 1;
        assert!(!constant_time_eq(&one, &other));
        assert_eq!(parse_hash(&hex(&one)), Some(one));
        assert_eq!(parse_hash("zz"), None);
    }
}
