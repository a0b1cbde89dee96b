//! The pure decision core of Headroom: "how much of this is allowed, and from where?"
//!
//! No I/O, no threads, no system clock. State in, decision and events out;
//! time is passed in by the caller.

pub mod account;
pub mod catalog;
pub mod decision;
pub mod encoding;
pub mod engine;
mod error;
pub mod events;
mod fingerprint;
mod grant_kind;
pub mod ids;
pub mod invariants;
mod keys;
pub mod limits;
pub mod money;
pub mod time;
pub mod wallet;
pub mod window;

/// The hash map of the core's state: foldhash, fast on short string keys and
/// seeded per process, so that client-chosen keys cannot aim at one bucket.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Asks the processor to start loading the memory at `pointer` into its
/// caches, and goes on without waiting. A decision touches a few scattered
/// allocations; asking for all of them first makes their misses overlap
/// instead of following one another.
#[inline(always)]
pub(crate) fn prefetch<T>(pointer: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing into the program and
    // never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(pointer.cast())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = pointer;
}

/// [`prefetch`] for every cache line of `*value`.
#[inline(always)]
pub(crate) fn prefetch_all<T>(value: &T) {
    const LINE: usize = 64;
    let start = std::ptr::from_ref(value).cast::<u8>();
    for offset in (0..size_of::<T>()).step_by(LINE) {
        prefetch(start.wrapping_add(offset));
    }
}

pub use account::{
    AccountState, Alert, AutoRecharge, BillingAnswer, BillingOp, BillingView, Charge, GrantSource, Notice, Outcome,
    Payment, PaymentOrigin, PaymentStatus, SettleError, Settlement, Usage, Work,
};
pub use catalog::Catalog;
pub use decision::*;
pub use engine::Engine;
pub use error::CoreError;
pub use events::*;
pub use grant_kind::GrantKind;
pub use ids::*;
pub use keys::StoredKey;
pub use money::Credits;
pub use time::{Clock, Duration, FakeClock, Timestamp};
