//! Stable 128-bit FNV-1a hashing, for ids derived from idempotency keys and for
//! request fingerprints. Stable across builds and platforms, unlike the
//! standard library's hasher, because these values are stored.

const OFFSET_BASIS: u128 = 0x6c62272e07bb014262b821756295c58d;
const PRIME: u128 = 0x0000000001000000000000000000013B;

#[derive(Clone, Copy)]
pub struct Fnv128(u128);

impl Fnv128 {
    pub fn new() -> Fnv128 {
        Fnv128(OFFSET_BASIS)
    }

    pub fn bytes(mut self, bytes: &[u8]) -> Fnv128 {
        for byte in bytes {
            self.0 ^= u128::from(*byte);
            self.0 = self.0.wrapping_mul(PRIME);
        }
        self
    }

    /// A field: its length first, so that ("ab", "c") and ("a", "bc") differ.
    pub fn field(self, bytes: &[u8]) -> Fnv128 {
        self.bytes(&(bytes.len() as u64).to_le_bytes()).bytes(bytes)
    }

    pub fn number(self, number: u64) -> Fnv128 {
        self.bytes(&number.to_le_bytes())
    }

    pub fn finish(self) -> u128 {
        self.0
    }
}

impl Default for Fnv128 {
    fn default() -> Fnv128 {
        Fnv128::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_fnv1a_128_vectors() {
        assert_eq!(Fnv128::new().finish(), 0x6c62272e07bb014262b821756295c58d);
        assert_eq!(
            Fnv128::new().bytes(b"a").finish(),
            0xd228cb696f1a8caf78912b704e4a8964
        );
    }

    #[test]
    fn fields_are_length_prefixed() {
        let one = Fnv128::new().field(b"ab").field(b"c").finish();
        let two = Fnv128::new().field(b"a").field(b"bc").finish();
        assert_ne!(one, two);
    }
}
