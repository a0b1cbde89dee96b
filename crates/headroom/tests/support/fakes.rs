//! Stand-ins for the services Headroom deals with when money comes in: the
//! two Stripe endpoints it calls, the signed webhooks Stripe sends it, and an
//! endpoint that receives its alerts. Each fake is a real HTTP server on
//! 127.0.0.1, so the binary under test reaches it over a socket, as it would
//! reach the real services.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{Reply, agent, read_reply};

/// How long a test waits for something asynchronous (a webhook, an alert,
/// a recharge) before it fails. Passing tests wait far less.
pub const WAIT_MAX: Duration = Duration::from_secs(60);

/// Pause between two looks at something asynchronous.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

pub const CHECKOUT_SESSIONS: &str = "/v1/checkout/sessions";
pub const PAYMENT_INTENTS: &str = "/v1/payment_intents";

/// Calls `probe` until it returns `Some`, for at most [`WAIT_MAX`]; fails
/// naming `what` was awaited.
pub fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = monotonic_now() + WAIT_MAX;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(monotonic_now() < deadline, "waited {WAIT_MAX:?} for {what}");
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[allow(clippy::disallowed_methods)] // Test scaffolding, not the product's clock: bounds waits on a real server.
fn monotonic_now() -> Instant {
    Instant::now()
}

/// Seconds since 1970 on the wall clock: Stripe stamps its signatures with
/// it, and the server under test checks them against its own real clock.
#[allow(clippy::disallowed_methods)] // Test scaffolding that plays Stripe, whose clock is the wall clock.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the system clock is after 1970").as_secs()
}

/// Whether `text` is `prefix` followed by 32 lower-case hex digits, the shape
/// of Headroom's checkout, recharge and alert ids.
pub fn is_headroom_id(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix)
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')))
}

// ----- A router on a thread of its own -----

/// A router served on a free port of 127.0.0.1 by a thread with its own
/// runtime, so that blocking test code never starves it. Stops accepting
/// when dropped.
struct Background {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Background {
    fn serve(router: Router) -> Background {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port on 127.0.0.1");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let url = format!("http://{}", listener.local_addr().expect("a bound address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                let shutdown = async {
                    let _ = stopped.await;
                };
                axum::serve(listener, router).with_graceful_shutdown(shutdown).await.expect("the fake serves");
            });
        });
        Background { url, stop: Some(stop) }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn json_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).expect("a valid status");
    (status, axum::Json(body.clone())).into_response()
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_string)
}

// ----- Stripe's API -----

/// One call Headroom made to the fake Stripe, as received.
#[derive(Debug, Clone)]
pub struct StripeRequest {
    pub path: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub idempotency_key: Option<String>,
    /// Every form field in the order sent, duplicates kept.
    pub fields: Vec<(String, String)>,
    /// What the fake answered.
    pub status: u16,
    pub answer: Value,
}

impl StripeRequest {
    /// The form fields by name (the last value of a repeated name).
    pub fn form(&self) -> BTreeMap<String, String> {
        self.fields.iter().cloned().collect()
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().rev().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

/// Stripe's `POST /v1/checkout/sessions` and `POST /v1/payment_intents`,
/// enough of them for Headroom: form bodies, a bearer secret key, and
/// idempotency keys honoured like Stripe (the same key answers the stored
/// answer and creates nothing; reused with other parameters, it is refused).
pub struct FakeStripe {
    pub url: String,
    state: Arc<StripeState>,
    _server: Background,
}

struct StripeState {
    secret_key: String,
    declining: AtomicBool,
    book: Mutex<StripeBook>,
}

#[derive(Default)]
struct StripeBook {
    requests: Vec<StripeRequest>,
    answers: HashMap<String, StoredAnswer>,
    sessions_created: u64,
    payment_intents_created: u64,
}

/// What one idempotency key was first used for, and the answer it got.
struct StoredAnswer {
    path: String,
    fields: Vec<(String, String)>,
    status: u16,
    body: Value,
}

impl FakeStripe {
    /// A fake that accepts `Authorization: Bearer <secret_key>`.
    pub fn start(secret_key: &str) -> FakeStripe {
        let state = Arc::new(StripeState {
            secret_key: secret_key.to_string(),
            declining: AtomicBool::new(false),
            book: Mutex::new(StripeBook::default()),
        });
        let router = Router::new()
            .route(CHECKOUT_SESSIONS, post(stripe_call))
            .route(PAYMENT_INTENTS, post(stripe_call))
            .fallback(stripe_unknown_route)
            .with_state(state.clone());
        let server = Background::serve(router);
        FakeStripe { url: server.url.clone(), state, _server: server }
    }

    /// From now on, new payment intents are declined (402, `card_error`).
    pub fn set_declining(&self, declining: bool) {
        self.state.declining.store(declining, Ordering::SeqCst);
    }

    /// Every call received, replays and refusals included, in order.
    pub fn requests(&self) -> Vec<StripeRequest> {
        self.state.book.lock().unwrap().requests.clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<StripeRequest> {
        self.requests().into_iter().filter(|request| request.path == path).collect()
    }

    /// The distinct idempotency keys of the calls to `path`, in first-use order.
    pub fn idempotency_keys(&self, path: &str) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for request in self.requests_to(path) {
            let key = request.idempotency_key.unwrap_or_default();
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }

    pub fn sessions_created(&self) -> u64 {
        self.state.book.lock().unwrap().sessions_created
    }

    /// Payment intents that succeeded, each a distinct object (a declined
    /// attempt and a replayed key create none).
    pub fn payment_intents_created(&self) -> u64 {
        self.state.book.lock().unwrap().payment_intents_created
    }
}

async fn stripe_call(State(state): State<Arc<StripeState>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    state.answer(uri.path(), &headers, &body)
}

async fn stripe_unknown_route(uri: Uri) -> Response {
    let message = format!("Unrecognized request URL (POST: {}).", uri.path());
    json_response(404, &json!({ "error": { "type": "invalid_request_error", "message": message } }))
}

impl StripeState {
    fn answer(&self, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
        let fields = decode_form(body);
        let authorization = header_text(headers, "authorization");
        let idempotency_key = header_text(headers, "idempotency-key");
        let mut book = self.book.lock().unwrap();
        let (status, answer, replayed) = if authorization.as_deref() != Some(&format!("Bearer {}", self.secret_key)) {
            (401, stripe_error("invalid_request_error", None, "Invalid API Key provided."), false)
        } else if let Some(stored) = idempotency_key.as_ref().and_then(|key| book.answers.get(key)) {
            if stored.path == path && sorted(&stored.fields) == sorted(&fields) {
                (stored.status, stored.body.clone(), true)
            } else {
                let message =
                    "Keys for idempotent requests can only be used with the same parameters they were first used with.";
                (400, stripe_error("idempotency_error", None, message), false)
            }
        } else {
            let (status, answer) = match path {
                CHECKOUT_SESSIONS => {
                    book.sessions_created += 1;
                    (200, checkout_session(book.sessions_created, &fields))
                }
                _ if self.declining.load(Ordering::SeqCst) => {
                    (402, stripe_error("card_error", Some("card_declined"), "Your card was declined."))
                }
                _ => {
                    book.payment_intents_created += 1;
                    (200, payment_intent(book.payment_intents_created, &fields))
                }
            };
            if let Some(key) = &idempotency_key {
                let stored =
                    StoredAnswer { path: path.to_string(), fields: fields.clone(), status, body: answer.clone() };
                book.answers.insert(key.clone(), stored);
            }
            (status, answer, false)
        };
        book.requests.push(StripeRequest {
            path: path.to_string(),
            authorization,
            content_type: header_text(headers, "content-type"),
            idempotency_key,
            fields,
            status,
            answer: answer.clone(),
        });
        let mut response = json_response(status, &answer);
        if replayed {
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}

/// Fields in a canonical order: Stripe compares a replay's parameters, not their order.
fn sorted(fields: &[(String, String)]) -> Vec<(String, String)> {
    let mut fields = fields.to_vec();
    fields.sort();
    fields
}

fn stripe_error(kind: &str, code: Option<&str>, message: &str) -> Value {
    let mut error = json!({ "type": kind, "message": message });
    if let Some(code) = code {
        error["code"] = json!(code);
        error["decline_code"] = json!("generic_decline");
    }
    json!({ "error": error })
}

fn checkout_session(number: u64, fields: &[(String, String)]) -> Value {
    let id = format!("cs_test_{number}");
    let field = |name: &str| fields.iter().rev().find(|(key, _)| key == name).map(|(_, value)| value.clone());
    let unit_amount: u64 = field("line_items[0][price_data][unit_amount]").and_then(|v| v.parse().ok()).unwrap_or(0);
    let quantity: u64 = field("line_items[0][quantity]").and_then(|v| v.parse().ok()).unwrap_or(1);
    json!({
        "id": id,
        "object": "checkout.session",
        "url": format!("https://checkout.test/{id}"),
        "mode": field("mode"),
        "status": "open",
        "payment_status": "unpaid",
        "amount_total": unit_amount * quantity,
        "currency": field("line_items[0][price_data][currency]"),
        "client_reference_id": field("client_reference_id"),
        "success_url": field("success_url"),
        "cancel_url": field("cancel_url"),
        "metadata": metadata(fields, "metadata"),
        "livemode": false,
    })
}

fn payment_intent(number: u64, fields: &[(String, String)]) -> Value {
    let field = |name: &str| fields.iter().rev().find(|(key, _)| key == name).map(|(_, value)| value.clone());
    json!({
        "id": format!("pi_test_{number}"),
        "object": "payment_intent",
        "status": "succeeded",
        "amount": field("amount").and_then(|amount| amount.parse::<u64>().ok()),
        "amount_received": field("amount").and_then(|amount| amount.parse::<u64>().ok()),
        "currency": field("currency"),
        "customer": field("customer"),
        "payment_method": field("payment_method"),
        "description": field("description"),
        "metadata": metadata(fields, "metadata"),
        "livemode": false,
    })
}

/// The fields `<prefix>[name]` as an object `{name: value}`.
fn metadata(fields: &[(String, String)], prefix: &str) -> Value {
    let start = format!("{prefix}[");
    let entries = fields.iter().filter_map(|(key, value)| {
        let name = key.strip_prefix(&start)?.strip_suffix(']')?;
        (!name.contains('[')).then(|| (name.to_string(), Value::String(value.clone())))
    });
    Value::Object(entries.collect())
}

/// `application/x-www-form-urlencoded`, decoded: `+` is a space, `%XX` a byte.
fn decode_form(body: &[u8]) -> Vec<(String, String)> {
    body.split(|byte| *byte == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut parts = pair.splitn(2, |byte| *byte == b'=');
            let name = percent_decode(parts.next().unwrap_or_default());
            let value = percent_decode(parts.next().unwrap_or_default());
            (name, value)
        })
        .collect()
}

fn percent_decode(text: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(text.len());
    let mut index = 0;
    while index < text.len() {
        let escaped = text.get(index + 1..index + 3).and_then(|hex| std::str::from_utf8(hex).ok());
        match (text[index], escaped.and_then(|hex| u8::from_str_radix(hex, 16).ok())) {
            (b'%', Some(byte)) => {
                bytes.push(byte);
                index += 3;
            }
            (b'+', _) => {
                bytes.push(b' ');
                index += 1;
            }
            (byte, _) => {
                bytes.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

// ----- Stripe's webhooks -----

/// A Stripe event as Stripe sends it: `{"id", "type", "created", "data": {"object"}}`.
pub fn stripe_event(id: &str, kind: &str, object: Value) -> Vec<u8> {
    let event = json!({
        "id": id,
        "object": "event",
        "type": kind,
        "created": unix_now(),
        "api_version": "2024-06-20",
        "livemode": false,
        "pending_webhooks": 1,
        "data": { "object": object },
    });
    event.to_string().into_bytes()
}

/// A `Stripe-Signature` header: `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<t>.<payload>")>`.
pub fn sign_stripe(secret: &str, timestamp: u64, payload: &[u8]) -> String {
    format!("t={timestamp},v1={}", stripe_signature(secret, timestamp, payload))
}

/// The hex `v1` signature of `payload` at `timestamp`.
pub fn stripe_signature(secret: &str, timestamp: u64, payload: &[u8]) -> String {
    hmac_sha256_hex(secret, &[timestamp.to_string().as_bytes(), b".", payload].concat())
}

pub fn hmac_sha256_hex(secret: &str, message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(message);
    mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Posts `payload` as is to the server's Stripe webhook, with `header` as
/// `Stripe-Signature` (none when `None`).
pub fn post_webhook(server_url: &str, header: Option<&str>, payload: &[u8]) -> Reply {
    let mut request =
        agent().post(format!("{server_url}/v1/webhooks/stripe")).header("content-type", "application/json");
    if let Some(signature) = header {
        request = request.header("stripe-signature", signature);
    }
    let response = request.send(payload).expect("the server answers");
    read_reply(response).expect("the server's answer is read")
}

// ----- Headroom's alerts -----

/// One POST the alert receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub path: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether `Headroom-Signature` carried a `v1` that matches the body under the receiver's secret.
    pub signature_valid: bool,
    /// The status the receiver answered.
    pub answered: u16,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn event(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// An endpoint for Headroom's alerts: records every POST, checks its
/// signature, and answers 200, or 500 to the first `failures` deliveries of
/// each event id, so that the retries can be watched.
pub struct AlertReceiver {
    /// The endpoint to configure, `http://127.0.0.1:<port>/hooks`.
    pub url: String,
    pub secret: String,
    state: Arc<ReceiverState>,
    _server: Background,
}

struct ReceiverState {
    secret: String,
    failures: u32,
    deliveries: Mutex<Vec<Delivery>>,
}

impl AlertReceiver {
    pub fn start(secret: &str) -> AlertReceiver {
        AlertReceiver::failing_first(secret, 0)
    }

    /// A receiver that answers 500 to the first `failures` deliveries of each event id.
    pub fn failing_first(secret: &str, failures: u32) -> AlertReceiver {
        let state =
            Arc::new(ReceiverState { secret: secret.to_string(), failures, deliveries: Mutex::new(Vec::new()) });
        let router = Router::new().fallback(receive_alert).with_state(state.clone());
        let server = Background::serve(router);
        AlertReceiver { url: format!("{}/hooks", server.url), secret: secret.to_string(), state, _server: server }
    }

    /// The alerts file (`--alerts`) that sends every event here.
    pub fn alerts_toml(&self) -> String {
        format!("[[endpoints]]\nurl = \"{}\"\nsecret = \"{}\"\n", self.url, self.secret)
    }

    /// Every delivery, retries included, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.deliveries.lock().unwrap().clone()
    }

    /// The distinct events received (the first delivery of each id), in arrival order.
    pub fn events(&self) -> Vec<Value> {
        let mut seen = Vec::new();
        let mut events = Vec::new();
        for delivery in self.deliveries() {
            let event = delivery.event();
            let id = event["id"].clone();
            if !seen.contains(&id) {
                seen.push(id);
                events.push(event);
            }
        }
        events
    }

    /// The distinct events of one type.
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events().into_iter().filter(|event| event["type"] == kind).collect()
    }

    /// Waits until `found` picks something out of the distinct events received.
    pub fn wait_for<T>(&self, what: &str, found: impl Fn(&[Value]) -> Option<T>) -> T {
        eventually(what, || found(&self.events()))
    }
}

async fn receive_alert(State(state): State<Arc<ReceiverState>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let signature_valid = header_text(&headers, "headroom-signature")
        .is_some_and(|header| signature_matches(&state.secret, &header, &body));
    let id = serde_json::from_slice::<Value>(&body).ok().map(|event| event["id"].clone()).unwrap_or(Value::Null);
    let mut deliveries = state.deliveries.lock().unwrap();
    let earlier = deliveries.iter().filter(|delivery| delivery.event()["id"] == id).count();
    let answered = if earlier < state.failures as usize { 500 } else { 200 };
    deliveries.push(Delivery {
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(name, value)| (name.as_str().to_string(), value.to_str().unwrap_or_default().to_string()))
            .collect(),
        body: body.to_vec(),
        signature_valid,
        answered,
    });
    StatusCode::from_u16(answered).expect("a valid status").into_response()
}

/// Whether a `t=<unix>,v1=<hex>[,v1=…]` header signs `body` under `secret`.
fn signature_matches(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = Some(value.to_string()),
            Some(("v1", value)) => signatures.push(value.to_string()),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else { return false };
    let expected = hmac_sha256_hex(secret, &[timestamp.as_bytes(), b".", body].concat());
    signatures.contains(&expected)
}
