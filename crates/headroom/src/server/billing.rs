//! Money in and alerts out: checkout, the provider's webhooks,
//! auto-recharge, and the worker that charges recharges and delivers
//! alerts.
//!
//! Every change is one store command on the account (see
//! `headroom_core::BillingOp`), so exactly-once comes from the account's
//! serializable transaction, on either store. Calls to the provider and to
//! alert endpoints happen outside any transaction: the worker first claims
//! the due work (which schedules its retry), then calls, then records the
//! outcome. A crash in between retries the call, under the same provider
//! idempotency key or the same alert id.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use headroom_core::limits::GRANT_MICROS_MAX;
use headroom_core::*;
use headroom_store::{Command, Response as StoreResponse, StoreError, SystemClock};

use super::AppState;
use super::api::{bounded, id_field};
use super::auth::Principal;
use super::body::Json;
use super::error::ApiError;
use super::routes::account_path;
use crate::payments::alerts::{self, Endpoint};
use crate::payments::provider::{
    ChargeOrder, ChargeOutcome, CheckoutOrder, PaymentProvider, PaymentRef, ProviderError, WebhookError, WebhookEvent,
};
use crate::payments::stripe;

/// How far a webhook's signed timestamp may be from now.
pub const WEBHOOK_TOLERANCE_SECONDS: i64 = 300;

/// How often the worker looks for due alerts and recharges when nothing
/// woke it.
pub const WORK_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Accounts the worker takes per round, and alerts per account.
const WORK_ACCOUNTS_MAX: usize = 100;
const WORK_NOTICES_MAX: u32 = 50;

/// The payment provider and the alert endpoints of a server.
pub struct Payments {
    pub provider: Option<Arc<dyn PaymentProvider>>,
    pub webhook_secrets: Vec<String>,
    pub endpoints: Vec<Endpoint>,
    /// Wakes the worker when a command may have made work.
    pub wake: tokio::sync::Notify,
}

impl Payments {
    /// From the environment (`HEADROOM_STRIPE_*`) and the endpoints file.
    pub fn configure(endpoints: Vec<Endpoint>) -> Result<Payments, String> {
        let stripe = stripe::StripeConfig::from_env()?;
        let webhook_secrets = stripe.as_ref().map(|config| config.webhook_secrets.clone()).unwrap_or_default();
        let provider = stripe.map(|config| Arc::new(stripe::Stripe::new(&config)) as Arc<dyn PaymentProvider>);
        Ok(Payments { provider, webhook_secrets, endpoints, wake: tokio::sync::Notify::new() })
    }

    fn provider(&self) -> Result<Arc<dyn PaymentProvider>, ApiError> {
        self.provider.clone().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "payments_not_configured",
                "payments are not configured on this server (HEADROOM_STRIPE_SECRET_KEY)",
            )
        })
    }
}

// ----- Bodies and answers -----

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    /// Whole credits at the catalog's price per credit; or give `pack`.
    #[serde(default)]
    #[schema(value_type = Option<i64>, example = 1000)]
    #[serde(deserialize_with = "super::api::optional_integer")]
    pub credits: Option<i128>,
    /// A pack of the catalog, at its fixed price.
    #[serde(default)]
    pub pack: Option<String>,
    /// Where the provider sends the user after paying.
    pub success_url: String,
    /// Where the provider sends the user who gives up; default: `success_url`.
    #[serde(default)]
    pub cancel_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckoutView {
    pub checkout: String,
    /// The provider's id of the checkout page.
    pub provider_id: String,
    /// Send the user here to pay.
    pub url: String,
    pub account: String,
    /// Micro-credits granted once paid.
    pub credits: u64,
    /// In the currency's minor unit.
    pub amount: u64,
    pub currency: String,
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PaymentView {
    pub checkout: String,
    pub account: String,
    /// `checkout` or `recharge`.
    pub origin: String,
    /// Micro-credits.
    pub credits: u64,
    pub amount: u64,
    pub currency: String,
    /// `pending`, `paid` or `failed`.
    pub status: String,
    /// The grant a paid payment became.
    pub grant: Option<String>,
    /// Refunded so far, in the minor unit.
    pub refunded_amount: u64,
    /// Micro-credits taken back from the grant, and those already spent.
    pub clawed_back: u64,
    pub unrecovered: u64,
    pub created_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoRechargeBody {
    pub enabled: bool,
    /// Micro-credits: a recharge starts when the available balance falls below.
    #[schema(value_type = i64, minimum = 0)]
    #[serde(deserialize_with = "super::api::integer")]
    pub minimum: i128,
    /// Micro-credits: a recharge tops the balance up to this.
    #[schema(value_type = i64, minimum = 1)]
    #[serde(deserialize_with = "super::api::integer")]
    pub target: i128,
    /// The provider's customer; absent: the one saved by the last checkout.
    #[serde(default)]
    pub customer: Option<String>,
    /// The provider's saved payment method; absent: the one saved by the last checkout.
    #[serde(default)]
    pub payment_method: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AutoRechargeView {
    pub enabled: bool,
    pub minimum: u64,
    pub target: u64,
    pub customer: Option<String>,
    pub payment_method: Option<String>,
    /// Failed recharges in a row; three turn auto-recharge off.
    pub failures: u32,
    /// The recharge being charged, if any.
    pub in_flight: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    pub received: bool,
    /// What the event did: `granted`, `already_granted`, `pending`, `saved`,
    /// `refunded`, `recharged` or `ignored`.
    pub result: String,
}

fn payment_view(account: &AccountId, payment: &Payment) -> PaymentView {
    PaymentView {
        checkout: payment.id.to_string(),
        account: account.to_string(),
        origin: match payment.origin {
            PaymentOrigin::Checkout => "checkout",
            PaymentOrigin::Recharge => "recharge",
        }
        .to_string(),
        credits: payment.credits.micros(),
        amount: payment.amount,
        currency: payment.currency.clone(),
        status: match payment.status {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Paid => "paid",
            PaymentStatus::Failed => "failed",
        }
        .to_string(),
        grant: (payment.status == PaymentStatus::Paid).then(|| payment.grant().to_string()),
        refunded_amount: payment.refunded_amount,
        clawed_back: payment.clawed_back.micros(),
        unrecovered: payment.unrecovered.micros(),
        created_at: payment.created_at.to_string(),
    }
}

fn auto_recharge_view(view: &BillingView) -> AutoRechargeView {
    let settings = &view.auto_recharge;
    AutoRechargeView {
        enabled: settings.enabled,
        minimum: settings.minimum.micros(),
        target: settings.target.micros(),
        customer: settings.customer.as_ref().map(ToString::to_string),
        payment_method: settings.payment_method.as_ref().map(ToString::to_string),
        failures: settings.failures,
        in_flight: view.recharging.as_ref().map(ToString::to_string),
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}

fn unknown_account(account: &AccountId) -> ApiError {
    ApiError::from(CoreError::UnknownAccount(account.clone()))
}

async fn billing(state: &AppState, account: AccountId, op: BillingOp) -> Result<BillingAnswer, StoreError> {
    let answer = match state.execute(Command::Billing { account, op }).await? {
        StoreResponse::Billing { answer, .. } => *answer,
        other => {
            tracing::error!(?other, "the store answered a billing command with another kind of answer");
            return Err(StoreError::Unavailable("unexpected answer".to_string()));
        }
    };
    state.payments.wake.notify_one();
    Ok(answer)
}

fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the system's random source works");
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{prefix}{hex}")
}

// ----- Routes -----

/// Buy credits: opens a checkout with the payment provider.
///
/// Headroom records the pending checkout (account, credits, amount) first,
/// then asks the provider for its page; the credits are granted once the
/// provider's webhook says it was paid. For the admin token, a service token
/// or a subject token of the account.
#[utoipa::path(
    post, path = "/v1/accounts/{id}/checkout", tag = "payments", request_body = CheckoutBody,
    params(("id" = String, Path, description = "The account")),
    responses((status = 201, description = "The checkout: send the user to `url`", body = CheckoutView), super::routes::Errors),
    security(("bearer" = []))
)]
pub(super) async fn create_checkout(
    State(state): State<AppState>,
    principal: Principal,
    super::routes::Segment(id): super::routes::Segment,
    Json(body): Json<CheckoutBody>,
) -> Result<Response, ApiError> {
    let account = account_path(&id)?;
    principal.may_act_for(&account)?;
    let provider = state.payments.provider()?;
    let purchases = state.catalog.purchases.as_ref().ok_or_else(|| ApiError::from(CoreError::PurchasesNotOffered))?;
    let (credits, amount) = match (&body.credits, &body.pack) {
        (Some(credits), None) => {
            let credits = bounded("credits", *credits, 1..=GRANT_MICROS_MAX / money::MICROS_PER_CREDIT)?;
            let amount = purchases.price_of(credits).map_err(|reason| ApiError::invalid("credits", reason))?;
            (credits, amount)
        }
        (None, Some(pack)) => {
            let offered = GrantId::new(pack).ok().and_then(|id| purchases.packs.get(&id)).ok_or_else(|| {
                let packs: Vec<&str> = purchases.packs.keys().map(GrantId::as_str).collect();
                ApiError::invalid("pack", format!("unknown pack {pack:?}, the catalog offers: {}", packs.join(", ")))
            })?;
            (offered.credits, offered.price)
        }
        _ => return Err(ApiError::invalid("credits", "give either credits or pack")),
    };
    for (field, url) in [("success_url", Some(&body.success_url)), ("cancel_url", body.cancel_url.as_ref())] {
        if let Some(url) = url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(ApiError::invalid(field, "must be an http:// or https:// URL"));
        }
    }
    let checkout = PaymentId::new(&random_id("co_")).expect("a valid id");
    let op = BillingOp::OpenCheckout {
        payment: checkout.clone(),
        credits: Credits::from_micros(credits * money::MICROS_PER_CREDIT),
        amount,
        currency: purchases.currency.clone(),
    };
    billing(&state, account.clone(), op).await?;
    let order = CheckoutOrder {
        checkout: checkout.to_string(),
        account: account.to_string(),
        credits,
        amount,
        currency: purchases.currency.clone(),
        success_url: body.success_url.clone(),
        cancel_url: body.cancel_url.clone().unwrap_or(body.success_url),
    };
    let created = tokio::task::spawn_blocking(move || provider.create_checkout(&order))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error"))?
        .map_err(provider_error)?;
    let view = CheckoutView {
        checkout: checkout.to_string(),
        provider_id: created.id,
        url: created.url,
        account: account.to_string(),
        credits: credits * money::MICROS_PER_CREDIT,
        amount,
        currency: purchases.currency.clone(),
        status: "pending".to_string(),
    };
    Ok(json(StatusCode::CREATED, &view))
}

fn provider_error(error: ProviderError) -> ApiError {
    tracing::warn!(%error, "the payment provider failed");
    match error {
        ProviderError::Transient(reason) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "provider_unavailable",
            format!("the payment provider could not be reached: {reason}; retry"),
        ),
        ProviderError::Rejected(reason) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "provider_rejected",
            format!("the payment provider refused the checkout: {reason}"),
        ),
    }
}

/// A checkout or a recharge: its status, its grant and its refunds.
#[utoipa::path(
    get, path = "/v1/accounts/{id}/checkouts/{checkout}", tag = "payments",
    params(("id" = String, Path, description = "The account"), ("checkout" = String, Path, description = "The checkout's or the recharge's id")),
    responses((status = 200, description = "The payment", body = PaymentView), super::routes::Errors),
    security(("bearer" = []))
)]
pub(super) async fn get_checkout(
    State(state): State<AppState>,
    principal: Principal,
    axum::extract::Path((id, checkout)): axum::extract::Path<(String, String)>,
) -> Result<Response, ApiError> {
    let account = account_path(&id)?;
    principal.may_act_for(&account)?;
    let unknown = || ApiError::new(StatusCode::NOT_FOUND, "unknown_checkout", format!("unknown checkout {checkout:?}"));
    let payment = PaymentId::new(&checkout).map_err(|_| unknown())?;
    let found = state
        .store
        .with_account(account.clone(), move |_, state| state.payment(&payment).cloned())
        .await?
        .ok_or_else(|| unknown_account(&account))?
        .ok_or_else(unknown)?;
    Ok(json(StatusCode::OK, &payment_view(&account, &found)))
}

/// Auto-recharge: "when my balance falls below `minimum`, top it up to `target`".
#[utoipa::path(
    get, path = "/v1/accounts/{id}/auto-recharge", tag = "payments",
    params(("id" = String, Path, description = "The account")),
    responses((status = 200, description = "The settings and the recharge in flight", body = AutoRechargeView), super::routes::Errors),
    security(("bearer" = []))
)]
pub(super) async fn get_auto_recharge(
    State(state): State<AppState>,
    principal: Principal,
    super::routes::Segment(id): super::routes::Segment,
) -> Result<Response, ApiError> {
    let account = account_path(&id)?;
    principal.may_act_for(&account)?;
    let view = state
        .store
        .with_account(account.clone(), |_, state| state.billing_view())
        .await?
        .ok_or_else(|| unknown_account(&account))?;
    Ok(json(StatusCode::OK, &auto_recharge_view(&view)))
}

/// Turn auto-recharge on or off and set its minimum and target.
///
/// Enabling needs a saved payment method: one a checkout saved, or
/// `customer` and `payment_method` given here.
#[utoipa::path(
    put, path = "/v1/accounts/{id}/auto-recharge", tag = "payments", request_body = AutoRechargeBody,
    params(("id" = String, Path, description = "The account")),
    responses((status = 200, description = "The settings", body = AutoRechargeView), super::routes::Errors),
    security(("bearer" = []))
)]
pub(super) async fn put_auto_recharge(
    State(state): State<AppState>,
    principal: Principal,
    super::routes::Segment(id): super::routes::Segment,
    Json(body): Json<AutoRechargeBody>,
) -> Result<Response, ApiError> {
    let account = account_path(&id)?;
    principal.may_act_for(&account)?;
    if body.enabled {
        state.payments.provider()?;
    }
    let minimum = Credits::from_micros(bounded("minimum", body.minimum, 0..=GRANT_MICROS_MAX)?);
    let target = Credits::from_micros(bounded("target", body.target, 1..=GRANT_MICROS_MAX)?);
    if target <= minimum {
        return Err(ApiError::invalid("target", "must be above minimum"));
    }
    let reference = |field: &str, value: &Option<String>| {
        value.as_deref().map(|text| id_field(field, text, ProviderRef::new)).transpose()
    };
    let op = BillingOp::SetAutoRecharge {
        enabled: body.enabled,
        minimum,
        target,
        customer: reference("customer", &body.customer)?,
        payment_method: reference("payment_method", &body.payment_method)?,
    };
    billing(&state, account.clone(), op).await?;
    let view = state
        .store
        .with_account(account.clone(), |_, state| state.billing_view())
        .await?
        .ok_or_else(|| unknown_account(&account))?;
    Ok(json(StatusCode::OK, &auto_recharge_view(&view)))
}

/// The payment provider's webhook (Stripe): paid checkouts become grants,
/// exactly once; refunds claw back; recharges complete.
///
/// Authenticated by the `Stripe-Signature` header, not a token. Anything
/// that cannot be trusted or placed is answered 400 and grants nothing.
#[utoipa::path(
    post, path = "/v1/webhooks/stripe", tag = "payments",
    request_body(content = Object, description = "A Stripe event"),
    responses((status = 200, description = "Received", body = WebhookView), super::routes::Errors),
)]
pub(super) async fn stripe_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let rejected = |error: WebhookError| {
        tracing::warn!(code = error.code(), reason = %error, "webhook refused");
        ApiError::new(StatusCode::BAD_REQUEST, error.code(), error.to_string())
    };
    if state.payments.webhook_secrets.is_empty() {
        return Err(state.payments.provider().err().unwrap_or_else(|| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "payments_not_configured", "no webhook secret is configured")
        }));
    }
    let signature = headers
        .get("stripe-signature")
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| rejected(WebhookError::InvalidSignature("no Stripe-Signature header".to_string())))?;
    let now = Clock::now(&SystemClock).millis() as i64 / 1000;
    stripe::verify_signature(signature, &body, &state.payments.webhook_secrets, now, WEBHOOK_TOLERANCE_SECONDS)
        .map_err(rejected)?;
    let event = stripe::parse_event(&body).map_err(rejected)?;
    let not_ours = |what: &str| rejected(WebhookError::NotOurs(what.to_string()));
    let parse_ids = |account: &str, payment: &str| match (AccountId::new(account), PaymentId::new(payment)) {
        (Ok(account), Ok(payment)) => Ok((account, payment)),
        _ => Err(not_ours(&format!("account {account:?} or payment {payment:?} is not one of Headroom's ids"))),
    };
    let (account, op) = match event {
        WebhookEvent::CheckoutPaid { account, checkout, amount, currency, session, .. } => {
            let (account, payment) = parse_ids(&account, &checkout)?;
            let provider_ref = ProviderRef::new(&session).ok();
            (account, BillingOp::CompleteCheckout { payment, amount, currency, provider_ref })
        }
        WebhookEvent::CheckoutUnpaid { .. } => return Ok(webhook_answer("pending")),
        WebhookEvent::PaymentMethodSaved { account, checkout, customer, payment_method, .. } => {
            let (account, payment) = parse_ids(&account, &checkout)?;
            let known =
                state.store.with_account(account.clone(), move |_, state| state.payment(&payment).is_some()).await?;
            if known != Some(true) {
                return Err(not_ours(&format!("no checkout {checkout} of account {account}")));
            }
            let (Ok(customer), Ok(payment_method)) = (ProviderRef::new(&customer), ProviderRef::new(&payment_method))
            else {
                return Err(rejected(WebhookError::Malformed("customer or payment_method is not an id".to_string())));
            };
            (account, BillingOp::SavePaymentMethod { customer, payment_method })
        }
        WebhookEvent::RechargeSucceeded { account, recharge, payment_intent, .. } => {
            let (account, payment) = parse_ids(&account, &recharge)?;
            (account, BillingOp::RechargePaid { payment, provider_ref: ProviderRef::new(&payment_intent).ok() })
        }
        WebhookEvent::Refunded { account, payment, amount_refunded, currency, .. } => {
            let payment = match &payment {
                PaymentRef::Checkout(id) | PaymentRef::Recharge(id) => id.clone(),
            };
            let (account, payment) = parse_ids(&account, &payment)?;
            (account, BillingOp::Refund { payment, refunded_amount: amount_refunded, currency })
        }
        WebhookEvent::Ignored { .. } => return Ok(webhook_answer("ignored")),
    };
    let answer = billing(&state, account, op).await.map_err(|error| match error {
        StoreError::Refused(headroom_store::Refusal::Core(
            error @ (CoreError::UnknownAccount(_) | CoreError::UnknownPayment(_)),
        )) => not_ours(&error.to_string()),
        StoreError::Refused(headroom_store::Refusal::Core(CoreError::PaymentMismatch(reason))) => {
            tracing::warn!(%reason, "webhook refused");
            ApiError::new(StatusCode::BAD_REQUEST, "checkout_mismatch", reason)
        }
        other => ApiError::from(other),
    })?;
    let result = match answer {
        BillingAnswer::Completed { granted: true, .. } => "granted",
        BillingAnswer::Completed { granted: false, .. } => "already_granted",
        BillingAnswer::Refunded { .. } => "refunded",
        _ => "saved",
    };
    tracing::info!(result, "webhook applied");
    Ok(webhook_answer(result))
}

fn webhook_answer(result: &str) -> Response {
    json(StatusCode::OK, &WebhookView { received: true, result: result.to_string() })
}

// ----- The worker -----

/// Charges due recharges and delivers due alerts, on every node; claims
/// make sure two nodes do not do the same attempt.
pub async fn work(state: AppState) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    loop {
        tokio::select! {
            () = state.payments.wake.notified() => {}
            () = tokio::time::sleep(WORK_POLL) => {}
        }
        let due = match state.store.due_work(WORK_ACCOUNTS_MAX).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "looking for due alerts and recharges failed");
                continue;
            }
        };
        for account in due {
            if let Err(error) = work_on(&state, &agent, account.clone()).await {
                tracing::warn!(%account, %error, "alerts or a recharge failed; retried later");
            }
        }
    }
}

async fn work_on(state: &AppState, agent: &ureq::Agent, account: AccountId) -> Result<(), StoreError> {
    let BillingAnswer::Work(work) =
        billing(state, account.clone(), BillingOp::ClaimWork { notices_max: WORK_NOTICES_MAX }).await?
    else {
        return Err(StoreError::Unavailable("a claim answered something else".to_string()));
    };
    if let Some(charge) = work.charge {
        let outcome = charge_recharge(state, &account, &charge).await;
        let op = match outcome {
            Ok(ChargeOutcome::Succeeded { payment_intent }) => {
                tracing::info!(%account, recharge = %charge.payment.id, "recharge paid");
                BillingOp::RechargePaid {
                    payment: charge.payment.id,
                    provider_ref: ProviderRef::new(&payment_intent).ok(),
                }
            }
            Ok(ChargeOutcome::Declined { reason }) => {
                tracing::warn!(%account, recharge = %charge.payment.id, %reason, "recharge declined");
                BillingOp::RechargeFailed { payment: charge.payment.id, reason }
            }
            Err(ProviderError::Transient(reason)) => {
                tracing::warn!(%account, recharge = %charge.payment.id, %reason, "recharge not reached; retried");
                return Ok(()); // The claim scheduled the retry, under the same key.
            }
            Err(ProviderError::Rejected(reason)) => BillingOp::RechargeFailed { payment: charge.payment.id, reason },
        };
        billing(state, account.clone(), op).await?;
    }
    for notice in work.notices {
        let body = alerts::alert_body(&account, &notice);
        let event_id = format!("evt_{}", notice.id);
        let wanted: Vec<Endpoint> = state
            .payments
            .endpoints
            .iter()
            .filter(|endpoint| endpoint.wants(&notice.alert) && !notice.delivered.contains(&endpoint.key))
            .cloned()
            .collect();
        let sending = agent.clone();
        let acknowledged = tokio::task::spawn_blocking(move || {
            let now = Clock::now(&SystemClock).millis() / 1000;
            let mut acknowledged = Vec::new();
            for endpoint in &wanted {
                match alerts::deliver(&sending, endpoint, &event_id, &body, now) {
                    Ok(()) => acknowledged.push(endpoint.key),
                    Err(reason) => {
                        tracing::warn!(url = %endpoint.url, %event_id, %reason, "alert not delivered; retried")
                    }
                }
            }
            (acknowledged.len() == wanted.len(), acknowledged)
        })
        .await;
        let Ok((complete, endpoints)) = acknowledged else {
            continue;
        };
        if complete || !endpoints.is_empty() {
            billing(state, account.clone(), BillingOp::NoticeDelivered { notice: notice.id, endpoints, complete })
                .await?;
        }
    }
    Ok(())
}

async fn charge_recharge(
    state: &AppState,
    account: &AccountId,
    charge: &Charge,
) -> Result<ChargeOutcome, ProviderError> {
    let Some(provider) = state.payments.provider.clone() else {
        return Ok(ChargeOutcome::Declined { reason: "payments are not configured on this server".to_string() });
    };
    let order = ChargeOrder {
        recharge: charge.payment.id.to_string(),
        account: account.to_string(),
        credits: charge.payment.credits.micros() / money::MICROS_PER_CREDIT,
        amount: charge.payment.amount,
        currency: charge.payment.currency.clone(),
        customer: charge.customer.to_string(),
        payment_method: charge.payment_method.to_string(),
    };
    tokio::task::spawn_blocking(move || provider.charge(&order))
        .await
        .unwrap_or_else(|_| Err(ProviderError::Transient("the charge panicked".to_string())))
}
