//! Many nodes over one PostgreSQL: three real `headroom serve` processes
//! over a throwaway PostgreSQL server that the test starts itself, driven
//! over HTTP by 64 concurrent clients, with a node killed and the database
//! restarted during the load.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command as Process;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{Value, json};

mod support;
use support::postgres::Postgres;
use support::*;

/// Windows of 300 units and 1,200 credits at one credit per unit: exactly
/// 1,500 units can ever be allowed.
const CATALOG: &str = r#"
[features.task]
unit = "task"
price = 1_000_000

[plans.small]
[[plans.small.windows]]
id = "burst"
meters = "task"
kind = "anchored"
capacity = 300
period = "30d"
[[plans.small.windows]]
id = "quarter"
meters = "task"
kind = "anchored"
capacity = 500
period = "90d"
"#;
const WINDOW_UNITS: u64 = 300;
const CREDIT_UNITS: u64 = 1_200;
const CLIENTS: usize = 64;
const NODES: usize = 3;

fn start_node(directory: &Path, database: &str, catalog: &Path) -> Server {
    let mut command = Process::new(binary());
    command
        .env("HEADROOM_STORE", database)
        .env("HEADROOM_CATALOG", catalog)
        .env("HEADROOM_NO_DEMO", "true")
        .env("HEADROOM_POSTGRES_CONNECTIONS", "4");
    Server::start_with(command, directory, Some(ADMIN))
}

/// A PostgreSQL server, one node over it, and account `acme` on plan
/// `small` with subject `ann`.
fn one_node(name: &str) -> (Directory, Postgres, Server) {
    let directory = Directory::new(name);
    let postgres = Postgres::start();
    let catalog = directory.0.join("catalog.toml");
    std::fs::write(&catalog, CATALOG).unwrap();
    let node = start_node(&directory.0.join("node"), &postgres.url(), &catalog);
    node.admin("PUT", "/v1/accounts/acme", Some(json!({ "plan": "small" }))).expect(201, None);
    node.admin("PUT", "/v1/subjects/ann", Some(json!({ "account": "acme" }))).expect(200, None);
    (directory, postgres, node)
}

fn reconcile(postgres: &Postgres) -> (bool, String) {
    let output = Process::new(binary()).args(["reconcile", "--store", &postgres.url()]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// What the clients saw, for the checks after the load.
#[derive(Default)]
struct Seen {
    /// Key → (decision id, allowed).
    answers: HashMap<String, (String, bool)>,
    unavailable: u64,
    unreachable: u64,
    replays: u64,
}

#[test]
fn three_nodes_over_one_database_allow_exactly_the_headroom_through_a_node_kill_and_a_database_restart() {
    let directory = Directory::new("postgres-nodes");
    let postgres = Arc::new(Mutex::new(Postgres::start()));
    let catalog = directory.0.join("catalog.toml");
    std::fs::write(&catalog, CATALOG).unwrap();
    let database = postgres.lock().unwrap().url();

    // Three nodes start at once: the schema is made exactly once.
    let nodes: Vec<Server> = std::thread::scope(|scope| {
        let starting: Vec<_> = (0..NODES)
            .map(|index| {
                let data = directory.0.join(format!("node-{index}"));
                let catalog = &catalog;
                let database = &database;
                scope.spawn(move || start_node(&data, database, catalog))
            })
            .collect();
        starting.into_iter().map(|node| node.join().unwrap()).collect()
    });
    let setup = &nodes[0];
    setup.admin("PUT", "/v1/accounts/acme", Some(json!({ "plan": "small" }))).expect(201, None);
    setup.admin("PUT", "/v1/subjects/ann", Some(json!({ "account": "acme" }))).expect(200, None);
    let grant = json!({ "kind": "purchase", "credits": CREDIT_UNITS * 1_000_000, "idempotency_key": "setup" });
    setup.admin("POST", "/v1/accounts/acme/grants", Some(grant)).expect(201, None);
    // A node that did not set it up sees it.
    assert_eq!(nodes[2].admin("GET", "/v1/accounts/acme", None).expect(200, None).body["balance"], 1_200_000_000);

    let urls: Arc<RwLock<Vec<String>>> = Arc::new(RwLock::new(nodes.iter().map(|node| node.url.clone()).collect()));
    let nodes = Arc::new(Mutex::new(nodes));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));

    // Faults during the load: one node killed and restarted, then the database restarted.
    let faults = {
        let (nodes, urls, acknowledged, done, postgres, directory_path, catalog) = (
            nodes.clone(),
            urls.clone(),
            acknowledged.clone(),
            done.clone(),
            postgres.clone(),
            directory.0.clone(),
            catalog.clone(),
        );
        let database = database.clone();
        std::thread::spawn(move || {
            let wait_for = |count: u64| {
                while acknowledged.load(Ordering::SeqCst) < count && !done.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
            };
            wait_for(300);
            {
                let mut nodes = nodes.lock().unwrap();
                let killed = &mut nodes[1];
                killed.child.kill().unwrap();
                killed.child.wait().unwrap();
            }
            let restarted = start_node(&directory_path.join("node-1"), &database, &catalog);
            urls.write().unwrap()[1] = restarted.url.clone();
            nodes.lock().unwrap()[1] = restarted;
            wait_for(700);
            postgres.lock().unwrap().restart();
        })
    };

    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (urls, seen, acknowledged) = (urls.clone(), seen.clone(), acknowledged.clone());
            std::thread::spawn(move || {
                let mut attempt = client;
                for sequence in 0.. {
                    let key = format!("c{client}-{sequence}");
                    let body = json!({ "subject": "ann", "feature": "task", "quantity": 1, "idempotency_key": key });
                    // Until a definite answer: a node down or the database down is retried, same key.
                    let reply = loop {
                        attempt += 1;
                        let url = urls.read().unwrap()[attempt % NODES].clone();
                        match try_call(&url, "POST", "/v1/decisions", Some(ADMIN), Some(&body)) {
                            Ok(reply) if reply.status == 503 => {
                                assert_eq!(reply.body["error"]["code"], "storage_unavailable", "{reply:?}");
                                seen.lock().unwrap().unavailable += 1;
                                std::thread::sleep(std::time::Duration::from_millis(20));
                            }
                            Ok(reply) => break reply,
                            Err(_) => {
                                seen.lock().unwrap().unreachable += 1;
                                std::thread::sleep(std::time::Duration::from_millis(20));
                            }
                        }
                    };
                    assert_eq!(reply.status, 200, "{reply:?}");
                    let id = reply.body["decision_id"].as_str().unwrap().to_string();
                    let allowed = reply.body["allowed"].as_bool().unwrap();
                    seen.lock().unwrap().answers.insert(key.clone(), (id.clone(), allowed));
                    acknowledged.fetch_add(1, Ordering::SeqCst);
                    // Some keys again, on another node: the original decision, nothing charged.
                    if sequence % 5 == 0 {
                        let other = urls.read().unwrap()[(attempt + 1) % NODES].clone();
                        if let Ok(replay) = try_call(&other, "POST", "/v1/decisions", Some(ADMIN), Some(&body))
                            && replay.status == 200
                        {
                            assert_eq!(replay.body["decision_id"], id.as_str(), "{replay:?}");
                            assert_eq!(replay.body["allowed"], allowed, "{replay:?}");
                            assert_eq!(replay.header("idempotent-replayed"), Some("true"), "{replay:?}");
                            seen.lock().unwrap().replays += 1;
                        }
                    }
                    if !allowed {
                        assert_eq!(reply.body["reason"], "limit_reached", "{reply:?}");
                        assert_eq!(reply.body["balance"], 0, "{reply:?}");
                        return;
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    faults.join().unwrap();

    let seen = seen.lock().unwrap();
    let allowed = seen.answers.values().filter(|(_, allowed)| *allowed).count() as u64;
    assert_eq!(allowed, WINDOW_UNITS + CREDIT_UNITS, "no overspend and no lost headroom");
    assert!(seen.unavailable > 0, "clients saw 503 while the database was down");
    assert!(seen.replays > 0);
    eprintln!(
        "allowed {allowed}, answers {}, 503s {}, unreachable {}, replays {}",
        seen.answers.len(),
        seen.unavailable,
        seen.unreachable,
        seen.replays
    );

    // Each key charged once, in the database itself, and every allowed
    // answer a client got is recorded under its decision id: none was lost.
    let postgres = postgres.lock().unwrap();
    assert_eq!(postgres.psql("SELECT count(*), count(DISTINCT idempotency_key) FROM usage_events"), "1500|1500");
    let recorded: HashMap<String, String> = postgres
        .psql("SELECT idempotency_key || ' ' || replace(decision::text, '-', '') FROM usage_events")
        .lines()
        .map(|line| {
            let (key, decision) = line.split_once(' ').unwrap();
            (key.to_string(), decision.to_string())
        })
        .collect();
    for (key, (decision, allowed)) in &seen.answers {
        assert_eq!(recorded.get(key), allowed.then_some(decision), "key {key}");
    }
    let node = nodes.lock().unwrap();
    // Settlement finishes on its own; then the balance of record is zero.
    let mut balance = Value::Null;
    for _ in 0..500 {
        balance = node[0].admin("GET", "/v1/accounts/acme", None).expect(200, None).body["balance"].clone();
        if postgres.psql("SELECT count(*) FROM balance_updates WHERE NOT settled") == "0" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(balance, 0);
    let (clean, report) = reconcile(&postgres);
    assert!(clean, "{report}");
    assert!(report.contains("usage events       1500"), "{report}");
}

#[test]
fn reconcile_names_a_discrepancy_in_the_database() {
    let (_directory, postgres, node) = one_node("postgres-reconcile");
    let grant = json!({ "kind": "purchase", "credits": 5_000_000, "idempotency_key": "setup" });
    node.admin("POST", "/v1/accounts/acme/grants", Some(grant)).expect(201, None);
    for index in 0..305 {
        let body =
            json!({ "subject": "ann", "feature": "task", "quantity": 1, "idempotency_key": format!("k{index}") });
        assert_eq!(node.admin("POST", "/v1/decisions", Some(body)).expect(200, None).body["allowed"], true);
    }
    let (clean, report) = reconcile(&postgres);
    assert!(clean, "{report}");
    // The newest balance update lost: no gap shows, the count does.
    postgres.psql(
        "DELETE FROM balance_updates WHERE account = 'acme' AND sequence = (SELECT max(sequence) FROM balance_updates)",
    );
    let (clean, report) = reconcile(&postgres);
    assert!(!clean, "{report}");
    assert!(report.contains("account acme: 6 balance updates decided but 5 recorded"), "{report}");
    // One in the middle lost as well.
    postgres.psql("DELETE FROM balance_updates WHERE sequence = 3 AND account = 'acme'");
    let (clean, report) = reconcile(&postgres);
    assert!(!clean, "{report}");
    assert!(report.contains("balance update sequence 4 follows 2"), "{report}");
}

/// Polls `condition` every 20 ms for up to 20 s: background work on its own schedule.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..1_000 {
        if condition() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{what} did not happen within 20 s");
}

#[test]
fn the_sweeper_expires_reservations_and_grants_with_no_request_and_settles_the_expiry() {
    let (_directory, postgres, node) = one_node("postgres-sweeper");
    let soon = headroom_core::Clock::now(&headroom_store::SystemClock)
        .saturating_add(headroom_core::Duration::from_seconds(2))
        .to_string();
    let grants = [
        json!({ "kind": "promotion", "credits": 10_000_000, "expires_at": soon, "idempotency_key": "short" }),
        json!({ "kind": "purchase", "credits": 5_000_000, "idempotency_key": "kept" }),
    ];
    for grant in grants {
        node.admin("POST", "/v1/accounts/acme/grants", Some(grant)).expect(201, None);
    }
    // Holds the windows' 300 units and 8 credits of the expiring promotion for one second.
    let reserve =
        json!({ "subject": "ann", "feature": "task", "quantity": 308, "lifetime_s": 1, "idempotency_key": "r" });
    let reserved = node.admin("POST", "/v1/reservations", Some(reserve)).expect(200, None);
    assert_eq!(reserved.body["allowed"], true, "{reserved:?}");
    assert_eq!(node.admin("GET", "/v1/accounts/acme", None).expect(200, None).body["balance"], 7_000_000);

    // Nobody calls; the sweeper releases the hold when the reservation expires…
    eventually("the reservation's expiry", || {
        let usage = node.admin("GET", "/v1/subjects/ann/usage", None).expect(200, None);
        usage.body["windows"][0]["remaining"] == 300
    });
    // …and lets the promotion's unspent credits lapse at its expiry, with a
    // ledger entry that settlement then applies.
    eventually("the grant's expiry, settled", || {
        let ledger = node.admin("GET", "/v1/accounts/acme/ledger", None).expect(200, None);
        ledger.body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| entry["cause"] == "expiry" && entry["delta"] == -10_000_000 && entry["settled"] == true)
    });
    assert_eq!(node.admin("GET", "/v1/accounts/acme", None).expect(200, None).body["balance"], 5_000_000);
    let (clean, report) = reconcile(&postgres);
    assert!(clean, "{report}");
}

#[test]
fn the_bench_compares_headroom_over_postgresql_with_a_transaction_per_decision() {
    let run = bench(
        &["--targets", "postgres,postgres-naive", "--seconds", "1", "--connections", "4"],
        &["--distribution", "uniform", "--subjects", "20", "--subjects-per-account", "1"],
    );
    for (report, target) in run["reports"].as_array().unwrap().iter().zip(["postgres", "postgres_naive"]) {
        assert_eq!(report["target"], target, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
        assert!(report["decisions"].as_u64().unwrap() > 0, "{report}");
    }
    let ratio = &run["ratios"][0];
    assert_eq!((ratio["headroom"].as_str(), ratio["baseline"].as_str()), (Some("postgres"), Some("postgres_naive")));
    assert!(ratio["throughput"].as_f64().unwrap() > 0.0, "{ratio}");
}

#[test]
fn a_token_made_on_one_node_works_on_another() {
    let (directory, postgres, one) = one_node("postgres-tokens");
    let two = start_node(&directory.0.join("two"), &postgres.url(), &directory.0.join("catalog.toml"));
    let made = one.admin("POST", "/v1/tokens", Some(json!({ "kind": "service", "account": "acme" }))).expect(201, None);
    let token = made.body["token"].as_str().unwrap().to_string();
    let body = json!({ "subject": "ann", "feature": "task", "quantity": 1, "idempotency_key": "k" });
    let decided = two.call("POST", "/v1/decisions", Some(&token), Some(body)).expect(200, None);
    assert_eq!(decided.body["allowed"], true, "{decided:?}");
    // Limited to its account on the other node too; a forged secret is refused.
    two.call("GET", "/v1/accounts/other", Some(&token), None).expect(403, Some("forbidden"));
    let last = if token.ends_with('0') { "1" } else { "0" };
    let forged = format!("{}{last}", &token[..token.len() - 1]);
    two.call("GET", "/v1/subjects/ann/usage", Some(&forged), None).expect(401, Some("unauthorized"));
    assert_eq!(postgres.psql("SELECT count(*) FROM tokens"), "1");
    assert!(!postgres.psql("SELECT record FROM tokens").contains(&token[token.len() - 20..]), "only the hash is kept");
}

#[test]
fn an_account_with_unreadable_data_fails_alone_not_the_accounts_batched_with_it() {
    use headroom_core::{AccountId, Catalog, PlanId};
    use headroom_store::{Command, PostgresConfig, PostgresStore, Store};

    let postgres = Postgres::start();
    let catalog = Arc::new(Catalog::from_toml(CATALOG).unwrap());
    // One worker, so that what waits behind it is taken in one transaction.
    let config = PostgresConfig { connections: 1, ..PostgresConfig::new(postgres.url()) };
    let store = PostgresStore::open(config, catalog).unwrap();
    let set_plan = |account: &str| Command::SetPlan {
        account: AccountId::new(account).unwrap(),
        plan: PlanId::new("small").unwrap(),
        overdraft: None,
    };
    for account in ["blocker", "good", "bad"] {
        let open = Command::OpenAccount {
            account: AccountId::new(account).unwrap(),
            plan: PlanId::new("small").unwrap(),
            overdraft: None,
        };
        store.execute(open).unwrap();
    }
    postgres.psql("UPDATE accounts SET state = '\\x00' WHERE id = 'bad'");

    // Another session holds the blocker's row while the worker waits for it.
    let mut holder = Process::new("psql")
        .args(["-X", "-q", "-h", "127.0.0.1", "-p", &postgres.port().to_string(), "-U", "headroom", "-d", "postgres"])
        .args(["-c", "BEGIN; SELECT 1 FROM accounts WHERE id = 'blocker' FOR UPDATE; SELECT pg_sleep(1); COMMIT;"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let some = |sql: &str| postgres.psql(sql) != "0";
    eventually("the other session's lock", || {
        some("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(1)%' AND wait_event = 'PgSleep'")
    });
    let (sender, answers) = std::sync::mpsc::channel();
    let submit = |account: &'static str| {
        let sender = sender.clone();
        store.submit(set_plan(account), Box::new(move |answer| sender.send((account, answer.is_ok())).unwrap()));
    };
    submit("blocker");
    eventually("the worker waiting for the lock", || some("SELECT count(*) FROM pg_locks WHERE NOT granted"));
    submit("good");
    submit("bad");
    let mut answers: Vec<(&str, bool)> = (0..3).map(|_| answers.recv().unwrap()).collect();
    answers.sort();
    assert_eq!(answers, [("bad", false), ("blocker", true), ("good", true)]);
    assert!(holder.wait().unwrap().success());
    store.close();
}
