//! Identifier newtypes. Each one parses on construction, so that a value of the
//! type is always well formed ("parse, don't validate").

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use crate::limits::{ID_LENGTH_MAX, IDEMPOTENCY_KEY_LENGTH_MAX};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    Empty,
    TooLong { length: usize, max: usize },
    InvalidCharacter { character: char, position: usize },
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Empty => write!(f, "must not be empty"),
            IdError::TooLong { length, max } => {
                write!(f, "is {length} bytes long, at most {max} are allowed")
            }
            IdError::InvalidCharacter { character, position } => write!(
                f,
                "has the invalid character {character:?} at position {position} \
                 (allowed: letters, digits and . _ - : @)"
            ),
        }
    }
}

impl std::error::Error for IdError {}

/// Ids are used in URLs, logs and file names: keep them to a safe alphabet.
fn is_id_character(character: char) -> bool {
    character.is_ascii_alphanumeric() || matches!(character, '.' | '_' | '-' | ':' | '@')
}

/// Idempotency keys come from clients (UUIDs, hashes, composite strings): any
/// printable ASCII character except space.
fn is_key_character(character: char) -> bool {
    character.is_ascii_graphic()
}

fn check(text: &str, length_max: usize, allowed: fn(char) -> bool) -> Result<(), IdError> {
    if text.is_empty() {
        return Err(IdError::Empty);
    }
    if text.len() > length_max {
        return Err(IdError::TooLong { length: text.len(), max: length_max });
    }
    // Both alphabets are ASCII and refuse every other character, so a scan
    // of the bytes decides (a byte of a longer character reads as a Latin-1
    // one, refused too); only a refused text is decoded, to name the character.
    if text.bytes().all(|byte| allowed(char::from(byte))) {
        return Ok(());
    }
    match text.char_indices().find(|(_, character)| !allowed(*character)) {
        Some((position, character)) => Err(IdError::InvalidCharacter { character, position }),
        None => Ok(()),
    }
}

/// Longest id kept inline; longer ones are shared on the heap.
const INLINE_BYTES_MAX: usize = 22;

/// The text of an id. Short ids (nearly all) live inline, so that hashing,
/// comparing and cloning one touches no other memory: on the decision path
/// every pointer followed to a cold cache line costs more than the rest of
/// the work.
#[derive(Clone)]
enum IdText {
    Inline { length: u8, bytes: [u8; INLINE_BYTES_MAX] },
    Shared(Arc<str>),
}

impl IdText {
    fn new(text: &str) -> IdText {
        if text.len() <= INLINE_BYTES_MAX {
            let mut bytes = [0u8; INLINE_BYTES_MAX];
            bytes[..text.len()].copy_from_slice(text.as_bytes());
            IdText::Inline { length: text.len() as u8, bytes }
        } else {
            IdText::Shared(Arc::from(text))
        }
    }

    fn as_str(&self) -> &str {
        match self {
            IdText::Inline { length, bytes } => {
                let bytes = &bytes[..usize::from(*length)];
                debug_assert!(std::str::from_utf8(bytes).is_ok());
                // SAFETY: `new` copied exactly the bytes of a `str` here, and
                // nothing changes them: they are valid UTF-8. Checking again
                // on every hash, comparison and encoding of an id was a fifth
                // of a decision's instructions.
                unsafe { std::str::from_utf8_unchecked(bytes) }
            }
            IdText::Shared(text) => text,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            IdText::Inline { length, bytes } => &bytes[..usize::from(*length)],
            IdText::Shared(text) => text.as_bytes(),
        }
    }
}

// Equality, order and hash follow the text alone, as `Borrow<str>` requires;
// bytes compare and order exactly as the strings do.
impl PartialEq for IdText {
    fn eq(&self, other: &IdText) -> bool {
        match (self, other) {
            // A text is inline exactly when it is short, and the bytes after
            // it are zero: two inline ids are equal when their fixed-size
            // arrays are, compared without a call to `memcmp`.
            (IdText::Inline { length, bytes }, IdText::Inline { length: other_length, bytes: other_bytes }) => {
                length == other_length && bytes == other_bytes
            }
            (IdText::Shared(text), IdText::Shared(other_text)) => text == other_text,
            _ => false,
        }
    }
}

impl Eq for IdText {}

impl PartialOrd for IdText {
    fn partial_cmp(&self, other: &IdText) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IdText {
    fn cmp(&self, other: &IdText) -> std::cmp::Ordering {
        match (self, other) {
            // Ids hold printable ASCII only, never a zero byte, and an inline
            // text is padded with zeros: the padded arrays order exactly as
            // the texts do (a prefix meets a zero, below any character), and
            // compare a word at a time without a call to `memcmp`, on every
            // step of a catalog's `BTreeMap` lookups.
            (IdText::Inline { bytes, .. }, IdText::Inline { bytes: other_bytes, .. }) => {
                big_endian_words(bytes).cmp(&big_endian_words(other_bytes))
            }
            _ => self.as_bytes().cmp(other.as_bytes()),
        }
    }
}

/// An inline text's bytes as words that order as the bytes do.
fn big_endian_words(bytes: &[u8; INLINE_BYTES_MAX]) -> [u64; 3] {
    let mut padded = [0u8; 24];
    padded[..INLINE_BYTES_MAX].copy_from_slice(bytes);
    let word = |index: usize| u64::from_be_bytes(padded[8 * index..8 * index + 8].try_into().expect("8 bytes"));
    [word(0), word(1), word(2)]
}

impl std::hash::Hash for IdText {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

macro_rules! identifier {
    ($(#[$meta:meta])* $name:ident, $length_max:expr, $allowed:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(IdText);

        impl $name {
            pub fn new(text: &str) -> Result<Self, IdError> {
                check(text, $length_max, $allowed)?;
                Ok(Self(IdText::new(text)))
            }

            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.as_str())
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            /// Stored ids are parsed again: a damaged one is an error, not a value.
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::new(&text).map_err(serde::de::Error::custom)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::new(text)
            }
        }
    };
}

identifier!(
    /// Who makes a request: a user or an API key. Belongs to one account.
    SubjectId, ID_LENGTH_MAX, is_id_character
);
identifier!(
    /// Who pays: owns the wallet.
    AccountId, ID_LENGTH_MAX, is_id_character
);
identifier!(
    /// A metered thing, such as `codex.cloud_task`.
    FeatureId, ID_LENGTH_MAX, is_id_character
);
identifier!(
    /// A set of features that share windows, with a weight per feature.
    GroupId, ID_LENGTH_MAX, is_id_character
);
identifier!(
    /// What a subject gets for free: its limit windows.
    PlanId, ID_LENGTH_MAX, is_id_character
);
identifier!(
    /// One limit window of a plan, unique within that plan.
    WindowId, ID_LENGTH_MAX, is_id_character
);
identifier!(
    /// One grant of credits in a wallet.
    GrantId, ID_LENGTH_MAX, is_id_character
);
identifier!(
    /// One payment: a checkout (`co_…`) or an automatic recharge (`rc_…`).
    PaymentId, ID_LENGTH_MAX, is_id_character
);
identifier!(
    /// An id the payment provider gave: a customer, a saved payment method.
    ProviderRef, IDEMPOTENCY_KEY_LENGTH_MAX, is_key_character
);
identifier!(
    /// The caller's key that makes a consuming call happen at most once.
    IdempotencyKey, IDEMPOTENCY_KEY_LENGTH_MAX, is_key_character
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_and_short_ids_behave_alike() {
        let short = SubjectId::new("ada").unwrap();
        let long = SubjectId::new(&"x".repeat(100)).unwrap();
        assert_eq!(short.as_str(), "ada");
        assert_eq!(long.as_str().len(), 100);
        assert!(short < long && long.clone() == long);
        let mut map = std::collections::HashMap::new();
        map.insert(long.clone(), 1);
        assert_eq!(map.get("x".repeat(100).as_str()), Some(&1));
        assert_eq!(std::mem::size_of::<SubjectId>(), 24);
    }

    /// Ids, inline or shared, order exactly as their texts: prefixes,
    /// every character of the alphabet at every position, both lengths.
    #[test]
    fn ids_order_as_their_texts() {
        let alphabet: Vec<char> =
            ('0'..='9').chain('A'..='Z').chain('a'..='z').chain(['.', '_', '-', ':', '@']).collect();
        let mut texts = vec!["a".to_string(), "ab".to_string(), "a".repeat(22), "a".repeat(23), "b".to_string()];
        for length in [1, 7, 8, 9, 16, 21, 22, 23, 30] {
            for (position, character) in alphabet.iter().enumerate() {
                let mut text: String =
                    (0..length).map(|index| alphabet[(index * 7 + position) % alphabet.len()]).collect();
                text.replace_range(length - 1.., &character.to_string());
                texts.push(text.clone());
                texts.push(text[..length / 2 + 1].to_string());
            }
        }
        let ids: Vec<SubjectId> = texts.iter().map(|text| SubjectId::new(text).expect("valid")).collect();
        for (one, one_text) in ids.iter().zip(&texts) {
            for (other, other_text) in ids.iter().zip(&texts) {
                assert_eq!(one.cmp(other), one_text.cmp(other_text), "{one_text:?} against {other_text:?}");
            }
        }
    }

    #[test]
    fn ids_parse_on_construction() {
        assert!(SubjectId::new("user-42@acme").is_ok());
        assert_eq!(SubjectId::new(""), Err(IdError::Empty));
        assert_eq!(FeatureId::new("codex task"), Err(IdError::InvalidCharacter { character: ' ', position: 5 }));
        let long = "a".repeat(ID_LENGTH_MAX + 1);
        assert!(matches!(AccountId::new(&long), Err(IdError::TooLong { .. })));
        assert!(IdempotencyKey::new("req/2026-11-25#1").is_ok());
        assert!(IdempotencyKey::new("has space").is_err());
        assert_eq!(
            SubjectId::new("zoë-1"),
            Err(IdError::InvalidCharacter { character: 'ë', position: 2 }),
            "a character beyond ASCII is named whole, at its byte position"
        );
        assert_eq!(IdempotencyKey::new("kéy"), Err(IdError::InvalidCharacter { character: 'é', position: 1 }));
    }
}
