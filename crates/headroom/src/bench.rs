//! `headroom bench`: drives a Headroom server over HTTP/1.1 keep-alive
//! connections, closed loop (each connection sends its next request when the
//! answer to the last one arrives), and reports throughput, latency
//! percentiles, errors and the server's CPU time per decision.
//!
//! It speaks HTTP/1.1 itself over tokio's TCP streams: one request, one
//! answer with a `Content-Length`, which is what the server sends. A client
//! library would cost more CPU than the framing does, and the client shares
//! the cores with the server.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod postgres;
mod redis;

use crate::random::Random;
use crate::server::metrics::Stopwatch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// Every request for one subject (one account): the hottest case.
    Hot,
    /// Subjects drawn uniformly.
    Uniform,
    /// Subjects drawn by a Zipf law (s = 1): a few very busy, a long tail.
    Zipf,
}

/// The shape of each decision, on the bench's own catalog
/// (`src/bench/catalog.toml`, written by `headroom bench --write-catalog`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mix {
    /// Windows cover every decision.
    Within,
    /// Windows of one unit: every decision after a subject's first is paid from credits.
    Spill,
    /// The same windows and no credits: every decision after a subject's first is denied.
    Denied,
    /// Previews: decided as if, nothing consumed, no key.
    Preview,
    /// A reservation, then its capture: one call pair per decision.
    Reserve,
}

impl Mix {
    fn plan(self) -> &'static str {
        match self {
            Mix::Within | Mix::Preview | Mix::Reserve => "within",
            Mix::Spill | Mix::Denied => "spill",
        }
    }

    /// The window capacity the Redis script is given, as the plan's.
    fn capacity(self) -> &'static [u8] {
        match self.plan() {
            "within" => b"1000000000000",
            _ => b"1",
        }
    }
}

/// The catalog the bench runs on.
pub const CATALOG: &str = include_str!("bench/catalog.toml");

/// What is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// `headroom serve`: every decision made and durable before its answer.
    Headroom,
    /// A bare HTTP endpoint that parses the same body and answers a fixed
    /// decision of the same size: the ceiling HTTP and JSON allow here.
    Bare,
    /// Redis with a Lua script doing the same waterfall, no persistence.
    Redis,
    /// The same with `appendfsync always`: durable like Headroom.
    RedisFsync,
    /// `headroom serve --store postgres://…` over a PostgreSQL server that
    /// the bench starts (initdb into a temporary directory).
    Postgres,
    /// The naive PostgreSQL way on such a server: one transaction per
    /// decision (`SELECT … FOR UPDATE` on the account's row, then `UPDATE`),
    /// spoken to directly, without HTTP.
    PostgresNaive,
}

impl Target {
    fn is_redis(self) -> bool {
        matches!(self, Target::Redis | Target::RedisFsync)
    }

    /// The baselines Headroom's run on this target is compared with.
    fn baselines(self) -> &'static [Target] {
        match self {
            Target::Headroom => &[Target::Bare, Target::Redis, Target::RedisFsync],
            Target::Postgres => &[Target::PostgresNaive],
            _ => &[],
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub target: Target,
    /// A running server; `None`: start this binary's server on a fresh data directory.
    pub server: Option<String>,
    /// The admin token of `server` (it creates the bench's accounts).
    pub token: Option<String>,
    pub connections: usize,
    pub duration: std::time::Duration,
    pub distribution: Distribution,
    pub mix: Mix,
    pub subjects: u64,
    /// Subjects per account: with 1, every subject is an account of its own.
    pub subjects_per_account: u64,
    /// Decisions per call: 1 uses `/v1/decisions`, more the batch route.
    pub batch: usize,
    /// Open loop: decisions per second offered in total, on a fixed
    /// schedule; latency counts from when a request was due, so that a slow
    /// answer delaying the next request is measured, not hidden (coordinated
    /// omission). `None`: closed loop.
    pub rate: Option<u64>,
    pub json: bool,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub target: Target,
    pub route: &'static str,
    pub distribution: Distribution,
    pub mix: Mix,
    pub connections: usize,
    pub subjects: u64,
    pub batch: usize,
    /// Open loop: the decisions per second offered.
    pub offered_rate: Option<u64>,
    pub seconds: f64,
    pub calls: u64,
    pub decisions: u64,
    pub decisions_per_second: f64,
    pub errors: u64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_p999_ms: f64,
    pub latency_max_ms: f64,
    /// User and system CPU of the server process per decision, when the
    /// bench started the server itself.
    pub server_cpu_us_per_decision: Option<f64>,
    /// The same by thread name (the threads of one name summed), most
    /// first: where the server's time goes.
    pub server_cpu_by_thread: Vec<ThreadCpu>,
    /// The server's resident memory (RSS) once its subjects exist, and
    /// after the load, when the bench started the server itself.
    pub server_rss_mb: Option<(f64, f64)>,
    /// What the server's resident memory grew by per subject: by creating
    /// the subjects, and by the end of the load (their windows used, their
    /// decisions' idempotency keys remembered).
    pub server_bytes_per_subject: Option<(f64, f64)>,
}

pub fn run(config: BenchConfig) -> Result<BenchReport, String> {
    if config.connections == 0 || config.subjects == 0 || config.batch == 0 || config.subjects_per_account == 0 {
        return Err("--connections, --subjects, --subjects-per-account and --batch must be at least 1".to_string());
    }
    if config.batch > headroom_core::limits::BATCH_DECISIONS_MAX {
        return Err(format!("--batch is at most {}", headroom_core::limits::BATCH_DECISIONS_MAX));
    }
    if config.target.is_redis() {
        return run_redis(&config);
    }
    if config.target == Target::PostgresNaive {
        if config.batch > 1 || matches!(config.mix, Mix::Preview | Mix::Reserve) || config.rate.is_some() {
            return Err(
                "the naive PostgreSQL baseline is single decisions, closed loop (--mix within, spill or denied)"
                    .to_string(),
            );
        }
        if config.server.is_some() {
            return Err("baselines are always started by the bench".to_string());
        }
        let measured = postgres::run_naive(&config)?;
        return Ok(report(&config, measured));
    }
    let mut started = None;
    let (url, token) = match (config.target, &config.server, &config.token) {
        (Target::Headroom, Some(url), Some(token)) => (url.trim_end_matches('/').to_string(), token.clone()),
        (Target::Headroom, Some(_), None) => {
            return Err("--server needs the admin token in HEADROOM_TOKEN".to_string());
        }
        (_, Some(_), _) => return Err("baselines are always started by the bench".to_string()),
        (target, None, _) => {
            let server = StartedServer::start(target)?;
            let address = (server.url.clone(), server.token.clone());
            started = Some(server);
            address
        }
    };
    let address = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// is supported"))?.to_string();
    let pid = started.as_ref().map(|server| server.child.id());
    let rss_empty = pid.map(rss_bytes).transpose()?;
    if matches!(config.target, Target::Headroom | Target::Postgres) {
        setup(&url, &token, &config)?;
    }
    let rss_set_up = pid.map(rss_bytes).transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    if config.mix == Mix::Reserve && (config.batch > 1 || config.target == Target::Bare) {
        return Err("--mix reserve is single calls to Headroom only".to_string());
    }
    let protocol = Protocol::Http { token, batch: config.batch, mix: config.mix };
    let measured = runtime.block_on(drive(&config, &address, protocol, pid))?;
    let rss_loaded = pid.map(rss_bytes).transpose()?;
    let mut report = report(&config, measured);
    if let (Some(empty), Some(set_up), Some(loaded)) = (rss_empty, rss_set_up, rss_loaded) {
        let megabytes = |bytes: u64| bytes as f64 / (1 << 20) as f64;
        let per_subject = |bytes: u64| bytes.saturating_sub(empty) as f64 / config.subjects as f64;
        report.server_rss_mb = Some((megabytes(set_up), megabytes(loaded)));
        // With few subjects the server's fixed allocations swamp the figure.
        if config.subjects >= SUBJECTS_FOR_MEMORY_MIN {
            report.server_bytes_per_subject = Some((per_subject(set_up), per_subject(loaded)));
        }
    }
    Ok(report)
}

/// Subjects from which the memory per subject is reported.
pub const SUBJECTS_FOR_MEMORY_MIN: u64 = 10_000;

/// Resident memory of process `pid`, from /proc.
fn rss_bytes(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|error| format!("{path}: {error}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map(|kilobytes| kilobytes * 1024)
        .ok_or_else(|| format!("{path} has no VmRSS line"))
}

/// What one load measured: latencies, calls, failed decisions, seconds, and
/// the loaded process's CPU over the load.
type Measured = (Histogram<u64>, u64, u64, f64, Option<ServerCpu>);

/// One thread name's CPU time per decision.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadCpu {
    pub thread: String,
    pub us_per_decision: f64,
}

fn report(config: &BenchConfig, measured: Measured) -> BenchReport {
    let (histogram, calls, errors, seconds, cpu) = measured;
    let decisions = calls * config.batch as u64 - errors;
    let per_decision = |seconds: f64| seconds * 1e6 / decisions as f64;
    let cpu = cpu.filter(|_| decisions > 0);
    let mut server_cpu_by_thread: Vec<ThreadCpu> = cpu
        .iter()
        .flat_map(|cpu| &cpu.threads)
        .map(|(thread, seconds)| ThreadCpu { thread: thread.clone(), us_per_decision: per_decision(*seconds) })
        .filter(|thread| thread.us_per_decision >= THREAD_CPU_SHOWN_MIN_US)
        .collect();
    server_cpu_by_thread.sort_by(|one, other| other.us_per_decision.total_cmp(&one.us_per_decision));
    let millis = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1e6;
    BenchReport {
        target: config.target,
        route: match (config.target, config.batch) {
            (Target::Redis | Target::RedisFsync, _) => "EVALSHA waterfall",
            (Target::PostgresNaive, _) => "SELECT FOR UPDATE, UPDATE",
            (_, 1) => "/v1/decisions",
            (_, _) => "/v1/decisions/batch",
        },
        distribution: config.distribution,
        mix: config.mix,
        connections: config.connections,
        subjects: config.subjects,
        batch: config.batch,
        offered_rate: config.rate,
        seconds,
        calls,
        decisions,
        decisions_per_second: decisions as f64 / seconds,
        errors,
        latency_p50_ms: millis(0.5),
        latency_p99_ms: millis(0.99),
        latency_p999_ms: millis(0.999),
        latency_max_ms: histogram.max() as f64 / 1e6,
        server_cpu_us_per_decision: cpu.map(|cpu| per_decision(cpu.seconds)),
        server_cpu_by_thread,
        server_rss_mb: None,
        server_bytes_per_subject: None,
    }
}

/// Loads a Redis started here, with the waterfall script and the same
/// accounts' wallets.
fn run_redis(config: &BenchConfig) -> Result<BenchReport, String> {
    if config.batch > 1 {
        return Err("the Redis baseline takes one decision per call (--batch 1)".to_string());
    }
    if config.server.is_some() {
        return Err("baselines are always started by the bench".to_string());
    }
    if matches!(config.mix, Mix::Preview | Mix::Reserve) {
        return Err("the Redis baseline has no previews or reservations (--mix within, spill or denied)".to_string());
    }
    let server = redis::RedisServer::start(config.target == Target::RedisFsync)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    let sha = runtime.block_on(async {
        let mut stream = redis::connect(&server.address).await?;
        let mut buffer = Vec::new();
        let mut request = Vec::new();
        redis::encode(&[b"SCRIPT", b"LOAD", redis::WATERFALL.as_bytes()], &mut request);
        let sha = match redis::call(&mut stream, &request, &mut buffer).await? {
            redis::Reply::Text(sha) => String::from_utf8(sha).map_err(|error| error.to_string())?,
            other => return Err(format!("loading the script: {other:?}")),
        };
        for account in 0..config.subjects.div_ceil(config.subjects_per_account) {
            request.clear();
            let key = format!("wallet:bench-account-{account}");
            let credits: &[u8] = if config.mix == Mix::Denied { b"0" } else { b"1000000000000000" };
            redis::encode(&[b"SET", key.as_bytes(), credits], &mut request);
            redis::call(&mut stream, &request, &mut buffer).await?;
        }
        Ok::<String, String>(sha)
    })?;
    let protocol = Protocol::Redis { sha, capacity: config.mix.capacity(), per_account: config.subjects_per_account };
    let measured = runtime.block_on(drive(config, &server.address, protocol, Some(server.pid())))?;
    Ok(report(config, measured))
}

impl BenchReport {
    /// The server's CPU per decision by thread, most first: `name 1.2, …`.
    fn threads_line(&self) -> Option<String> {
        let threads = self.server_cpu_by_thread.iter();
        let parts: Vec<_> = threads.map(|thread| format!("{} {:.1}", thread.thread, thread.us_per_decision)).collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    pub fn table(&self) -> String {
        let cpu = self.server_cpu_us_per_decision.map_or("-".to_string(), |micros| format!("{micros:.1} µs"));
        format!(
            "{target:?}: {route}, {mix:?}, {distribution:?} over {subjects} subjects, {connections} connections, {seconds:.1} s{batch}{rate}\n\
             \n\
             throughput        {throughput:>12.0} decisions/s\n\
             latency p50       {p50:>12.3} ms\n\
             latency p99       {p99:>12.3} ms\n\
             latency p99.9     {p999:>12.3} ms\n\
             latency max       {max:>12.3} ms\n\
             errors            {errors:>12}\n\
             server CPU        {cpu:>12} per decision\n\
             {threads}\
             {memory}",
            target = self.target,
            route = self.route,
            mix = self.mix,
            distribution = self.distribution,
            subjects = self.subjects,
            connections = self.connections,
            seconds = self.seconds,
            batch = if self.batch > 1 { format!(", {} decisions per call", self.batch) } else { String::new() },
            rate = self.offered_rate.map_or(String::new(), |rate| format!(", open loop at {rate} decisions/s")),
            throughput = self.decisions_per_second,
            p50 = self.latency_p50_ms,
            p99 = self.latency_p99_ms,
            p999 = self.latency_p999_ms,
            max = self.latency_max_ms,
            errors = self.errors,
            threads = match self.threads_line() {
                Some(threads) => format!("  by thread       {threads}\n"),
                None => String::new(),
            },
            memory = match (self.server_bytes_per_subject, self.server_rss_mb) {
                (Some((set_up, loaded)), Some((rss_set_up, rss_loaded))) => format!(
                    "server memory     {set_up:>12.0} bytes per subject ({loaded:.0} after the load; RSS {rss_set_up:.0} MB, then {rss_loaded:.0} MB)\n"
                ),
                (None, Some((rss_set_up, rss_loaded))) => {
                    format!("server memory     {rss_set_up:>12.0} MB RSS ({rss_loaded:.0} MB after the load)\n")
                }
                _ => String::new(),
            },
        )
    }
}

/// Headroom's throughput against one baseline's, measured in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub headroom: Target,
    pub baseline: Target,
    /// Headroom's decisions per second over the baseline's.
    pub throughput: f64,
}

impl Ratio {
    pub fn line(&self) -> String {
        format!("{:?} / {:?}: {:.2}x the throughput", self.headroom, self.baseline, self.throughput)
    }
}

/// Ratios of each Headroom report (embedded, PostgreSQL) to its baselines'
/// reports, closed-loop runs only (an open loop's throughput is the rate it
/// was offered).
pub fn ratios(reports: &[BenchReport]) -> Vec<Ratio> {
    let closed: Vec<&BenchReport> = reports.iter().filter(|report| report.offered_rate.is_none()).collect();
    let mut ratios = Vec::new();
    for headroom in &closed {
        for baseline in closed.iter().filter(|report| headroom.target.baselines().contains(&report.target)) {
            if baseline.decisions_per_second > 0.0 {
                ratios.push(Ratio {
                    headroom: headroom.target,
                    baseline: baseline.target,
                    throughput: headroom.decisions_per_second / baseline.decisions_per_second,
                });
            }
        }
    }
    ratios
}

fn subject_name(index: u64) -> String {
    format!("bench-{index}")
}

/// Calls that create the bench's accounts at once.
const SETUP_THREADS: u64 = 8;

/// The accounts on the mix's plan, with credits enough for any run (except
/// for `denied`), and their subjects; several calls at once.
fn setup(url: &str, token: &str, config: &BenchConfig) -> Result<(), String> {
    let client = crate::client::Client { server: url.to_string(), token: Some(token.to_string()), json: true };
    let accounts = config.subjects.div_ceil(config.subjects_per_account);
    let account_setup = |account: u64| -> Result<(), String> {
        let name = format!("bench-account-{account}");
        client.put_account(&name, config.mix.plan(), None).map_err(|error| {
            format!(
                "{error} (a server given with --server must run the bench catalog: headroom bench --write-catalog FILE)"
            )
        })?;
        if config.mix != Mix::Denied {
            let grant = crate::client::GrantArguments {
                kind: "purchase".to_string(),
                credits: "1000000000".to_string(),
                priority: None,
                expires_at: None,
                idempotency_key: format!("bench-credits-{account}"),
            };
            client.add_grant(&name, &grant).map_err(|error| error.to_string())?;
        }
        let first = account * config.subjects_per_account;
        for subject in first..(first + config.subjects_per_account).min(config.subjects) {
            client.put_subject(&subject_name(subject), &name, None).map_err(|error| error.to_string())?;
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..SETUP_THREADS)
            .map(|thread| {
                let account_setup = &account_setup;
                scope.spawn(move || (thread..accounts).step_by(SETUP_THREADS as usize).try_for_each(account_setup))
            })
            .collect();
        threads.into_iter().try_for_each(|thread| thread.join().map_err(|_| "a setup thread panicked".to_string())?)
    })
}

/// Draws subjects by the configured distribution.
struct Subjects {
    distribution: Distribution,
    count: u64,
    /// Zipf: the cumulative weights, scaled to `u64`.
    cumulative: Arc<Vec<u64>>,
}

impl Subjects {
    fn new(distribution: Distribution, count: u64) -> Subjects {
        let cumulative = if distribution == Distribution::Zipf {
            let total: f64 = (1..=count).map(|rank| 1.0 / rank as f64).sum();
            let mut sum = 0.0;
            (1..=count)
                .map(|rank| {
                    sum += 1.0 / rank as f64;
                    ((sum / total) * u64::MAX as f64) as u64
                })
                .collect()
        } else {
            Vec::new()
        };
        Subjects { distribution, count, cumulative: Arc::new(cumulative) }
    }

    fn draw(&self, random: &mut Random) -> u64 {
        match self.distribution {
            Distribution::Hot => 0,
            Distribution::Uniform => random.below(self.count),
            Distribution::Zipf => {
                let point = random.next_u64();
                (self.cumulative.partition_point(|weight| *weight < point) as u64).min(self.count - 1)
            }
        }
    }

    fn share(&self) -> Subjects {
        Subjects { distribution: self.distribution, count: self.count, cumulative: self.cumulative.clone() }
    }
}

/// How a worker talks to what it loads.
#[derive(Clone)]
enum Protocol {
    Http { token: String, batch: usize, mix: Mix },
    Redis { sha: String, capacity: &'static [u8], per_account: u64 },
}

async fn drive(config: &BenchConfig, address: &str, protocol: Protocol, pid: Option<u32>) -> Result<Measured, String> {
    let subjects = Subjects::new(config.distribution, config.subjects);
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    // Every connection first, so that the clock starts with the load.
    let mut streams = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        let stream =
            TcpStream::connect(address).await.map_err(|error| format!("cannot connect to {address}: {error}"))?;
        stream.set_nodelay(true).map_err(|error| error.to_string())?;
        streams.push(stream);
    }
    // Open loop: each connection sends every `interval` nanoseconds, the
    // connections' schedules spread evenly over one interval.
    let pace = match config.rate {
        Some(0) => return Err("--rate must be at least 1".to_string()),
        Some(rate) => Some(1_000_000_000 * config.connections as u64 * config.batch as u64 / rate),
        None => None,
    };
    let cpu_before = pid.map(CpuTimes::of).transpose()?;
    let run = Stopwatch::start();
    let mut tasks = Vec::new();
    for (connection, stream) in streams.into_iter().enumerate() {
        let worker = Worker {
            stream,
            connection,
            protocol: protocol.clone(),
            subjects: subjects.share(),
            random: Random::new(0x6865_6164_726f_6f6d ^ connection as u64),
            stop: stop.clone(),
            completed: completed.clone(),
            pace: pace.map(|interval| (run, interval, interval * connection as u64 / config.connections as u64)),
        };
        tasks.push(tokio::spawn(worker.run()));
    }
    let progress = tokio::spawn(show_progress(config.duration, completed.clone(), config.batch, !config.json));
    tokio::time::sleep(config.duration).await;
    stop.store(true, Ordering::SeqCst);
    progress.abort();
    let mut histogram = Histogram::<u64>::new(3).expect("3 significant figures is valid");
    let (mut calls, mut errors) = (0, 0);
    for task in tasks {
        let (part, part_calls, part_errors) = task.await.map_err(|error| error.to_string())??;
        histogram.add(part).map_err(|error| error.to_string())?;
        calls += part_calls;
        errors += part_errors;
    }
    let seconds = run.nanos() as f64 / 1e9;
    let cpu_after = pid.map(CpuTimes::of).transpose()?;
    let cpu = cpu_before.zip(cpu_after).map(|(before, after)| after.since(&before));
    Ok((histogram, calls, errors, seconds, cpu))
}

struct Worker {
    stream: TcpStream,
    connection: usize,
    protocol: Protocol,
    subjects: Subjects,
    random: Random,
    stop: Arc<AtomicBool>,
    completed: Arc<AtomicU64>,
    /// Open loop: the run's start, the interval and this connection's offset, in nanoseconds.
    pace: Option<(Stopwatch, u64, u64)>,
}

impl Worker {
    async fn run(mut self) -> Result<(Histogram<u64>, u64, u64), String> {
        let mut histogram = Histogram::<u64>::new(3).expect("3 significant figures is valid");
        let (mut calls, mut errors, mut sequence) = (0u64, 0u64, 0u64);
        let mut request = Vec::with_capacity(4096);
        let mut buffer = Vec::with_capacity(64 * 1024);
        while !self.stop.load(Ordering::Relaxed) {
            request.clear();
            // Where latency counts from: the send (closed loop), or when the
            // request was due (open loop). A request sent late because the
            // last answer came late counts from when it was due; one the
            // timer woke late for counts from its send, as the lateness is
            // the client's.
            let due = match self.pace {
                Some((start, interval, offset)) => {
                    let due = start.later(offset + interval * calls);
                    if due.nanos() == 0 {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(due.instant())).await;
                        None
                    } else {
                        Some(due)
                    }
                }
                None => None,
            };
            let sent;
            // Decisions of this call that failed: all or none, but for a
            // batch, answered 200 with a status per decision.
            let failed = match &self.protocol {
                Protocol::Http { token, batch, mix: Mix::Reserve } => {
                    let _ = batch;
                    sequence += 1;
                    let subject = subject_name(self.subjects.draw(&mut self.random));
                    let key = format!("bench-{}-{sequence}", self.connection);
                    let reserve = format!(
                        "{{\"subject\":\"{subject}\",\"feature\":\"task\",\"quantity\":2,\"idempotency_key\":\"{key}\"}}"
                    );
                    http_request(&mut request, "/v1/reservations", token, reserve.as_bytes());
                    sent = due.unwrap_or_else(Stopwatch::start);
                    self.stream.write_all(&request).await.map_err(|error| format!("sending: {error}"))?;
                    let (status, body) = read_response(&mut self.stream, &mut buffer, true).await?;
                    let id = (status == 200).then(|| reservation_id(&body)).flatten();
                    match id {
                        Some(id) => {
                            let capture = format!("{{\"quantity\":1,\"idempotency_key\":\"{key}-capture\"}}");
                            request.clear();
                            http_request(
                                &mut request,
                                &format!("/v1/reservations/{id}/capture"),
                                token,
                                capture.as_bytes(),
                            );
                            self.stream.write_all(&request).await.map_err(|error| format!("sending: {error}"))?;
                            u64::from(read_response(&mut self.stream, &mut buffer, false).await?.0 != 200)
                        }
                        None => 1,
                    }
                }
                Protocol::Http { token, batch, mix } => {
                    let batch = *batch;
                    let fields = match mix {
                        Mix::Preview => "\"preview\":true".to_string(),
                        _ => String::new(),
                    };
                    let mut body = Vec::with_capacity(128 * batch);
                    if batch > 1 {
                        body.extend_from_slice(b"{\"decisions\":[");
                    }
                    for index in 0..batch {
                        if index > 0 {
                            body.push(b',');
                        }
                        sequence += 1;
                        let subject = self.subjects.draw(&mut self.random);
                        let _ = write!(
                            body,
                            "{{\"subject\":\"{}\",\"feature\":\"task\",\"quantity\":1,{}}}",
                            subject_name(subject),
                            if fields.is_empty() {
                                format!("\"idempotency_key\":\"bench-{}-{sequence}\"", self.connection)
                            } else {
                                fields.clone()
                            }
                        );
                    }
                    if batch > 1 {
                        body.extend_from_slice(b"]}");
                    }
                    let path = if batch > 1 { "/v1/decisions/batch" } else { "/v1/decisions" };
                    http_request(&mut request, path, token, &body);
                    sent = due.unwrap_or_else(Stopwatch::start);
                    self.stream.write_all(&request).await.map_err(|error| format!("sending: {error}"))?;
                    let (status, body) = read_response(&mut self.stream, &mut buffer, batch > 1).await?;
                    match (status, batch) {
                        (200, 1) => 0,
                        (200, _) => batch as u64 - batch_allowed_or_denied(&body, batch) as u64,
                        _ => batch as u64,
                    }
                }
                Protocol::Redis { sha, capacity, per_account } => {
                    sequence += 1;
                    let subject = self.subjects.draw(&mut self.random);
                    let account = subject / per_account;
                    let key = format!("bench-{}-{sequence}", self.connection);
                    // The plan's windows and the price, as Headroom applies them.
                    let keys = [
                        format!("key:bench-account-{account}:{key}"),
                        format!("window-5h:{}", subject_name(subject)),
                        format!("window-weekly:{}", subject_name(subject)),
                        format!("wallet:bench-account-{account}"),
                        format!("ledger:bench-account-{account}"),
                    ];
                    let mut arguments: Vec<&[u8]> = vec![b"EVALSHA", sha.as_bytes(), b"5"];
                    arguments.extend(keys.iter().map(|key| key.as_bytes()));
                    arguments.extend([&b"1"[..], capacity, b"18000", capacity, b"604800", b"80000", key.as_bytes()]);
                    redis::encode(&arguments, &mut request);
                    sent = due.unwrap_or_else(Stopwatch::start);
                    u64::from(!matches!(
                        redis::call(&mut self.stream, &request, &mut buffer).await?,
                        redis::Reply::Text(_)
                    ))
                }
            };
            histogram.record(sent.nanos().max(1)).map_err(|error| error.to_string())?;
            calls += 1;
            errors += failed;
            self.completed.fetch_add(1, Ordering::Relaxed);
        }
        Ok((histogram, calls, errors))
    }
}

/// How many of a batch answer's `batch` results are decisions (status 200,
/// allowed or denied) rather than errors. Counted on the bytes, which the
/// server writes as `{"results":[{"status":…`: parsing half a megabyte of
/// JSON per call would take the client more CPU than the server spends.
/// An answer of another shape counts as no decision at all.
fn batch_allowed_or_denied(body: &[u8], batch: usize) -> usize {
    let results = memchr::memmem::find_iter(body, b"{\"status\":").count();
    if results != batch || !body.starts_with(b"{\"results\":[{\"status\":") {
        return 0;
    }
    memchr::memmem::find_iter(body, b"{\"status\":200,").count()
}

/// A POST with a JSON body.
fn http_request(request: &mut Vec<u8>, path: &str, token: &str, body: &[u8]) {
    let _ = write!(
        request,
        "POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    request.extend_from_slice(body);
}

/// The reservation id in a reserve answer.
fn reservation_id(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value["reservation"]["id"].as_str().map(str::to_string)
}

/// Reads one response (headers and a `Content-Length` body); its status,
/// and its body when `keep`.
async fn read_response(stream: &mut TcpStream, buffer: &mut Vec<u8>, keep: bool) -> Result<(u16, Vec<u8>), String> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            let head =
                std::str::from_utf8(&buffer[..end]).map_err(|_| "a response head that is not text".to_string())?;
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|code| code.parse().ok())
                .ok_or_else(|| format!("a response without a status: {head:?}"))?;
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
                })
                .ok_or_else(|| "a response without Content-Length".to_string())?;
            let total = end + 4 + length;
            while buffer.len() < total {
                let read = stream.read(&mut chunk).await.map_err(|error| format!("receiving: {error}"))?;
                if read == 0 {
                    return Err("the server closed the connection".to_string());
                }
                buffer.extend_from_slice(&chunk[..read]);
            }
            let body = if keep { buffer[end + 4..total].to_vec() } else { Vec::new() };
            buffer.drain(..total);
            return Ok((status, body));
        }
        let read = stream.read(&mut chunk).await.map_err(|error| format!("receiving: {error}"))?;
        if read == 0 {
            return Err("the server closed the connection".to_string());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// A progress bar on standard error, redrawn every second (on a terminal).
async fn show_progress(duration: std::time::Duration, completed: Arc<AtomicU64>, batch: usize, enabled: bool) {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return;
    }
    let total = duration.as_secs().max(1);
    let mut last = 0;
    for second in 1..=total {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = completed.load(Ordering::Relaxed);
        let filled = (second * 30 / total) as usize;
        eprint!(
            "\r[{}{}] {second}/{total} s  {:>9} decisions/s ",
            "#".repeat(filled),
            ".".repeat(30 - filled),
            (now - last) * batch as u64
        );
        last = now;
    }
    eprintln!();
}

/// A server this bench started: fresh data directory, random admin token.
struct StartedServer {
    child: Child,
    url: String,
    token: String,
    directory: PathBuf,
    /// The PostgreSQL server of `Target::Postgres`, kept running until the
    /// node is stopped, then dropped (stopped and removed) after it.
    _database: Option<crate::throwaway_postgres::Postgres>,
}

impl StartedServer {
    fn start(target: Target) -> Result<StartedServer, String> {
        use std::io::BufRead;
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes).map_err(|error| error.to_string())?;
        let token: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        let directory = std::env::temp_dir().join(format!("headroom-bench-{}-{}", std::process::id(), &token[..8]));
        let executable = std::env::current_exe().map_err(|error| error.to_string())?;
        let mut command = std::process::Command::new(executable);
        let mut database = None;
        match target {
            Target::Headroom | Target::Postgres => {
                std::fs::create_dir_all(&directory).map_err(|error| error.to_string())?;
                let catalog = directory.join("bench-catalog.toml");
                std::fs::write(&catalog, CATALOG).map_err(|error| error.to_string())?;
                command
                    .args(["serve", "--listen", "127.0.0.1:0", "--no-demo", "--catalog"])
                    .arg(&catalog)
                    .arg("--data-dir")
                    .arg(directory.join("data"));
                if target == Target::Postgres {
                    let server = postgres::start()?;
                    command.args(["--store", &server.url()]);
                    database = Some(server);
                }
            }
            Target::Bare => {
                command.args(["bench-bare-server", "--listen", "127.0.0.1:0"]);
            }
            Target::Redis | Target::RedisFsync | Target::PostgresNaive => {
                return Err("baselines without HTTP are started by their own runners".to_string());
            }
        };
        let mut child = command
            .env("HEADROOM_ADMIN_TOKEN", &token)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("cannot start the server: {error}"))?;
        let stdout = child.stdout.take().expect("piped");
        let mut url = None;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(address) = line.strip_prefix("headroom listening on ") {
                url = Some(address.to_string());
                break;
            }
        }
        let server = StartedServer { child, url: url.unwrap_or_default(), token, directory, _database: database };
        if server.url.is_empty() {
            return Err("the server stopped before listening".to_string());
        }
        Ok(server)
    }
}

/// Threads below this many µs of CPU per decision are left out of the
/// breakdown by thread.
const THREAD_CPU_SHOWN_MIN_US: f64 = 0.05;

/// User and system CPU seconds a process used over a load: in all (threads
/// that ended included), and by thread name (the threads of one name summed).
#[derive(Debug, Clone, PartialEq)]
struct ServerCpu {
    seconds: f64,
    threads: std::collections::BTreeMap<String, f64>,
}

/// A process's CPU seconds so far: in all, and each thread's (by thread id,
/// with its name).
#[derive(Debug, Clone)]
struct CpuTimes {
    seconds: f64,
    threads: std::collections::BTreeMap<u32, (String, f64)>,
}

impl CpuTimes {
    /// What process `pid` used so far, from /proc.
    fn of(pid: u32) -> Result<CpuTimes, String> {
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path).map_err(|error| format!("{path}: {error}"))?;
        let (_, seconds) = parse_stat(&stat).ok_or_else(|| format!("{path}: unexpected format"))?;
        let directory = format!("/proc/{pid}/task");
        let mut threads = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(&directory).map_err(|error| format!("{directory}: {error}"))? {
            let entry = entry.map_err(|error| format!("{directory}: {error}"))?;
            let Some(id) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
            // A thread that ended since the directory was read has no stat.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            let times = parse_stat(&stat).ok_or_else(|| format!("{directory}/{id}/stat: unexpected format"))?;
            threads.insert(id, times);
        }
        Ok(CpuTimes { seconds, threads })
    }

    /// What was used between `before` and these times, by thread name. A
    /// thread that started since counts whole; one that ended counts in the
    /// total only.
    fn since(&self, before: &CpuTimes) -> ServerCpu {
        let mut threads = std::collections::BTreeMap::new();
        for (id, (name, seconds)) in &self.threads {
            let earlier = before.threads.get(id).map_or(0.0, |(_, seconds)| *seconds);
            *threads.entry(name.clone()).or_insert(0.0) += seconds - earlier;
        }
        ServerCpu { seconds: self.seconds - before.seconds, threads }
    }
}

/// The name and the user and system CPU seconds in a line of
/// `/proc/…/stat`; the name is in parentheses and may hold any character.
fn parse_stat(stat: &str) -> Option<(String, f64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let (_, name) = head.split_once('(')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index)?.parse::<f64>().ok();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the name.
    Some((name.to_string(), (ticks(11)? + ticks(12)?) / clock_ticks_per_second()))
}

/// The bare baseline: parses the same bodies as `headroom serve` (into the
/// same types) and answers a fixed decision of the same shape, deciding
/// nothing and storing nothing.
pub fn serve_bare(listen: std::net::SocketAddr) -> Result<(), String> {
    use crate::server::api::{BatchBody, DecisionBody};
    use axum::routing::post;
    const ANSWER: &str = r#"{"decision_id":"5503ee8b395b5da7e7e0a084ebb49e52","kind":"decide","allowed":true,"reason":"covered_by_windows","subject":"bench-0","feature":"task","quantity":1,"price":80000,"sources":[{"kind":"windows","units":1,"credits":0}],"credits_charged":0,"windows":[{"window":"5h","scope":"subject","limit":300,"used":1,"remaining":299,"resets_at":"2026-11-25T11:56:53.815Z"},{"window":"weekly","scope":"subject","limit":1500,"used":1,"remaining":1499,"resets_at":"2026-11-30T00:00:00.000Z"}],"balance":1000000000000000,"credits_short":0,"decided_at":"2026-11-25T06:56:53.815Z"}"#;
    let json = |body: String| ([(axum::http::header::CONTENT_TYPE, "application/json")], body);
    let app = axum::Router::new()
        .route(
            "/v1/decisions",
            post(move |bytes: axum::body::Bytes| async move {
                match crate::server::body::parse::<DecisionBody>(&bytes).and_then(DecisionBody::request) {
                    Ok(_) => json(ANSWER.to_string()),
                    Err(error) => json(serde_json::to_string(&error.body()).expect("errors serialize")),
                }
            }),
        )
        .route(
            "/v1/decisions/batch",
            post(move |bytes: axum::body::Bytes| async move {
                let decisions = crate::server::body::parse::<BatchBody>(&bytes).map_or(0, |batch| {
                    batch.decisions.into_iter().filter(|decision| decision.clone().request().is_ok()).count()
                });
                let item = format!(r#"{{"status":200,"replayed":false,"decision":{ANSWER}}}"#);
                json(format!(r#"{{"results":[{}]}}"#, vec![item; decisions].join(",")))
            }),
        );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|error| format!("{listen}: {error}"))?;
        let address = listener.local_addr().map_err(|error| error.to_string())?;
        println!("headroom listening on http://{address}");
        axum::serve(listener, app).await.map_err(|error| error.to_string())
    })
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

impl Drop for StartedServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// The generated part of BENCHMARKS.md: the machine, the command, one row
/// per run, and the ratios.
pub fn markdown(command: &str, reports: &[BenchReport], ratios: &[Ratio]) -> String {
    use std::fmt::Write as _;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|line| {
                line.strip_prefix("model name")?.split_once(':').map(|(_, name)| name.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown".to_string());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_string(), |text| text.trim().to_string());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {cores} cores ({cpu}), Linux {kernel}. Client and servers share these cores, unpinned.\n"
    );
    let _ = writeln!(out, "Command:\n\n```sh\n{command}\n```\n");
    let _ = writeln!(
        out,
        "| target | load | decisions/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU µs/decision | by thread | server bytes/subject (set up, loaded) |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---|---:|");
    for report in reports {
        let load = report.offered_rate.map_or("closed loop".to_string(), |rate| format!("open loop, {rate}/s"));
        let cpu = report.server_cpu_us_per_decision.map_or("-".to_string(), |micros| format!("{micros:.1}"));
        let memory = report
            .server_bytes_per_subject
            .map_or("-".to_string(), |(set_up, loaded)| format!("{set_up:.0}, {loaded:.0}"));
        let threads = report.threads_line().unwrap_or_else(|| "-".to_string());
        let _ = writeln!(
            out,
            "| {:?} | {load} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {cpu} | {threads} | {memory} |",
            report.target,
            report.decisions_per_second,
            report.latency_p50_ms,
            report.latency_p99_ms,
            report.latency_p999_ms,
            report.errors
        );
    }
    if !ratios.is_empty() {
        let _ = writeln!(out);
        for ratio in ratios {
            let _ = writeln!(out, "- {}", ratio.line());
        }
    }
    out
}

/// Replaces what stands between the markers of section `name` in `path`
/// (`<!-- name:begin -->`, `<!-- name:end -->`) with `text`. Markers that
/// are missing are added at the end of the file, which is made if missing.
pub fn write_section(path: &std::path::Path, name: &str, text: &str) -> Result<(), String> {
    if name.is_empty() || !name.chars().all(|character| character.is_ascii_alphanumeric() || character == '-') {
        return Err(format!("--section {name:?}: letters, digits and '-' only"));
    }
    let begin_marker = format!("<!-- {name}:begin -->");
    let end_marker = format!("<!-- {name}:end -->");
    let mut file = match std::fs::read_to_string(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(error.to_string()),
    };
    if !file.contains(&begin_marker) && !file.contains(&end_marker) {
        if !file.is_empty() && !file.ends_with('\n') {
            file.push('\n');
        }
        file.push_str(&format!("{begin_marker}\n{end_marker}\n"));
    }
    let (Some(begin), Some(end)) = (file.find(&begin_marker), file.find(&end_marker)) else {
        return Err(format!("the file has {begin_marker} or {end_marker} but not both"));
    };
    if end < begin {
        return Err(format!("{end_marker} comes before {begin_marker}"));
    }
    let updated = format!("{}{begin_marker}\n{text}{}", &file[..begin], &file[end..]);
    std::fs::write(path, updated).map_err(|error| error.to_string())
}

/// Offered loads of a latency sweep, as fractions of the closed-loop peak.
pub const SWEEP_FRACTIONS: [f64; 4] = [0.25, 0.5, 0.75, 0.9];

/// The closed-loop peak of `config`'s target, then open-loop runs at
/// fractions of it: the points of a latency-against-load curve.
pub fn sweep(config: &BenchConfig) -> Result<Vec<BenchReport>, String> {
    let peak = run(BenchConfig { rate: None, ..config.clone() })?;
    let mut reports = vec![peak.clone()];
    for fraction in SWEEP_FRACTIONS {
        let rate = ((peak.decisions_per_second * fraction) as u64).max(1);
        reports.push(run(BenchConfig { rate: Some(rate), ..config.clone() })?);
    }
    Ok(reports)
}

/// An SVG chart of p99 (solid) and p50 (dashed) latency against the
/// throughput reached, one colour per target, from open-loop reports.
pub fn plot(reports: &[BenchReport]) -> String {
    use std::fmt::Write as _;
    let points: Vec<&BenchReport> = reports.iter().filter(|report| report.offered_rate.is_some()).collect();
    let (width, height, left, bottom, top, right) = (760.0, 440.0, 70.0, 50.0, 40.0, 170.0);
    let x_max = points.iter().map(|report| report.decisions_per_second).fold(1.0, f64::max) * 1.05;
    // Latency on a logarithmic scale, from 0.1 ms to the next power of ten
    // above the slowest p99: tails span orders of magnitude.
    let y_min: f64 = 0.1;
    let slowest = points.iter().map(|report| report.latency_p99_ms).fold(1.0, f64::max);
    let y_max = 10f64.powf(slowest.log10().ceil());
    let x = |value: f64| left + value / x_max * (width - left - right);
    let y = |value: f64| {
        let share = (value.max(y_min).log10() - y_min.log10()) / (y_max.log10() - y_min.log10());
        height - bottom - share * (height - top - bottom)
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" font-size="14">Latency against load: p99 (solid), p50 (dashed)</text>"#,
        left
    );
    let mut value_y = y_min;
    while value_y <= y_max * 1.001 {
        let _ = writeln!(
            svg,
            r##"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="#ddd"/><text x="{3}" y="{4}" text-anchor="end">{5} ms</text>"##,
            left,
            y(value_y),
            width - right,
            left - 6.0,
            y(value_y) + 4.0,
            value_y
        );
        value_y *= 10.0;
    }
    for tick in 0..=5 {
        let value_x = x_max * f64::from(tick) / 5.0;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{:.0}k</text>"#,
            x(value_x),
            height - bottom + 18.0,
            value_x / 1000.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">decisions per second</text>"#,
        (left + width - right) / 2.0,
        height - 12.0
    );
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"];
    let mut targets: Vec<Target> = Vec::new();
    for report in &points {
        if !targets.contains(&report.target) {
            targets.push(report.target);
        }
    }
    for (index, target) in targets.iter().enumerate() {
        let colour = colours[index % colours.len()];
        let mut series: Vec<&&BenchReport> = points.iter().filter(|report| report.target == *target).collect();
        series.sort_by(|one, other| one.decisions_per_second.total_cmp(&other.decisions_per_second));
        for (quantile, dash) in [(0.99, ""), (0.5, r#" stroke-dasharray="5,4""#)] {
            let line: Vec<String> = series
                .iter()
                .map(|report| {
                    let latency = if quantile == 0.99 { report.latency_p99_ms } else { report.latency_p50_ms };
                    format!("{:.1},{:.1}", x(report.decisions_per_second), y(latency))
                })
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"#,
                line.join(" ")
            );
        }
        let _ = writeln!(
            svg,
            r#"<rect x="{0}" y="{1}" width="14" height="3" fill="{colour}"/><text x="{2}" y="{3}">{target:?}</text>"#,
            width - right + 16.0,
            top + 20.0 * index as f64 + 10.0,
            width - right + 36.0,
            top + 20.0 * index as f64 + 15.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_name_and_cpu_seconds_whatever_the_name_holds() {
        let ticks = clock_ticks_per_second();
        // utime 250 and stime 50 ticks; the name holds a parenthesis and spaces.
        let line = "4242 (odd) name (x) S 1 4242 4242 0 -1 4194368 100 0 0 0 250 50 0 0 20 0 7 0 12 0 0";
        assert_eq!(parse_stat(line), Some(("odd) name (x".to_string(), 300.0 / ticks)));
        assert_eq!(parse_stat("4242 (short) S 1 2"), None);
        assert_eq!(parse_stat("no parentheses"), None);
    }

    #[test]
    fn cpu_by_thread_sums_a_name_and_counts_threads_that_started_whole() {
        let times = |seconds: f64, threads: &[(u32, &str, f64)]| CpuTimes {
            seconds,
            threads: threads.iter().map(|(id, name, seconds)| (*id, (name.to_string(), *seconds))).collect(),
        };
        let before = times(10.0, &[(1, "main", 1.0), (2, "http", 2.0), (3, "http", 3.0), (4, "ended", 1.0)]);
        let after = times(16.0, &[(1, "main", 1.0), (2, "http", 4.0), (3, "http", 4.0), (5, "writer", 1.5)]);
        let used = after.since(&before);
        assert_eq!(used.seconds, 6.0);
        let expected = [("http", 3.0), ("main", 0.0), ("writer", 1.5)];
        assert_eq!(used.threads, expected.iter().map(|(name, seconds)| (name.to_string(), *seconds)).collect());
    }

    #[test]
    fn zipf_draws_favour_the_first_subjects_and_stay_in_range() {
        let subjects = Subjects::new(Distribution::Zipf, 1_000);
        let mut random = Random::new(1);
        let mut counts = vec![0u64; 1_000];
        for _ in 0..100_000 {
            counts[subjects.draw(&mut random) as usize] += 1;
        }
        // With s = 1 over 1,000 subjects, the first holds about 13 % and the tenth about 1.3 %.
        assert!((11_000..15_000).contains(&counts[0]), "{}", counts[0]);
        assert!(counts[0] > 5 * counts[9] && counts[9] > counts[999]);
    }

    #[test]
    fn a_batch_answer_counts_its_decisions_not_its_errors() {
        use crate::server::api::{BatchError, BatchResult, BatchView};
        let result = |status: u16| BatchResult {
            status,
            replayed: false,
            decision: None,
            error: (status != 200).then(|| BatchError {
                code: "idempotency_capacity".to_string(),
                message: "the account remembers too many keys; a \"status\": 200 here is text".to_string(),
                field: None,
            }),
        };
        let view = BatchView { results: [200, 429, 200, 409, 200].map(result).to_vec() };
        let body = serde_json::to_vec(&view).unwrap();
        assert_eq!(batch_allowed_or_denied(&body, 5), 3);
        // An answer that does not hold one result per decision holds none.
        assert_eq!(batch_allowed_or_denied(&body, 6), 0);
        assert_eq!(batch_allowed_or_denied(b"{\"code\":\"unavailable\"}", 1), 0);
    }
}

#[cfg(test)]
mod markdown_tests {
    use super::*;

    #[test]
    fn only_the_marked_section_is_rewritten() {
        let path = std::env::temp_dir().join(format!("headroom-bench-section-{}.md", std::process::id()));
        std::fs::write(&path, "# Title\n<!-- bench:begin -->\nold\n<!-- bench:end -->\n## Kept\n").unwrap();
        write_section(&path, "bench", "new\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "# Title\n<!-- bench:begin -->\nnew\n<!-- bench:end -->\n## Kept\n");
        // Another section is added at the end, then rewritten in place.
        write_section(&path, "postgres-hot", "first\n").unwrap();
        write_section(&path, "postgres-hot", "second\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "# Title\n<!-- bench:begin -->\nnew\n<!-- bench:end -->\n## Kept\n\
             <!-- postgres-hot:begin -->\nsecond\n<!-- postgres-hot:end -->\n"
        );
        std::fs::write(&path, "only <!-- bench:end -->").unwrap();
        assert!(write_section(&path, "bench", "new\n").is_err());
        assert!(write_section(&path, "no spaces", "new\n").is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
