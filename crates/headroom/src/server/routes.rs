//! The routes. Each handler checks who is asking, turns the body into a core
//! request (errors name the field), runs one store command and shapes the
//! answer. The OpenAPI document is generated from these functions.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use headroom_core::limits::{BATCH_DECISIONS_MAX, OVERDRAFT_MICROS_MAX};
use headroom_core::*;
use headroom_store::{Command, Response as StoreResponse, StoreError, SystemClock};

use super::AppState;
use super::api::*;
use super::auth::{Principal, TokenKind};
use super::body::Json;
use super::error::{ApiError, ErrorBody};
use super::metrics::Stopwatch;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Headroom",
        description = "A real-time access engine: one decision per request, how much of this is allowed and from where. \
                       Credits are integers in micro-credits (1 credit = 1,000,000); times are RFC 3339 in UTC."
    ),
    components(schemas(ErrorBody, DecisionView)),
    modifiers(&BearerAuth),
    tags(
        (name = "decisions", description = "Decide, reserve, capture, release: for service tokens and the admin token"),
        (name = "usage", description = "What a subject sees: its windows and its account's wallet"),
        (name = "payments", description = "Buying credits, auto-recharge and the payment provider's webhook"),
        (name = "admin", description = "Accounts, subjects, grants, the ledger and tokens: admin token only"),
        (name = "operations", description = "Health, readiness, metrics and this document: no token needed"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// Every error status a route may answer, each with the one error shape.
pub(super) struct Errors;

impl utoipa::IntoResponses for Errors {
    fn responses() -> BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>> {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        [
            ("400", "Malformed: not JSON, a wrong type, a missing or unknown field"),
            ("401", "No token, or not a valid one"),
            ("403", "The token may not do this"),
            ("404", "Unknown subject, account, reservation or route"),
            ("405", "The route does not take this method"),
            ("409", "The idempotency key was used with another request, or the change conflicts with what exists"),
            ("413", "The body or the batch is larger than its bound"),
            ("422", "A value that cannot be used: zero or negative quantity, unknown feature or plan, over a bound"),
            ("429", "The account holds as many idempotency keys or reservations as it may; retry later"),
            ("500", "A bug: the details are in the server's log"),
            ("503", "Storage is unavailable: nothing was recorded (or, if the message says so, the outcome is unknown); retry with the same idempotency key"),
        ]
        .into_iter()
        .map(|(status, description)| {
            let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
            (
                status.to_string(),
                ResponseBuilder::new().description(description).content("application/json", content).build().into(),
            )
        })
        .collect()
    }
}

/// The answer of every deciding route (decide, reserve, capture): the
/// decision, a deny included, with its headers.
struct DecisionAnswer;

impl utoipa::IntoResponses for DecisionAnswer {
    fn responses() -> BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>> {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let header = |description: &str| HeaderBuilder::new().description(Some(description)).build();
        let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("DecisionView"))).build();
        let response = ResponseBuilder::new()
            .description("The decision; a deny is `allowed: false`. When a reservation is allowed, `reservation` names the hold.")
            .content("application/json", content)
            .header("Idempotent-Replayed", header("`true` when this is the original answer to a key used before"))
            .header("RateLimit-Policy", header("The tightest window: `\"<window>\";q=<limit>`"))
            .header("RateLimit", header("The tightest window: `\"<window>\";r=<remaining>;t=<seconds to reset>`"))
            .header("Retry-After", header("On a deny that waiting cures: seconds"))
            .build();
        BTreeMap::from([("200".to_string(), response.into())])
    }
}

static OPENAPI_JSON: OnceLock<String> = OnceLock::new();

pub fn router(state: AppState) -> axum::Router {
    let (router, api) = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .routes(routes!(decide))
        .routes(routes!(decide_batch))
        .routes(routes!(reserve))
        .routes(routes!(capture))
        .routes(routes!(release))
        .routes(routes!(subject_usage))
        .routes(routes!(get_account, put_account))
        .routes(routes!(put_subject))
        .routes(routes!(add_grant))
        .routes(routes!(ledger))
        .routes(routes!(create_token))
        .routes(routes!(super::billing::create_checkout))
        .routes(routes!(super::billing::get_checkout))
        .routes(routes!(super::billing::get_auto_recharge, super::billing::put_auto_recharge))
        .routes(routes!(super::billing::stripe_webhook))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
        .split_for_parts();
    let _ = OPENAPI_JSON.set(api.to_pretty_json().expect("the document serializes"));
    router
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "the route does not take this method")
        })
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_string();
    let response = next.run(request).await;
    state.metrics.request(&route, response.status().as_u16());
    response
}

/// A path segment, with errors in the API's shape.
pub(super) struct Segment(pub(super) String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Segment, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(segment)| Segment(segment))
            .map_err(|rejection| ApiError::malformed(rejection.body_text()))
    }
}

/// The query string, with errors in the API's shape.
struct QueryOf<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryOf<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<QueryOf<T>, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(query)| QueryOf(query))
            .map_err(|rejection| ApiError::malformed(rejection.body_text()))
    }
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}

fn unexpected(response: StoreResponse) -> ApiError {
    tracing::error!(?response, "the store answered a command with another kind of answer");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
}

/// A decision's answer with its headers: the replay mark, the tightest
/// window as IETF `RateLimit-Policy` / `RateLimit`, and `Retry-After` on a
/// deny that waiting can cure.
fn decision_response(decision: &Decision, replayed: bool) -> Response {
    let view = decision_view(decision);
    let mut response = json(StatusCode::OK, &view);
    let headers = response.headers_mut();
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    rate_limit_headers(headers, decision);
    if let Some(seconds) = view.retry_after_s.filter(|_| !view.allowed) {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn rate_limit_headers(headers: &mut HeaderMap, decision: &Decision) {
    let Some(tightest) = decision.windows.iter().min_by_key(|window| window.remaining) else {
        return;
    };
    let policy = format!("\"{}\";q={}", tightest.window, tightest.limit);
    let mut current = format!("\"{}\";r={}", tightest.window, tightest.remaining);
    if let Some(resets_at) = tightest.resets_at {
        current.push_str(&format!(";t={}", resets_at.saturating_since(decision.decided_at).seconds_ceil()));
    }
    for (name, value) in [("ratelimit-policy", policy), ("ratelimit", current)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

/// For a token limited to one account, whether each subject is one of its
/// account's. Subjects never move between accounts, so the answer holds for
/// the command that follows. A subject outside is answered as unknown
/// (404), as an unknown one is: the token learns nothing of other accounts.
async fn within_scope(
    state: &AppState,
    principal: &Principal,
    subjects: Vec<SubjectId>,
) -> Result<Vec<bool>, ApiError> {
    let Some(scope) = principal.account_scope().cloned() else {
        return Ok(vec![true; subjects.len()]);
    };
    let accounts = state.store.accounts_of(subjects).await?;
    Ok(accounts.into_iter().map(|account| account.is_some_and(|account| account == scope)).collect())
}

fn unknown_subject(subject: &SubjectId) -> ApiError {
    ApiError::from(CoreError::UnknownSubject(subject.clone()))
}

async fn check_subject(state: &AppState, principal: &Principal, subject: &SubjectId) -> Result<(), ApiError> {
    match within_scope(state, principal, vec![subject.clone()]).await?[..] {
        [true] => Ok(()),
        _ => Err(unknown_subject(subject)),
    }
}

async fn run_decision(state: &AppState, command: Command, stopwatch: Stopwatch) -> Result<Response, ApiError> {
    match state.execute(command).await {
        Ok(StoreResponse::Decision(outcome)) => {
            state.metrics.decision(&outcome.result, outcome.replayed, stopwatch.micros());
            Ok(decision_response(&outcome.result, outcome.replayed))
        }
        Ok(other) => Err(unexpected(other)),
        Err(error) => {
            state.metrics.decision_error(stopwatch.micros());
            Err(error.into())
        }
    }
}

/// Decide one request.
///
/// Windows cover what they can; the rest of the same request flows down the
/// wallet's grants (free tier, promotion, entitlement, purchase) and the
/// overdraft. All or nothing: a deny consumes nothing and says why.
#[utoipa::path(
    post, path = "/v1/decisions", tag = "decisions", request_body = DecisionBody,
    responses(DecisionAnswer, Errors),
    security(("bearer" = []))
)]
async fn decide(
    State(state): State<AppState>,
    principal: Principal,
    Json(body): Json<DecisionBody>,
) -> Result<Response, ApiError> {
    let stopwatch = Stopwatch::start();
    principal.require_decider()?;
    let request = body.request()?;
    check_subject(&state, &principal, &request.subject).await?;
    run_decision(&state, Command::Decide(request), stopwatch).await
}

/// Decide up to 1,000 requests in one call.
///
/// Each is decided on its own, in order, with its own result and the status
/// it would have had alone; they share group commits.
#[utoipa::path(
    post, path = "/v1/decisions/batch", tag = "decisions", request_body = BatchBody,
    responses((status = 200, description = "One result per decision, in order", body = BatchView), Errors),
    security(("bearer" = []))
)]
async fn decide_batch(
    State(state): State<AppState>,
    principal: Principal,
    Json(body): Json<BatchBody>,
) -> Result<Response, ApiError> {
    let stopwatch = Stopwatch::start();
    principal.require_decider()?;
    if body.decisions.len() > BATCH_DECISIONS_MAX {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("decisions: {} decisions, at most {BATCH_DECISIONS_MAX} per batch", body.decisions.len()),
        )
        .on_field("decisions"));
    }
    if body.decisions.is_empty() {
        return Err(ApiError::invalid("decisions", "must hold at least one decision"));
    }
    let requests: Vec<Result<DecisionRequest, ApiError>> = body
        .decisions
        .into_iter()
        .enumerate()
        .map(|(index, decision)| decision.request().map_err(|error| error.within(&format!("decisions[{index}]"))))
        .collect();
    let subjects =
        requests.iter().filter_map(|request| request.as_ref().ok().map(|request| request.subject.clone())).collect();
    let mut within = within_scope(&state, &principal, subjects).await?.into_iter();
    let requests: Vec<Result<DecisionRequest, ApiError>> = requests
        .into_iter()
        .map(|request| match request {
            Ok(request) if within.next() == Some(false) => Err(unknown_subject(&request.subject)),
            other => other,
        })
        .collect();
    // Submit all, then wait for all: they join the same group commits.
    let pending: Vec<_> = requests
        .into_iter()
        .map(|request| {
            request.map(|request| {
                let (sender, receiver) = tokio::sync::oneshot::channel();
                state.store_submit(Command::Decide(request), sender);
                receiver
            })
        })
        .collect();
    let mut results = Vec::with_capacity(pending.len());
    for item in pending {
        let answer = match item {
            Err(error) => Err(error),
            Ok(receiver) => {
                match receiver.await.unwrap_or_else(|_| Err(StoreError::Unavailable("the store stopped".to_string()))) {
                    Ok(StoreResponse::Decision(outcome)) => {
                        state.metrics.decision(&outcome.result, outcome.replayed, stopwatch.micros());
                        Ok(outcome)
                    }
                    Ok(other) => Err(unexpected(other)),
                    Err(error) => {
                        state.metrics.decision_error(stopwatch.micros());
                        Err(ApiError::from(error))
                    }
                }
            }
        };
        results.push(match answer {
            Ok(outcome) => BatchResult {
                status: 200,
                replayed: outcome.replayed,
                decision: Some(decision_view(&outcome.result)),
                error: None,
            },
            Err(error) => BatchResult {
                status: error.status.as_u16(),
                replayed: false,
                decision: None,
                error: Some(batch_error(&error)),
            },
        });
    }
    Ok(json(StatusCode::OK, &BatchView { results }))
}

impl AppState {
    fn store_submit(&self, command: Command, sender: tokio::sync::oneshot::Sender<Result<StoreResponse, StoreError>>) {
        self.store.submit(
            command,
            Box::new(move |result| {
                let _ = sender.send(result);
            }),
        );
    }
}

/// Reserve an estimate.
///
/// Holds window units and credits like a decision would, until the
/// reservation is captured, released, or expires by itself.
#[utoipa::path(
    post, path = "/v1/reservations", tag = "decisions", request_body = ReservationBody,
    responses(DecisionAnswer, Errors),
    security(("bearer" = []))
)]
async fn reserve(
    State(state): State<AppState>,
    principal: Principal,
    Json(body): Json<ReservationBody>,
) -> Result<Response, ApiError> {
    let stopwatch = Stopwatch::start();
    principal.require_decider()?;
    let request = body.request()?;
    check_subject(&state, &principal, &request.subject).await?;
    run_decision(&state, Command::Reserve(request), stopwatch).await
}

/// Capture a reservation with the actual quantity.
///
/// Below the estimate, the rest is returned; above it, the extra goes down
/// the waterfall, and what nothing covers is written off, recorded.
#[utoipa::path(
    post, path = "/v1/reservations/{id}/capture", tag = "decisions", request_body = CaptureBody,
    params(("id" = String, Path, description = "The reservation's id, from the reserve answer")),
    responses(DecisionAnswer, Errors),
    security(("bearer" = []))
)]
async fn capture(
    State(state): State<AppState>,
    principal: Principal,
    Segment(id): Segment,
    Json(body): Json<CaptureBody>,
) -> Result<Response, ApiError> {
    let stopwatch = Stopwatch::start();
    principal.require_decider()?;
    let (reservation, account) = parse_reservation_id(&id)?;
    principal.may_act_for(&account)?;
    let request = body.request(reservation)?;
    run_decision(&state, Command::Capture { account, request }, stopwatch).await
}

/// Release a reservation: everything it held returns.
#[utoipa::path(
    post, path = "/v1/reservations/{id}/release", tag = "decisions", request_body = ReleaseBody,
    params(("id" = String, Path, description = "The reservation's id, from the reserve answer")),
    responses((status = 200, description = "What returned", body = ReleasedView, headers(
            ("Idempotent-Replayed" = String, description = "`true` when this is the original answer to a key used before"),
        )), Errors),
    security(("bearer" = []))
)]
async fn release(
    State(state): State<AppState>,
    principal: Principal,
    Segment(id): Segment,
    Json(body): Json<ReleaseBody>,
) -> Result<Response, ApiError> {
    principal.require_decider()?;
    let (reservation, account) = parse_reservation_id(&id)?;
    principal.may_act_for(&account)?;
    let idempotency_key = id_field("idempotency_key", &body.idempotency_key, IdempotencyKey::new)?;
    let request = ReleaseRequest { reservation, idempotency_key };
    match state.execute(Command::Release { account: account.clone(), request }).await? {
        StoreResponse::Released(outcome) => {
            let mut response = json(StatusCode::OK, &released_view(&outcome.result, &account));
            if outcome.replayed {
                response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            Ok(response)
        }
        other => Err(unexpected(other)),
    }
}

/// A subject's usage: every window with its limit, remaining and reset,
/// and its account's wallet (balance and grants).
///
/// A subject token reads its own subject only.
#[utoipa::path(
    get, path = "/v1/subjects/{id}/usage", tag = "usage",
    params(("id" = String, Path, description = "The subject")),
    responses((status = 200, description = "The subject's windows and wallet", body = UsageView), Errors),
    security(("bearer" = []))
)]
async fn subject_usage(
    State(state): State<AppState>,
    principal: Principal,
    Segment(id): Segment,
) -> Result<Response, ApiError> {
    let subject = id_field("id", &id, SubjectId::new)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "unknown_subject", format!("unknown subject {id:?}")))?;
    if let Principal::Subject { subject: own, .. } = &principal
        && *own != subject
    {
        return Err(ApiError::forbidden("a subject token may only read its own usage"));
    }
    let now = headroom_core::Clock::now(&SystemClock);
    let Some(account) = state.store.accounts_of(vec![subject.clone()]).await?.pop().flatten() else {
        return Err(unknown_subject(&subject));
    };
    let wanted = subject.clone();
    let usage = state
        .store
        .with_account(account.clone(), move |catalog, state| state.usage(catalog, &wanted, now))
        .await?
        .ok_or_else(|| unknown_subject(&subject))??;
    if principal.account_scope().is_some_and(|scope| *scope != account) {
        return Err(unknown_subject(&subject));
    }
    Ok(json(StatusCode::OK, &usage_view(&subject, &account, &usage)))
}

pub(super) fn account_path(id: &str) -> Result<AccountId, ApiError> {
    id_field("id", id, AccountId::new).map_err(|error| error.on_field("id"))
}

async fn read_account(state: &AppState, account: AccountId) -> Result<AccountView, ApiError> {
    let now = headroom_core::Clock::now(&SystemClock);
    let wanted = account.clone();
    state
        .store
        .with_account(wanted, move |_, state| account_view(state, now))
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown_account", format!("unknown account {account}")))
}

/// An account: plan, overdraft, balance and subjects.
#[utoipa::path(
    get, path = "/v1/accounts/{id}", tag = "admin",
    params(("id" = String, Path, description = "The account")),
    responses((status = 200, description = "The account", body = AccountView), Errors),
    security(("bearer" = []))
)]
async fn get_account(
    State(state): State<AppState>,
    principal: Principal,
    Segment(id): Segment,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let account = account_path(&id)?;
    Ok(json(StatusCode::OK, &read_account(&state, account).await?))
}

/// Create an account, or change its plan and overdraft.
#[utoipa::path(
    put, path = "/v1/accounts/{id}", tag = "admin", request_body = AccountBody,
    params(("id" = String, Path, description = "The account")),
    responses(
        (status = 200, description = "Changed", body = AccountView),
        (status = 201, description = "Created, with its plan's included grants", body = AccountView),
        Errors
    ),
    security(("bearer" = []))
)]
async fn put_account(
    State(state): State<AppState>,
    principal: Principal,
    Segment(id): Segment,
    Json(body): Json<AccountBody>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let account = account_path(&id)?;
    let plan = id_field("plan", &body.plan, PlanId::new)?;
    let overdraft = body
        .overdraft
        .map(|micros| bounded("overdraft", micros, 0..=OVERDRAFT_MICROS_MAX))
        .transpose()?
        .map(Credits::from_micros);
    let open = Command::OpenAccount { account: account.clone(), plan: plan.clone(), overdraft };
    let status = match state.execute(open).await {
        Ok(_) => StatusCode::CREATED,
        Err(StoreError::Refused(headroom_store::Refusal::Core(CoreError::AccountExists(_)))) => {
            state.execute(Command::SetPlan { account: account.clone(), plan, overdraft }).await?;
            StatusCode::OK
        }
        Err(error) => return Err(error.into()),
    };
    Ok(json(status, &read_account(&state, account).await?))
}

/// Add a subject to an account, or change its plan.
#[utoipa::path(
    put, path = "/v1/subjects/{id}", tag = "admin", request_body = SubjectBody,
    params(("id" = String, Path, description = "The subject")),
    responses((status = 200, description = "The subject and its account", body = SubjectView), Errors),
    security(("bearer" = []))
)]
async fn put_subject(
    State(state): State<AppState>,
    principal: Principal,
    Segment(id): Segment,
    Json(body): Json<SubjectBody>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let subject = id_field("id", &id, SubjectId::new)?;
    let account = id_field("account", &body.account, AccountId::new)?;
    let plan = body.plan.as_deref().map(|plan| id_field("plan", plan, PlanId::new)).transpose()?;
    state.execute(Command::PutSubject { subject: subject.clone(), account: account.clone(), plan }).await?;
    Ok(json(StatusCode::OK, &SubjectView { subject: subject.to_string(), account: account.to_string() }))
}

/// Grant credits to an account's wallet.
///
/// Exactly once per idempotency key: a retry returns the original answer.
#[utoipa::path(
    post, path = "/v1/accounts/{id}/grants", tag = "admin", request_body = GrantBody,
    params(("id" = String, Path, description = "The account")),
    responses(
        (status = 201, description = "Granted", body = GrantAddedView),
        (status = 200, description = "A replay: the original answer, with `Idempotent-Replayed: true`", body = GrantAddedView),
        Errors
    ),
    security(("bearer" = []))
)]
async fn add_grant(
    State(state): State<AppState>,
    principal: Principal,
    Segment(id): Segment,
    Json(body): Json<GrantBody>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let account = account_path(&id)?;
    let request = body.request(&account)?;
    match state.execute(Command::AddGrant { account, request }).await? {
        StoreResponse::GrantAdded(outcome) => {
            let status = if outcome.replayed { StatusCode::OK } else { StatusCode::CREATED };
            let mut response = json(status, &grant_added_view(&outcome.result));
            if outcome.replayed {
                response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            Ok(response)
        }
        other => Err(unexpected(other)),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LedgerQuery {
    /// The `next_cursor` of the previous page; absent for the first.
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Entries per page, 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// An account's ledger: balance updates in order, each linked to the
/// monetization event and usage event that explain it.
#[utoipa::path(
    get, path = "/v1/accounts/{id}/ledger", tag = "admin",
    params(("id" = String, Path, description = "The account"), LedgerQuery),
    responses((status = 200, description = "One page", body = LedgerView), Errors),
    security(("bearer" = []))
)]
async fn ledger(
    State(state): State<AppState>,
    principal: Principal,
    Segment(id): Segment,
    QueryOf(query): QueryOf<LedgerQuery>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let account = account_path(&id)?;
    let limit = bounded(
        "limit",
        i128::from(query.limit.unwrap_or(100)),
        1..=headroom_store::ledger::LEDGER_PAGE_ENTRIES_MAX as u64,
    )?;
    read_account(&state, account.clone()).await?;
    let after = bounded("after", i128::from(query.after.unwrap_or(0)), 0..=i64::MAX as u64)?;
    let page = state.store.ledger(account, after, limit as usize).await?;
    Ok(json(StatusCode::OK, &ledger_view(&page)))
}

/// Create a service or subject token. It is shown once; only its hash is kept.
#[utoipa::path(
    post, path = "/v1/tokens", tag = "admin", request_body = TokenBody,
    responses((status = 201, description = "The token, shown once", body = TokenCreatedView), Errors),
    security(("bearer" = []))
)]
async fn create_token(
    State(state): State<AppState>,
    principal: Principal,
    Json(body): Json<TokenBody>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let (kind, subject, account) = match body.kind.as_str() {
        "service" => {
            if body.subject.is_some() {
                return Err(ApiError::invalid(
                    "subject",
                    "a service token is not for one subject; use account to limit it",
                ));
            }
            let account =
                body.account.as_deref().map(|account| id_field("account", account, AccountId::new)).transpose()?;
            if let Some(account) = &account {
                read_account(&state, account.clone()).await?;
            }
            (TokenKind::Service, None, account)
        }
        "subject" => {
            if body.account.is_some() {
                return Err(ApiError::invalid("account", "a subject token's account is its subject's"));
            }
            let subject = body
                .subject
                .as_deref()
                .ok_or_else(|| ApiError::invalid("subject", "is required for a subject token"))?;
            let subject = id_field("subject", subject, SubjectId::new)?;
            let Some(account) = state.store.accounts_of(vec![subject.clone()]).await?.pop().flatten() else {
                return Err(unknown_subject(&subject));
            };
            (TokenKind::Subject, Some(subject), Some(account))
        }
        other => return Err(ApiError::invalid("kind", format!("{other:?} is not one of service, subject"))),
    };
    let tokens = state.tokens.clone();
    let created_at = headroom_core::Clock::now(&SystemClock).to_string();
    let (record, token) = tokio::task::spawn_blocking(move || tokens.create(kind, subject, account, created_at))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error"))?
        .map_err(|error| {
            tracing::error!(%error, "storing a token failed");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", "the token could not be stored")
        })?;
    let view = TokenCreatedView {
        id: record.id,
        token,
        kind: kind.as_str().to_string(),
        subject: record.subject.map(|subject| subject.to_string()),
        account: record.account.map(|account| account.to_string()),
    };
    Ok(json(StatusCode::CREATED, &view))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = Status)))]
async fn healthz() -> Response {
    json(StatusCode::OK, &Status { status: "ok".to_string() })
}

/// Readiness: the store takes commands.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready", body = Status), (status = 503, description = "Storage failed", body = Status))
)]
async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.unready().await {
        Some(reason) => json(StatusCode::SERVICE_UNAVAILABLE, &Status { status: reason }),
        None => json(StatusCode::OK, &Status { status: "ok".to_string() }),
    }
}

/// Prometheus metrics in the text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Metrics", body = String, content_type = "text/plain"), (status = 503, description = "Storage is unavailable", body = ErrorBody)))]
async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let figures = state.store.figures().await?;
    let mut response = state.metrics.render(&figures).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(response)
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "The OpenAPI 3 document", body = Object)))]
async fn openapi() -> Response {
    let document = OPENAPI_JSON.get().map_or("{}", String::as_str);
    ([(header::CONTENT_TYPE, "application/json")], document.to_string()).into_response()
}
