//! Prometheus counters and histograms, kept in atomics and rendered as text
//! at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use headroom_core::{Decision, Reason, Source};

/// Measures how long a request took, for the latency histogram only: no
/// decision ever reads it (decisions take time from the store's clock).
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(std::time::Instant);

impl Stopwatch {
    #[allow(clippy::disallowed_methods)] // Metrics only; see above.
    pub fn start() -> Stopwatch {
        Stopwatch(std::time::Instant::now())
    }

    /// The moment `nanos` after this one started: a schedule point.
    pub fn later(self, nanos: u64) -> Stopwatch {
        Stopwatch(self.0 + std::time::Duration::from_nanos(nanos))
    }

    pub fn instant(self) -> std::time::Instant {
        self.0
    }

    /// Nanoseconds since this started, 0 while it lies in the future.
    pub fn nanos(self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn micros(self) -> u64 {
        u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

const REASONS: [Reason; 6] = [
    Reason::CoveredByWindows,
    Reason::CoveredByWindowsAndCredits,
    Reason::CoveredByCredits,
    Reason::PartlyWrittenOff,
    Reason::LimitReached,
    Reason::InsufficientCredits,
];

const SOURCE_KINDS: [&str; 7] =
    ["windows", "free_tier", "promotion", "entitlement", "purchase", "overdraft", "write_off"];

/// Upper bounds of the latency buckets, in microseconds.
const LATENCY_BUCKETS_MICROS: [u64; 14] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000];

#[derive(Default)]
pub struct Metrics {
    decisions_by_reason: [AtomicU64; REASONS.len()],
    decisions_by_source: [AtomicU64; SOURCE_KINDS.len()],
    decision_errors: AtomicU64,
    latency: Histogram,
    /// (route, status) → requests. Read-mostly: a pair is inserted once,
    /// then counted without a write lock or an allocation.
    requests: RwLock<BTreeMap<(String, u16), AtomicU64>>,
}

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_MICROS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Metrics {
    /// A decision answered; a replay counts in the latency only, its
    /// decision was counted when it was made.
    pub fn decision(&self, decision: &Decision, replayed: bool, micros: u64) {
        self.latency.observe(micros);
        if replayed {
            return;
        }
        let reason = REASONS.iter().position(|reason| *reason == decision.reason).expect("every reason is listed");
        self.decisions_by_reason[reason].fetch_add(1, Ordering::Relaxed);
        for used in &decision.sources {
            let kind = match &used.source {
                Source::Windows => "windows",
                Source::Grant { kind, .. } => kind.as_str(),
                Source::Overdraft => "overdraft",
                Source::WriteOff => "write_off",
            };
            let index = SOURCE_KINDS.iter().position(|known| *known == kind).expect("every source kind is listed");
            self.decisions_by_source[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn decision_error(&self, micros: u64) {
        self.decision_errors.fetch_add(1, Ordering::Relaxed);
        self.latency.observe(micros);
    }

    pub fn request(&self, route: &str, status: u16) {
        let counted = self.requests.read().expect("not poisoned").iter().find_map(|((known, code), count)| {
            (*code == status && known == route).then(|| count.fetch_add(1, Ordering::Relaxed))
        });
        if counted.is_none() {
            let mut requests = self.requests.write().expect("not poisoned");
            requests.entry((route.to_string(), status)).or_default().fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The text exposition format; `store` lines come from the store.
    pub fn render(&self, store: &StoreFigures) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP headroom_decisions_total Decisions by outcome and reason.");
        let _ = writeln!(out, "# TYPE headroom_decisions_total counter");
        for (reason, count) in REASONS.iter().zip(&self.decisions_by_reason) {
            let outcome =
                if matches!(reason, Reason::LimitReached | Reason::InsufficientCredits) { "denied" } else { "allowed" };
            let _ = writeln!(
                out,
                "headroom_decisions_total{{outcome=\"{outcome}\",reason=\"{reason}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "headroom_decisions_total{{outcome=\"error\",reason=\"error\"}} {}",
            self.decision_errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP headroom_decision_sources_total Allowed decisions by the kind of source that covered part of them."
        );
        let _ = writeln!(out, "# TYPE headroom_decision_sources_total counter");
        for (kind, count) in SOURCE_KINDS.iter().zip(&self.decisions_by_source) {
            let _ =
                writeln!(out, "headroom_decision_sources_total{{source=\"{kind}\"}} {}", count.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP headroom_decision_duration_seconds Time from a decision request read to its durable answer."
        );
        let _ = writeln!(out, "# TYPE headroom_decision_duration_seconds histogram");
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BUCKETS_MICROS.iter().zip(&self.latency.buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "headroom_decision_duration_seconds_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        let count = self.latency.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "headroom_decision_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "headroom_decision_duration_seconds_sum {}",
            self.latency.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "headroom_decision_duration_seconds_count {count}");
        let _ = writeln!(out, "# HELP headroom_settlement_lag_updates Balance updates decided but not settled yet.");
        let _ = writeln!(out, "# TYPE headroom_settlement_lag_updates gauge");
        let _ = writeln!(out, "headroom_settlement_lag_updates {}", store.unsettled_updates);
        let _ = writeln!(out, "# HELP headroom_settlement_lag_batches Log batches durable but not settled yet.");
        let _ = writeln!(out, "# TYPE headroom_settlement_lag_batches gauge");
        let _ = writeln!(out, "headroom_settlement_lag_batches {}", store.lag_batches);
        let _ =
            writeln!(out, "# HELP headroom_group_commit_commands Commands per group commit (one log write and sync).");
        let _ = writeln!(out, "# TYPE headroom_group_commit_commands histogram");
        let mut cumulative = 0;
        for (bound, count) in &store.commit_sizes {
            cumulative += count;
            let _ = writeln!(out, "headroom_group_commit_commands_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "headroom_group_commit_commands_bucket{{le=\"+Inf\"}} {}", store.commits);
        let _ = writeln!(out, "headroom_group_commit_commands_sum {}", store.committed_commands);
        let _ = writeln!(out, "headroom_group_commit_commands_count {}", store.commits);
        let _ = writeln!(out, "# HELP headroom_http_requests_total HTTP requests by route and status.");
        let _ = writeln!(out, "# TYPE headroom_http_requests_total counter");
        for ((route, status), count) in self.requests.read().expect("not poisoned").iter() {
            let count = count.load(Ordering::Relaxed);
            let _ = writeln!(out, "headroom_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}");
        }
        out
    }
}

impl Histogram {
    fn observe(&self, micros: u64) {
        if let Some(index) = LATENCY_BUCKETS_MICROS.iter().position(|bound| micros <= *bound) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// What the store reports for one scrape.
pub struct StoreFigures {
    pub unsettled_updates: u64,
    pub lag_batches: u64,
    /// (upper bound, commits in that bucket), not cumulative.
    pub commit_sizes: Vec<(u64, u64)>,
    pub commits: u64,
    pub committed_commands: u64,
}

/// Keeps `GrantKind` and the source list in step.
#[cfg(test)]
#[test]
fn every_grant_kind_is_a_source_kind() {
    for kind in headroom_core::GrantKind::ALL {
        assert!(SOURCE_KINDS.contains(&kind.as_str()));
    }
}
