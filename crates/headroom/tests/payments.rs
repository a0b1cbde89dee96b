//! End-to-end tests of money coming in: checkouts paid through a fake Stripe,
//! the signed webhooks that grant them, refunds, auto-recharge and the alerts
//! Headroom sends. The real binary runs on a free port with a fresh data
//! directory; the fakes run on free ports of their own; everything goes over
//! real sockets.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::process::Command as Process;

use serde_json::{Value, json};

mod support;
use support::fakes::*;
use support::*;

const STRIPE_SECRET_KEY: &str = "sk_test_headroom_payments";
/// The webhook secret Stripe signs with now.
const WEBHOOK_SECRET: &str = "whsec_test_current";
/// The secret being rotated out, still accepted.
const PREVIOUS_WEBHOOK_SECRET: &str = "whsec_test_previous";
const ALERT_SECRET: &str = "alert-secret-at-least-16-bytes";
const SUCCESS_URL: &str = "https://app.test/ok";

/// Micro-credits in one credit.
const CREDIT: u64 = 1_000_000;
/// The catalog's `alerts.low_balance`, in micro-credits.
const LOW_BALANCE: u64 = 2 * CREDIT;

/// One feature at one credit per task; a plan that pays every task in
/// credits, and one with a small window for the limit alerts; credits sold
/// at one cent each, or 1000 for 9 dollars.
const CATALOG: &str = r#"
[settings]
default_grant_expiry = "365d"

[features.task]
unit = "task"
price = 1_000_000

[plans.paid]

[plans.metered]

[[plans.metered.windows]]
id = "five-hour"
meters = "task"
kind = "anchored"
capacity = 10
period = "5h"

[purchases]
currency = "usd"
price_per_credit = 1
min_credits = 100
max_credits = 100_000
credits_expire_after = "365d"

[purchases.packs.starter]
credits = 1_000
price = 900

[alerts]
limit_approaching = 80
low_balance = 2_000_000
"#;

/// A server with payments configured (the catalog above, the fake Stripe,
/// alerts sent to the receiver), with its fakes. Fields drop in order: the
/// server stops before its fakes and its directory go.
struct Payments {
    server: Server,
    stripe: FakeStripe,
    alerts: AlertReceiver,
    directory: Directory,
}

impl Payments {
    fn start(name: &str) -> Payments {
        Payments::start_with(name, AlertReceiver::start(ALERT_SECRET), None)
    }

    /// `stripe_api_base`: where the server finds Stripe; `None`: the fake.
    fn start_with(name: &str, alerts: AlertReceiver, stripe_api_base: Option<&str>) -> Payments {
        let directory = Directory::new(&format!("payments-{name}"));
        let stripe = FakeStripe::start(STRIPE_SECRET_KEY);
        let mut command = Process::new(binary());
        command
            .env("HEADROOM_STRIPE_SECRET_KEY", STRIPE_SECRET_KEY)
            .env("HEADROOM_STRIPE_API_BASE", stripe_api_base.unwrap_or(&stripe.url))
            .env("HEADROOM_STRIPE_WEBHOOK_SECRET", format!("{WEBHOOK_SECRET},{PREVIOUS_WEBHOOK_SECRET}"));
        let server = start_server(command, &directory, &alerts);
        Payments { server, stripe, alerts, directory }
    }

    /// Starts a checkout of `credits` whole credits for `acme`; its 201 answer.
    fn checkout(&self, credits: u64) -> Value {
        let body = json!({ "credits": credits, "success_url": SUCCESS_URL });
        self.server.admin("POST", "/v1/accounts/acme/checkout", Some(body)).expect(201, None).body
    }

    /// A checkout of `credits` that Stripe then reports paid; its 201 answer.
    fn buy(&self, credits: u64) -> Value {
        let created = self.checkout(credits);
        let event = format!("evt_{}_paid", created["checkout"].as_str().unwrap());
        let reply = self.deliver(&event, "checkout.session.completed", paid_session(&created)).expect(200, None);
        assert_eq!(reply.body["result"], "granted", "{reply:?}");
        created
    }

    /// Sends Stripe's event `id` of `kind` about `object`, signed now with the current secret.
    fn deliver(&self, id: &str, kind: &str, object: Value) -> Reply {
        let payload = stripe_event(id, kind, object);
        post_webhook(&self.server.url, Some(&sign_stripe(WEBHOOK_SECRET, unix_now(), &payload)), &payload)
    }

    /// Micro-credits `acme` may spend now.
    fn balance(&self) -> u64 {
        let account = self.server.admin("GET", "/v1/accounts/acme", None).expect(200, None);
        account.body["balance"].as_u64().unwrap()
    }

    /// A decision for `ann` of `quantity` tasks; its answer (allowed or denied).
    fn decide(&self, quantity: u64, key: &str) -> Value {
        self.server.admin("POST", "/v1/decisions", Some(decision(quantity, key))).expect(200, None).body
    }

    fn checkout_view(&self, checkout: &str) -> Value {
        self.server.admin("GET", &format!("/v1/accounts/acme/checkouts/{checkout}"), None).expect(200, None).body
    }

    fn auto_recharge(&self) -> Value {
        self.server.admin("GET", "/v1/accounts/acme/auto-recharge", None).expect(200, None).body
    }

    fn usage(&self) -> Value {
        self.server.admin("GET", "/v1/subjects/ann/usage", None).expect(200, None).body
    }

    /// Every entry of `acme`'s ledger so far, walking its pages.
    fn ledger(&self) -> Vec<Value> {
        let mut entries = Vec::new();
        let mut after = 0;
        loop {
            let path = format!("/v1/accounts/acme/ledger?after={after}");
            let page = self.server.admin("GET", &path, None).expect(200, None).body;
            entries.extend(page["entries"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_u64() {
                Some(next) => after = next,
                None => return entries,
            }
        }
    }
}

/// `headroom serve` of the test catalog through `command`, alerts to
/// `alerts`, without the demo account.
fn start_server(mut command: Process, directory: &Directory, alerts: &AlertReceiver) -> Server {
    let catalog = directory.0.join("catalog.toml");
    std::fs::write(&catalog, CATALOG).unwrap();
    let alerts_file = directory.0.join("alerts.toml");
    std::fs::write(&alerts_file, alerts.alerts_toml()).unwrap();
    command.env_remove("HEADROOM_CATALOG").env_remove("HEADROOM_ALERTS");
    let arguments = [
        OsStr::new("--catalog"),
        catalog.as_os_str(),
        OsStr::new("--alerts"),
        alerts_file.as_os_str(),
        OsStr::new("--no-demo"),
    ];
    Server::start_with_arguments(command, &directory.data(), Some(ADMIN), &arguments)
}

/// Account `acme` on `plan`, with subject `ann`.
fn open_acme(server: &Server, plan: &str) {
    server.admin("PUT", "/v1/accounts/acme", Some(json!({ "plan": plan }))).expect(201, None);
    server.admin("PUT", "/v1/subjects/ann", Some(json!({ "account": "acme" }))).expect(200, None);
}

fn decision(quantity: u64, key: &str) -> Value {
    json!({ "subject": "ann", "feature": "task", "quantity": quantity, "idempotency_key": key })
}

/// The `checkout.session.completed` object Stripe sends once the checkout
/// Headroom answered `created` is paid.
fn paid_session(created: &Value) -> Value {
    json!({
        "id": created["provider_id"],
        "object": "checkout.session",
        "mode": "payment",
        "status": "complete",
        "payment_status": "paid",
        "amount_total": created["amount"],
        "currency": created["currency"],
        "customer": "cus_1",
        "payment_intent": "pi_checkout_1",
        "client_reference_id": "acme",
        "metadata": { "headroom_account": "acme", "headroom_checkout": created["checkout"] },
    })
}

/// The `charge.refunded` object of the checkout `created` once
/// `amount_refunded` cents of it (in all) went back to the buyer.
fn refunded_charge(created: &Value, amount_refunded: u64) -> Value {
    json!({
        "id": "ch_1",
        "object": "charge",
        "amount": created["amount"],
        "amount_refunded": amount_refunded,
        "refunded": created["amount"] == amount_refunded,
        "currency": created["currency"],
        "payment_intent": "pi_checkout_1",
        "metadata": { "headroom_account": "acme", "headroom_checkout": created["checkout"] },
    })
}

/// A `payment_intent.succeeded` object for `acme`, paid with `cus_1`'s `pm_1`;
/// `metadata` names the checkout or the recharge it paid for.
fn succeeded_intent(id: &Value, amount: &Value, metadata: (&str, &Value)) -> Value {
    let (name, value) = metadata;
    json!({
        "id": id,
        "object": "payment_intent",
        "status": "succeeded",
        "amount": amount,
        "currency": "usd",
        "customer": "cus_1",
        "payment_method": "pm_1",
        "metadata": { "headroom_account": "acme", name: value },
    })
}

/// Every delivery the receiver got is signed with its secret and shaped as
/// the contract says, and one id always carries the same event.
fn assert_alerts_well_formed(alerts: &AlertReceiver) {
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for delivery in alerts.deliveries() {
        let event = delivery.event();
        let id = event["id"].as_str().unwrap_or_default().to_string();
        assert!(delivery.signature_valid, "a badly signed alert: {delivery:?}");
        assert_eq!(delivery.path, "/hooks", "{delivery:?}");
        assert_eq!(delivery.header("content-type"), Some("application/json"), "{delivery:?}");
        assert_eq!(delivery.header("headroom-event-id"), Some(id.as_str()), "{delivery:?}");
        assert!(is_headroom_id(&id, "evt_"), "{event}");
        assert_eq!(event["account"], "acme", "{event}");
        assert!(event["created"].as_str().is_some_and(|created| created.contains('T')), "{event}");
        assert!(event["data"].is_object(), "{event}");
        let (kind, data) = (event["type"].clone(), event["data"].clone());
        if let Some(first) = by_id.insert(id, event) {
            assert_eq!((&first["type"], &first["data"]), (&kind, &data), "one id, two events");
        }
    }
}

/// The distinct alerts of `kind` whose `data` has `field` equal to `value`.
fn alerts_where(alerts: &AlertReceiver, kind: &str, field: &str, value: &Value) -> Vec<Value> {
    alerts.events_of(kind).into_iter().filter(|event| &event["data"][field] == value).collect()
}

#[test]
fn a_paid_checkout_grants_its_credits_once_however_often_stripe_delivers() {
    let payments = Payments::start("buy");
    open_acme(&payments.server, "paid");
    let created = payments.checkout(1000);
    let checkout = created["checkout"].as_str().unwrap().to_string();
    assert!(is_headroom_id(&checkout, "co_"), "{created}");
    assert_eq!(
        (created["provider_id"].as_str(), created["url"].as_str()),
        (Some("cs_test_1"), Some("https://checkout.test/cs_test_1"))
    );
    assert_eq!(
        (&created["account"], &created["credits"], &created["amount"], &created["currency"], &created["status"]),
        (&json!("acme"), &json!(1000 * CREDIT), &json!(1000), &json!("usd"), &json!("pending")),
        "1000 credits at one cent each: {created}"
    );

    // Stripe saw one session, created under the checkout's id, with the contract's fields.
    assert_eq!(payments.stripe.sessions_created(), 1);
    assert_eq!(payments.stripe.idempotency_keys(CHECKOUT_SESSIONS), [checkout.as_str()]);
    let call = &payments.stripe.requests_to(CHECKOUT_SESSIONS)[0];
    assert_eq!(call.authorization.as_deref(), Some(format!("Bearer {STRIPE_SECRET_KEY}").as_str()));
    assert!(
        call.content_type.as_deref().is_some_and(|value| value.starts_with("application/x-www-form-urlencoded")),
        "{call:?}"
    );
    let mut form = call.form();
    assert_eq!(form.len(), call.fields.len(), "no field sent twice: {call:?}");
    let name = form.remove("line_items[0][price_data][product_data][name]");
    assert!(name.is_some_and(|name| !name.is_empty()), "the product is named: {call:?}");
    let expected: BTreeMap<String, String> = [
        ("mode", "payment"),
        ("success_url", SUCCESS_URL),
        ("cancel_url", SUCCESS_URL),
        ("client_reference_id", "acme"),
        ("line_items[0][quantity]", "1"),
        ("line_items[0][price_data][currency]", "usd"),
        ("line_items[0][price_data][unit_amount]", "1000"),
        ("metadata[headroom_account]", "acme"),
        ("metadata[headroom_checkout]", &checkout),
        ("payment_intent_data[metadata][headroom_account]", "acme"),
        ("payment_intent_data[metadata][headroom_checkout]", &checkout),
        ("payment_intent_data[setup_future_usage]", "off_session"),
        ("customer_creation", "always"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect();
    assert_eq!(form, expected);

    let pending = payments.checkout_view(&checkout);
    assert_eq!(
        (&pending["checkout"], &pending["status"], &pending["grant"], &pending["credits"], &pending["amount"]),
        (&json!(checkout), &json!("pending"), &Value::Null, &json!(1000 * CREDIT), &json!(1000)),
        "{pending}"
    );
    assert_eq!(payments.balance(), 0);

    // Stripe delivers the payment three times at once, then again an hour
    // later (signed anew): one grant.
    let payload = stripe_event("evt_buy_paid", "checkout.session.completed", paid_session(&created));
    let signature = sign_stripe(WEBHOOK_SECRET, unix_now(), &payload);
    let url = payments.server.url.as_str();
    let mut replies: Vec<Reply> = std::thread::scope(|scope| {
        let deliveries: Vec<_> =
            (0..3).map(|_| scope.spawn(|| post_webhook(url, Some(&signature), &payload))).collect();
        deliveries.into_iter().map(|delivery| delivery.join().unwrap()).collect()
    });
    replies.push(post_webhook(url, Some(&sign_stripe(WEBHOOK_SECRET, unix_now(), &payload)), &payload));
    let results: Vec<&str> = replies
        .iter()
        .map(|reply| {
            assert_eq!((reply.status, &reply.body["received"]), (200, &json!(true)), "{reply:?}");
            reply.body["result"].as_str().unwrap()
        })
        .collect();
    assert_eq!(results.iter().filter(|result| **result == "granted").count(), 1, "{results:?}");
    assert!(results.iter().all(|result| ["granted", "already_granted"].contains(result)), "{results:?}");
    assert_eq!(results[3], "already_granted");

    assert_eq!(payments.balance(), 1000 * CREDIT);
    let grant = format!("purchase.{checkout}");
    let paid = payments.checkout_view(&checkout);
    assert_eq!((&paid["status"], &paid["grant"]), (&json!("paid"), &json!(grant)), "{paid}");
    let usage = payments.usage();
    let grants = usage["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1, "{usage}");
    assert_eq!(
        (&grants[0]["id"], &grants[0]["kind"], &grants[0]["granted"], &grants[0]["remaining"]),
        (&json!(grant), &json!("purchase"), &json!(1000 * CREDIT), &json!(1000 * CREDIT)),
        "{usage}"
    );
    assert!(grants[0]["expires_at"].is_string(), "purchased credits expire after credits_expire_after: {usage}");

    let entries = eventually("the purchase in the ledger", || {
        let entries = payments.ledger();
        entries.iter().any(|entry| entry["source"] == grant.as_str()).then_some(entries)
    });
    let grant_entries: Vec<&Value> = entries.iter().filter(|entry| entry["cause"] == "grant").collect();
    assert_eq!(grant_entries.len(), 1, "{entries:?}");
    assert_eq!(
        (&grant_entries[0]["source"], &grant_entries[0]["delta"]),
        (&json!(grant), &json!(1000 * CREDIT)),
        "{entries:?}"
    );

    let granted = payments
        .alerts
        .wait_for("credits.granted", |events| events.iter().find(|event| event["type"] == "credits.granted").cloned());
    assert_eq!(
        granted["data"],
        json!({ "grant": grant, "kind": "purchase", "credits": 1000 * CREDIT, "source": "checkout" }),
        "{granted}"
    );
    assert_eq!(payments.alerts.events_of("credits.granted").len(), 1);
    assert_alerts_well_formed(&payments.alerts);
}

#[test]
fn webhooks_that_are_forged_stale_malformed_or_foreign_grant_nothing() {
    let payments = Payments::start("rejects");
    open_acme(&payments.server, "paid");
    let created = payments.checkout(1000);
    let checkout = created["checkout"].as_str().unwrap();
    let url = payments.server.url.as_str();
    let paid = stripe_event("evt_rejects_paid", "checkout.session.completed", paid_session(&created));
    let now = unix_now();

    // Signatures: none, garbage, the wrong secret, another body's, too old, too far ahead.
    post_webhook(url, None, &paid).expect(400, Some("invalid_signature"));
    post_webhook(url, Some("nonsense"), &paid).expect(400, Some("invalid_signature"));
    post_webhook(url, Some(&sign_stripe("whsec_forged", now, &paid)), &paid).expect(400, Some("invalid_signature"));
    let mut richer = paid_session(&created);
    richer["amount_total"] = json!(1);
    let other = stripe_event("evt_rejects_paid", "checkout.session.completed", richer);
    post_webhook(url, Some(&sign_stripe(WEBHOOK_SECRET, now, &other)), &paid).expect(400, Some("invalid_signature"));
    post_webhook(url, Some(&sign_stripe(WEBHOOK_SECRET, now - 600, &paid)), &paid).expect(400, Some("stale_signature"));
    post_webhook(url, Some(&sign_stripe(WEBHOOK_SECRET, now + 600, &paid)), &paid).expect(400, Some("stale_signature"));

    // Correctly signed, yet not JSON, or not about a checkout of Headroom's.
    let signed = |payload: &[u8]| post_webhook(url, Some(&sign_stripe(WEBHOOK_SECRET, unix_now(), payload)), payload);
    signed(b"this is not json {").expect(400, Some("malformed"));
    let mut unknown = paid_session(&created);
    unknown["metadata"]["headroom_checkout"] = json!(format!("co_{}", "0".repeat(32)));
    signed(&stripe_event("evt_unknown", "checkout.session.completed", unknown)).expect(400, Some("unknown_checkout"));
    let mut stranger = paid_session(&created);
    stranger["metadata"]["headroom_account"] = json!("nobody");
    signed(&stripe_event("evt_stranger", "checkout.session.completed", stranger)).expect(400, Some("unknown_checkout"));
    for (field, value) in [("amount_total", json!(999)), ("currency", json!("eur"))] {
        let mut mismatched = paid_session(&created);
        mismatched[field] = value;
        signed(&stripe_event(&format!("evt_mismatch_{field}"), "checkout.session.completed", mismatched))
            .expect(400, Some("checkout_mismatch"));
    }

    assert_eq!(payments.balance(), 0, "nothing was granted");
    let view = payments.checkout_view(checkout);
    assert_eq!((&view["status"], &view["grant"]), (&json!("pending"), &Value::Null), "{view}");
    assert!(payments.ledger().iter().all(|entry| entry["cause"] != "grant"));

    // An event Headroom does not handle is acknowledged and ignored.
    let customer = stripe_event("evt_customer", "customer.created", json!({ "id": "cus_9", "object": "customer" }));
    let ignored = signed(&customer).expect(200, None);
    assert_eq!(ignored.body, json!({ "received": true, "result": "ignored" }));

    // Completed but not paid yet (a bank transfer): acknowledged, nothing granted.
    let mut unpaid = paid_session(&created);
    unpaid["payment_status"] = json!("unpaid");
    let pending = signed(&stripe_event("evt_unpaid", "checkout.session.completed", unpaid)).expect(200, None);
    assert_eq!(pending.body["result"], "pending", "{pending:?}");
    assert_eq!(payments.balance(), 0);

    // Paid later, signed with the secret being rotated out, beside a
    // signature that matches nothing: granted.
    let succeeded = stripe_event("evt_async_paid", "checkout.session.async_payment_succeeded", paid_session(&created));
    let at = unix_now();
    let header = format!(
        "t={at},v1={},v1={},v0={}",
        stripe_signature("whsec_forged", at, &succeeded),
        stripe_signature(PREVIOUS_WEBHOOK_SECRET, at, &succeeded),
        "0".repeat(64)
    );
    let granted = post_webhook(url, Some(&header), &succeeded).expect(200, None);
    assert_eq!(granted.body["result"], "granted", "{granted:?}");
    assert_eq!(payments.balance(), 1000 * CREDIT);
    assert_alerts_well_formed(&payments.alerts);
}

#[test]
fn a_refund_claws_back_what_is_unspent_and_records_the_rest() {
    let payments = Payments::start("refund");
    open_acme(&payments.server, "paid");
    let created = payments.buy(1000);
    let checkout = created["checkout"].as_str().unwrap();
    let grant = format!("purchase.{checkout}");
    let spent = payments.decide(400, "spend");
    assert_eq!((&spent["allowed"], &spent["credits_charged"]), (&json!(true), &json!(400 * CREDIT)), "{spent}");
    assert_eq!(payments.balance(), 600 * CREDIT);

    let refund = |event: &str, amount_refunded: u64| {
        let reply = payments.deliver(event, "charge.refunded", refunded_charge(&created, amount_refunded));
        reply.expect(200, None)
    };
    // 300 of the 1000 cents: 300 credits, all of them still unspent, go back.
    let partial = refund("evt_refund_partial", 300);
    assert_eq!(partial.body["result"], "refunded", "{partial:?}");
    assert_eq!(payments.balance(), 300 * CREDIT);
    let view = payments.checkout_view(checkout);
    assert_eq!(
        (&view["refunded_amount"], &view["clawed_back"], &view["unrecovered"]),
        (&json!(300), &json!(300 * CREDIT), &json!(0)),
        "{view}"
    );

    // Then all of it (amounts are cumulative): 700 credits more are due, of
    // which only 300 are unspent. The grant goes to zero, not below; the
    // 400 credits already spent are recorded as unrecovered.
    let whole = refund("evt_refund_whole", 1000);
    assert_eq!(whole.body["result"], "refunded", "{whole:?}");
    assert_eq!(payments.balance(), 0);
    let view = payments.checkout_view(checkout);
    assert_eq!(
        (&view["refunded_amount"], &view["clawed_back"], &view["unrecovered"]),
        (&json!(1000), &json!(600 * CREDIT), &json!(400 * CREDIT)),
        "{view}"
    );
    assert_eq!(
        view["clawed_back"].as_u64().unwrap() + view["unrecovered"].as_u64().unwrap(),
        view["credits"].as_u64().unwrap(),
        "{view}"
    );

    // The same event again, and another reporting the same cumulative amount: nothing more.
    refund("evt_refund_whole", 1000);
    refund("evt_refund_whole_again", 1000);
    assert_eq!(payments.balance(), 0);
    assert_eq!(payments.checkout_view(checkout), view);
    let usage = payments.usage();
    let remaining: Vec<&Value> =
        usage["grants"].as_array().unwrap().iter().filter(|entry| entry["id"] == grant.as_str()).collect();
    assert!(remaining.iter().all(|entry| entry["remaining"] == 0), "{usage}");
    let denied = payments.decide(1, "after-refund");
    // Nothing left to spend: denied, short of the whole price.
    assert_eq!((&denied["allowed"], &denied["credits_short"]), (&json!(false), &json!(1_000_000)), "{denied}");
    eventually("the settled balance to reach zero", || (payments.usage()["settled_balance"] == 0).then_some(()));

    payments.alerts.wait_for("two credits.refunded alerts", |events| {
        let refunds = events
            .iter()
            .filter(|event| event["type"] == "credits.refunded" && event["data"]["grant"] == grant.as_str());
        (refunds.count() >= 2).then_some(())
    });
    // Every movement is in the ledger: the reconciliation finds no discrepancy.
    let Payments { server, directory, alerts, .. } = payments;
    assert!(server.terminate().success());
    let reconciled = Process::new(binary()).args(["reconcile", "--data-dir"]).arg(directory.data()).output().unwrap();
    assert!(reconciled.status.success(), "{}", String::from_utf8_lossy(&reconciled.stdout));
    assert_eq!(alerts_where(&alerts, "credits.refunded", "grant", &json!(grant)).len(), 2, "{:?}", alerts.events());
    assert_alerts_well_formed(&alerts);
}

#[test]
fn auto_recharge_charges_once_however_many_decisions_cross_the_minimum() {
    let payments = Payments::start("recharge");
    open_acme(&payments.server, "paid");
    let created = payments.buy(1000);
    // Stripe reports the checkout's payment: its customer and card are kept for later charges.
    let intent =
        succeeded_intent(&json!("pi_checkout_1"), &created["amount"], ("headroom_checkout", &created["checkout"]));
    let saved = payments.deliver("evt_checkout_intent", "payment_intent.succeeded", intent).expect(200, None);
    assert_eq!(saved.body["result"], "saved", "{saved:?}");

    let (minimum, target) = (500 * CREDIT, 2000 * CREDIT);
    let settings = json!({ "enabled": true, "minimum": minimum, "target": target });
    let put = payments.server.admin("PUT", "/v1/accounts/acme/auto-recharge", Some(settings)).expect(200, None);
    let state = &put.body;
    assert_eq!(
        (&state["enabled"], &state["minimum"], &state["target"], &state["failures"], &state["in_flight"]),
        (&json!(true), &json!(minimum), &json!(target), &json!(0), &Value::Null),
        "{state}"
    );
    assert_eq!((&state["payment_method"], &state["customer"]), (&json!("pm_1"), &json!("cus_1")), "{state}");

    // 64 decisions of 10 credits at once: 1000 - 640 leaves 360 credits,
    // below the minimum from the decision that leaves 490.
    let url = payments.server.url.as_str();
    std::thread::scope(|scope| {
        let spenders: Vec<_> = (0..64)
            .map(|index| {
                scope.spawn(move || {
                    let body = decision(10, &format!("spend-{index}"));
                    try_call(url, "POST", "/v1/decisions", Some(ADMIN), Some(&body)).expect("the server answers")
                })
            })
            .collect();
        for spender in spenders {
            let reply = spender.join().unwrap().expect(200, None);
            assert_eq!(reply.body["allowed"], true, "{reply:?}");
        }
    });

    let attempt = eventually("a recharge's payment intent", || {
        payments.stripe.requests_to(PAYMENT_INTENTS).into_iter().find(|request| request.status == 200)
    });
    let recharge = attempt.idempotency_key.clone().unwrap_or_default();
    assert!(is_headroom_id(&recharge, "rc_"), "{attempt:?}");
    assert_eq!(attempt.authorization.as_deref(), Some(format!("Bearer {STRIPE_SECRET_KEY}").as_str()));
    let amount: u64 = attempt.field("amount").and_then(|amount| amount.parse().ok()).expect("an amount");
    // Topped up to the target from what was available when it started
    // (490 credits at most, 360 at least), in whole credits at one cent each.
    assert!((2000 - 490..=2000 - 360).contains(&amount), "{attempt:?}");
    let mut form = attempt.form();
    let description = form.remove("description");
    assert!(description.is_some_and(|text| !text.is_empty()), "{attempt:?}");
    let expected: BTreeMap<String, String> = [
        ("amount", amount.to_string().as_str()),
        ("currency", "usd"),
        ("customer", "cus_1"),
        ("payment_method", "pm_1"),
        ("off_session", "true"),
        ("confirm", "true"),
        ("metadata[headroom_account]", "acme"),
        ("metadata[headroom_recharge]", &recharge),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect();
    assert_eq!(form, expected);

    // Stripe then reports the recharge's payment intent as succeeded.
    let intent = succeeded_intent(&attempt.answer["id"], &json!(amount), ("headroom_recharge", &json!(recharge)));
    let completed = payments.deliver("evt_recharge_intent", "payment_intent.succeeded", intent).expect(200, None);
    let result = completed.body["result"].as_str();
    assert!(matches!(result, Some("granted" | "already_granted")), "{completed:?}");

    let recharged = amount * CREDIT;
    let balance = eventually("the balance back above the minimum", || {
        Some(payments.balance()).filter(|balance| *balance >= minimum)
    });
    assert_eq!(balance, 360 * CREDIT + recharged);
    let state = eventually("no recharge in flight", || {
        Some(payments.auto_recharge()).filter(|state| state["in_flight"].is_null())
    });
    assert_eq!((&state["enabled"], &state["failures"]), (&json!(true), &json!(0)), "{state}");
    assert_eq!(payments.stripe.idempotency_keys(PAYMENT_INTENTS), [recharge.as_str()], "one recharge, one key");
    assert_eq!(payments.stripe.payment_intents_created(), 1);

    let granted = payments.alerts.wait_for("credits.granted from the recharge", |events| {
        events.iter().find(|event| event["type"] == "credits.granted" && event["data"]["source"] == "recharge").cloned()
    });
    assert_eq!(granted["data"]["credits"], recharged, "{granted}");
    assert_eq!(alerts_where(&payments.alerts, "credits.granted", "source", &json!("recharge")).len(), 1);
    assert_alerts_well_formed(&payments.alerts);
}

#[test]
fn three_declined_recharges_in_a_row_disable_auto_recharge_and_alert() {
    let payments = Payments::start("declines");
    open_acme(&payments.server, "paid");
    let seed = json!({ "kind": "purchase", "credits": 1000 * CREDIT, "idempotency_key": "seed" });
    payments.server.admin("POST", "/v1/accounts/acme/grants", Some(seed)).expect(201, None);
    payments.stripe.set_declining(true);
    let settings = json!({
        "enabled": true, "minimum": 990 * CREDIT, "target": 1500 * CREDIT, "payment_method": "pm_1", "customer": "cus_1",
    });
    payments.server.admin("PUT", "/v1/accounts/acme/auto-recharge", Some(settings)).expect(200, None);

    // Below the minimum, then a small decision now and then, each a chance
    // to start the next attempt once the last one failed.
    assert_eq!(payments.decide(20, "below")["balance"], 980 * CREDIT);
    let mut polls = 0;
    let state = eventually("three declines to disable auto-recharge", || {
        polls += 1;
        if polls % 10 == 0 {
            payments.decide(1, &format!("spend-{polls}"));
        }
        Some(payments.auto_recharge()).filter(|state| state["enabled"] == false)
    });
    assert_eq!((&state["failures"], &state["in_flight"]), (&json!(3), &Value::Null), "{state}");
    let attempts = payments.stripe.idempotency_keys(PAYMENT_INTENTS);
    assert_eq!(attempts.len(), 3, "three recharges, each under a key of its own: {attempts:?}");
    assert!(attempts.iter().all(|key| is_headroom_id(key, "rc_")), "{attempts:?}");
    assert!(payments.stripe.requests_to(PAYMENT_INTENTS).iter().all(|request| request.status == 402));
    assert_eq!(payments.stripe.payment_intents_created(), 0);

    let failed = payments.alerts.wait_for("auto_recharge.failed with disabled", |events| {
        events
            .iter()
            .find(|event| event["type"] == "auto_recharge.failed" && event["data"]["disabled"] == true)
            .cloned()
    });
    let data = &failed["data"];
    assert_eq!((&data["failures"], &data["recharge"]), (&json!(3), &json!(attempts[2])), "{failed}");
    assert!(data["reason"].as_str().is_some_and(|reason| !reason.is_empty()), "{failed}");

    // Disabled: decisions below the minimum start no more charges.
    for index in 0..3 {
        payments.decide(1, &format!("after-{index}"));
    }
    assert_eq!(payments.auto_recharge()["enabled"], false);
    assert_eq!(payments.stripe.idempotency_keys(PAYMENT_INTENTS).len(), 3);
    assert_eq!(alerts_where(&payments.alerts, "auto_recharge.failed", "disabled", &json!(true)).len(), 1);
    assert_alerts_well_formed(&payments.alerts);
}

#[test]
fn each_threshold_crossing_raises_one_signed_alert() {
    let payments = Payments::start("alerts");
    open_acme(&payments.server, "metered");
    let created = payments.buy(100);
    let grant = format!("purchase.{}", created["checkout"].as_str().unwrap());

    // Twelve tasks one at a time: the window covers ten (80 % at the 8th,
    // 100 % at the 10th), credits the other two.
    for index in 0..12 {
        let reply = payments.decide(1, &format!("task-{index}"));
        assert_eq!(reply["allowed"], true, "{reply}");
    }
    assert_eq!(payments.balance(), 98 * CREDIT);
    // 97 more leave one credit, below the low balance of two; one more stays below.
    payments.decide(97, "big");
    assert_eq!(payments.balance(), CREDIT);
    payments.decide(1, "last");
    assert_eq!(payments.balance(), 0);
    let first_low = payments
        .alerts
        .wait_for("balance.low", |events| events.iter().find(|event| event["type"] == "balance.low").cloned());
    assert_eq!(first_low["data"], json!({ "available": CREDIT, "threshold": LOW_BALANCE }), "{first_low}");

    // Back above the threshold and below again: a second crossing, a second event.
    let top_up = json!({ "kind": "promotion", "credits": 10 * CREDIT, "idempotency_key": "top-up" });
    payments.server.admin("POST", "/v1/accounts/acme/grants", Some(top_up)).expect(201, None);
    payments.decide(9, "again");
    payments.alerts.wait_for("a second balance.low", |events| {
        (events.iter().filter(|event| event["type"] == "balance.low").count() >= 2).then_some(())
    });

    let purchases = alerts_where(&payments.alerts, "credits.granted", "source", &json!("checkout"));
    assert_eq!(purchases.len(), 1, "{purchases:?}");
    assert_eq!(
        purchases[0]["data"],
        json!({ "grant": grant, "kind": "purchase", "credits": 100 * CREDIT, "source": "checkout" })
    );
    let approaching = payments.alerts.events_of("limit.approaching");
    assert_eq!(approaching.len(), 1, "{approaching:?}");
    assert_eq!(
        approaching[0]["data"],
        json!({ "subject": "ann", "window": "five-hour", "limit": 10, "used": 8, "share_percent": 80 })
    );
    let reached = payments.alerts.events_of("limit.reached");
    assert_eq!(reached.len(), 1, "{reached:?}");
    assert_eq!(reached[0]["data"], json!({ "subject": "ann", "window": "five-hour", "limit": 10, "used": 10 }));
    let low = payments.alerts.events_of("balance.low");
    assert_eq!(low.len(), 2, "{low:?}");
    assert_ne!(low[0]["id"], low[1]["id"]);
    assert_alerts_well_formed(&payments.alerts);
}

#[test]
fn an_alert_the_endpoint_refuses_is_retried_with_the_same_id() {
    let payments = Payments::start_with("retries", AlertReceiver::failing_first(ALERT_SECRET, 2), None);
    open_acme(&payments.server, "paid");
    let seed = json!({ "kind": "purchase", "credits": 3 * CREDIT, "idempotency_key": "seed" });
    payments.server.admin("POST", "/v1/accounts/acme/grants", Some(seed)).expect(201, None);
    payments.decide(2, "below");

    let low = payments
        .alerts
        .wait_for("balance.low", |events| events.iter().find(|event| event["type"] == "balance.low").cloned());
    let deliveries = eventually("balance.low to be acknowledged", || {
        let deliveries: Vec<Delivery> =
            payments.alerts.deliveries().into_iter().filter(|delivery| delivery.event()["id"] == low["id"]).collect();
        deliveries.iter().any(|delivery| delivery.answered == 200).then_some(deliveries)
    });
    let answers: Vec<u16> = deliveries.iter().map(|delivery| delivery.answered).collect();
    assert_eq!(answers, [500, 500, 200]);
    for delivery in &deliveries {
        assert!(delivery.signature_valid, "{delivery:?}");
        assert_eq!(delivery.header("headroom-event-id"), low["id"].as_str(), "{delivery:?}");
        let event = delivery.event();
        assert_eq!((&event["type"], &event["data"]), (&low["type"], &low["data"]), "{delivery:?}");
    }
    assert_eq!(low["data"], json!({ "available": CREDIT, "threshold": LOW_BALANCE }));
    assert_alerts_well_formed(&payments.alerts);
}

#[test]
fn a_checkout_sells_only_what_the_catalog_offers_to_whom_may_buy() {
    let payments = Payments::start("catalog");
    open_acme(&payments.server, "paid");
    let post = |body: Value| payments.server.admin("POST", "/v1/accounts/acme/checkout", Some(body));
    for credits in [0, 99, 100_001] {
        post(json!({ "credits": credits, "success_url": SUCCESS_URL })).expect(422, None);
    }
    post(json!({ "pack": "gold", "success_url": SUCCESS_URL })).expect(422, None);
    let body = json!({ "credits": 100, "success_url": SUCCESS_URL });
    payments.server.admin("POST", "/v1/accounts/nobody/checkout", Some(body)).expect(404, Some("unknown_account"));
    assert!(payments.stripe.requests().is_empty(), "nothing refused reached Stripe");

    let body = json!({ "pack": "starter", "success_url": SUCCESS_URL, "cancel_url": "https://app.test/cancel" });
    let pack = post(body).expect(201, None).body;
    assert_eq!(
        (&pack["credits"], &pack["amount"], &pack["currency"], &pack["status"]),
        (&json!(1000 * CREDIT), &json!(900), &json!("usd"), &json!("pending")),
        "a pack has its own price: {pack}"
    );
    let call = &payments.stripe.requests_to(CHECKOUT_SESSIONS)[0];
    assert_eq!(call.field("line_items[0][price_data][unit_amount]"), Some("900"));
    assert_eq!(call.field("line_items[0][quantity]"), Some("1"));
    assert_eq!(call.field("cancel_url"), Some("https://app.test/cancel"));

    // A subject of the account may buy for it; a subject of another may not.
    let token = |subject: &str| {
        let body = json!({ "kind": "subject", "subject": subject });
        payments.server.admin("POST", "/v1/tokens", Some(body)).expect(201, None).body["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    payments.server.admin("PUT", "/v1/accounts/other", Some(json!({ "plan": "paid" }))).expect(201, None);
    payments.server.admin("PUT", "/v1/subjects/bob", Some(json!({ "account": "other" }))).expect(200, None);
    let (ann, bob) = (token("ann"), token("bob"));
    let body = json!({ "credits": 100, "success_url": SUCCESS_URL });
    let own =
        payments.server.call("POST", "/v1/accounts/acme/checkout", Some(&ann), Some(body.clone())).expect(201, None);
    let checkout = own.body["checkout"].as_str().unwrap();
    payments.server.call("GET", &format!("/v1/accounts/acme/checkouts/{checkout}"), Some(&ann), None).expect(200, None);
    payments.server.call("POST", "/v1/accounts/acme/checkout", Some(&bob), Some(body)).expect(403, None);
    assert_eq!(payments.stripe.sessions_created(), 2);
}

#[test]
fn without_a_configured_and_reachable_stripe_payments_answer_503() {
    let directory = Directory::new("payments-unconfigured");
    let alerts = AlertReceiver::start(ALERT_SECRET);
    let mut command = Process::new(binary());
    for variable in ["HEADROOM_STRIPE_SECRET_KEY", "HEADROOM_STRIPE_API_BASE", "HEADROOM_STRIPE_WEBHOOK_SECRET"] {
        command.env_remove(variable);
    }
    let server = start_server(command, &directory, &alerts);
    open_acme(&server, "paid");
    let body = json!({ "credits": 100, "success_url": SUCCESS_URL });
    server.admin("POST", "/v1/accounts/acme/checkout", Some(body)).expect(503, None);
    let settings = json!({
        "enabled": true, "minimum": 10 * CREDIT, "target": 100 * CREDIT, "payment_method": "pm_1", "customer": "cus_1",
    });
    server.admin("PUT", "/v1/accounts/acme/auto-recharge", Some(settings)).expect(503, None);
    drop(server);

    // Configured, but nothing listens where Stripe should be.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let payments = Payments::start_with("unreachable", AlertReceiver::start(ALERT_SECRET), Some(&closed));
    open_acme(&payments.server, "paid");
    let body = json!({ "credits": 100, "success_url": SUCCESS_URL });
    payments.server.admin("POST", "/v1/accounts/acme/checkout", Some(body)).expect(503, None);
    assert_eq!(payments.balance(), 0);
}
