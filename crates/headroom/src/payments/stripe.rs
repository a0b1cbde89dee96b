//! Stripe as Headroom's payment provider: Checkout Sessions for purchases,
//! off-session PaymentIntents for auto-recharge, and the verification and
//! reading of Stripe's webhooks.
//!
//! Everything Stripe-specific stays in this file: its form-encoded requests,
//! its error bodies, its `Stripe-Signature` scheme and its event shapes. What
//! leaves it is the provider-neutral vocabulary of `super::provider`.
//!
//! Calls are made with an idempotency key that is Headroom's own id for the
//! checkout or recharge, so a retry after a timeout returns Stripe's first
//! answer instead of charging twice.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::provider::{
    ChargeOrder, ChargeOutcome, CheckoutOrder, PaymentProvider, PaymentRef, ProviderCheckout, ProviderError,
    WebhookError, WebhookEvent, hex_decode, hmac_sha256_hex,
};

/// How far a webhook's signed timestamp may be from our clock, either way.
/// Stripe's own libraries use five minutes; it bounds how long a captured
/// delivery can be replayed.
pub const SIGNATURE_TOLERANCE_SECONDS: i64 = 300;

/// The environment variable holding the secret API key (`sk_…` or `rk_…`).
pub const SECRET_KEY_VARIABLE: &str = "HEADROOM_STRIPE_SECRET_KEY";
/// The environment variable overriding the API address (tests point it at a fake).
pub const API_BASE_VARIABLE: &str = "HEADROOM_STRIPE_API_BASE";
/// The environment variable holding the webhook signing secrets, comma-separated.
pub const WEBHOOK_SECRET_VARIABLE: &str = "HEADROOM_STRIPE_WEBHOOK_SECRET";

const DEFAULT_API_BASE: &str = "https://api.stripe.com";

/// Upper bound on one whole Stripe call, connection included. A blocking
/// worker thread waits this long at most; the caller retries a timeout later
/// with the same idempotency key.
const REQUEST_TIMEOUT_SECONDS: u64 = 10;

/// Largest Stripe answer read into memory. A checkout session or payment
/// intent is a few kilobytes; anything near this limit is not Stripe.
const RESPONSE_BYTES_MAX: u64 = 1024 * 1024;

/// Longest `Stripe-Signature` header considered. Stripe sends one timestamp
/// and one or two signatures, about 150 bytes; the bound keeps a hostile
/// header from costing more than a glance.
const SIGNATURE_HEADER_BYTES_MAX: usize = 4096;

/// Most `v1` signatures checked in one header. Each costs a comparison per
/// configured secret; Stripe sends two at most, during a secret rotation.
const SIGNATURES_PER_HEADER_MAX: usize = 8;

/// How much of a non-JSON answer is quoted in an error message.
const ANSWER_EXCERPT_CHARS_MAX: usize = 200;

/// Where Stripe is and how to prove who we are to it and it to us.
#[derive(Clone, PartialEq, Eq)]
pub struct StripeConfig {
    pub secret_key: String,
    /// Without a trailing slash, e.g. `https://api.stripe.com`.
    pub api_base: String,
    /// Every secret a webhook signature may match; more than one while a
    /// signing secret is being rotated.
    pub webhook_secrets: Vec<String>,
}

/// Written by hand so that logging a configuration never leaks a secret.
impl std::fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeConfig")
            .field("secret_key", &"<redacted>")
            .field("api_base", &self.api_base)
            .field("webhook_secrets", &format_args!("<{} redacted>", self.webhook_secrets.len()))
            .finish()
    }
}

impl StripeConfig {
    /// Reads the configuration from the environment. `Ok(None)` when no
    /// secret key is set: payments are then off, not broken.
    pub fn from_env() -> Result<Option<StripeConfig>, String> {
        StripeConfig::from_lookup(|name| std::env::var(name))
    }

    /// [`StripeConfig::from_env`] over any source of variables, so that tests
    /// need not change the process environment.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Result<String, std::env::VarError>,
    ) -> Result<Option<StripeConfig>, String> {
        let read = |name: &str| match lookup(name) {
            Ok(value) => Ok(Some(value)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8")),
        };
        let Some(secret_key) = read(SECRET_KEY_VARIABLE)? else {
            return Ok(None);
        };
        let secret_key = parse_secret_key(&secret_key)?;
        let api_base = match read(API_BASE_VARIABLE)? {
            Some(value) => parse_api_base(&value)?,
            None => DEFAULT_API_BASE.to_string(),
        };
        let Some(webhook_secrets) = read(WEBHOOK_SECRET_VARIABLE)? else {
            return Err(format!(
                "{WEBHOOK_SECRET_VARIABLE} is not set but {SECRET_KEY_VARIABLE} is: without the webhook signing \
                 secret (whsec_…, from the Stripe dashboard's webhook endpoint) no payment could ever be credited"
            ));
        };
        let webhook_secrets = parse_webhook_secrets(&webhook_secrets)?;
        Ok(Some(StripeConfig { secret_key, api_base, webhook_secrets }))
    }
}

fn parse_secret_key(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err(format!("{SECRET_KEY_VARIABLE} is set but empty; unset it to run without payments"));
    }
    // The key goes into an HTTP header; whitespace in it is a copy-paste slip.
    if value.chars().any(|character| character.is_whitespace() || character.is_control()) {
        return Err(format!("{SECRET_KEY_VARIABLE} contains whitespace or control characters"));
    }
    Ok(value.to_string())
}

fn parse_api_base(value: &str) -> Result<String, String> {
    let base = value.trim_end_matches('/');
    let host = base.strip_prefix("https://").or_else(|| base.strip_prefix("http://"));
    match host {
        Some(host) if !host.is_empty() && !host.chars().any(char::is_whitespace) => Ok(base.to_string()),
        _ => Err(format!(
            "{API_BASE_VARIABLE} must be an http:// or https:// address, e.g. {DEFAULT_API_BASE}; got {value:?}"
        )),
    }
}

fn parse_webhook_secrets(value: &str) -> Result<Vec<String>, String> {
    value
        .split(',')
        .enumerate()
        .map(|(index, secret)| {
            let secret = secret.trim();
            if secret.is_empty() {
                Err(format!(
                    "{WEBHOOK_SECRET_VARIABLE} has an empty entry at position {} of its comma-separated list",
                    index + 1
                ))
            } else {
                Ok(secret.to_string())
            }
        })
        .collect()
}

/// The Stripe API client.
pub struct Stripe {
    secret_key: String,
    api_base: String,
    agent: ureq::Agent,
}

/// Written by hand so that the secret key never reaches a log.
impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stripe").field("api_base", &self.api_base).finish_non_exhaustive()
    }
}

impl Stripe {
    pub fn new(config: &StripeConfig) -> Stripe {
        let agent = ureq::Agent::config_builder()
            // Stripe explains every refusal in a JSON body; read it rather than
            // getting a bare status code back as an error.
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(REQUEST_TIMEOUT_SECONDS)))
            .build()
            .into();
        Stripe { secret_key: config.secret_key.clone(), api_base: config.api_base.clone(), agent }
    }

    /// POSTs a form to Stripe. Only failures to get any answer are errors
    /// here; what an answer means is up to the caller.
    fn post(&self, path: &str, idempotency_key: &str, fields: &[(&str, &str)]) -> Result<StripeAnswer, ProviderError> {
        let url = format!("{}{path}", self.api_base);
        let unreachable =
            |error: ureq::Error| ProviderError::Transient(format!("cannot reach Stripe at {url}: {error}"));
        let mut response = self
            .agent
            .post(&url)
            .header("Authorization", format!("Bearer {}", self.secret_key))
            .header("Idempotency-Key", idempotency_key)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(form_encode(fields))
            .map_err(unreachable)?;
        let status = response.status().as_u16();
        let text = response.body_mut().with_config().limit(RESPONSE_BYTES_MAX).read_to_string().map_err(unreachable)?;
        let body = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(excerpt(&text)));
        Ok(StripeAnswer { path: path.to_string(), status, body })
    }
}

/// One answer from Stripe, JSON body parsed (or quoted, when it is not JSON).
struct StripeAnswer {
    path: String,
    status: u16,
    body: Value,
}

impl StripeAnswer {
    fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// A string field of a successful answer, or `Rejected`: an answer
    /// without it cannot be acted on, and asking again returns the same one.
    fn required_string(&self, field: &str) -> Result<String, ProviderError> {
        match self.body.get(field).and_then(Value::as_str) {
            Some(value) if !value.is_empty() => Ok(value.to_string()),
            _ => Err(ProviderError::Rejected(format!(
                "Stripe answered {} to POST {} without a string \"{field}\": {}",
                self.status, self.path, self.body
            ))),
        }
    }

    /// Whether the answer is a card decline rather than a mistake of ours.
    fn is_decline(&self) -> bool {
        self.status == 402 || (self.status < 500 && self.body["error"]["type"].as_str() == Some("card_error"))
    }

    /// What the customer's bank or Stripe said about a decline, e.g.
    /// "Your card has insufficient funds. (card_declined: insufficient_funds)".
    fn decline_reason(&self) -> String {
        let error = &self.body["error"];
        let codes: Vec<&str> = [&error["code"], &error["decline_code"]].into_iter().filter_map(Value::as_str).collect();
        match (error["message"].as_str(), codes.is_empty()) {
            (Some(message), true) => message.to_string(),
            (Some(message), false) => format!("{message} ({})", codes.join(": ")),
            (None, false) => codes.join(": "),
            (None, true) => format!("Stripe declined the payment (HTTP {}) without giving a reason", self.status),
        }
    }

    /// The error for an answer that is neither a success nor a decline.
    fn failure(&self) -> ProviderError {
        let message = match (self.body["error"]["message"].as_str(), &self.body) {
            (Some(message), _) => message.to_string(),
            (None, Value::String(text)) => text.clone(),
            (None, body) => body.to_string(),
        };
        let description = format!("Stripe answered {} to POST {}: {message}", self.status, self.path);
        // 409 means another request with the same idempotency key is still in
        // progress at Stripe (typically our own timed-out attempt): its outcome
        // is unknown yet, so it must be asked again with the same key, never
        // abandoned for a new one.
        if self.status == 409 || self.status == 429 || self.status >= 500 {
            ProviderError::Transient(description)
        } else {
            ProviderError::Rejected(description)
        }
    }
}

impl PaymentProvider for Stripe {
    fn create_checkout(&self, order: &CheckoutOrder) -> Result<ProviderCheckout, ProviderError> {
        let unit_amount = order.amount.to_string();
        let product_name = format!("{} credits", order.credits);
        let fields = [
            ("mode", "payment"),
            ("success_url", order.success_url.as_str()),
            ("cancel_url", order.cancel_url.as_str()),
            ("client_reference_id", order.account.as_str()),
            ("line_items[0][quantity]", "1"),
            ("line_items[0][price_data][currency]", order.currency.as_str()),
            ("line_items[0][price_data][unit_amount]", unit_amount.as_str()),
            ("line_items[0][price_data][product_data][name]", product_name.as_str()),
            ("metadata[headroom_account]", order.account.as_str()),
            ("metadata[headroom_checkout]", order.checkout.as_str()),
            // The session's metadata stays on the session; the payment intent
            // (and the charge Stripe copies it to) needs its own, so that
            // payment_intent.succeeded and charge.refunded can be traced back.
            ("payment_intent_data[metadata][headroom_account]", order.account.as_str()),
            ("payment_intent_data[metadata][headroom_checkout]", order.checkout.as_str()),
            // Saves the card for auto-recharge, charged later without the buyer.
            ("payment_intent_data[setup_future_usage]", "off_session"),
            ("customer_creation", "always"),
        ];
        let answer = self.post("/v1/checkout/sessions", &order.checkout, &fields)?;
        if !answer.is_success() {
            return Err(answer.failure());
        }
        Ok(ProviderCheckout { id: answer.required_string("id")?, url: answer.required_string("url")? })
    }

    fn charge(&self, order: &ChargeOrder) -> Result<ChargeOutcome, ProviderError> {
        let amount = order.amount.to_string();
        let description = format!("{} credits (auto-recharge)", order.credits);
        let fields = [
            ("amount", amount.as_str()),
            ("currency", order.currency.as_str()),
            ("customer", order.customer.as_str()),
            ("payment_method", order.payment_method.as_str()),
            ("off_session", "true"),
            ("confirm", "true"),
            ("metadata[headroom_account]", order.account.as_str()),
            ("metadata[headroom_recharge]", order.recharge.as_str()),
            ("description", description.as_str()),
        ];
        let answer = self.post("/v1/payment_intents", &order.recharge, &fields)?;
        if answer.is_decline() {
            return Ok(ChargeOutcome::Declined { reason: answer.decline_reason() });
        }
        if !answer.is_success() {
            return Err(answer.failure());
        }
        let payment_intent = answer.required_string("id")?;
        // A confirmed off-session intent that did not succeed wants something
        // only the customer can give (authentication, another card).
        match answer.required_string("status")?.as_str() {
            "succeeded" => Ok(ChargeOutcome::Succeeded { payment_intent }),
            status => Ok(ChargeOutcome::Declined { reason: status.to_string() }),
        }
    }
}

/// Encodes fields as `application/x-www-form-urlencoded`: unreserved
/// characters as they are, every other byte of the UTF-8 text as `%XX`
/// (space included, as `%20`). Brackets in Stripe's nested names are encoded
/// too; Stripe decodes names before reading their structure.
fn form_encode(fields: &[(&str, &str)]) -> String {
    let mut body = String::new();
    for (index, (name, value)) in fields.iter().enumerate() {
        if index > 0 {
            body.push('&');
        }
        percent_encode_into(&mut body, name);
        body.push('=');
        percent_encode_into(&mut body, value);
    }
    body
}

fn percent_encode_into(out: &mut String, text: &str) {
    const HEX_DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
            out.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
        }
    }
}

/// The start of a text for an error message, cut at a character boundary.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(ANSWER_EXCERPT_CHARS_MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// The `v1` signature of a payload as Stripe computes it:
/// hex(HMAC-SHA256(secret, "<timestamp>.<payload>")). The whole secret,
/// `whsec_` prefix included, is the key.
pub fn sign(secret: &str, timestamp: i64, payload: &[u8]) -> String {
    hmac_sha256_hex(secret.as_bytes(), &signed_message(&timestamp.to_string(), payload))
}

/// A complete `Stripe-Signature` header value for a payload, as Stripe sends it.
pub fn signature_header(secret: &str, timestamp: i64, payload: &[u8]) -> String {
    format!("t={timestamp},v1={}", sign(secret, timestamp, payload))
}

fn signed_message(timestamp: &str, payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(timestamp.len() + 1 + payload.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b'.');
    message.extend_from_slice(payload);
    message
}

/// The parts of a `Stripe-Signature` header Headroom uses.
struct SignatureHeader<'a> {
    /// As written in the header: the signed message starts with these bytes.
    timestamp_text: &'a str,
    timestamp: i64,
    /// The `v1` values, still hex; one that does not decode matches nothing.
    signatures: Vec<&'a str>,
}

fn parse_signature_header(header: &str) -> Result<SignatureHeader<'_>, WebhookError> {
    let invalid = |reason: String| Err(WebhookError::InvalidSignature(reason));
    if header.trim().is_empty() {
        return invalid("the Stripe-Signature header is missing or empty".to_string());
    }
    if header.len() > SIGNATURE_HEADER_BYTES_MAX {
        return invalid(format!(
            "the Stripe-Signature header is {} bytes long, more than the {SIGNATURE_HEADER_BYTES_MAX} accepted",
            header.len()
        ));
    }
    let mut timestamp_text = None;
    let mut signatures = Vec::new();
    // Items other than `t` and `v1` (`v0`, future schemes, stray text) are
    // skipped, as Stripe's own libraries do.
    for (name, value) in header.split(',').filter_map(|item| item.split_once('=')) {
        match name.trim() {
            "t" if timestamp_text.is_some() => return invalid("the Stripe-Signature header has two timestamps".into()),
            "t" => timestamp_text = Some(value.trim()),
            "v1" => signatures.push(value.trim()),
            _ => {}
        }
    }
    let Some(timestamp_text) = timestamp_text else {
        return invalid("the Stripe-Signature header has no timestamp (t=…)".to_string());
    };
    let Ok(timestamp) = timestamp_text.parse::<i64>() else {
        return invalid(format!("the Stripe-Signature timestamp t={timestamp_text:?} is not an integer"));
    };
    if signatures.is_empty() {
        return invalid("the Stripe-Signature header has no v1 signature".to_string());
    }
    if signatures.len() > SIGNATURES_PER_HEADER_MAX {
        return invalid(format!(
            "the Stripe-Signature header has {} v1 signatures, more than the {SIGNATURES_PER_HEADER_MAX} accepted",
            signatures.len()
        ));
    }
    Ok(SignatureHeader { timestamp_text, timestamp, signatures })
}

/// Checks a webhook's `Stripe-Signature` header against the raw body.
///
/// Accepted when any `v1` signature matches any of `secrets` (compared in
/// constant time) and the signed timestamp is within `tolerance_seconds` of
/// `now_unix`. The timestamp is judged only once the signature is genuine,
/// so a forged header learns nothing beyond "invalid".
pub fn verify_signature(
    header: &str,
    payload: &[u8],
    secrets: &[String],
    now_unix: i64,
    tolerance_seconds: i64,
) -> Result<(), WebhookError> {
    let header = parse_signature_header(header)?;
    if secrets.is_empty() {
        return Err(WebhookError::InvalidSignature("no webhook signing secret is configured".to_string()));
    }
    let expected: Vec<Vec<u8>> = header.signatures.iter().filter_map(|signature| hex_decode(signature)).collect();
    let message = signed_message(header.timestamp_text, payload);
    let matches_secret = |secret: &String| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
        mac.update(&message);
        // `verify_slice` consumes the MAC; cloning the keyed, fed state costs
        // one finalization per candidate instead of hashing the body again.
        expected.iter().any(|signature| mac.clone().verify_slice(signature).is_ok())
    };
    if !secrets.iter().any(matches_secret) {
        return Err(WebhookError::InvalidSignature(
            "no v1 signature matches the body and any configured webhook signing secret".to_string(),
        ));
    }
    // i128: a hostile but correctly signed timestamp cannot overflow the difference.
    let age_seconds = i128::from(now_unix) - i128::from(header.timestamp);
    if age_seconds > i128::from(tolerance_seconds) {
        return Err(WebhookError::StaleSignature(format!(
            "signed {age_seconds} s ago, more than the {tolerance_seconds} s allowed"
        )));
    }
    if -age_seconds > i128::from(tolerance_seconds) {
        return Err(WebhookError::StaleSignature(format!(
            "signed {} s in the future, more than the {tolerance_seconds} s allowed",
            -age_seconds
        )));
    }
    Ok(())
}

/// Reads a verified Stripe event into what Headroom acts on. Field names in
/// errors are paths from the event's root, e.g. `data.object.amount_total`.
pub fn parse_event(payload: &[u8]) -> Result<WebhookEvent, WebhookError> {
    let event: Value = serde_json::from_slice(payload)
        .map_err(|error| WebhookError::Malformed(format!("the body is not JSON: {error}")))?;
    let id = required_string(&event, "id")?;
    let kind = required_string(&event, "type")?;
    match kind.as_str() {
        "checkout.session.completed" => checkout_event(&event, id, false),
        // Sent when a delayed payment method (bank debit…) finally pays.
        "checkout.session.async_payment_succeeded" => checkout_event(&event, id, true),
        "payment_intent.succeeded" => payment_intent_event(&event, id),
        "charge.refunded" => refund_event(&event, id),
        _ => Ok(WebhookEvent::Ignored { event: id, kind }),
    }
}

fn checkout_event(event: &Value, id: String, always_paid: bool) -> Result<WebhookEvent, WebhookError> {
    let account = headroom_metadata(event, "headroom_account").ok_or_else(|| missing_metadata("headroom_account"))?;
    let checkout =
        headroom_metadata(event, "headroom_checkout").ok_or_else(|| missing_metadata("headroom_checkout"))?;
    let payment_status =
        if always_paid { "paid".to_string() } else { required_string(event, "data.object.payment_status")? };
    match payment_status.as_str() {
        "paid" | "no_payment_required" => Ok(WebhookEvent::CheckoutPaid {
            event: id,
            session: required_string(event, "data.object.id")?,
            account,
            checkout,
            amount: required_amount(event, "data.object.amount_total")?,
            currency: required_string(event, "data.object.currency")?.to_lowercase(),
        }),
        "unpaid" => Ok(WebhookEvent::CheckoutUnpaid { event: id, checkout }),
        other => Err(WebhookError::Malformed(format!(
            "data.object.payment_status is {other:?}, expected \"paid\", \"unpaid\" or \"no_payment_required\""
        ))),
    }
}

fn payment_intent_event(event: &Value, id: String) -> Result<WebhookEvent, WebhookError> {
    let account = headroom_metadata(event, "headroom_account").ok_or_else(|| missing_metadata("headroom_account"))?;
    match payment_ref(event)? {
        PaymentRef::Checkout(checkout) => {
            let customer = optional_string(event, "data.object.customer")?;
            let payment_method = optional_string(event, "data.object.payment_method")?;
            match (customer, payment_method) {
                (Some(customer), Some(payment_method)) => {
                    Ok(WebhookEvent::PaymentMethodSaved { event: id, account, checkout, customer, payment_method })
                }
                // Nothing saved, so nothing auto-recharge could charge.
                _ => Ok(WebhookEvent::Ignored { event: id, kind: "payment_intent.succeeded".to_string() }),
            }
        }
        PaymentRef::Recharge(recharge) => Ok(WebhookEvent::RechargeSucceeded {
            event: id,
            account,
            recharge,
            payment_intent: required_string(event, "data.object.id")?,
        }),
    }
}

fn refund_event(event: &Value, id: String) -> Result<WebhookEvent, WebhookError> {
    let account = headroom_metadata(event, "headroom_account").ok_or_else(|| missing_metadata("headroom_account"))?;
    let payment = payment_ref(event)?;
    let amount = required_amount(event, "data.object.amount")?;
    let amount_refunded = required_amount(event, "data.object.amount_refunded")?;
    if amount_refunded > amount {
        return Err(WebhookError::Malformed(format!(
            "data.object.amount_refunded ({amount_refunded}) exceeds data.object.amount ({amount})"
        )));
    }
    let currency = required_string(event, "data.object.currency")?.to_lowercase();
    Ok(WebhookEvent::Refunded { event: id, account, payment, amount, amount_refunded, currency })
}

/// Which Headroom payment an object's metadata names. Stripe copies a
/// payment intent's metadata to its charge, so both carry it.
fn payment_ref(event: &Value) -> Result<PaymentRef, WebhookError> {
    match (headroom_metadata(event, "headroom_checkout"), headroom_metadata(event, "headroom_recharge")) {
        (Some(checkout), None) => Ok(PaymentRef::Checkout(checkout)),
        (None, Some(recharge)) => Ok(PaymentRef::Recharge(recharge)),
        (Some(_), Some(_)) => Err(WebhookError::Malformed(
            "data.object.metadata names both a headroom_checkout and a headroom_recharge".to_string(),
        )),
        (None, None) => Err(WebhookError::NotOurs(
            "data.object.metadata has neither headroom_checkout nor headroom_recharge".to_string(),
        )),
    }
}

/// A non-empty string in `data.object.metadata`. Stripe metadata values are
/// always strings; anything else is treated as absent.
fn headroom_metadata(event: &Value, key: &str) -> Option<String> {
    event["data"]["object"]["metadata"][key].as_str().filter(|value| !value.is_empty()).map(str::to_string)
}

fn missing_metadata(key: &str) -> WebhookError {
    WebhookError::NotOurs(format!("data.object.metadata has no {key}"))
}

/// The value at a dotted path from the event's root; `None` when missing or null.
fn lookup<'a>(event: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(event, |value, key| value.get(key)).filter(|value| !value.is_null())
}

fn required_string(event: &Value, path: &str) -> Result<String, WebhookError> {
    optional_string(event, path)?.ok_or_else(|| WebhookError::Malformed(format!("{path} is missing")))
}

fn optional_string(event: &Value, path: &str) -> Result<Option<String>, WebhookError> {
    match lookup(event, path) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(WebhookError::Malformed(format!("{path} should be a string, found {other}"))),
    }
}

/// An amount in minor currency units: a non-negative integer.
fn required_amount(event: &Value, path: &str) -> Result<u64, WebhookError> {
    match lookup(event, path) {
        None => Err(WebhookError::Malformed(format!("{path} is missing"))),
        Some(value) => value.as_u64().ok_or_else(|| {
            WebhookError::Malformed(format!("{path} should be a non-negative integer amount, found {value}"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    const SECRET: &str = "whsec_test_5f1c2a9b8e7d6c5b4a3f2e1d";
    const OTHER_SECRET: &str = "whsec_test_rotated_0a1b2c3d4e5f6a7b";
    const NOW: i64 = 1_767_225_600;

    fn secrets(values: &[&str]) -> Vec<String> {
        values.iter().map(|value| value.to_string()).collect()
    }

    // ---- configuration ----

    fn config_from(variables: &[(&str, &str)]) -> Result<Option<StripeConfig>, String> {
        let variables: HashMap<String, String> =
            variables.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        StripeConfig::from_lookup(|name| variables.get(name).cloned().ok_or(std::env::VarError::NotPresent))
    }

    #[test]
    fn config_is_absent_without_a_secret_key() {
        assert_eq!(config_from(&[(WEBHOOK_SECRET_VARIABLE, SECRET)]), Ok(None));
    }

    #[test]
    fn config_reads_every_variable() {
        let config = config_from(&[
            (SECRET_KEY_VARIABLE, "sk_test_abc"),
            (API_BASE_VARIABLE, "http://127.0.0.1:4242/"),
            (WEBHOOK_SECRET_VARIABLE, " whsec_a , whsec_b"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(config.secret_key, "sk_test_abc");
        assert_eq!(config.api_base, "http://127.0.0.1:4242");
        assert_eq!(config.webhook_secrets, secrets(&["whsec_a", "whsec_b"]));
    }

    #[test]
    fn config_defaults_to_the_real_api() {
        let config =
            config_from(&[(SECRET_KEY_VARIABLE, "sk_test_abc"), (WEBHOOK_SECRET_VARIABLE, SECRET)]).unwrap().unwrap();
        assert_eq!(config.api_base, "https://api.stripe.com");
    }

    #[test]
    fn config_refuses_what_cannot_work() {
        let missing_webhook = config_from(&[(SECRET_KEY_VARIABLE, "sk_test_abc")]).unwrap_err();
        assert!(missing_webhook.contains(WEBHOOK_SECRET_VARIABLE), "{missing_webhook}");

        let empty_entry =
            config_from(&[(SECRET_KEY_VARIABLE, "sk_test_abc"), (WEBHOOK_SECRET_VARIABLE, "whsec_a,,whsec_b")])
                .unwrap_err();
        assert!(empty_entry.contains("empty entry at position 2"), "{empty_entry}");

        let bad_base = config_from(&[
            (SECRET_KEY_VARIABLE, "sk_test_abc"),
            (API_BASE_VARIABLE, "api.stripe.com"),
            (WEBHOOK_SECRET_VARIABLE, SECRET),
        ])
        .unwrap_err();
        assert!(bad_base.contains(API_BASE_VARIABLE), "{bad_base}");

        let empty_key = config_from(&[(SECRET_KEY_VARIABLE, ""), (WEBHOOK_SECRET_VARIABLE, SECRET)]).unwrap_err();
        assert!(empty_key.contains(SECRET_KEY_VARIABLE), "{empty_key}");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let config = StripeConfig {
            secret_key: "sk_live_very_secret".to_string(),
            api_base: DEFAULT_API_BASE.to_string(),
            webhook_secrets: secrets(&[SECRET]),
        };
        let printed = format!("{config:?} {:?}", Stripe::new(&config));
        assert!(!printed.contains("very_secret") && !printed.contains(SECRET), "{printed}");
        assert!(printed.contains("api.stripe.com"), "{printed}");
    }

    // ---- signatures ----

    const PAYLOAD: &[u8] = br#"{"id":"evt_1","type":"customer.created","data":{"object":{}}}"#;

    fn verify(header: &str, payload: &[u8], configured: &[&str], now: i64) -> Result<(), WebhookError> {
        verify_signature(header, payload, &secrets(configured), now, SIGNATURE_TOLERANCE_SECONDS)
    }

    fn expect_invalid(result: Result<(), WebhookError>, reason_part: &str) {
        match result {
            Err(WebhookError::InvalidSignature(reason)) => assert!(reason.contains(reason_part), "{reason}"),
            other => panic!("expected InvalidSignature mentioning {reason_part:?}, got {other:?}"),
        }
    }

    #[test]
    fn sign_computes_hmac_of_timestamp_dot_payload() {
        let expected =
            hmac_sha256_hex(SECRET.as_bytes(), format!("{NOW}.{}", String::from_utf8_lossy(PAYLOAD)).as_bytes());
        assert_eq!(sign(SECRET, NOW, PAYLOAD), expected);
        assert_eq!(signature_header(SECRET, NOW, PAYLOAD), format!("t={NOW},v1={expected}"));
    }

    #[test]
    fn a_genuine_signature_is_accepted() {
        assert_eq!(verify(&signature_header(SECRET, NOW, PAYLOAD), PAYLOAD, &[SECRET], NOW), Ok(()));
    }

    #[test]
    fn whitespace_around_items_and_unknown_schemes_are_ignored() {
        let header = format!(" t={NOW} , v0=6ffbb59b2300aae63f27240 , v1={} , scheme9=x", sign(SECRET, NOW, PAYLOAD));
        assert_eq!(verify(&header, PAYLOAD, &[SECRET], NOW), Ok(()));
    }

    #[test]
    fn one_matching_signature_among_several_is_enough() {
        let header =
            format!("t={NOW},v1={},v1=not-hex,v1={}", sign(OTHER_SECRET, NOW, PAYLOAD), sign(SECRET, NOW, PAYLOAD));
        assert_eq!(verify(&header, PAYLOAD, &[SECRET], NOW), Ok(()));
    }

    #[test]
    fn any_configured_secret_may_match() {
        let header = signature_header(OTHER_SECRET, NOW, PAYLOAD);
        assert_eq!(verify(&header, PAYLOAD, &[SECRET, OTHER_SECRET], NOW), Ok(()));
        expect_invalid(verify(&header, PAYLOAD, &[SECRET], NOW), "no v1 signature matches");
    }

    #[test]
    fn a_tampered_payload_is_refused() {
        let header = signature_header(SECRET, NOW, PAYLOAD);
        let tampered = br#"{"id":"evt_1","type":"customer.created","data":{"object":{"x":1}}}"#;
        expect_invalid(verify(&header, tampered, &[SECRET], NOW), "no v1 signature matches");
    }

    #[test]
    fn a_tampered_timestamp_is_refused() {
        let header = format!("t={},v1={}", NOW + 1, sign(SECRET, NOW, PAYLOAD));
        expect_invalid(verify(&header, PAYLOAD, &[SECRET], NOW), "no v1 signature matches");
    }

    #[test]
    fn a_wrong_secret_is_refused() {
        let header = signature_header("whsec_somebody_else", NOW, PAYLOAD);
        expect_invalid(verify(&header, PAYLOAD, &[SECRET], NOW), "no v1 signature matches");
    }

    #[test]
    fn a_signature_is_accepted_up_to_the_tolerance_and_stale_one_second_later() {
        let header = signature_header(SECRET, NOW, PAYLOAD);
        assert_eq!(verify(&header, PAYLOAD, &[SECRET], NOW + 300), Ok(()));
        match verify(&header, PAYLOAD, &[SECRET], NOW + 301) {
            Err(WebhookError::StaleSignature(reason)) => assert!(reason.contains("301 s ago"), "{reason}"),
            other => panic!("expected StaleSignature, got {other:?}"),
        }
    }

    #[test]
    fn a_signature_from_too_far_in_the_future_is_stale() {
        let header = signature_header(SECRET, NOW + 301, PAYLOAD);
        match verify(&header, PAYLOAD, &[SECRET], NOW) {
            Err(WebhookError::StaleSignature(reason)) => assert!(reason.contains("301 s in the future"), "{reason}"),
            other => panic!("expected StaleSignature, got {other:?}"),
        }
        assert_eq!(verify(&signature_header(SECRET, NOW + 300, PAYLOAD), PAYLOAD, &[SECRET], NOW), Ok(()));
    }

    #[test]
    fn a_forged_old_header_is_invalid_not_stale() {
        let forged = format!("t={},v1={}", NOW - 10_000, "ab".repeat(32));
        expect_invalid(verify(&forged, PAYLOAD, &[SECRET], NOW), "no v1 signature matches");
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        let header = signature_header(SECRET, i64::MIN, PAYLOAD);
        assert!(matches!(verify(&header, PAYLOAD, &[SECRET], i64::MAX), Err(WebhookError::StaleSignature(_))));
    }

    #[test]
    fn malformed_headers_are_invalid_and_say_why() {
        let signature = sign(SECRET, NOW, PAYLOAD);
        expect_invalid(verify("", PAYLOAD, &[SECRET], NOW), "missing or empty");
        expect_invalid(verify(&format!("v1={signature}"), PAYLOAD, &[SECRET], NOW), "no timestamp");
        expect_invalid(verify(&format!("t={NOW},v0={signature}"), PAYLOAD, &[SECRET], NOW), "no v1 signature");
        expect_invalid(verify(&format!("t=yesterday,v1={signature}"), PAYLOAD, &[SECRET], NOW), "not an integer");
        expect_invalid(verify(&format!("t={NOW},t={NOW},v1={signature}"), PAYLOAD, &[SECRET], NOW), "two timestamps");
        expect_invalid(verify("garbage; definitely not a signature", PAYLOAD, &[SECRET], NOW), "no timestamp");
        let crowded = format!("t={NOW}{}", format!(",v1={signature}").repeat(SIGNATURES_PER_HEADER_MAX + 1));
        expect_invalid(verify(&crowded, PAYLOAD, &[SECRET], NOW), "v1 signatures, more than");
        let huge = format!("t={NOW},v1={}", "a".repeat(SIGNATURE_HEADER_BYTES_MAX));
        expect_invalid(verify(&huge, PAYLOAD, &[SECRET], NOW), "bytes long");
    }

    #[test]
    fn no_configured_secret_accepts_nothing() {
        expect_invalid(verify(&signature_header(SECRET, NOW, PAYLOAD), PAYLOAD, &[], NOW), "no webhook signing secret");
    }

    // ---- events ----

    const CHECKOUT_COMPLETED: &str = r#"{
      "id": "evt_1QbTg2LkdIwHu7ix0tYGXjvA",
      "object": "event",
      "api_version": "2024-06-20",
      "created": 1767225590,
      "data": {
        "object": {
          "id": "cs_test_a1Zq7PQ0YxYbAlkSjuv3tHnbRo4ywtQvXWwpG4fBXcU3dMhDp6cKz2sHtz",
          "object": "checkout.session",
          "after_expiration": null,
          "allow_promotion_codes": null,
          "amount_subtotal": 900,
          "amount_total": 900,
          "automatic_tax": {"enabled": false, "liability": null, "status": null},
          "billing_address_collection": null,
          "cancel_url": "https://app.example.com/billing?cancelled=1",
          "client_reference_id": "acme",
          "created": 1767225512,
          "currency": "USD",
          "customer": "cus_RFkOQ2nJ8c1xYz",
          "customer_creation": "always",
          "customer_details": {"address": {"country": "FR", "postal_code": null}, "email": "ops@acme.example", "name": "Acme Ops", "phone": null, "tax_exempt": "none", "tax_ids": []},
          "customer_email": null,
          "expires_at": 1767311912,
          "livemode": false,
          "locale": null,
          "metadata": {"headroom_account": "acme", "headroom_checkout": "co_7b6f0c3de2a94b1f8c5d4e3a2b1c0d9e"},
          "mode": "payment",
          "payment_intent": "pi_3QbTfzLkdIwHu7ix1AbCdEfG",
          "payment_link": null,
          "payment_method_types": ["card"],
          "payment_status": "paid",
          "status": "complete",
          "success_url": "https://app.example.com/billing?paid=1",
          "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
          "ui_mode": "hosted",
          "url": null
        }
      },
      "livemode": false,
      "pending_webhooks": 1,
      "request": {"id": null, "idempotency_key": null},
      "type": "checkout.session.completed"
    }"#;

    const PAYMENT_INTENT_SUCCEEDED: &str = r#"{
      "id": "evt_3QbTfzLkdIwHu7ix1h6n2YkP",
      "object": "event",
      "api_version": "2024-06-20",
      "created": 1767225589,
      "data": {
        "object": {
          "id": "pi_3QbTfzLkdIwHu7ix1AbCdEfG",
          "object": "payment_intent",
          "amount": 900,
          "amount_capturable": 0,
          "amount_received": 900,
          "capture_method": "automatic_async",
          "client_secret": "pi_3QbTfzLkdIwHu7ix1AbCdEfG_secret_kW1Q",
          "confirmation_method": "automatic",
          "created": 1767225585,
          "currency": "usd",
          "customer": "cus_RFkOQ2nJ8c1xYz",
          "description": null,
          "last_payment_error": null,
          "latest_charge": "ch_3QbTfzLkdIwHu7ix1x9y8z7w",
          "livemode": false,
          "metadata": {"headroom_account": "acme", "headroom_checkout": "co_7b6f0c3de2a94b1f8c5d4e3a2b1c0d9e"},
          "next_action": null,
          "payment_method": "pm_1QbTfyLkdIwHu7ixQwErTyUi",
          "payment_method_options": {"card": {"request_three_d_secure": "automatic"}},
          "payment_method_types": ["card"],
          "setup_future_usage": "off_session",
          "status": "succeeded"
        }
      },
      "livemode": false,
      "pending_webhooks": 2,
      "request": {"id": null, "idempotency_key": "7c1e1b8a-0c6f-4a53-9c55-3e0e7d2f9a10"},
      "type": "payment_intent.succeeded"
    }"#;

    const CHARGE_REFUNDED: &str = r#"{
      "id": "evt_3QbUa1LkdIwHu7ix0RfNdEd1",
      "object": "event",
      "api_version": "2024-06-20",
      "created": 1767312000,
      "data": {
        "object": {
          "id": "ch_3QbTfzLkdIwHu7ix1x9y8z7w",
          "object": "charge",
          "amount": 900,
          "amount_captured": 900,
          "amount_refunded": 300,
          "balance_transaction": "txn_3QbTfzLkdIwHu7ix1q2w3e4r",
          "captured": true,
          "created": 1767225586,
          "currency": "usd",
          "customer": "cus_RFkOQ2nJ8c1xYz",
          "livemode": false,
          "metadata": {"headroom_account": "acme", "headroom_recharge": "rc_0f9e8d7c6b5a49382716051423324150"},
          "outcome": {"network_status": "approved_by_network", "risk_level": "normal", "type": "authorized"},
          "paid": true,
          "payment_intent": "pi_3QbTfzLkdIwHu7ix1AbCdEfG",
          "payment_method": "pm_1QbTfyLkdIwHu7ixQwErTyUi",
          "refunded": false,
          "status": "succeeded"
        },
        "previous_attributes": {"amount_refunded": 0}
      },
      "livemode": false,
      "pending_webhooks": 1,
      "request": {"id": "req_VfX2dqGq1H3tLm", "idempotency_key": "a7e1f3d2-5b64-4c8e-9f00-1d2c3b4a5e6f"},
      "type": "charge.refunded"
    }"#;

    /// Applies `edit` to a sample event and serializes it back.
    fn edited(sample: &str, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut event: Value = serde_json::from_str(sample).unwrap();
        edit(&mut event);
        serde_json::to_vec(&event).unwrap()
    }

    fn expect_malformed(payload: &[u8], reason_part: &str) {
        match parse_event(payload) {
            Err(WebhookError::Malformed(reason)) => assert!(reason.contains(reason_part), "{reason}"),
            other => panic!("expected Malformed mentioning {reason_part:?}, got {other:?}"),
        }
    }

    #[test]
    fn a_paid_checkout_session() {
        assert_eq!(
            parse_event(CHECKOUT_COMPLETED.as_bytes()),
            Ok(WebhookEvent::CheckoutPaid {
                event: "evt_1QbTg2LkdIwHu7ix0tYGXjvA".to_string(),
                session: "cs_test_a1Zq7PQ0YxYbAlkSjuv3tHnbRo4ywtQvXWwpG4fBXcU3dMhDp6cKz2sHtz".to_string(),
                account: "acme".to_string(),
                checkout: "co_7b6f0c3de2a94b1f8c5d4e3a2b1c0d9e".to_string(),
                amount: 900,
                currency: "usd".to_string(),
            })
        );
    }

    #[test]
    fn a_free_checkout_session_counts_as_paid() {
        let payload = edited(CHECKOUT_COMPLETED, |event| {
            event["data"]["object"]["payment_status"] = "no_payment_required".into();
        });
        assert!(matches!(parse_event(&payload), Ok(WebhookEvent::CheckoutPaid { .. })));
    }

    #[test]
    fn an_unpaid_checkout_session_then_its_async_payment() {
        let unpaid = edited(CHECKOUT_COMPLETED, |event| {
            event["data"]["object"]["payment_status"] = "unpaid".into();
            event["data"]["object"]["payment_intent"] = Value::Null;
        });
        assert_eq!(
            parse_event(&unpaid),
            Ok(WebhookEvent::CheckoutUnpaid {
                event: "evt_1QbTg2LkdIwHu7ix0tYGXjvA".to_string(),
                checkout: "co_7b6f0c3de2a94b1f8c5d4e3a2b1c0d9e".to_string(),
            })
        );
        let succeeded = edited(CHECKOUT_COMPLETED, |event| {
            event["id"] = "evt_async".into();
            event["type"] = "checkout.session.async_payment_succeeded".into();
            event["data"]["object"]["payment_status"] = "unpaid".into();
        });
        match parse_event(&succeeded) {
            Ok(WebhookEvent::CheckoutPaid { event, amount, .. }) => {
                assert_eq!((event.as_str(), amount), ("evt_async", 900))
            }
            other => panic!("expected CheckoutPaid, got {other:?}"),
        }
    }

    #[test]
    fn a_checkout_session_without_headroom_metadata_is_not_ours() {
        let foreign = edited(CHECKOUT_COMPLETED, |event| event["data"]["object"]["metadata"] = serde_json::json!({}));
        assert!(
            matches!(parse_event(&foreign), Err(WebhookError::NotOurs(reason)) if reason.contains("headroom_account"))
        );
        let no_checkout = edited(CHECKOUT_COMPLETED, |event| {
            event["data"]["object"]["metadata"] = serde_json::json!({"headroom_account": "acme"});
        });
        assert!(
            matches!(parse_event(&no_checkout), Err(WebhookError::NotOurs(reason)) if reason.contains("headroom_checkout"))
        );
    }

    #[test]
    fn a_checkout_session_missing_its_amount_is_malformed() {
        let payload = edited(CHECKOUT_COMPLETED, |event| event["data"]["object"]["amount_total"] = Value::Null);
        expect_malformed(&payload, "data.object.amount_total is missing");
        let payload = edited(CHECKOUT_COMPLETED, |event| event["data"]["object"]["amount_total"] = (-5).into());
        expect_malformed(&payload, "data.object.amount_total should be a non-negative integer");
        let payload = edited(CHECKOUT_COMPLETED, |event| event["data"]["object"]["payment_status"] = "maybe".into());
        expect_malformed(&payload, "data.object.payment_status");
    }

    #[test]
    fn a_checkout_payment_intent_saves_its_payment_method() {
        assert_eq!(
            parse_event(PAYMENT_INTENT_SUCCEEDED.as_bytes()),
            Ok(WebhookEvent::PaymentMethodSaved {
                event: "evt_3QbTfzLkdIwHu7ix1h6n2YkP".to_string(),
                account: "acme".to_string(),
                checkout: "co_7b6f0c3de2a94b1f8c5d4e3a2b1c0d9e".to_string(),
                customer: "cus_RFkOQ2nJ8c1xYz".to_string(),
                payment_method: "pm_1QbTfyLkdIwHu7ixQwErTyUi".to_string(),
            })
        );
    }

    #[test]
    fn a_checkout_payment_intent_without_a_customer_is_ignored() {
        let payload = edited(PAYMENT_INTENT_SUCCEEDED, |event| event["data"]["object"]["customer"] = Value::Null);
        assert_eq!(
            parse_event(&payload),
            Ok(WebhookEvent::Ignored {
                event: "evt_3QbTfzLkdIwHu7ix1h6n2YkP".to_string(),
                kind: "payment_intent.succeeded".to_string(),
            })
        );
    }

    #[test]
    fn a_recharge_payment_intent_completes_the_recharge() {
        let payload = edited(PAYMENT_INTENT_SUCCEEDED, |event| {
            event["data"]["object"]["metadata"] = serde_json::json!({
                "headroom_account": "acme",
                "headroom_recharge": "rc_0f9e8d7c6b5a49382716051423324150"
            });
        });
        assert_eq!(
            parse_event(&payload),
            Ok(WebhookEvent::RechargeSucceeded {
                event: "evt_3QbTfzLkdIwHu7ix1h6n2YkP".to_string(),
                account: "acme".to_string(),
                recharge: "rc_0f9e8d7c6b5a49382716051423324150".to_string(),
                payment_intent: "pi_3QbTfzLkdIwHu7ix1AbCdEfG".to_string(),
            })
        );
    }

    #[test]
    fn a_payment_intent_naming_no_headroom_payment_is_not_ours() {
        let payload = edited(PAYMENT_INTENT_SUCCEEDED, |event| {
            event["data"]["object"]["metadata"] = serde_json::json!({"headroom_account": "acme", "order": "42"});
        });
        assert!(matches!(parse_event(&payload), Err(WebhookError::NotOurs(_))));
    }

    #[test]
    fn a_refunded_charge() {
        assert_eq!(
            parse_event(CHARGE_REFUNDED.as_bytes()),
            Ok(WebhookEvent::Refunded {
                event: "evt_3QbUa1LkdIwHu7ix0RfNdEd1".to_string(),
                account: "acme".to_string(),
                payment: PaymentRef::Recharge("rc_0f9e8d7c6b5a49382716051423324150".to_string()),
                amount: 900,
                amount_refunded: 300,
                currency: "usd".to_string(),
            })
        );
        let from_checkout = edited(CHARGE_REFUNDED, |event| {
            event["data"]["object"]["metadata"] =
                serde_json::json!({"headroom_account": "acme", "headroom_checkout": "co_7b6f"});
        });
        assert!(matches!(
            parse_event(&from_checkout),
            Ok(WebhookEvent::Refunded { payment: PaymentRef::Checkout(checkout), .. }) if checkout == "co_7b6f"
        ));
    }

    #[test]
    fn a_refund_larger_than_the_charge_is_malformed() {
        let payload = edited(CHARGE_REFUNDED, |event| event["data"]["object"]["amount_refunded"] = 901.into());
        expect_malformed(&payload, "exceeds");
    }

    #[test]
    fn other_event_types_are_ignored() {
        let payload = br#"{"id":"evt_9","object":"event","type":"customer.subscription.updated","created":1,"data":{"object":{"id":"sub_1"}}}"#;
        assert_eq!(
            parse_event(payload),
            Ok(WebhookEvent::Ignored { event: "evt_9".to_string(), kind: "customer.subscription.updated".to_string() })
        );
    }

    #[test]
    fn bodies_that_are_not_events_are_malformed() {
        expect_malformed(b"not json", "not JSON");
        expect_malformed(br#"{"type":"charge.refunded"}"#, "id is missing");
        expect_malformed(br#"{"id":"evt_1"}"#, "type is missing");
        expect_malformed(br#"{"id":7,"type":"x"}"#, "id should be a string");
    }

    // ---- form encoding ----

    #[test]
    fn form_encoding_escapes_everything_but_unreserved_characters() {
        assert_eq!(form_encode(&[("plain", "Az09-._~")]), "plain=Az09-._~");
        assert_eq!(form_encode(&[("a b", "c&d=e/f")]), "a%20b=c%26d%3De%2Ff");
        assert_eq!(form_encode(&[("metadata[k]", "1+1?#%")]), "metadata%5Bk%5D=1%2B1%3F%23%25");
        assert_eq!(form_encode(&[("name", "1 000 crédits ✓")]), "name=1%20000%20cr%C3%A9dits%20%E2%9C%93");
        assert_eq!(form_encode(&[("a", "1"), ("b", ""), ("c", "3")]), "a=1&b=&c=3");
        assert_eq!(form_encode(&[]), "");
    }

    // ---- HTTP client against a local fake ----

    struct ReceivedRequest {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl ReceivedRequest {
        fn header_values(&self, name: &str) -> Vec<&str> {
            self.headers
                .iter()
                .filter(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
                .collect()
        }
    }

    /// Serves one request on a fresh port with a canned answer and hands the
    /// request back to the test.
    fn serve_once(status_line: &'static str, body: &'static str) -> (String, mpsc::Receiver<ReceivedRequest>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut parts = request_line.split_whitespace();
            let method = parts.next().unwrap_or_default().to_string();
            let path = parts.next().unwrap_or_default().to_string();
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap();
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
            let length = headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, value)| value.parse::<usize>().unwrap());
            let mut body_bytes = vec![0; length];
            reader.read_exact(&mut body_bytes).unwrap();
            let mut stream = stream;
            write!(
                stream,
                "HTTP/1.1 {status_line}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            stream.flush().unwrap();
            let body = String::from_utf8(body_bytes).unwrap();
            sender.send(ReceivedRequest { method, path, headers, body }).unwrap();
        });
        (address, receiver)
    }

    fn received(receiver: &mpsc::Receiver<ReceivedRequest>) -> ReceivedRequest {
        receiver.recv_timeout(Duration::from_secs(10)).expect("the fake Stripe received no request")
    }

    fn stripe_at(api_base: &str) -> Stripe {
        Stripe::new(&StripeConfig {
            secret_key: "sk_test_4eC39HqLyjWDarjtT1zdp7dc".to_string(),
            api_base: api_base.to_string(),
            webhook_secrets: secrets(&[SECRET]),
        })
    }

    /// Decodes a form body independently of `form_encode`, `+` and `%20` alike.
    fn decode_form(body: &str) -> Vec<(String, String)> {
        let decode = |text: &str| {
            let bytes = text.as_bytes();
            let mut decoded = Vec::new();
            let mut index = 0;
            while index < bytes.len() {
                match bytes[index] {
                    b'+' => decoded.push(b' '),
                    b'%' => {
                        decoded.push(u8::from_str_radix(&text[index + 1..index + 3], 16).unwrap());
                        index += 2;
                    }
                    byte => decoded.push(byte),
                }
                index += 1;
            }
            String::from_utf8(decoded).unwrap()
        };
        body.split('&')
            .map(|pair| pair.split_once('=').unwrap())
            .map(|(name, value)| (decode(name), decode(value)))
            .collect()
    }

    fn assert_common_headers(request: &ReceivedRequest, idempotency_key: &str) {
        assert_eq!(request.method, "POST");
        assert_eq!(request.header_values("authorization"), ["Bearer sk_test_4eC39HqLyjWDarjtT1zdp7dc"]);
        assert_eq!(request.header_values("idempotency-key"), [idempotency_key]);
        assert_eq!(request.header_values("content-type"), ["application/x-www-form-urlencoded"]);
    }

    fn checkout_order() -> CheckoutOrder {
        CheckoutOrder {
            checkout: "co_7b6f0c3de2a94b1f8c5d4e3a2b1c0d9e".to_string(),
            account: "acme & co".to_string(),
            credits: 1_000,
            amount: 900,
            currency: "usd".to_string(),
            success_url: "https://app.example.com/billing?paid=1&from=headroom".to_string(),
            cancel_url: "https://app.example.com/billing?cancelled=1".to_string(),
        }
    }

    fn charge_order() -> ChargeOrder {
        ChargeOrder {
            recharge: "rc_0f9e8d7c6b5a49382716051423324150".to_string(),
            account: "acme".to_string(),
            credits: 2_500,
            amount: 2_500,
            currency: "usd".to_string(),
            customer: "cus_RFkOQ2nJ8c1xYz".to_string(),
            payment_method: "pm_1QbTfyLkdIwHu7ixQwErTyUi".to_string(),
        }
    }

    #[test]
    fn creating_a_checkout_posts_the_session_and_returns_its_page() {
        let (base, requests) = serve_once(
            "200 OK",
            r#"{"id":"cs_test_a1Zq7","object":"checkout.session","url":"https://checkout.stripe.com/c/pay/cs_test_a1Zq7#fid","payment_status":"unpaid","status":"open"}"#,
        );
        let created = stripe_at(&base).create_checkout(&checkout_order());
        assert_eq!(
            created,
            Ok(ProviderCheckout {
                id: "cs_test_a1Zq7".to_string(),
                url: "https://checkout.stripe.com/c/pay/cs_test_a1Zq7#fid".to_string()
            })
        );
        let request = received(&requests);
        assert_eq!(request.path, "/v1/checkout/sessions");
        assert_common_headers(&request, "co_7b6f0c3de2a94b1f8c5d4e3a2b1c0d9e");
        let expected = [
            ("mode", "payment"),
            ("success_url", "https://app.example.com/billing?paid=1&from=headroom"),
            ("cancel_url", "https://app.example.com/billing?cancelled=1"),
            ("client_reference_id", "acme & co"),
            ("line_items[0][quantity]", "1"),
            ("line_items[0][price_data][currency]", "usd"),
            ("line_items[0][price_data][unit_amount]", "900"),
            ("line_items[0][price_data][product_data][name]", "1000 credits"),
            ("metadata[headroom_account]", "acme & co"),
            ("metadata[headroom_checkout]", "co_7b6f0c3de2a94b1f8c5d4e3a2b1c0d9e"),
            ("payment_intent_data[metadata][headroom_account]", "acme & co"),
            ("payment_intent_data[metadata][headroom_checkout]", "co_7b6f0c3de2a94b1f8c5d4e3a2b1c0d9e"),
            ("payment_intent_data[setup_future_usage]", "off_session"),
            ("customer_creation", "always"),
        ];
        let expected: Vec<(String, String)> =
            expected.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        assert_eq!(decode_form(&request.body), expected);
    }

    #[test]
    fn a_refused_checkout_is_rejected_with_stripes_message() {
        let (base, requests) = serve_once(
            "400 Bad Request",
            r#"{"error":{"type":"invalid_request_error","code":"url_invalid","param":"success_url","message":"Not a valid URL","request_log_url":"https://dashboard.stripe.com/test/logs/req_x"}}"#,
        );
        match stripe_at(&base).create_checkout(&checkout_order()) {
            Err(ProviderError::Rejected(reason)) => assert!(reason.contains("Not a valid URL"), "{reason}"),
            other => panic!("expected Rejected, got {other:?}"),
        }
        received(&requests);
    }

    #[test]
    fn a_checkout_answer_without_a_url_is_rejected() {
        let (base, requests) = serve_once("200 OK", r#"{"id":"cs_test_a1Zq7","url":null}"#);
        match stripe_at(&base).create_checkout(&checkout_order()) {
            Err(ProviderError::Rejected(reason)) => assert!(reason.contains("\"url\""), "{reason}"),
            other => panic!("expected Rejected, got {other:?}"),
        }
        received(&requests);
    }

    #[test]
    fn a_successful_charge_posts_the_payment_intent() {
        let (base, requests) = serve_once(
            "200 OK",
            r#"{"id":"pi_3QcAbCLkdIwHu7ix0ZyXwVuT","object":"payment_intent","amount":2500,"currency":"usd","status":"succeeded","latest_charge":"ch_3QcAbC"}"#,
        );
        let outcome = stripe_at(&base).charge(&charge_order());
        assert_eq!(outcome, Ok(ChargeOutcome::Succeeded { payment_intent: "pi_3QcAbCLkdIwHu7ix0ZyXwVuT".to_string() }));
        let request = received(&requests);
        assert_eq!(request.path, "/v1/payment_intents");
        assert_common_headers(&request, "rc_0f9e8d7c6b5a49382716051423324150");
        let expected = [
            ("amount", "2500"),
            ("currency", "usd"),
            ("customer", "cus_RFkOQ2nJ8c1xYz"),
            ("payment_method", "pm_1QbTfyLkdIwHu7ixQwErTyUi"),
            ("off_session", "true"),
            ("confirm", "true"),
            ("metadata[headroom_account]", "acme"),
            ("metadata[headroom_recharge]", "rc_0f9e8d7c6b5a49382716051423324150"),
            ("description", "2500 credits (auto-recharge)"),
        ];
        let expected: Vec<(String, String)> =
            expected.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        assert_eq!(decode_form(&request.body), expected);
    }

    #[test]
    fn a_declined_card_is_a_decline_not_an_error() {
        let (base, requests) = serve_once(
            "402 Payment Required",
            r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds","message":"Your card has insufficient funds.","payment_intent":{"id":"pi_3QcAbD","status":"requires_payment_method"}}}"#,
        );
        assert_eq!(
            stripe_at(&base).charge(&charge_order()),
            Ok(ChargeOutcome::Declined {
                reason: "Your card has insufficient funds. (card_declined: insufficient_funds)".to_string()
            })
        );
        received(&requests);
    }

    #[test]
    fn a_charge_needing_the_customer_is_declined_with_its_status() {
        let (base, requests) = serve_once(
            "200 OK",
            r#"{"id":"pi_3QcAbE","object":"payment_intent","status":"requires_action","next_action":{"type":"use_stripe_sdk"}}"#,
        );
        assert_eq!(
            stripe_at(&base).charge(&charge_order()),
            Ok(ChargeOutcome::Declined { reason: "requires_action".to_string() })
        );
        received(&requests);
    }

    #[test]
    fn a_server_error_is_transient() {
        let (base, requests) = serve_once(
            "500 Internal Server Error",
            r#"{"error":{"type":"api_error","message":"An unknown error occurred"}}"#,
        );
        match stripe_at(&base).charge(&charge_order()) {
            Err(ProviderError::Transient(reason)) => {
                assert!(reason.contains("500") && reason.contains("unknown error"), "{reason}")
            }
            other => panic!("expected Transient, got {other:?}"),
        }
        received(&requests);
    }

    #[test]
    fn rate_limiting_and_idempotency_conflicts_are_transient() {
        for status_line in ["429 Too Many Requests", "409 Conflict"] {
            let (base, requests) =
                serve_once(status_line, r#"{"error":{"type":"invalid_request_error","message":"try later"}}"#);
            assert!(
                matches!(stripe_at(&base).charge(&charge_order()), Err(ProviderError::Transient(_))),
                "{status_line}"
            );
            received(&requests);
        }
    }

    #[test]
    fn an_invalid_request_on_a_charge_is_rejected() {
        let (base, requests) = serve_once(
            "400 Bad Request",
            r#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such customer: 'cus_RFkOQ2nJ8c1xYz'"}}"#,
        );
        match stripe_at(&base).charge(&charge_order()) {
            Err(ProviderError::Rejected(reason)) => assert!(reason.contains("No such customer"), "{reason}"),
            other => panic!("expected Rejected, got {other:?}"),
        }
        received(&requests);
    }

    #[test]
    fn a_refused_connection_is_transient() {
        // Bind then release a port so that nothing listens on it.
        let address = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        match stripe_at(&format!("http://{address}")).create_checkout(&checkout_order()) {
            Err(ProviderError::Transient(reason)) => assert!(reason.contains("cannot reach Stripe"), "{reason}"),
            other => panic!("expected Transient, got {other:?}"),
        }
    }
}
