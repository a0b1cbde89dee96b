//! Every bound of the core and of the HTTP API, named in one place with what it costs.

/// Longest subject, account, feature, plan, window or grant id, in bytes.
/// Ids are copied into every event; keeping them short keeps events small.
pub const ID_LENGTH_MAX: usize = 128;

/// Longest idempotency key, in bytes (room for a UUID plus a prefix, or a hash).
pub const IDEMPOTENCY_KEY_LENGTH_MAX: usize = 255;

/// Largest quantity of one request, in units. A charge (quantity × price)
/// is further bounded by [`CHARGE_MICROS_MAX`] and refused beyond it.
pub const QUANTITY_MAX: u64 = 1_000_000_000;

/// Highest price of one unit, in micro-credits (one million credits).
pub const PRICE_MICROS_MAX: u64 = 1_000_000_000_000;

/// Most attributes on one request; each is hashed into the fingerprint.
pub const ATTRIBUTES_MAX: usize = 16;

/// Longest attribute name or value, in bytes.
pub const ATTRIBUTE_LENGTH_MAX: usize = 128;

/// Most windows in one plan: every decision walks all that apply.
pub const WINDOWS_PER_PLAN_MAX: usize = 16;

/// Most buckets of one sliding window: its state holds one counter per bucket
/// (plus one) for every subject it applies to.
pub const SLIDING_BUCKETS_MAX: u32 = 600;

/// Most grants in one wallet: the waterfall walks them in order.
pub const GRANTS_PER_ACCOUNT_MAX: usize = 1_000;

/// Most open reservations per account: each holds window units and credits.
pub const RESERVATIONS_PER_ACCOUNT_MAX: usize = 10_000;

/// Most idempotency keys one account remembers at a time. A key is never
/// forgotten before its retention period ends (that could charge twice), so
/// a new key beyond this bound is refused with a retryable error instead.
pub const IDEMPOTENCY_KEYS_PER_ACCOUNT_MAX: usize = 1_000_000;

/// How long a key is remembered unless the catalog says otherwise.
pub const IDEMPOTENCY_RETENTION_DEFAULT: crate::Duration = crate::Duration::from_hours(24);

/// The shortest retention a catalog may configure: shorter would not cover
/// client retries.
pub const IDEMPOTENCY_RETENTION_MIN: crate::Duration = crate::Duration::from_hours(24);

/// Lifetime of a reservation when the request does not give one.
pub const RESERVATION_LIFETIME_DEFAULT: crate::Duration = crate::Duration::from_seconds(15 * 60);

/// Longest lifetime of a reservation: held units and credits are unavailable
/// to everyone else until then.
pub const RESERVATION_LIFETIME_MAX: crate::Duration = crate::Duration::from_hours(24);

/// Largest weight of a feature in a group. A weighted quantity is at most
/// `QUANTITY_MAX * GROUP_WEIGHT_MAX` (10^15) units, far below `u64::MAX`.
pub const GROUP_WEIGHT_MAX: u64 = 1_000_000;

/// Largest capacity of one window, and largest token bucket refill, in units.
/// Window counters never exceed it, so adding one weighted quantity to a
/// counter stays below `u64::MAX`.
pub const WINDOW_CAPACITY_MAX: u64 = QUANTITY_MAX * 1_000;

/// Buckets of a sliding window when the catalog does not say: one per minute
/// of an hourly window, a small overcount for 61 counters per subject.
pub const SLIDING_BUCKETS_DEFAULT: u32 = 60;

/// Longest duration a catalog may name (period, offset, expiry, retention):
/// about a hundred years. Keeps `timestamp + duration` far from overflow.
pub const CATALOG_DURATION_MAX: crate::Duration = crate::Duration::from_days(36_500);

/// Most grants a plan includes: each becomes a grant of every account that
/// opens on the plan, counted against `GRANTS_PER_ACCOUNT_MAX`.
pub const INCLUDED_GRANTS_PER_PLAN_MAX: usize = 16;

/// Longest usage unit name (`task`, `second`), in bytes: it is shown to people
/// next to every amount.
pub const UNIT_LENGTH_MAX: usize = 32;

/// Largest grant, in micro-credits (one billion credits). With at most
/// [`GRANTS_PER_ACCOUNT_MAX`] grants a wallet's sum stays below 2^63.
pub const GRANT_MICROS_MAX: u64 = 1_000_000_000_000_000;

/// Largest charge of one request, in micro-credits.
pub const CHARGE_MICROS_MAX: u64 = 1_000_000_000_000_000;

/// Largest overdraft, in micro-credits.
pub const OVERDRAFT_MICROS_MAX: u64 = 1_000_000_000_000_000;

// ----- The HTTP API -----

/// Largest request body; a larger one is refused with 413.
pub const HTTP_BODY_BYTES_MAX: usize = 1024 * 1024;

/// Most decisions in one call to the batch route.
pub const BATCH_DECISIONS_MAX: usize = 1_000;
