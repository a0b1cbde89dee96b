//! The payment provider as the rest of Headroom sees it: a blocking trait that
//! creates checkouts and charges saved cards, and the provider-neutral webhook
//! events the server turns into store commands.
//!
//! Architecture Invariant: nothing here names Stripe. The Stripe adapter
//! (`super::stripe`) translates its wire format into these types, so the
//! server and its tests can run against any provider or an in-memory fake.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A purchase Headroom has recorded as pending and now asks the provider to
/// collect through a hosted checkout page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutOrder {
    /// Headroom's checkout id (`co_<32 hex>`); also the idempotency key, so a
    /// retried creation returns the same provider session.
    pub checkout: String,
    pub account: String,
    /// Whole credits bought; shown to the buyer as the product name.
    pub credits: u64,
    /// Price in the currency's minor unit (cents).
    pub amount: u64,
    /// ISO 4217 code, lower case.
    pub currency: String,
    pub success_url: String,
    pub cancel_url: String,
}

/// The provider's hosted checkout page for a [`CheckoutOrder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderCheckout {
    /// The provider's session id (`cs_…` at Stripe).
    pub id: String,
    /// Where to send the buyer.
    pub url: String,
}

/// An off-session charge of a saved payment method, made by auto-recharge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeOrder {
    /// Headroom's recharge id (`rc_<32 hex>`); also the idempotency key, so a
    /// retried charge can never charge the card twice.
    pub recharge: String,
    pub account: String,
    /// Whole credits bought.
    pub credits: u64,
    /// Price in the currency's minor unit (cents).
    pub amount: u64,
    /// ISO 4217 code, lower case.
    pub currency: String,
    /// The provider's customer id (`cus_…`), saved by an earlier checkout.
    pub customer: String,
    /// The provider's payment method id (`pm_…`), saved by an earlier checkout.
    pub payment_method: String,
}

/// What the provider answered to a [`ChargeOrder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// The money was collected; the payment id lets support find it.
    Succeeded { payment_intent: String },
    /// The provider answered and the card was not charged: declined, or it
    /// needs the customer to act (authentication, a new card). Retrying the
    /// same order cannot change the answer.
    Declined { reason: String },
}

/// Why a provider call did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderError {
    /// Network failure, timeout, rate limiting or a provider outage: the
    /// outcome is unknown or temporary, so retry later with the same
    /// idempotency key.
    Transient(String),
    /// The provider refused the request or answered something unreadable:
    /// sending the same request again will fail the same way.
    Rejected(String),
}

impl ProviderError {
    /// Whether retrying the same request later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Transient(_))
    }
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProviderError::Transient(reason) => write!(f, "payment provider temporarily unavailable: {reason}"),
            ProviderError::Rejected(reason) => write!(f, "payment provider rejected the request: {reason}"),
        }
    }
}

impl std::error::Error for ProviderError {}

/// A payment provider. Calls block on the network; the server runs them on
/// `tokio::task::spawn_blocking`.
pub trait PaymentProvider: Send + Sync {
    /// Creates a hosted checkout page for the order. Idempotent per
    /// `order.checkout`.
    fn create_checkout(&self, order: &CheckoutOrder) -> Result<ProviderCheckout, ProviderError>;

    /// Charges the saved payment method without the customer present.
    /// Idempotent per `order.recharge`.
    fn charge(&self, order: &ChargeOrder) -> Result<ChargeOutcome, ProviderError>;
}

/// A verified webhook event, reduced to what Headroom acts on. Every variant
/// carries the provider's event id so the server can log and deduplicate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    /// A checkout was paid: grant its credits, once, keyed by `checkout`.
    CheckoutPaid { event: String, session: String, account: String, checkout: String, amount: u64, currency: String },
    /// A checkout completed but the money has not arrived yet (delayed payment
    /// methods); a later event says whether it did.
    CheckoutUnpaid { event: String, checkout: String },
    /// A checkout's payment saved a customer and payment method that
    /// auto-recharge can charge later.
    PaymentMethodSaved { event: String, account: String, checkout: String, customer: String, payment_method: String },
    /// An auto-recharge charge succeeded (possibly after the call that made it
    /// timed out).
    RechargeSucceeded { event: String, account: String, recharge: String, payment_intent: String },
    /// Some of a payment was refunded. `amount_refunded` is cumulative, so a
    /// redelivered or reordered event never claws back twice.
    Refunded {
        event: String,
        account: String,
        payment: PaymentRef,
        amount: u64,
        amount_refunded: u64,
        currency: String,
    },
    /// A correctly signed event Headroom has no use for; answered 200 so the
    /// provider stops resending it.
    Ignored { event: String, kind: String },
}

/// Which Headroom payment a refund belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentRef {
    /// A checkout id (`co_…`).
    Checkout(String),
    /// A recharge id (`rc_…`).
    Recharge(String),
}

/// Why a webhook delivery was refused. Each maps to a stable error code the
/// server puts in its 400 answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookError {
    /// The signature header is missing, unreadable, or matches no configured
    /// secret.
    InvalidSignature(String),
    /// The signature is genuine but too old (or too far in the future) to
    /// rule out a replay.
    StaleSignature(String),
    /// The body is not the event shape Headroom expects.
    Malformed(String),
    /// Validly signed, but names no Headroom checkout or recharge in its
    /// metadata: a payment made by something else on the same provider account.
    NotOurs(String),
}

impl WebhookError {
    /// The stable error code of the server's 400 answer.
    pub fn code(&self) -> &'static str {
        match self {
            WebhookError::InvalidSignature(_) => "invalid_signature",
            WebhookError::StaleSignature(_) => "stale_signature",
            WebhookError::Malformed(_) => "malformed",
            WebhookError::NotOurs(_) => "unknown_checkout",
        }
    }
}

impl std::fmt::Display for WebhookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WebhookError::InvalidSignature(reason) => {
                write!(f, "webhook signature rejected: {reason}; check that the webhook signing secret is configured")
            }
            WebhookError::StaleSignature(reason) => {
                write!(f, "webhook signature expired: {reason}; check this server's clock if deliveries are fresh")
            }
            WebhookError::Malformed(reason) => write!(f, "webhook body malformed: {reason}"),
            WebhookError::NotOurs(reason) => {
                write!(f, "webhook names no Headroom checkout or recharge: {reason}")
            }
        }
    }
}

impl std::error::Error for WebhookError {}

/// Lower-case hex of HMAC-SHA256(secret, message): the signature scheme of
/// both the provider's webhooks and Headroom's own outbound alerts.
pub fn hmac_sha256_hex(secret: &[u8], message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(message);
    hex_encode(&mac.finalize().into_bytes())
}

/// Lower-case hex, two digits per byte.
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// Decodes hex of either case; `None` for an odd length or a non-hex digit.
pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks_exact(2)
        .map(|pair| {
            let high = char::from(pair[0]).to_digit(16)?;
            let low = char::from(pair[1]).to_digit(16)?;
            u8::try_from(high * 16 + low).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_the_rfc_4231_test_vector() {
        // RFC 4231, test case 2.
        let signature = hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(signature, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn hex_round_trips_and_refuses_bad_input() {
        let bytes = [0x00, 0x0f, 0xa5, 0xff];
        assert_eq!(hex_encode(&bytes), "000fa5ff");
        assert_eq!(hex_decode("000fa5ff").as_deref(), Some(&bytes[..]));
        assert_eq!(hex_decode("000FA5FF").as_deref(), Some(&bytes[..]));
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
        assert_eq!(hex_decode("+1"), None);
        assert_eq!(hex_decode("").as_deref(), Some(&[][..]));
    }

    #[test]
    fn webhook_error_codes_are_stable() {
        assert_eq!(WebhookError::InvalidSignature(String::new()).code(), "invalid_signature");
        assert_eq!(WebhookError::StaleSignature(String::new()).code(), "stale_signature");
        assert_eq!(WebhookError::Malformed(String::new()).code(), "malformed");
        assert_eq!(WebhookError::NotOurs(String::new()).code(), "unknown_checkout");
    }

    #[test]
    fn provider_error_says_whether_to_retry() {
        assert!(ProviderError::Transient("timeout".into()).is_transient());
        assert!(!ProviderError::Rejected("bad key".into()).is_transient());
        assert_eq!(
            ProviderError::Rejected("No such customer".into()).to_string(),
            "payment provider rejected the request: No such customer"
        );
    }
}
