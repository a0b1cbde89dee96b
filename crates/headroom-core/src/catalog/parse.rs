//! Reads a catalog from TOML and validates every field, so that a [`Catalog`]
//! is always well formed. The document is parsed into a plain [`toml::Table`]
//! and walked by hand rather than deserialized: that way every error names the
//! exact path of the bad field, such as `plans.plus.windows[1].period: must be > 0`.
//!
//! # Format
//!
//! ```toml
//! [settings]                      # optional
//! default_grant_expiry = "365d"   # optional; absent: grants do not expire
//! idempotency_retention = "24h"   # optional, default and minimum 24h
//!
//! [features."codex.local_task"]
//! unit = "task"                   # required, non-empty
//! price = 80000                   # micro-credits per unit, >= 0
//!
//! [features."codex.cloud_task"]
//! unit = "task"
//! price_by = "model"              # the request attribute that selects the price
//! prices = { "gpt-5-codex" = 400000, "gpt-5-codex-mini" = 100000 }
//! default_price = 400000          # optional: without it, a request that does
//!                                 # not carry the attribute is refused
//! # Exactly one of `price` or `price_by` (with `prices`).
//!
//! [groups.codex]                  # features that share windows
//! weights = { "codex.local_task" = 1, "codex.cloud_task" = 5 }   # each >= 1
//!
//! [plans.plus]
//! overdraft = 0                   # optional micro-credits, default 0
//!
//! [[plans.plus.windows]]          # optional, at most WINDOWS_PER_PLAN_MAX
//! id = "codex-5h"                 # unique within the plan
//! meters = "codex"                # a feature id or a group id
//! scope = "subject"               # "subject" (default) or "account"
//! kind = "anchored"               # "fixed" | "anchored" | "sliding" | "token_bucket"
//! capacity = 50                   # units, >= 1
//! period = "5h"                   # fixed, anchored, sliding: > 0
//! # offset = "4d"                 # fixed only: optional, default 0, < period
//! # buckets = 60                  # sliding only: optional, default 60; must
//! #                               # divide the period into whole milliseconds
//! # refill = 10                   # token_bucket only: units added every `per`, >= 1
//! # per = "1m"                    # token_bucket only: > 0
//!
//! [[plans.plus.included_grants]]  # optional, at most INCLUDED_GRANTS_PER_PLAN_MAX
//! kind = "free_tier"              # free_tier | promotion | entitlement | purchase
//! credits = 5000000               # micro-credits, >= 1
//! priority = 0                    # optional, default 0
//! expires_after = "30d"           # optional, > 0; absent: the default grant expiry
//! ```
//!
//! Durations are strings: an integer followed by one unit of `ms`, `s`, `m`,
//! `h`, `d` or `w` (`"500ms"`, `"5h"`, `"7d"`, `"1w"`). Unknown fields are
//! errors, and so are fields that do not belong to a window's kind. Every
//! number is bounded by a constant of [`crate::limits`]. At least one feature
//! and one plan are required.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::RangeInclusive;

use toml::{Table, Value};

use super::{
    Alerts, Catalog, Feature, Group, IncludedGrant, Metered, Pack, Plan, Price, Purchases, Scope, Settings, WindowKind,
    WindowSpec,
};
use crate::GrantKind;
use crate::ids::{FeatureId, GrantId, GroupId, IdError, PlanId, WindowId};
use crate::limits::{
    ATTRIBUTE_LENGTH_MAX, CATALOG_DURATION_MAX, GRANT_MICROS_MAX, GROUP_WEIGHT_MAX, IDEMPOTENCY_RETENTION_DEFAULT,
    IDEMPOTENCY_RETENTION_MIN, INCLUDED_GRANTS_PER_PLAN_MAX, OVERDRAFT_MICROS_MAX, PACKS_MAX, PAYMENT_AMOUNT_MAX,
    PRICE_MICROS_MAX, PURCHASED_CREDITS_EXPIRY_DEFAULT, SLIDING_BUCKETS_DEFAULT, SLIDING_BUCKETS_MAX, UNIT_LENGTH_MAX,
    WINDOW_CAPACITY_MAX, WINDOWS_PER_PLAN_MAX,
};
use crate::money::{Credits, MICROS_PER_CREDIT};
use crate::time::Duration;

/// Why a catalog is invalid, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogError {
    /// The field at fault, TOML style: `features."codex.cloud_task".price`,
    /// `plans.plus.windows[1].period`. For a TOML syntax error, `line:column`
    /// (or empty when the parser gives no position).
    pub path: String,
    pub message: String,
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

impl std::error::Error for CatalogError {}

/// Parses and validates a whole catalog. Sections are read in dependency
/// order: groups name features, and windows name features or groups.
pub fn parse(text: &str) -> Result<Catalog, CatalogError> {
    let document: Table = text.parse().map_err(|error| syntax_error(text, &error))?;
    let root = Section { table: &document, path: Path::root() };
    root.only(&["settings", "features", "groups", "plans", "purchases", "alerts"])?;
    let settings = match root.optional("settings") {
        Some(field) => parse_settings(&field.table()?)?,
        None => Settings { default_grant_expiry: None, idempotency_retention: IDEMPOTENCY_RETENTION_DEFAULT },
    };
    let features = parse_entries(&root.non_empty_table("features", "feature")?, FeatureId::new, parse_feature)?;
    let groups = match root.optional("groups") {
        Some(field) => parse_entries(&field.table()?, GroupId::new, |id, section| parse_group(id, section, &features))?,
        None => BTreeMap::new(),
    };
    let plans = parse_entries(&root.non_empty_table("plans", "plan")?, PlanId::new, |id, section| {
        parse_plan(id, section, &features, &groups)
    })?;
    let mut catalog = Catalog::new(features, groups, plans, settings);
    if let Some(field) = root.optional("purchases") {
        catalog.purchases = Some(parse_purchases(&field.table()?)?);
    }
    if let Some(field) = root.optional("alerts") {
        catalog.alerts = parse_alerts(&field.table()?)?;
    }
    Ok(catalog)
}

/// A syntax error is located by line and column: there is no field path yet.
fn syntax_error(text: &str, error: &toml::de::Error) -> CatalogError {
    let path = error.span().map(|span| line_and_column(text, span.start)).unwrap_or_default();
    CatalogError { path, message: error.message().trim_end().to_owned() }
}

/// One-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> String {
    let (mut line, mut column) = (1, 1);
    for (index, character) in text.char_indices() {
        if index >= offset {
            break;
        }
        if character == '\n' {
            (line, column) = (line + 1, 1);
        } else {
            column += 1;
        }
    }
    format!("{line}:{column}")
}

// ---------------------------------------------------------------------------
// Sections

fn parse_settings(section: &Section<'_>) -> Result<Settings, CatalogError> {
    section.only(&["default_grant_expiry", "idempotency_retention"])?;
    let default_grant_expiry = match section.optional("default_grant_expiry") {
        Some(field) => Some(field.positive_duration()?),
        None => None,
    };
    let idempotency_retention = match section.optional("idempotency_retention") {
        Some(field) => field.duration_at_least(IDEMPOTENCY_RETENTION_MIN)?,
        None => IDEMPOTENCY_RETENTION_DEFAULT,
    };
    Ok(Settings { default_grant_expiry, idempotency_retention })
}

fn parse_purchases(section: &Section<'_>) -> Result<Purchases, CatalogError> {
    section.only(&["currency", "price_per_credit", "min_credits", "max_credits", "credits_expire_after", "packs"])?;
    let currency_field = section.required("currency")?;
    let currency = currency_field.string()?;
    if currency.len() != 3 || !currency.bytes().all(|byte| byte.is_ascii_lowercase()) {
        return Err(currency_field
            .path
            .error(format!("expected a lower-case ISO 4217 code such as \"usd\", found {currency:?}")));
    }
    let price_per_credit =
        section.required("price_per_credit")?.integer("an integer of minor currency units", 1..=PAYMENT_AMOUNT_MAX)?;
    let min_credits = match section.optional("min_credits") {
        Some(field) => field.integer("an integer of whole credits", 1..=GRANT_MICROS_MAX / MICROS_PER_CREDIT)?,
        None => 1,
    };
    let max_field = section.required("max_credits")?;
    let max_credits =
        max_field.integer("an integer of whole credits", min_credits..=GRANT_MICROS_MAX / MICROS_PER_CREDIT)?;
    if max_credits.checked_mul(price_per_credit).is_none_or(|amount| amount > PAYMENT_AMOUNT_MAX) {
        return Err(max_field
            .path
            .error(format!("max_credits × price_per_credit must be <= {PAYMENT_AMOUNT_MAX}, the largest payment")));
    }
    let credits_expire_after = match section.optional("credits_expire_after") {
        Some(field) => field.positive_duration()?,
        None => PURCHASED_CREDITS_EXPIRY_DEFAULT,
    };
    let packs = match section.optional("packs") {
        Some(field) => {
            let table = field.table()?;
            if table.table.len() > PACKS_MAX {
                return Err(field.path.error(format!("at most {PACKS_MAX} packs, found {}", table.table.len())));
            }
            parse_entries(&table, GrantId::new, |_, pack| {
                pack.only(&["credits", "price"])?;
                let credits = pack
                    .required("credits")?
                    .integer("an integer of whole credits", 1..=GRANT_MICROS_MAX / MICROS_PER_CREDIT)?;
                let price =
                    pack.required("price")?.integer("an integer of minor currency units", 1..=PAYMENT_AMOUNT_MAX)?;
                Ok(Pack { credits, price })
            })?
        }
        None => BTreeMap::new(),
    };
    Ok(Purchases {
        currency: currency.to_owned(),
        price_per_credit,
        min_credits,
        max_credits,
        credits_expire_after,
        packs,
    })
}

fn parse_alerts(section: &Section<'_>) -> Result<Alerts, CatalogError> {
    section.only(&["limit_approaching", "low_balance"])?;
    let limit_approaching_percent = match section.optional("limit_approaching") {
        Some(field) => field.integer("an integer percentage", 1..=99)?,
        None => Alerts::default().limit_approaching_percent,
    };
    let low_balance = match section.optional("low_balance") {
        Some(field) => Some(field.credits(1..=GRANT_MICROS_MAX)?),
        None => None,
    };
    Ok(Alerts { limit_approaching_percent, low_balance })
}

fn parse_feature(id: FeatureId, section: Section<'_>) -> Result<Feature, CatalogError> {
    section.only(&["unit", "price", "price_by", "prices", "default_price"])?;
    let unit = section.required("unit")?.text(UNIT_LENGTH_MAX)?.to_owned();
    let price = parse_price(&section)?;
    Ok(Feature { id, unit, price })
}

fn parse_price(section: &Section<'_>) -> Result<Price, CatalogError> {
    match (section.optional("price"), section.optional("price_by")) {
        (Some(price), None) => {
            for only_with_price_by in ["prices", "default_price"] {
                if let Some(field) = section.optional(only_with_price_by) {
                    return Err(field.path.error("only valid with price_by"));
                }
            }
            Ok(Price::Flat(price.credits(0..=PRICE_MICROS_MAX)?))
        }
        (None, Some(attribute)) => parse_price_by_attribute(section, &attribute),
        (Some(_), Some(_)) => Err(section.path.error("expected exactly one of price or price_by, found both")),
        (None, None) => Err(section.path.error("missing field \"price\" (or \"price_by\" and \"prices\")")),
    }
}

fn parse_price_by_attribute(section: &Section<'_>, attribute: &Field<'_>) -> Result<Price, CatalogError> {
    let attribute = attribute.text(ATTRIBUTE_LENGTH_MAX)?.to_owned();
    let table = section.required("prices")?.table()?;
    if table.table.is_empty() {
        return Err(table.path.error("must price at least one value"));
    }
    let mut prices = BTreeMap::new();
    for (value, field) in table.entries() {
        check_text(&field.path, value, ATTRIBUTE_LENGTH_MAX)?;
        prices.insert(value.to_owned(), field.credits(0..=PRICE_MICROS_MAX)?);
    }
    let default = match section.optional("default_price") {
        Some(field) => Some(field.credits(0..=PRICE_MICROS_MAX)?),
        None => None,
    };
    Ok(Price::ByAttribute { attribute, prices, default })
}

fn parse_group(
    id: GroupId,
    section: Section<'_>,
    features: &BTreeMap<FeatureId, Feature>,
) -> Result<Group, CatalogError> {
    section.only(&["weights"])?;
    let table = section.required("weights")?.table()?;
    if table.table.is_empty() {
        return Err(table.path.error("must weigh at least one feature"));
    }
    let mut weights = BTreeMap::new();
    for (name, field) in table.entries() {
        let Some((feature, _)) = features.get_key_value(name) else {
            return Err(field.path.error("unknown feature"));
        };
        weights.insert(feature.clone(), field.integer("an integer weight", 1..=GROUP_WEIGHT_MAX)?);
    }
    Ok(Group { id, weights })
}

fn parse_plan(
    id: PlanId,
    section: Section<'_>,
    features: &BTreeMap<FeatureId, Feature>,
    groups: &BTreeMap<GroupId, Group>,
) -> Result<Plan, CatalogError> {
    section.only(&["overdraft", "windows", "included_grants"])?;
    let overdraft = match section.optional("overdraft") {
        Some(field) => field.credits(0..=OVERDRAFT_MICROS_MAX)?,
        None => Credits::ZERO,
    };
    let windows = section.array_of_tables("windows", WINDOWS_PER_PLAN_MAX, "windows per plan")?;
    let windows = parse_windows(&windows, features, groups)?;
    let grants =
        section.array_of_tables("included_grants", INCLUDED_GRANTS_PER_PLAN_MAX, "included grants per plan")?;
    let included_grants = grants.iter().map(parse_included_grant).collect::<Result<_, _>>()?;
    Ok(Plan { id, windows, overdraft, included_grants })
}

fn parse_windows(
    sections: &[Section<'_>],
    features: &BTreeMap<FeatureId, Feature>,
    groups: &BTreeMap<GroupId, Group>,
) -> Result<Vec<WindowSpec>, CatalogError> {
    let mut first_index_of: HashMap<WindowId, usize> = HashMap::new();
    let mut windows = Vec::with_capacity(sections.len());
    for (index, section) in sections.iter().enumerate() {
        let window = parse_window(section, features, groups)?;
        if let Some(first) = first_index_of.insert(window.id.clone(), index) {
            let message = format!("duplicate window id \"{}\" (also windows[{first}])", window.id);
            return Err(section.path.key("id").error(message));
        }
        windows.push(window);
    }
    Ok(windows)
}

/// Every field a window may have; which of the last five apply depends on its kind.
const WINDOW_FIELDS: [&str; 10] =
    ["id", "meters", "scope", "kind", "capacity", "period", "offset", "buckets", "refill", "per"];

/// The fields of each window kind, beyond the common ones.
const WINDOW_KINDS: [(&str, &[&str]); 4] = [
    ("fixed", &["period", "offset"]),
    ("anchored", &["period"]),
    ("sliding", &["period", "buckets"]),
    ("token_bucket", &["refill", "per"]),
];

fn parse_window(
    section: &Section<'_>,
    features: &BTreeMap<FeatureId, Feature>,
    groups: &BTreeMap<GroupId, Group>,
) -> Result<WindowSpec, CatalogError> {
    section.only(&WINDOW_FIELDS)?;
    let id = section.required("id")?.id(WindowId::new)?;
    let metered = parse_metered(&section.required("meters")?, features, groups)?;
    let scope = match section.optional("scope") {
        Some(field) => parse_scope(&field)?,
        None => Scope::Subject,
    };
    let kind = parse_window_kind(section)?;
    let capacity = section.required("capacity")?.integer("an integer of units", 1..=WINDOW_CAPACITY_MAX)?;
    Ok(WindowSpec { id, metered, scope, capacity, kind })
}

/// A window meters a feature or a group, named by id. A name that is both
/// is refused rather than guessed.
fn parse_metered(
    field: &Field<'_>,
    features: &BTreeMap<FeatureId, Feature>,
    groups: &BTreeMap<GroupId, Group>,
) -> Result<Metered, CatalogError> {
    let name = field.string()?;
    match (features.get_key_value(name), groups.get_key_value(name)) {
        (Some((feature, _)), None) => Ok(Metered::Feature(feature.clone())),
        (None, Some((group, _))) => Ok(Metered::Group(group.clone())),
        (Some(_), Some(_)) => Err(field.path.error(format!("ambiguous: \"{name}\" is both a feature and a group"))),
        (None, None) => Err(field.path.error(format!("no feature or group is named \"{name}\""))),
    }
}

fn parse_scope(field: &Field<'_>) -> Result<Scope, CatalogError> {
    match field.string()? {
        "subject" => Ok(Scope::Subject),
        "account" => Ok(Scope::Account),
        other => Err(field.path.error(format!("unknown scope \"{other}\", expected one of: subject, account"))),
    }
}

fn parse_window_kind(section: &Section<'_>) -> Result<WindowKind, CatalogError> {
    let field = section.required("kind")?;
    let name = field.string()?;
    let Some((_, own_fields)) = WINDOW_KINDS.iter().find(|(kind, _)| *kind == name) else {
        let kinds: Vec<&str> = WINDOW_KINDS.iter().map(|(kind, _)| *kind).collect();
        let message = format!("unknown window kind \"{name}\", expected one of: {}", kinds.join(", "));
        return Err(field.path.error(message));
    };
    reject_fields_of_other_kinds(section, name, own_fields)?;
    match name {
        "fixed" => parse_fixed(section),
        "anchored" => Ok(WindowKind::Anchored { period: section.required("period")?.positive_duration()? }),
        "sliding" => parse_sliding(section),
        _ => parse_token_bucket(section),
    }
}

fn reject_fields_of_other_kinds(section: &Section<'_>, kind: &str, own_fields: &[&str]) -> Result<(), CatalogError> {
    let kind_fields = WINDOW_KINDS.iter().flat_map(|(_, fields)| fields.iter());
    for field in kind_fields.filter(|field| !own_fields.contains(field)) {
        if section.table.contains_key(*field) {
            let message = format!("not valid for a {kind} window, whose own fields are: {}", own_fields.join(", "));
            return Err(section.path.key(field).error(message));
        }
    }
    Ok(())
}

fn parse_fixed(section: &Section<'_>) -> Result<WindowKind, CatalogError> {
    let period = section.required("period")?.positive_duration()?;
    let offset = match section.optional("offset") {
        Some(field) => {
            let offset = field.duration()?;
            // An offset of a whole period or more is the same alignment as a
            // smaller one; refuse it so that each window has one spelling.
            if offset >= period {
                return Err(field.path.error("must be < period"));
            }
            offset
        }
        None => Duration::ZERO,
    };
    Ok(WindowKind::Fixed { period, offset })
}

fn parse_sliding(section: &Section<'_>) -> Result<WindowKind, CatalogError> {
    let period_field = section.required("period")?;
    let period = period_field.positive_duration()?;
    let buckets_field = section.optional("buckets");
    let buckets = match &buckets_field {
        Some(field) => field.integer("an integer number of buckets", 1..=u64::from(SLIDING_BUCKETS_MAX))?,
        None => u64::from(SLIDING_BUCKETS_DEFAULT),
    };
    // Buckets of whole milliseconds keep bucket boundaries exact, so that the
    // conservative count never drifts from the rule it approximates.
    if !period.millis().is_multiple_of(buckets) {
        let message =
            format!("a period of {} ms does not split into {buckets} buckets of whole milliseconds", period.millis());
        return Err(buckets_field.as_ref().unwrap_or(&period_field).path.error(message));
    }
    let buckets = u32::try_from(buckets).expect("buckets are at most SLIDING_BUCKETS_MAX, a u32");
    Ok(WindowKind::Sliding { period, buckets })
}

fn parse_token_bucket(section: &Section<'_>) -> Result<WindowKind, CatalogError> {
    let refill = section.required("refill")?.integer("an integer of units", 1..=WINDOW_CAPACITY_MAX)?;
    let per = section.required("per")?.positive_duration()?;
    Ok(WindowKind::TokenBucket { refill, per })
}

fn parse_included_grant(section: &Section<'_>) -> Result<IncludedGrant, CatalogError> {
    section.only(&["kind", "credits", "priority", "expires_after"])?;
    let kind = parse_grant_kind(&section.required("kind")?)?;
    let credits = section.required("credits")?.credits(1..=GRANT_MICROS_MAX)?;
    let priority = match section.optional("priority") {
        Some(field) => field.integer("an integer priority", 0..=u64::from(u32::MAX))?,
        None => 0,
    };
    let priority = u32::try_from(priority).expect("the priority was checked to fit a u32");
    let expires_after = match section.optional("expires_after") {
        Some(field) => Some(field.positive_duration()?),
        None => None,
    };
    Ok(IncludedGrant { kind, credits, priority, expires_after })
}

fn parse_grant_kind(field: &Field<'_>) -> Result<GrantKind, CatalogError> {
    let name = field.string()?;
    GrantKind::parse(name).ok_or_else(|| {
        let kinds: Vec<&str> = GrantKind::ALL.iter().map(|kind| kind.as_str()).collect();
        field.path.error(format!("unknown grant kind \"{name}\", expected one of: {}", kinds.join(", ")))
    })
}

/// Reads a table whose keys are ids and whose values are tables, such as
/// `[features]` or `[plans]`.
fn parse_entries<Id: Ord + Clone, Entry>(
    section: &Section<'_>,
    new_id: fn(&str) -> Result<Id, IdError>,
    mut parse_entry: impl FnMut(Id, Section<'_>) -> Result<Entry, CatalogError>,
) -> Result<BTreeMap<Id, Entry>, CatalogError> {
    let mut entries = BTreeMap::new();
    for (key, field) in section.entries() {
        let id = new_id(key).map_err(|error| field.path.error(format!("the id {error}")))?;
        let entry = parse_entry(id.clone(), field.table()?)?;
        entries.insert(id, entry);
    }
    Ok(entries)
}

// ---------------------------------------------------------------------------
// Reading fields

/// Where a value sits in the document, printed TOML style.
#[derive(Debug, Clone)]
struct Path(String);

impl Path {
    fn root() -> Path {
        Path(String::new())
    }

    fn key(&self, key: &str) -> Path {
        let key = toml_key(key);
        if self.0.is_empty() { Path(key) } else { Path(format!("{}.{key}", self.0)) }
    }

    fn index(&self, index: usize) -> Path {
        Path(format!("{}[{index}]", self.0))
    }

    fn error(&self, message: impl Into<String>) -> CatalogError {
        CatalogError { path: self.0.clone(), message: message.into() }
    }
}

/// A key as TOML would spell it: bare when it can be, quoted otherwise.
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key.chars().all(|character| character.is_ascii_alphanumeric() || matches!(character, '_' | '-'));
    if bare {
        return key.to_owned();
    }
    let mut quoted = String::from('"');
    for character in key.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            control if control.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(control))),
            other => quoted.push(other),
        }
    }
    quoted.push('"');
    quoted
}

/// A TOML table being read, with its path.
struct Section<'a> {
    table: &'a Table,
    path: Path,
}

impl<'a> Section<'a> {
    /// Refuses keys outside `fields`: a misspelt optional field would
    /// otherwise be silently ignored.
    fn only(&self, fields: &[&str]) -> Result<(), CatalogError> {
        match self.table.keys().find(|key| !fields.contains(&key.as_str())) {
            Some(key) => {
                let message = format!("unknown field, expected one of: {}", fields.join(", "));
                Err(self.path.key(key).error(message))
            }
            None => Ok(()),
        }
    }

    fn optional(&self, key: &str) -> Option<Field<'a>> {
        self.table.get(key).map(|value| Field { value, path: self.path.key(key) })
    }

    fn required(&self, key: &str) -> Result<Field<'a>, CatalogError> {
        self.optional(key).ok_or_else(|| self.path.error(format!("missing field \"{key}\"")))
    }

    fn entries(&self) -> impl Iterator<Item = (&'a str, Field<'a>)> + '_ {
        self.table.iter().map(|(key, value)| (key.as_str(), Field { value, path: self.path.key(key) }))
    }

    /// A table that must exist and hold at least one entry, such as `features`.
    fn non_empty_table(&self, key: &str, entry: &str) -> Result<Section<'a>, CatalogError> {
        let missing = || self.path.key(key).error(format!("at least one {entry} is required"));
        let section = self.optional(key).ok_or_else(missing)?.table()?;
        if section.table.is_empty() {
            return Err(missing());
        }
        Ok(section)
    }

    /// An optional array of tables (`[[plans.plus.windows]]`) of at most `length_max` entries.
    fn array_of_tables(&self, key: &str, length_max: usize, what: &str) -> Result<Vec<Section<'a>>, CatalogError> {
        let Some(field) = self.optional(key) else {
            return Ok(Vec::new());
        };
        let values = field.value.as_array().ok_or_else(|| field.expected("an array of tables"))?;
        if values.len() > length_max {
            return Err(field.path.error(format!("at most {length_max} {what}, found {}", values.len())));
        }
        let element = |(index, value)| Field { value, path: field.path.index(index) }.table();
        values.iter().enumerate().map(element).collect()
    }
}

/// The format of a duration, for error messages.
const DURATION_FORMAT: &str =
    "a duration such as \"500ms\", \"5h\" or \"7d\" (an integer and one unit of ms, s, m, h, d, w)";

/// One value being read, with its path.
struct Field<'a> {
    value: &'a Value,
    path: Path,
}

impl<'a> Field<'a> {
    fn expected(&self, what: &str) -> CatalogError {
        self.path.error(format!("expected {what}, found {}", type_with_article(self.value)))
    }

    fn table(&self) -> Result<Section<'a>, CatalogError> {
        let table = self.value.as_table().ok_or_else(|| self.expected("a table"))?;
        Ok(Section { table, path: self.path.clone() })
    }

    fn string(&self) -> Result<&'a str, CatalogError> {
        self.value.as_str().ok_or_else(|| self.expected("a string"))
    }

    /// A string meant for people or for matching: not empty, bounded.
    fn text(&self, length_max: usize) -> Result<&'a str, CatalogError> {
        let text = self.string()?;
        check_text(&self.path, text, length_max)?;
        Ok(text)
    }

    fn id<Id>(&self, new_id: fn(&str) -> Result<Id, IdError>) -> Result<Id, CatalogError> {
        new_id(self.string()?).map_err(|error| self.path.error(format!("the id {error}")))
    }

    /// TOML integers are signed: a negative one fails the lower bound.
    fn integer(&self, what: &str, range: RangeInclusive<u64>) -> Result<u64, CatalogError> {
        let integer = self.value.as_integer().ok_or_else(|| self.expected(what))?;
        let too_small = || self.path.error(format!("must be >= {}", range.start()));
        let integer = u64::try_from(integer).map_err(|_| too_small())?;
        if integer < *range.start() {
            return Err(too_small());
        }
        if integer > *range.end() {
            return Err(self.path.error(format!("must be <= {}", range.end())));
        }
        Ok(integer)
    }

    fn credits(&self, range: RangeInclusive<u64>) -> Result<Credits, CatalogError> {
        self.integer("an integer of micro-credits", range).map(Credits::from_micros)
    }

    fn duration(&self) -> Result<Duration, CatalogError> {
        let text = self.value.as_str().ok_or_else(|| self.expected(DURATION_FORMAT))?;
        let too_long = || self.path.error(format!("must be <= {}", display_duration(CATALOG_DURATION_MAX)));
        match parse_duration(text) {
            Ok(duration) if duration <= CATALOG_DURATION_MAX => Ok(duration),
            Ok(_) | Err(DurationError::Overflow) => Err(too_long()),
            Err(DurationError::Format) => Err(self.path.error(format!("expected {DURATION_FORMAT}, found {text:?}"))),
        }
    }

    fn positive_duration(&self) -> Result<Duration, CatalogError> {
        let duration = self.duration()?;
        if duration == Duration::ZERO {
            return Err(self.path.error("must be > 0"));
        }
        Ok(duration)
    }

    fn duration_at_least(&self, minimum: Duration) -> Result<Duration, CatalogError> {
        let duration = self.duration()?;
        if duration < minimum {
            let message = format!("must be >= {}", display_duration(minimum));
            return Err(self.path.error(message));
        }
        Ok(duration)
    }
}

fn check_text(path: &Path, text: &str, length_max: usize) -> Result<(), CatalogError> {
    if text.is_empty() {
        return Err(path.error("must not be empty"));
    }
    if text.len() > length_max {
        return Err(path.error(format!("is {} bytes long, at most {length_max} are allowed", text.len())));
    }
    Ok(())
}

fn type_with_article(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

// ---------------------------------------------------------------------------
// Durations

#[derive(Debug, PartialEq, Eq)]
enum DurationError {
    /// Not an integer followed by a known unit.
    Format,
    /// More milliseconds than a `u64` holds.
    Overflow,
}

/// Units of a duration, largest first (the order [`display_duration`] tries them in).
const DURATION_UNITS: [(&str, u64); 6] =
    [("w", 7 * 86_400_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// `"5h"` → 5 hours. Exactly one unit, no sign, no fraction, no spaces: a
/// catalog is reviewed by people, and one spelling per duration reads best.
fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let digits_end = text.find(|character: char| !character.is_ascii_digit()).unwrap_or(text.len());
    let (count, unit) = text.split_at(digits_end);
    let Some(&(_, millis_per_unit)) = DURATION_UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(DurationError::Format);
    };
    if count.is_empty() {
        return Err(DurationError::Format);
    }
    // All digits: the only way this parse fails is a count beyond u64.
    let count: u64 = count.parse().map_err(|_| DurationError::Overflow)?;
    count.checked_mul(millis_per_unit).map(Duration::from_millis).ok_or(DurationError::Overflow)
}

/// The largest unit that spells `duration` exactly: 86 400 000 ms → `1d`.
fn display_duration(duration: Duration) -> String {
    let millis = duration.millis();
    let (name, millis_per_unit) = DURATION_UNITS
        .iter()
        .find(|(_, millis_per_unit)| millis.is_multiple_of(*millis_per_unit))
        .expect("every duration is a whole number of milliseconds");
    format!("{}{name}", millis / millis_per_unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::DEMO_CATALOG;

    #[test]
    fn the_demo_catalog_parses() {
        let catalog = Catalog::from_toml(DEMO_CATALOG).unwrap_or_else(|error| panic!("{error}"));
        let plans: Vec<&str> = catalog.plans.keys().map(PlanId::as_str).collect();
        assert_eq!(plans, ["business", "enterprise", "free", "plus", "pro"]);
        // Every window kind appears, so the demo exercises all of them.
        let kinds: Vec<WindowKind> =
            catalog.plans.values().flat_map(|plan| plan.windows.iter().map(|window| window.kind)).collect();
        assert!(kinds.iter().any(|kind| matches!(kind, WindowKind::Fixed { .. })));
        assert!(kinds.iter().any(|kind| matches!(kind, WindowKind::Anchored { .. })));
        assert!(kinds.iter().any(|kind| matches!(kind, WindowKind::Sliding { .. })));
        assert!(kinds.iter().any(|kind| matches!(kind, WindowKind::TokenBucket { .. })));
        // The weekly window resets on Monday 00:00 UTC.
        let plus = &catalog.plans["plus"];
        let weekly = plus.windows.iter().find(|window| window.id.as_str() == "codex-weekly").unwrap();
        let week = Duration::from_days(7);
        assert_eq!(weekly.kind, WindowKind::Fixed { period: week, offset: Duration::from_days(4) });
        // A cloud task counts five units of the shared Codex windows.
        let cloud = FeatureId::new("codex.cloud_task").unwrap();
        let weights: Vec<u64> = catalog.meters(&plus.id, &cloud).iter().map(|meter| meter.weight).collect();
        assert_eq!(weights, [5, 5]);
        assert_eq!(catalog.settings.default_grant_expiry, Some(Duration::from_days(365)));
    }

    /// Features and a group that the bad plans below refer to.
    const BASE: &str = r#"
        [features.local]
        unit = "task"
        price = 1
        [features."codex.cloud"]
        unit = "task"
        price = 5
        [groups.codex]
        weights = { local = 1, "codex.cloud" = 5 }
    "#;

    /// A window of plan `plus` metering `meters`, completed by `rest`.
    fn window(meters: &str, rest: &str) -> String {
        format!("[[plans.plus.windows]]\nid = \"w\"\nmeters = \"{meters}\"\ncapacity = 5\n{rest}\n")
    }

    #[test]
    fn bad_catalogs_are_refused_with_the_path_of_the_fault() {
        let anchored = r#"kind = "anchored"
                          period = "5h""#;
        let duration_format = "expected a duration such as \"500ms\", \"5h\" or \"7d\" \
                               (an integer and one unit of ms, s, m, h, d, w)";
        let cases: Vec<(String, String)> = vec![
            (
                window("codex", anchored) + &window("codex", "kind = \"fixed\"\nperiod = \"0h\""),
                "plans.plus.windows[1].period: must be > 0".into(),
            ),
            (
                window("codex", anchored) + &window("codex", anchored),
                r#"plans.plus.windows[1].id: duplicate window id "w" (also windows[0])"#.into(),
            ),
            (
                "[plans.plus]\nwindws = []".into(),
                "plans.plus.windws: unknown field, \
                 expected one of: overdraft, windows, included_grants"
                    .into(),
            ),
            ("[plans.plus]\noverdraft = -5".into(), "plans.plus.overdraft: must be >= 0".into()),
            (
                window("codex", anchored).replace("capacity = 5", ""),
                r#"plans.plus.windows[0]: missing field "capacity""#.into(),
            ),
            (
                window("codex", &format!("{anchored}\nscope = \"org\"")),
                r#"plans.plus.windows[0].scope: unknown scope "org", "#.to_owned()
                    + "expected one of: subject, account",
            ),
            (window("nope", anchored), r#"plans.plus.windows[0].meters: no feature or group is named "nope""#.into()),
            (
                window("local", anchored) + "[groups.local]\nweights = { local = 1 }",
                r#"plans.plus.windows[0].meters: ambiguous: "local" is both a feature and a group"#.into(),
            ),
            (
                window("codex", "kind = \"fixed\"\nperiod = \"7d\"\noffset = \"7d\""),
                "plans.plus.windows[0].offset: must be < period".into(),
            ),
            (
                window("codex", "kind = \"fixed\"\nperiod = \"1d\"\nbuckets = 24"),
                "plans.plus.windows[0].buckets: not valid for a fixed window, \
                 whose own fields are: period, offset"
                    .into(),
            ),
            (
                window("codex", "kind = \"rolling\""),
                r#"plans.plus.windows[0].kind: unknown window kind "rolling", "#.to_owned()
                    + "expected one of: fixed, anchored, sliding, token_bucket",
            ),
            (
                window("codex", "kind = \"sliding\"\nperiod = \"1s\"\nbuckets = 7"),
                "plans.plus.windows[0].buckets: \
                 a period of 1000 ms does not split into 7 buckets of whole milliseconds"
                    .into(),
            ),
            (
                window("codex", "kind = \"sliding\"\nperiod = \"1s\"\nbuckets = 601"),
                "plans.plus.windows[0].buckets: must be <= 600".into(),
            ),
            (
                window("codex", "kind = \"anchored\"\nperiod = \"5 hours\""),
                format!("plans.plus.windows[0].period: {duration_format}, found \"5 hours\""),
            ),
            (
                window("codex", "kind = \"token_bucket\"\nrefill = 1\nper = 60"),
                format!("plans.plus.windows[0].per: {duration_format}, found an integer"),
            ),
            (
                window("codex", "kind = \"anchored\"\nperiod = \"99999999999w\""),
                "plans.plus.windows[0].period: must be <= 36500d".into(),
            ),
            (
                "[[plans.plus.included_grants]]\nkind = \"gift\"\ncredits = 1".into(),
                r#"plans.plus.included_grants[0].kind: unknown grant kind "gift", "#.to_owned()
                    + "expected one of: free_tier, promotion, entitlement, purchase",
            ),
            (
                "[[plans.plus.included_grants]]\nkind = \"promotion\"\ncredits = 0".into(),
                "plans.plus.included_grants[0].credits: must be >= 1".into(),
            ),
            (
                "[plans.plus]\nwindows = { id = \"w\" }".into(),
                "plans.plus.windows: expected an array of tables, found a table".into(),
            ),
            (
                "[features.x]\nunit = \"task\"\nprice = \"0.4\"".into(),
                "features.x.price: expected an integer of micro-credits, found a string".into(),
            ),
            (
                "[features.x]\nunit = \"task\"".into(),
                r#"features.x: missing field "price" (or "price_by" and "prices")"#.into(),
            ),
            (
                "[features.x]\nunit = \"task\"\nprice = 1\nprice_by = \"model\"".into(),
                "features.x: expected exactly one of price or price_by, found both".into(),
            ),
            (
                "[features.x]\nunit = \"task\"\nprice_by = \"model\"\nprices = {}".into(),
                "features.x.prices: must price at least one value".into(),
            ),
            (
                "[features.x]\nunit = \"task\"\nprice = 1\ndefault_price = 1".into(),
                "features.x.default_price: only valid with price_by".into(),
            ),
            (
                "[features.\"codex task\"]\nunit = \"task\"\nprice = 1".into(),
                r#"features."codex task": the id has the invalid character ' ' at position 5 "#.to_owned()
                    + "(allowed: letters, digits and . _ - : @)",
            ),
            ("[features.x]\nunit = \"\"\nprice = 1".into(), "features.x.unit: must not be empty".into()),
            (
                "[groups.more]\nweights = { \"codex.nope\" = 1 }".into(),
                r#"groups.more.weights."codex.nope": unknown feature"#.into(),
            ),
            ("[groups.more]\nweights = { local = 0 }".into(), "groups.more.weights.local: must be >= 1".into()),
            (
                "[settings]\nidempotency_retention = \"1h\"".into(),
                "settings.idempotency_retention: must be >= 1d".into(),
            ),
            (String::new(), "plans: at least one plan is required".into()),
        ];
        for (extra, expected) in cases {
            let text = format!("{BASE}\n{extra}");
            let error = parse(&text).expect_err(&text);
            assert_eq!(error.to_string(), expected, "for the catalog:\n{text}");
        }
    }

    #[test]
    fn documents_without_features_or_with_bad_syntax_are_refused() {
        let error = parse("[plans.plus]").unwrap_err();
        assert_eq!(error.to_string(), "features: at least one feature is required");
        // Syntax errors have no field path yet: they are located by line and column.
        let error = parse("[features]\nx = {\n").unwrap_err();
        assert_eq!(error.to_string(), "2:6: unclosed inline table, expected `}`");
        let error = parse("[features.x]\nunit = \"a\"\nunit = \"b\"").unwrap_err();
        assert_eq!(error.to_string(), "3:1: duplicate key");
    }

    #[test]
    fn too_many_windows_are_refused() {
        let anchored = "kind = \"anchored\"\nperiod = \"1h\"";
        let windows = (0..=WINDOWS_PER_PLAN_MAX)
            .map(|index| window("local", anchored).replace("\"w\"", &format!("\"w{index}\"")))
            .collect::<String>();
        let error = parse(&format!("{BASE}\n{windows}")).unwrap_err();
        assert_eq!(error.to_string(), "plans.plus.windows: at most 16 windows per plan, found 17");
    }

    #[test]
    fn durations_have_one_spelling() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5h"), Ok(Duration::from_hours(5)));
        assert_eq!(parse_duration("1w"), Ok(Duration::from_days(7)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "5", "h", "-5h", "1.5h", "5 h", "5H", "5hh", "1h30m"] {
            assert_eq!(parse_duration(bad), Err(DurationError::Format), "{bad:?}");
        }
        assert_eq!(parse_duration("99999999999999999999w"), Err(DurationError::Overflow));
        assert_eq!(parse_duration("30500000000000000w"), Err(DurationError::Overflow));
        assert_eq!(display_duration(Duration::from_hours(24)), "1d");
        assert_eq!(display_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn keys_are_quoted_only_when_toml_needs_it() {
        let path = Path::root().key("features").key("codex.cloud_task").key("price");
        assert_eq!(path.0, "features.\"codex.cloud_task\".price");
        assert_eq!(toml_key("plain_key-1"), "plain_key-1");
        assert_eq!(toml_key("say \"hi\"\n"), "\"say \\\"hi\\\"\\u000A\"");
        assert_eq!(toml_key(""), "\"\"");
    }
}
