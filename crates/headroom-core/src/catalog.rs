//! The catalog: features, groups, plans and settings, validated into core types.
//! Parsing from TOML lives in [`parse`]; this module holds the validated model
//! and the index a decision uses to find the windows that apply.

mod parse;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::GrantKind;
use crate::ids::{FeatureId, GrantId, GroupId, PlanId, WindowId};
use crate::money::Credits;
use crate::time::Duration;

pub use parse::CatalogError;

/// A validated catalog. Build it with [`Catalog::from_toml`].
#[derive(Debug, Clone)]
pub struct Catalog {
    pub features: BTreeMap<FeatureId, Feature>,
    pub groups: BTreeMap<GroupId, Group>,
    pub plans: BTreeMap<PlanId, Plan>,
    pub settings: Settings,
    /// What can be bought; `None`: nothing (checkout and auto-recharge are off).
    pub purchases: Option<Purchases>,
    pub alerts: Alerts,
    /// For each plan and feature: the windows of that plan that meter the
    /// feature, with the weight of one unit of it. Built once by [`Catalog::new`].
    meters: crate::FastMap<PlanId, crate::FastMap<FeatureId, Vec<Meter>>>,
    /// The TOML the catalog was read from, kept so that a data directory can
    /// record the catalog its log was written under.
    source: std::sync::Arc<str>,
}

/// One unit of `feature` counts as `weight` units of the plan's window `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meter {
    /// Index into [`Plan::windows`].
    pub window: usize,
    pub weight: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    pub id: FeatureId,
    /// The usage unit, for people: `task`, `second`, `token`.
    pub unit: String,
    pub price: Price,
}

/// Price of one unit in micro-credits, possibly by the value of one request attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Price {
    Flat(Credits),
    ByAttribute {
        /// The request attribute that selects the price, such as `model`.
        attribute: String,
        prices: BTreeMap<String, Credits>,
        /// The price when the request does not carry the attribute; without
        /// one, such a request is refused.
        default: Option<Credits>,
    },
}

/// Features that share windows, each unit of a member counting `weight` units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: GroupId,
    pub weights: BTreeMap<FeatureId, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: PlanId,
    pub windows: Vec<WindowSpec>,
    /// How far below zero a wallet on this plan may go (default 0). An
    /// account may override it.
    pub overdraft: Credits,
    /// Grants an account receives when it opens on this plan (a free tier,
    /// an enterprise entitlement pool).
    pub included_grants: Vec<IncludedGrant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncludedGrant {
    pub kind: GrantKind,
    pub credits: Credits,
    pub priority: u32,
    /// Expiry relative to the opening of the account; `None` uses the
    /// catalog's default grant expiry.
    pub expires_after: Option<Duration>,
}

/// What a window meters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metered {
    Feature(FeatureId),
    Group(GroupId),
}

/// Whose usage a window counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Each subject has its own instance of the window.
    Subject,
    /// One instance for the whole account (an organization-wide cap).
    Account,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    pub id: WindowId,
    pub metered: Metered,
    pub scope: Scope,
    /// Most units covered per instance (fixed, anchored), per span of the
    /// period (sliding), or the bucket size (token bucket).
    pub capacity: u64,
    pub kind: WindowKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Instances `[k·period + offset, (k+1)·period + offset)`. A weekly window
    /// that resets on Monday 00:00 UTC has period 7d and offset 4d (the epoch
    /// was a Thursday).
    Fixed { period: Duration, offset: Duration },
    /// An instance starts with the first covered request after the previous
    /// one ended and lasts `period`.
    Anchored { period: Duration },
    /// Any span of `period` covers at most `capacity`; counted in `buckets`
    /// buckets, conservatively.
    Sliding { period: Duration, buckets: u32 },
    /// Capacity plus a steady refill of `refill` units every `per`.
    TokenBucket { refill: u64, per: Duration },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Expiry of a grant that does not name one; `None`: grants do not expire.
    pub default_grant_expiry: Option<Duration>,
    /// How long an idempotency key is remembered.
    pub idempotency_retention: Duration,
}

/// Credits for money: packs at a fixed price, or any whole number of
/// credits at a price per credit. Amounts are in the currency's minor unit
/// (cents), so a price is an exact product, never rounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchases {
    /// ISO 4217, lower case (`usd`).
    pub currency: String,
    /// Minor units per whole credit.
    pub price_per_credit: u64,
    /// Whole credits, the smallest and the largest purchase.
    pub min_credits: u64,
    pub max_credits: u64,
    /// Purchased credits expire this long after the payment.
    pub credits_expire_after: Duration,
    pub packs: BTreeMap<GrantId, Pack>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pack {
    /// Whole credits.
    pub credits: u64,
    /// Minor units.
    pub price: u64,
}

impl Purchases {
    /// The price of `credits` whole credits, if that many may be bought.
    pub fn price_of(&self, credits: u64) -> Result<u64, String> {
        if credits < self.min_credits || credits > self.max_credits {
            return Err(format!("must be between {} and {} credits", self.min_credits, self.max_credits));
        }
        Ok(credits.checked_mul(self.price_per_credit).expect("the catalog bounds max_credits × price_per_credit"))
    }
}

/// When the product is told about an account: shares of windows and a balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alerts {
    /// `limit.approaching` when a window's use crosses this percentage.
    pub limit_approaching_percent: u64,
    /// `balance.low` when the available balance falls below this (an
    /// account's auto-recharge minimum takes its place while enabled).
    pub low_balance: Option<Credits>,
}

impl Default for Alerts {
    fn default() -> Alerts {
        Alerts { limit_approaching_percent: 80, low_balance: None }
    }
}

impl Catalog {
    /// Parses and validates a catalog. Errors name the exact path of the bad
    /// field, such as `plans.plus.windows[1].period: must be > 0`.
    pub fn from_toml(text: &str) -> Result<Catalog, CatalogError> {
        let mut catalog = parse::parse(text)?;
        catalog.source = std::sync::Arc::from(text);
        Ok(catalog)
    }

    /// Builds a catalog from parts that are already valid on their own and
    /// indexes which windows meter which feature.
    pub fn new(
        features: BTreeMap<FeatureId, Feature>,
        groups: BTreeMap<GroupId, Group>,
        plans: BTreeMap<PlanId, Plan>,
        settings: Settings,
    ) -> Catalog {
        let mut meters: crate::FastMap<PlanId, crate::FastMap<FeatureId, Vec<Meter>>> = crate::FastMap::default();
        for plan in plans.values() {
            for (window, spec) in plan.windows.iter().enumerate() {
                let weights: Vec<(FeatureId, u64)> = match &spec.metered {
                    Metered::Feature(feature) => vec![(feature.clone(), 1)],
                    Metered::Group(group) => {
                        groups[group].weights.iter().map(|(feature, weight)| (feature.clone(), *weight)).collect()
                    }
                };
                for (feature, weight) in weights {
                    meters
                        .entry(plan.id.clone())
                        .or_default()
                        .entry(feature)
                        .or_default()
                        .push(Meter { window, weight });
                }
            }
        }
        Catalog {
            features,
            groups,
            plans,
            settings,
            purchases: None,
            alerts: Alerts::default(),
            meters,
            source: std::sync::Arc::from(""),
        }
    }

    /// The windows of `plan` that meter `feature`, in the plan's order.
    pub fn meters(&self, plan: &PlanId, feature: &FeatureId) -> &[Meter] {
        self.meters
            .get(plan.as_str())
            .and_then(|features| features.get(feature.as_str()))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The TOML text this catalog was read from (empty if built in code).
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn demo() -> Catalog {
        Catalog::from_toml(DEMO_CATALOG).expect("the demo catalog is valid")
    }
}

/// The demo catalog, `examples/catalog.toml`, compiled in.
pub const DEMO_CATALOG: &str = include_str!("../../../examples/catalog.toml");
