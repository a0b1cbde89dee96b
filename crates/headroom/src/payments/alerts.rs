//! Alerts to the product: where they go (`--alerts FILE`), what one looks
//! like on the wire, and its signature.
//!
//! A delivery is a JSON POST signed like the provider's webhooks:
//! `Headroom-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//! Every delivery of one alert carries the same id, so receivers
//! deduplicate by it: delivery is at least once.

use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use headroom_core::{AccountId, Alert, Notice};

use super::provider::hmac_sha256_hex;

/// The shortest endpoint secret: a guessable one would let anyone forge alerts.
pub const SECRET_LENGTH_MIN: usize = 16;

/// Every alert type, for the endpoints' filters.
pub const ALERT_TYPES: [&str; 7] = [
    "balance.low",
    "credits.granted",
    "credits.expired",
    "credits.refunded",
    "limit.approaching",
    "limit.reached",
    "auto_recharge.failed",
];

#[derive(Clone)]
pub struct Endpoint {
    pub url: String,
    secret: String,
    /// `None`: every type.
    types: Option<Vec<String>>,
    /// Names the endpoint in an alert's record of who acknowledged it.
    pub key: u64,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("url", &self.url).field("types", &self.types).finish_non_exhaustive()
    }
}

impl Endpoint {
    pub fn new(url: &str, secret: &str, types: Option<Vec<String>>) -> Endpoint {
        let digest = Sha256::digest(url.as_bytes());
        let key = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
        Endpoint { url: url.to_string(), secret: secret.to_string(), types, key }
    }

    pub fn wants(&self, alert: &Alert) -> bool {
        self.types.as_ref().is_none_or(|types| types.iter().any(|kind| kind == alert.kind()))
    }

    /// The `Headroom-Signature` header for `body` sent at `timestamp`.
    pub fn signature(&self, timestamp: u64, body: &[u8]) -> String {
        let mut message = format!("{timestamp}.").into_bytes();
        message.extend_from_slice(body);
        format!("t={timestamp},v1={}", hmac_sha256_hex(self.secret.as_bytes(), &message))
    }
}

/// Reads the endpoints file: `[[endpoints]]` tables of `url`, `secret` and
/// an optional `events` filter. Errors name the file and the field.
pub fn read_endpoints(path: &Path) -> Result<Vec<Endpoint>, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
    parse_endpoints(&text).map_err(|error| format!("{}: {error}", path.display()))
}

pub fn parse_endpoints(text: &str) -> Result<Vec<Endpoint>, String> {
    let document: toml::Table =
        text.parse().map_err(|error: toml::de::Error| error.message().trim_end().to_string())?;
    if let Some(key) = document.keys().find(|key| *key != "endpoints") {
        return Err(format!("{key}: unknown field, expected endpoints"));
    }
    let Some(entries) = document.get("endpoints") else {
        return Ok(Vec::new());
    };
    let entries = entries.as_array().ok_or("endpoints: expected an array of tables ([[endpoints]])")?;
    let mut endpoints = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let at = |field: &str| format!("endpoints[{index}].{field}");
        let table = entry.as_table().ok_or_else(|| format!("endpoints[{index}]: expected a table"))?;
        if let Some(key) = table.keys().find(|key| !["url", "secret", "events"].contains(&key.as_str())) {
            return Err(format!("{}: unknown field, expected one of: url, secret, events", at(key)));
        }
        let text = |field: &str| {
            table.get(field).and_then(toml::Value::as_str).ok_or_else(|| format!("{}: expected a string", at(field)))
        };
        let url = text("url")?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("{}: expected an http:// or https:// URL, found {url:?}", at("url")));
        }
        let secret = text("secret")?;
        if secret.len() < SECRET_LENGTH_MIN {
            return Err(format!("{}: must be at least {SECRET_LENGTH_MIN} bytes long", at("secret")));
        }
        let types = match table.get("events") {
            None => None,
            Some(value) => {
                let list = value.as_array().ok_or_else(|| format!("{}: expected an array of strings", at("events")))?;
                let mut types = Vec::with_capacity(list.len());
                for (position, kind) in list.iter().enumerate() {
                    let kind = kind.as_str().filter(|kind| ALERT_TYPES.contains(kind)).ok_or_else(|| {
                        format!("{}[{position}]: expected one of: {}", at("events"), ALERT_TYPES.join(", "))
                    })?;
                    types.push(kind.to_string());
                }
                Some(types)
            }
        };
        if endpoints.iter().any(|endpoint: &Endpoint| endpoint.url == url) {
            return Err(format!("{}: {url} is listed twice", at("url")));
        }
        endpoints.push(Endpoint::new(url, secret, types));
    }
    Ok(endpoints)
}

/// The wire form of a notice: `evt_` and the notice's id, its type, when it
/// happened, the account and what it says.
pub fn alert_body(account: &AccountId, notice: &Notice) -> Vec<u8> {
    let body = json!({
        "id": format!("evt_{}", notice.id),
        "type": notice.alert.kind(),
        "created": notice.at.to_string(),
        "account": account.as_str(),
        "data": alert_data(&notice.alert),
    });
    serde_json::to_vec(&body).expect("JSON values serialize")
}

fn alert_data(alert: &Alert) -> Value {
    match alert {
        Alert::BalanceLow { available, threshold } => {
            json!({ "available": available.micros(), "threshold": threshold.micros() })
        }
        Alert::CreditsGranted { grant, kind, credits, source } => json!({
            "grant": grant.as_str(), "kind": kind.as_str(), "credits": credits.micros(), "source": source.as_str(),
        }),
        Alert::CreditsExpired { grant, credits } => json!({ "grant": grant.as_str(), "credits": credits.micros() }),
        Alert::CreditsRefunded { grant, payment, refunded, clawed_back, unrecovered } => json!({
            "grant": grant.as_str(),
            "payment": payment.as_str(),
            "refunded": refunded.micros(),
            "clawed_back": clawed_back.micros(),
            "unrecovered": unrecovered.micros(),
        }),
        Alert::LimitApproaching { subject, window, limit, used, share_percent } => json!({
            "subject": subject.as_ref().map(|subject| subject.as_str()),
            "window": window.as_str(),
            "limit": limit,
            "used": used,
            "share_percent": share_percent,
        }),
        Alert::LimitReached { subject, window, limit, used } => json!({
            "subject": subject.as_ref().map(|subject| subject.as_str()),
            "window": window.as_str(),
            "limit": limit,
            "used": used,
        }),
        Alert::AutoRechargeFailed { payment, reason, failures, disabled } => json!({
            "recharge": payment.as_str(), "reason": reason, "failures": failures, "disabled": disabled,
        }),
    }
}

/// Posts one alert to one endpoint; `Ok` when it answered 2xx.
pub fn deliver(
    agent: &ureq::Agent,
    endpoint: &Endpoint,
    event_id: &str,
    body: &[u8],
    now_unix: u64,
) -> Result<(), String> {
    let response = agent
        .post(&endpoint.url)
        .header("content-type", "application/json")
        .header("headroom-event-id", event_id)
        .header("headroom-signature", endpoint.signature(now_unix, body))
        .send(body)
        .map_err(|error| error.to_string())?;
    let status = response.status();
    if status.is_success() { Ok(()) } else { Err(format!("answered {status}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_read_with_errors_that_name_the_field() {
        let good = "[[endpoints]]\nurl = \"http://127.0.0.1:9/hooks\"\nsecret = \"0123456789abcdef\"\n\
                    [[endpoints]]\nurl = \"https://example.com/h\"\nsecret = \"0123456789abcdefg\"\nevents = [\"balance.low\"]\n";
        let endpoints = parse_endpoints(good).unwrap();
        assert_eq!(endpoints.len(), 2);
        let low =
            Alert::BalanceLow { available: headroom_core::Credits::ZERO, threshold: headroom_core::Credits::ZERO };
        let expired = Alert::CreditsExpired {
            grant: headroom_core::GrantId::new("g").unwrap(),
            credits: headroom_core::Credits::ZERO,
        };
        assert!(endpoints[0].wants(&expired) && endpoints[1].wants(&low) && !endpoints[1].wants(&expired));
        for (text, expected) in [
            ("[[endpoints]]\nurl = \"ftp://x\"\nsecret = \"0123456789abcdef\"", "endpoints[0].url: expected an http"),
            ("[[endpoints]]\nurl = \"http://x\"\nsecret = \"short\"", "endpoints[0].secret: must be at least 16"),
            (
                "[[endpoints]]\nurl = \"http://x\"\nsecret = \"0123456789abcdef\"\nevents = [\"nope\"]",
                "endpoints[0].events[0]",
            ),
            (
                "[[endpoints]]\nurl = \"http://x\"\nsecret = \"0123456789abcdef\"\nextra = 1",
                "endpoints[0].extra: unknown",
            ),
            ("hooks = 1", "hooks: unknown field"),
        ] {
            let error = parse_endpoints(text).unwrap_err();
            assert!(error.starts_with(expected), "{text}: {error}");
        }
    }

    #[test]
    fn a_signature_covers_the_timestamp_and_the_body() {
        let endpoint = Endpoint::new("http://x", "0123456789abcdef", None);
        let one = endpoint.signature(1_700_000_000, b"{}");
        assert!(one.starts_with("t=1700000000,v1="), "{one}");
        assert_ne!(one, endpoint.signature(1_700_000_001, b"{}"));
        assert_ne!(one, endpoint.signature(1_700_000_000, b"{ }"));
        let expected = hmac_sha256_hex(b"0123456789abcdef", b"1700000000.{}");
        assert_eq!(one, format!("t=1700000000,v1={expected}"));
    }
}
