use serde::{Deserialize, Serialize};
use std::fmt;

/// Where the credits of a grant came from. The waterfall spends the kinds in
/// this order: free allowances first, purchased credits last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GrantKind {
    FreeTier,
    Promotion,
    Entitlement,
    Purchase,
}

impl GrantKind {
    pub const ALL: [GrantKind; 4] =
        [GrantKind::FreeTier, GrantKind::Promotion, GrantKind::Entitlement, GrantKind::Purchase];

    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::FreeTier => "free_tier",
            GrantKind::Promotion => "promotion",
            GrantKind::Entitlement => "entitlement",
            GrantKind::Purchase => "purchase",
        }
    }

    pub fn parse(text: &str) -> Option<GrantKind> {
        GrantKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

impl fmt::Display for GrantKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
