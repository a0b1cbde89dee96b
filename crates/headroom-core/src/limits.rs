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

// ----- Payments and alerts -----

/// Largest amount of one payment, in the currency's minor unit: the most a
/// payment provider takes in one charge (Stripe: 99,999,999 cents).
pub const PAYMENT_AMOUNT_MAX: u64 = 99_999_999;

/// Expiry of purchased credits when the catalog does not say: twelve months.
pub const PURCHASED_CREDITS_EXPIRY_DEFAULT: crate::Duration = crate::Duration::from_days(365);

/// Most packs a catalog offers.
pub const PACKS_MAX: usize = 64;

/// Most checkouts of one account waiting for their payment: each is kept in
/// the account's state until it is paid or lapses.
pub const PENDING_CHECKOUTS_PER_ACCOUNT_MAX: usize = 100;

/// How long an unpaid checkout is kept (a provider's checkout page lapses
/// within a day).
pub const CHECKOUT_RETENTION: crate::Duration = crate::Duration::from_days(7);

/// How long a paid payment is kept, so that a refund can find its grant
/// (card refunds are possible for about 180 days).
pub const PAYMENT_RETENTION: crate::Duration = crate::Duration::from_days(400);

/// Most alerts waiting for delivery in one account; beyond, the oldest is
/// dropped and counted, so that an unreachable receiver cannot grow a state
/// without bound.
pub const NOTICES_PER_ACCOUNT_MAX: usize = 1_000;

/// Attempts to deliver one alert (or to charge one recharge) before giving up.
pub const DELIVERY_ATTEMPTS_MAX: u32 = 12;

/// The first retry delay of a delivery; each further attempt doubles it, up
/// to [`DELIVERY_BACKOFF_MAX`].
pub const DELIVERY_BACKOFF_FIRST: crate::Duration = crate::Duration::from_seconds(2);
pub const DELIVERY_BACKOFF_MAX: crate::Duration = crate::Duration::from_hours(1);

/// Failed automatic recharges in a row that turn auto-recharge off.
pub const RECHARGE_FAILURES_MAX: u32 = 3;

/// The wait after a failed automatic recharge before the next one may start.
pub const RECHARGE_RETRY_DELAY: crate::Duration = crate::Duration::from_seconds(1);

// ----- The HTTP API -----

/// Largest request body; a larger one is refused with 413.
pub const HTTP_BODY_BYTES_MAX: usize = 1024 * 1024;

/// Most decisions in one call to the batch route.
pub const BATCH_DECISIONS_MAX: usize = 1_000;
