//! End-to-end tests of `headroom serve`: the real binary on a free port
//! with a fresh data directory, driven over HTTP.

use std::process::Command as Process;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

mod support;
use support::*;

fn decision(subject: &str, feature: &str, quantity: i64, key: &str) -> Value {
    json!({ "subject": subject, "feature": feature, "quantity": quantity, "idempotency_key": key })
}

/// An account `acme` on `plan` with subject `ann` and the given grants.
fn setup_acme(server: &Server, plan: &str, grants: &[(&str, u64)]) {
    server.admin("PUT", "/v1/accounts/acme", Some(json!({ "plan": plan }))).expect(201, None);
    server.admin("PUT", "/v1/subjects/ann", Some(json!({ "account": "acme" }))).expect(200, None);
    for (index, (kind, credits)) in grants.iter().enumerate() {
        let body = json!({ "kind": kind, "credits": credits, "idempotency_key": format!("setup-{index}") });
        server.admin("POST", "/v1/accounts/acme/grants", Some(body)).expect(201, None);
    }
}

#[test]
fn the_demo_decision_replays_and_a_changed_request_conflicts() {
    let directory = Directory::new("demo");
    let server = Server::start(&directory.data());
    let body = decision("demo-user", "codex.local_task", 1, "first");
    let first = server.admin("POST", "/v1/decisions", Some(body.clone())).expect(200, None);
    assert_eq!(first.body["allowed"], true);
    assert_eq!(first.body["reason"], "covered_by_windows");
    assert_eq!(first.body["credits_charged"], 0);
    assert_eq!(first.body["balance"], 25_000_000);
    let window = &first.body["windows"][0];
    assert_eq!(
        (window["window"].as_str(), window["limit"].as_u64(), window["remaining"].as_u64()),
        (Some("codex-5h"), Some(50), Some(49))
    );
    assert!(window["resets_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(first.header("ratelimit-policy"), Some("\"codex-5h\";q=50"));
    assert!(first.header("ratelimit").unwrap().starts_with("\"codex-5h\";r=49;t="), "{first:?}");
    assert_eq!(first.header("idempotent-replayed"), None);

    let replay = server.admin("POST", "/v1/decisions", Some(body)).expect(200, None);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, first.body, "a replay returns the original body");

    let changed = decision("demo-user", "codex.local_task", 2, "first");
    server.admin("POST", "/v1/decisions", Some(changed)).expect(409, Some("idempotency_conflict"));
    // Nothing more was consumed by the replay or the conflict.
    let usage = server.admin("GET", "/v1/subjects/demo-user/usage", None).expect(200, None);
    assert_eq!(usage.body["windows"][0]["used"], 1);
}

#[test]
fn one_request_flows_from_windows_down_the_grants() {
    let directory = Directory::new("waterfall");
    let server = Server::start(&directory.data());
    setup_acme(&server, "plus", &[("purchase", 10_000_000), ("promotion", 500_000)]);
    // 60 local tasks: the 5-hour window covers 50, credits the other 10 at
    // 0.08 each: the promotion first (0.5), then the purchase (0.3).
    let reply =
        server.admin("POST", "/v1/decisions", Some(decision("ann", "codex.local_task", 60, "big"))).expect(200, None);
    let body = &reply.body;
    assert_eq!(body["allowed"], true);
    assert_eq!(body["reason"], "covered_by_windows_and_credits");
    assert_eq!(body["credits_charged"], 800_000);
    let sources: Vec<(String, u64)> = body["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|source| (source["kind"].as_str().unwrap().to_string(), source["credits"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        sources,
        [("windows".to_string(), 0), ("promotion".to_string(), 500_000), ("purchase".to_string(), 300_000)]
    );
    let units: u64 = body["sources"].as_array().unwrap().iter().map(|source| source["units"].as_u64().unwrap()).sum();
    assert_eq!(units, 60);
    assert_eq!(body["balance"], 9_700_000);

    // Beyond what windows and credits hold: denied, nothing consumed, the shortfall named.
    let denied =
        server.admin("POST", "/v1/decisions", Some(decision("ann", "codex.local_task", 200, "huge"))).expect(200, None);
    assert_eq!(denied.body["allowed"], false);
    assert_eq!(denied.body["reason"], "insufficient_credits");
    assert_eq!(denied.body["credits_short"], 200 * 80_000 - 9_700_000);
    assert_eq!(denied.body["sources"], json!([]));
    if let Some(seconds) = denied.body["retry_after_s"].as_u64() {
        assert_eq!(denied.header("retry-after"), Some(seconds.to_string().as_str()));
    }

    let usage = server.admin("GET", "/v1/subjects/ann/usage", None).expect(200, None);
    assert_eq!(usage.body["balance"], 9_700_000);
    let grants: Vec<(&str, u64)> = usage.body["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|grant| (grant["kind"].as_str().unwrap(), grant["remaining"].as_u64().unwrap()))
        .collect();
    // A spent grant may already be retired once its debit settled.
    let unspent: Vec<&(&str, u64)> = grants.iter().filter(|(_, remaining)| *remaining > 0).collect();
    assert_eq!(unspent, [&("purchase", 9_700_000)]);

    // The ledger links each debit to its monetization and usage events and the key.
    let entries = settled_ledger(&server, "acme", 4);
    let debits: Vec<&Value> = entries.iter().filter(|entry| entry["cause"] == "debit").collect();
    assert_eq!(debits.len(), 2);
    for debit in &debits {
        assert_eq!(debit["usage"]["idempotency_key"], "big");
        assert_eq!(debit["usage"]["decision_id"], body["decision_id"]);
        assert_eq!(debit["monetization"]["amount"], 800_000);
    }
    assert_eq!(debits.iter().map(|debit| debit["delta"].as_i64().unwrap()).sum::<i64>(), -800_000);
    // Cursor pagination: one entry per page walks the same entries.
    let mut walked = Vec::new();
    let mut after = 0;
    loop {
        let page =
            server.admin("GET", &format!("/v1/accounts/acme/ledger?limit=1&after={after}"), None).expect(200, None);
        walked.extend(page.body["entries"].as_array().unwrap().iter().map(|entry| entry["sequence"].as_u64().unwrap()));
        match page.body["next_cursor"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(walked, [1, 2, 3, 4]);
}

/// The ledger once `count` entries are there and settled (settlement runs
/// asynchronously; this polls it, bounded).
fn settled_ledger(server: &Server, account: &str, count: usize) -> Vec<Value> {
    for _ in 0..1000 {
        let page = server.admin("GET", &format!("/v1/accounts/{account}/ledger"), None).expect(200, None);
        let entries = page.body["entries"].as_array().unwrap().clone();
        if entries.len() == count && entries.iter().all(|entry| entry["settled"] == true) {
            return entries;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the ledger of {account} did not settle {count} entries");
}

#[test]
fn reservations_capture_release_and_replay() {
    let directory = Directory::new("reservations");
    let server = Server::start(&directory.data());
    let reserve = |quantity: i64, key: &str| {
        let body = json!({ "subject": "demo-user", "feature": "codex.local_task", "quantity": quantity, "idempotency_key": key });
        server.admin("POST", "/v1/reservations", Some(body)).expect(200, None)
    };
    let reserved = reserve(10, "r1");
    assert_eq!(reserved.body["allowed"], true);
    assert_eq!(reserved.body["kind"], "reserve");
    assert_eq!(reserved.body["windows"][0]["remaining"], 40);
    let id = reserved.body["reservation"]["id"].as_str().unwrap().to_string();
    assert!(id.ends_with(".demo"), "{id}");

    let capture = json!({ "quantity": 8, "idempotency_key": "c1" });
    let captured =
        server.admin("POST", &format!("/v1/reservations/{id}/capture"), Some(capture.clone())).expect(200, None);
    assert_eq!(captured.body["kind"], "capture");
    assert_eq!(captured.body["quantity"], 8);
    assert_eq!(captured.body["windows"][0]["remaining"], 42, "the 2 units not used came back");
    let again = server.admin("POST", &format!("/v1/reservations/{id}/capture"), Some(capture)).expect(200, None);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, captured.body);
    // A new key finds the reservation closed.
    let other = json!({ "quantity": 8, "idempotency_key": "c2" });
    server
        .admin("POST", &format!("/v1/reservations/{id}/capture"), Some(other))
        .expect(404, Some("unknown_reservation"));

    let second = reserve(5, "r2");
    let second_id = second.body["reservation"]["id"].as_str().unwrap().to_string();
    let released = server
        .admin("POST", &format!("/v1/reservations/{second_id}/release"), Some(json!({ "idempotency_key": "rel" })))
        .expect(200, None);
    assert_eq!(released.body["window_units_returned"], 5);
    let usage = server.admin("GET", "/v1/subjects/demo-user/usage", None).expect(200, None);
    assert_eq!(usage.body["windows"][0]["used"], 8);

    for bad in ["nothing", "00000000000000000000000000000000.demo", "zz"] {
        server
            .admin("POST", &format!("/v1/reservations/{bad}/release"), Some(json!({ "idempotency_key": "x" })))
            .expect(404, Some("unknown_reservation"));
    }
}

#[test]
fn every_error_has_one_shape_and_its_status() {
    let directory = Directory::new("errors");
    let server = Server::start(&directory.data());
    let post = |body: &[u8]| server.raw("POST", "/v1/decisions", Some(ADMIN), Some(body));
    post(b"{not json").expect(400, Some("malformed_request"));
    post(b"").expect(400, Some("malformed_request"));
    let wrong_type =
        post(br#"{"subject":"demo-user","feature":"codex.local_task","quantity":"many","idempotency_key":"k"}"#);
    assert_eq!(wrong_type.expect(400, Some("malformed_request")).body["error"]["field"], "quantity");
    let unknown_field =
        post(br#"{"subject":"demo-user","feature":"codex.local_task","quantity":1,"idempotency_key":"k","colour":1}"#);
    unknown_field.expect(400, Some("malformed_request"));
    let fraction =
        post(br#"{"subject":"demo-user","feature":"codex.local_task","quantity":1.5,"idempotency_key":"k"}"#);
    assert_eq!(fraction.expect(400, Some("malformed_request")).body["error"]["field"], "quantity");

    server
        .call("POST", "/v1/decisions", None, Some(decision("demo-user", "codex.local_task", 1, "k")))
        .expect(401, Some("unauthorized"));
    server
        .call("POST", "/v1/decisions", Some("wrong-token"), Some(decision("demo-user", "codex.local_task", 1, "k")))
        .expect(401, Some("unauthorized"));

    server
        .admin("POST", "/v1/decisions", Some(decision("nobody", "codex.local_task", 1, "k")))
        .expect(404, Some("unknown_subject"));
    server.admin("GET", "/v1/nothing/here", None).expect(404, Some("not_found"));
    server.admin("GET", "/v1/accounts/nobody", None).expect(404, Some("unknown_account"));
    server.admin("DELETE", "/v1/decisions", None).expect(405, Some("method_not_allowed"));
    server
        .admin("GET", "/v1/accounts/demo/ledger?after=18446744073709551615", None)
        .expect(400, Some("malformed_request"));
    server.admin("GET", "/v1/accounts/demo/ledger?after=-1", None).expect(422, Some("invalid_value"));
    server.admin("GET", "/v1/accounts/demo/ledger?limit=0", None).expect(422, Some("invalid_value"));

    let big = vec![b' '; headroom_core::limits::HTTP_BODY_BYTES_MAX + 1];
    post(&big).expect(413, Some("payload_too_large"));
    let too_many: Vec<Value> = (0..=headroom_core::limits::BATCH_DECISIONS_MAX)
        .map(|index| decision("demo-user", "codex.local_task", 1, &format!("b{index}")))
        .collect();
    server
        .admin("POST", "/v1/decisions/batch", Some(json!({ "decisions": too_many })))
        .expect(413, Some("payload_too_large"));

    for (body, field) in [
        (decision("demo-user", "codex.local_task", 0, "k"), "quantity"),
        (decision("demo-user", "codex.local_task", -3, "k"), "quantity"),
        (decision("demo-user", "codex.local_task", 1_000_000_001, "k"), "quantity"),
        (
            json!({ "subject": "demo-user", "feature": "codex.local_task", "quantity": u64::MAX, "idempotency_key": "k" }),
            "quantity",
        ),
        (decision("demo-user", "codex.teleport", 1, "k"), "feature"),
        (decision("demo user", "codex.local_task", 1, "k"), "subject"),
        (json!({ "subject": "demo-user", "feature": "codex.local_task", "quantity": 1 }), "idempotency_key"),
        (
            json!({ "subject": "demo-user", "feature": "sora.video", "quantity": 1, "idempotency_key": "v" }),
            "attributes",
        ),
    ] {
        let reply = server.admin("POST", "/v1/decisions", Some(body)).expect(422, Some("invalid_value"));
        assert_eq!(reply.body["error"]["field"], field, "{reply:?}");
    }
    server.admin("PUT", "/v1/accounts/acme", Some(json!({ "plan": "platinum" }))).expect(422, Some("invalid_value"));
    let grant = json!({ "kind": "gift", "credits": 5, "idempotency_key": "g" });
    server.admin("POST", "/v1/accounts/demo/grants", Some(grant)).expect(422, Some("invalid_value"));
    let grant = json!({ "kind": "purchase", "credits": 5, "idempotency_key": "g", "expires_at": "tomorrow" });
    assert_eq!(
        server.admin("POST", "/v1/accounts/demo/grants", Some(grant)).expect(422, Some("invalid_value")).body["error"]
            ["field"],
        "expires_at"
    );
    // Nothing above changed the demo account.
    let usage = server.admin("GET", "/v1/subjects/demo-user/usage", None).expect(200, None);
    assert_eq!(
        (usage.body["windows"][0]["used"].as_u64(), usage.body["balance"].as_u64()),
        (Some(0), Some(25_000_000))
    );
}

#[test]
fn the_batch_route_answers_each_decision_on_its_own() {
    let directory = Directory::new("batch");
    let server = Server::start(&directory.data());
    let body = json!({ "decisions": [
        decision("demo-user", "codex.local_task", 1, "b1"),
        decision("demo-user", "codex.local_task", 0, "b2"),
        decision("nobody", "codex.local_task", 1, "b3"),
        decision("demo-user", "codex.local_task", 1, "b1"),
    ]});
    let reply = server.admin("POST", "/v1/decisions/batch", Some(body)).expect(200, None);
    let results = reply.body["results"].as_array().unwrap();
    let statuses: Vec<u64> = results.iter().map(|result| result["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 422, 404, 200]);
    assert_eq!(results[1]["error"]["field"], "decisions[1].quantity");
    assert_eq!(results[2]["error"]["code"], "unknown_subject");
    assert_eq!(results[3]["replayed"], true);
    assert_eq!(results[3]["decision"], results[0]["decision"]);
}

#[test]
fn tokens_only_do_what_their_kind_allows() {
    let directory = Directory::new("tokens");
    let server = Server::start(&directory.data());
    setup_acme(&server, "plus", &[]);
    let token = |body: Value| {
        let reply = server.admin("POST", "/v1/tokens", Some(body)).expect(201, None);
        reply.body["token"].as_str().unwrap().to_string()
    };
    let service = token(json!({ "kind": "service" }));
    let acme_service = token(json!({ "kind": "service", "account": "acme" }));
    let demo_subject = token(json!({ "kind": "subject", "subject": "demo-user" }));

    // A service token decides and reserves, and manages nothing.
    server
        .call("POST", "/v1/decisions", Some(&service), Some(decision("demo-user", "codex.local_task", 1, "s1")))
        .expect(200, None);
    server
        .call("PUT", "/v1/accounts/other", Some(&service), Some(json!({ "plan": "plus" })))
        .expect(403, Some("forbidden"));
    server.call("GET", "/v1/accounts/acme/ledger", Some(&service), None).expect(403, Some("forbidden"));
    server
        .call("POST", "/v1/tokens", Some(&service), Some(json!({ "kind": "service" })))
        .expect(403, Some("forbidden"));
    let grant = json!({ "kind": "purchase", "credits": 5, "idempotency_key": "free-money" });
    server.call("POST", "/v1/accounts/acme/grants", Some(&service), Some(grant)).expect(403, Some("forbidden"));

    // A service token limited to acme decides for acme's subjects only; a
    // subject of another account is as unknown to it as one that is not.
    server
        .call("POST", "/v1/decisions", Some(&acme_service), Some(decision("ann", "codex.local_task", 1, "a1")))
        .expect(200, None);
    server
        .call("POST", "/v1/decisions", Some(&acme_service), Some(decision("demo-user", "codex.local_task", 1, "a2")))
        .expect(404, Some("unknown_subject"));
    let batch = json!({ "decisions": [
        decision("ann", "codex.local_task", 1, "a3"),
        decision("demo-user", "codex.local_task", 1, "a4"),
    ]});
    let results = server.call("POST", "/v1/decisions/batch", Some(&acme_service), Some(batch)).expect(200, None);
    let statuses: Vec<u64> =
        results.body["results"].as_array().unwrap().iter().map(|result| result["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 404]);
    let reserve =
        json!({ "subject": "demo-user", "feature": "codex.local_task", "quantity": 2, "idempotency_key": "r" });
    let reserved = server.admin("POST", "/v1/reservations", Some(reserve)).expect(200, None);
    let id = reserved.body["reservation"]["id"].as_str().unwrap();
    server
        .call(
            "POST",
            &format!("/v1/reservations/{id}/release"),
            Some(&acme_service),
            Some(json!({ "idempotency_key": "x" })),
        )
        .expect(403, Some("forbidden"));
    server.call("GET", "/v1/subjects/demo-user/usage", Some(&acme_service), None).expect(404, Some("unknown_subject"));

    // A subject token reads its own usage and nothing else.
    let own = server.call("GET", "/v1/subjects/demo-user/usage", Some(&demo_subject), None).expect(200, None);
    assert_eq!(own.body["balance"], 25_000_000);
    server.call("GET", "/v1/subjects/ann/usage", Some(&demo_subject), None).expect(403, Some("forbidden"));
    server
        .call("POST", "/v1/decisions", Some(&demo_subject), Some(decision("demo-user", "codex.local_task", 1, "d")))
        .expect(403, Some("forbidden"));
    server.call("GET", "/v1/accounts/demo", Some(&demo_subject), None).expect(403, Some("forbidden"));

    // Tokens survive a restart: only their hashes are stored.
    let stored = std::fs::read_to_string(directory.data().join("tokens.json")).unwrap();
    assert!(!stored.contains(&service) && !stored.contains(&demo_subject));
    drop(server);
    let server = Server::start(&directory.data());
    server.call("GET", "/v1/subjects/demo-user/usage", Some(&demo_subject), None).expect(200, None);
}

#[test]
fn a_generated_admin_token_is_shown_once_and_stored_hashed() {
    use std::os::unix::fs::PermissionsExt;
    let directory = Directory::new("admin");
    let server = Server::start_with(Process::new(binary()), &directory.data(), None);
    let printed = server.stdout.lock().unwrap().clone();
    let token = printed.iter().find(|line| line.starts_with("hr_admin_")).expect("the token is printed").clone();
    let file = directory.data().join("admin.token");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(!stored.contains(&token) && stored.trim().len() == 64, "only a hash is stored: {stored}");
    server.call("GET", "/v1/accounts/demo", Some(&token), None).expect(200, None);
    drop(server);

    let server = Server::start_with(Process::new(binary()), &directory.data(), None);
    server.call("GET", "/v1/accounts/demo", Some(&token), None).expect(200, None);
    assert!(server.stdout.lock().unwrap().iter().all(|line| !line.starts_with("hr_admin_")), "shown once");
    drop(server);

    // A token given in the environment replaces the stored one for good:
    // the generated token does not come back when the variable is unset.
    let server = Server::start(&directory.data());
    server.call("GET", "/v1/accounts/demo", Some(&token), None).expect(401, Some("unauthorized"));
    drop(server);
    let server = Server::start_with(Process::new(binary()), &directory.data(), None);
    server.call("GET", "/v1/accounts/demo", Some(&token), None).expect(401, Some("unauthorized"));
    server.call("GET", "/v1/accounts/demo", Some(ADMIN), None).expect(200, None);
}

#[test]
fn health_metrics_and_the_openapi_document() {
    let directory = Directory::new("operations");
    let server = Server::start(&directory.data());
    server.call("GET", "/healthz", None, None).expect(200, None);
    server.call("GET", "/readyz", None, None).expect(200, None);
    server.admin("POST", "/v1/decisions", Some(decision("demo-user", "codex.local_task", 1, "m1"))).expect(200, None);
    server.admin("POST", "/v1/decisions", Some(decision("demo-user", "codex.local_task", 0, "m2"))).expect(422, None);
    let metrics = server.call("GET", "/metrics", None, None).expect(200, None);
    let text = metrics.body.as_str().unwrap();
    for line in [
        "headroom_decisions_total{outcome=\"allowed\",reason=\"covered_by_windows\"} 1",
        "headroom_decision_sources_total{source=\"windows\"} 1",
        "headroom_decision_duration_seconds_count 1",
        "headroom_http_requests_total{route=\"/v1/decisions\",status=\"200\"} 1",
        "headroom_http_requests_total{route=\"/v1/decisions\",status=\"422\"} 1",
    ] {
        assert!(text.lines().any(|got| got == line), "missing {line:?} in\n{text}");
    }
    for name in [
        "headroom_settlement_lag_updates ",
        "headroom_group_commit_commands_count ",
        "headroom_group_commit_commands_bucket{le=\"1\"} ",
    ] {
        assert!(text.contains(name), "missing {name:?} in\n{text}");
    }

    let document = server.call("GET", "/openapi.json", None, None).expect(200, None).body;
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/decisions", "post"),
        ("/v1/decisions/batch", "post"),
        ("/v1/reservations", "post"),
        ("/v1/reservations/{id}/capture", "post"),
        ("/v1/reservations/{id}/release", "post"),
        ("/v1/subjects/{id}/usage", "get"),
        ("/v1/accounts/{id}", "put"),
        ("/v1/accounts/{id}", "get"),
        ("/v1/subjects/{id}", "put"),
        ("/v1/accounts/{id}/grants", "post"),
        ("/v1/accounts/{id}/ledger", "get"),
        ("/v1/tokens", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            paths[path][method]["responses"]["200"].is_object() || paths[path][method]["responses"]["201"].is_object(),
            "{method} {path}"
        );
    }
}

#[test]
fn a_failing_disk_answers_503_and_loses_nothing_acknowledged() {
    let directory = Directory::new("disk");
    // The log may not grow past 64 KiB: writes beyond fail (EFBIG) instead
    // of killing the process (SIGXFSZ ignored).
    let mut shell = Process::new("bash");
    shell.args(["-c", "trap '' XFSZ; ulimit -f 64; exec \"$0\" \"$@\"", binary()]);
    let server = Server::start_with(shell, &directory.data(), Some(ADMIN));
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for index in 0..2_000 {
        let key = format!("d{index}");
        let reply = server.admin("POST", "/v1/decisions", Some(decision("demo-user", "codex.local_task", 1, &key)));
        match reply.status {
            200 => acknowledged.push((key, reply.body["decision_id"].clone())),
            503 => {
                assert_eq!(reply.body["error"]["code"], "storage_unavailable");
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            other => panic!("unexpected {other}: {reply:?}"),
        }
    }
    assert_eq!(refused, 3, "the disk never failed");
    assert!(!acknowledged.is_empty());
    server.call("GET", "/readyz", None, None).expect(503, None);
    drop(server);

    // Restarted without the limit: every acknowledged decision is there.
    let server = Server::start(&directory.data());
    for (key, id) in &acknowledged {
        let reply = server
            .admin("POST", "/v1/decisions", Some(decision("demo-user", "codex.local_task", 1, key)))
            .expect(200, None);
        assert_eq!(reply.header("idempotent-replayed"), Some("true"), "{key} was lost");
        assert_eq!(&reply.body["decision_id"], id);
    }
}

#[test]
fn sigterm_finishes_in_flight_requests_and_loses_nothing() {
    let directory = Directory::new("shutdown");
    let mut server = Server::start(&directory.data());
    server.admin("PUT", "/v1/accounts/load", Some(json!({ "plan": "enterprise" }))).expect(201, None);
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let subject = format!("load-{client}");
            server
                .admin("PUT", &format!("/v1/subjects/{subject}"), Some(json!({ "account": "load" })))
                .expect(200, None);
            let (url, acknowledged) = (server.url.clone(), acknowledged.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                for index in 0.. {
                    let key = format!("{subject}-{index}");
                    let sent = agent
                        .post(format!("{url}/v1/decisions"))
                        .header("authorization", format!("Bearer {ADMIN}"))
                        .send(decision(&subject, "codex.local_task", 1, &key).to_string());
                    match sent {
                        Ok(mut response) if response.status() == 200 => {
                            let body: Value =
                                serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
                            acknowledged.lock().unwrap().push((subject.clone(), key, body["decision_id"].clone()));
                        }
                        // Refused while stopping, or the server is gone: not acknowledged.
                        _ => return,
                    }
                }
            })
        })
        .collect();
    while acknowledged.lock().unwrap().len() < 200 {
        std::thread::yield_now();
    }
    // Signalled while the clients are sending.
    let pid = server.child.id().to_string();
    assert!(Process::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    for client in clients {
        client.join().unwrap();
    }
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit {status}");
    let acknowledged = acknowledged.lock().unwrap().clone();

    let server = Server::start(&directory.data());
    for (subject, key, id) in &acknowledged {
        let reply = server
            .admin("POST", "/v1/decisions", Some(decision(subject, "codex.local_task", 1, key)))
            .expect(200, None);
        assert_eq!(reply.header("idempotent-replayed"), Some("true"), "{key} was lost");
        assert_eq!(&reply.body["decision_id"], id);
    }
    let status = server.terminate();
    assert!(status.success());
    let reconciled = Process::new(binary()).args(["reconcile", "--data-dir"]).arg(directory.data()).output().unwrap();
    assert!(reconciled.status.success(), "{}", String::from_utf8_lossy(&reconciled.stdout));
}

#[test]
fn the_admin_subcommands_print_tables_and_json() {
    let directory = Directory::new("cli");
    let server = Server::start(&directory.data());
    let run = |args: &[&str]| {
        let output = Process::new(binary())
            .args(args)
            .env("HEADROOM_URL", &server.url)
            .env("HEADROOM_TOKEN", ADMIN)
            .output()
            .unwrap();
        (output.status.code(), String::from_utf8(output.stdout).unwrap(), String::from_utf8(output.stderr).unwrap())
    };
    let (code, out, _) = run(&["accounts", "put", "acme", "--plan", "pro", "--overdraft", "2.5"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("ACCOUNT  PLAN  OVERDRAFT  BALANCE"), "{out}");
    assert!(out.contains("acme     pro   2.50"), "{out}");
    assert_eq!(run(&["subjects", "put", "ann", "--account", "acme"]).0, Some(0));
    let (code, out, _) = run(&["grants", "add", "acme", "--credits", "12.5", "--idempotency-key", "g1"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("purchase") && out.contains("12.50"), "{out}");
    let (code, out, _) = run(&["usage", "ann"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("codex-5h") && out.contains("balance 15.00 credits"), "{out}");
    let (code, out, _) = run(&["usage", "ann", "--json"]);
    assert_eq!(code, Some(0));
    let usage: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(usage["balance"], 15_000_000);
    let (code, out, _) = run(&["tokens", "create", "--kind", "subject", "--subject", "ann"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("token (shown once): hr_"), "{out}");
    let (code, _, err) = run(&["usage", "nobody"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("404") && err.contains("unknown subject"), "{err}");
}

#[test]
fn the_bench_loads_its_own_server_and_reports() {
    for (distribution, batch) in [("uniform", "1"), ("zipf", "10")] {
        let run = bench(
            &["--seconds", "1", "--connections", "4", "--subjects", "150"],
            &["--distribution", distribution, "--batch", batch],
        );
        let report = &run["reports"][0];
        assert_eq!(report["errors"], 0, "{report}");
        assert!(report["decisions"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(report["decisions"].as_u64().unwrap() % batch.parse::<u64>().unwrap(), 0);
        assert!(report["latency_p99_ms"].as_f64().unwrap() >= report["latency_p50_ms"].as_f64().unwrap());
        assert!(report["server_cpu_us_per_decision"].as_f64().unwrap() > 0.0, "{report}");
        // Where that time went: the server's threads by name, most first.
        let threads = report["server_cpu_by_thread"].as_array().unwrap();
        let named = |name: &str| threads.iter().any(|thread| thread["thread"] == name);
        assert!(named("headroom-http") && named("headroom-writer"), "{report}");
        let times: Vec<f64> = threads.iter().map(|thread| thread["us_per_decision"].as_f64().unwrap()).collect();
        assert!(times.windows(2).all(|pair| pair[0] >= pair[1]), "{report}");
        // The server's memory; per subject only from 10,000 subjects.
        assert!(report["server_rss_mb"][0].as_f64().unwrap() > 0.0, "{report}");
        assert!(report["server_bytes_per_subject"].is_null(), "{report}");
    }
    let run = bench(&["--seconds", "1", "--connections", "4", "--subjects", "10000"], &[]);
    let per_subject = &run["reports"][0]["server_bytes_per_subject"];
    // Creating 10,000 subjects grows the server by something, and by far less than 10 kB each.
    assert!((1.0..10_000.0).contains(&per_subject[0].as_f64().unwrap()), "{run}");
    // Every mix runs without errors, reservations as reserve-then-capture pairs.
    for mix in ["within", "denied", "preview", "reserve"] {
        let run = bench(&["--seconds", "1", "--connections", "2", "--subjects", "10"], &["--mix", mix]);
        let report = &run["reports"][0];
        assert_eq!((report["mix"].as_str(), report["errors"].as_u64()), (Some(mix), Some(0)), "{report}");
        assert!(report["decisions"].as_u64().unwrap() > 0, "{report}");
    }

    // Open loop: the offered rate is what is sent, on schedule.
    let run = bench(&["--seconds", "2", "--connections", "4", "--subjects", "10"], &["--rate", "400"]);
    let report = &run["reports"][0];
    assert_eq!(report["offered_rate"], 400);
    let rate = report["decisions_per_second"].as_f64().unwrap();
    assert!((300.0..=440.0).contains(&rate), "{report}");

    // A latency sweep drawn as SVG: the peak, then four open-loop runs per target.
    let directory = Directory::new("plot");
    let svg = directory.0.join("latency.svg");
    let short = ["--seconds", "1", "--connections", "2", "--subjects", "10"];
    let run = bench(&short, &["--targets", "headroom,bare", "--plot", svg.to_str().unwrap()]);
    assert_eq!(run["reports"].as_array().unwrap().len(), 10);
    assert_eq!(run["ratios"].as_array().unwrap().len(), 1, "ratios compare closed-loop runs only");
    let drawing = std::fs::read_to_string(&svg).unwrap();
    assert!(drawing.starts_with("<svg") && drawing.matches("<polyline").count() == 4, "{drawing}");

    // Headroom and the bare baseline in one run, with their ratio.
    let run = bench(&short, &["--targets", "headroom,bare,redis,redis-fsync"]);
    for (index, target) in ["headroom", "bare", "redis", "redis_fsync"].iter().enumerate() {
        let report = &run["reports"][index];
        assert_eq!(report["target"], *target);
        assert_eq!(report["errors"], 0, "{run}");
        assert!(report["decisions"].as_u64().unwrap() > 0, "{run}");
    }
    assert_eq!(run["ratios"].as_array().unwrap().len(), 3);
    let ratio = run["ratios"][0]["throughput"].as_f64().unwrap();
    let expected = run["reports"][0]["decisions_per_second"].as_f64().unwrap()
        / run["reports"][1]["decisions_per_second"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9, "{run}");
}
