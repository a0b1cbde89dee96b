//! Postcard encoding through a buffer, for the encodings on the hot paths:
//! the answer an idempotency key keeps, the log's frames, the snapshot.
//!
//! An encoding is made of many small pieces (a varint, a short id), and
//! postcard's own flavors copy each one with a call to `memcpy`: a third of
//! the cost of encoding an answer. Here a piece of up to 16 bytes is copied
//! inline into a buffer, and the buffer goes to its destination (`spill`)
//! only when it is full and at the end, in large pieces.

use postcard::ser_flavors::Flavor;
use serde::Serialize;

/// Encodes `value` with postcard through `buffer`, handing the bytes to
/// `spill` in order, as the buffer fills and at the end. `spill` returns
/// whether it took them; if it does not, encoding stops with an error.
///
/// Allocates nothing itself, so that a child process after `fork` can use it.
pub fn encode<T: Serialize + ?Sized>(
    value: &T,
    buffer: &mut [u8],
    mut spill: impl FnMut(&[u8]) -> bool,
) -> Result<(), postcard::Error> {
    let tail = encode_but_the_tail(value, buffer, &mut spill)?;
    hand_over(&mut spill, &buffer[..tail])
}

/// Hands `bytes` (if any) to `spill`; an error if it does not take them.
fn hand_over(spill: &mut impl FnMut(&[u8]) -> bool, bytes: &[u8]) -> postcard::Result<()> {
    if bytes.is_empty() || spill(bytes) { Ok(()) } else { Err(postcard::Error::SerializeBufferFull) }
}

/// Encodes `value` and hands the whole encoding to `use_bytes`: from the
/// stack when it fits 1 KiB, so that nothing is allocated, else from a vector.
pub fn with_encoded<T: Serialize + ?Sized, R>(value: &T, use_bytes: impl FnOnce(&[u8]) -> R) -> R {
    let mut buffer = [0u8; 1024];
    let mut longer = Vec::new();
    let tail = encode_but_the_tail(value, &mut buffer, |full: &[u8]| {
        longer.extend_from_slice(full);
        true
    })
    .expect("spilling into memory cannot fail");
    if longer.is_empty() {
        use_bytes(&buffer[..tail])
    } else {
        longer.extend_from_slice(&buffer[..tail]);
        use_bytes(&longer)
    }
}

/// Encodes `value` through `buffer`, handing `spill` what fills it, and
/// returns the length of the last piece, left at the start of `buffer`.
fn encode_but_the_tail<T: Serialize + ?Sized>(
    value: &T,
    buffer: &mut [u8],
    spill: impl FnMut(&[u8]) -> bool,
) -> Result<usize, postcard::Error> {
    assert!(!buffer.is_empty(), "an encoding buffer holds at least a byte");
    postcard::serialize_with_flavor(value, Spilling { buffer, used: 0, spill })
}

struct Spilling<'a, S> {
    buffer: &'a mut [u8],
    used: usize,
    spill: S,
}

impl<S: FnMut(&[u8]) -> bool> Spilling<'_, S> {
    #[cold]
    #[inline(never)]
    fn spill(&mut self) -> postcard::Result<()> {
        let used = std::mem::take(&mut self.used);
        hand_over(&mut self.spill, &self.buffer[..used])
    }
}

impl<S: FnMut(&[u8]) -> bool> Flavor for Spilling<'_, S> {
    /// The length of the last piece, still in the buffer.
    type Output = usize;

    #[inline(always)]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.used == self.buffer.len() {
            self.spill()?;
        }
        self.buffer[self.used] = byte;
        self.used += 1;
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        if bytes.len() > self.buffer.len() - self.used {
            self.spill()?;
            if bytes.len() > self.buffer.len() {
                return hand_over(&mut self.spill, bytes);
            }
        }
        copy_small(&mut self.buffer[self.used..self.used + bytes.len()], bytes);
        self.used += bytes.len();
        Ok(())
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.used)
    }
}

/// Copies `source` into `target` (of the same length): up to 16 bytes with
/// two overlapping fixed-size moves and no call, longer with `memcpy`.
#[inline(always)]
fn copy_small(target: &mut [u8], source: &[u8]) {
    let length = source.len();
    match length {
        0 => {}
        1..=3 => {
            target[0] = source[0];
            target[length / 2] = source[length / 2];
            target[length - 1] = source[length - 1];
        }
        4..=8 => {
            target[..4].copy_from_slice(&source[..4]);
            target[length - 4..].copy_from_slice(&source[length - 4..]);
        }
        9..=16 => {
            target[..8].copy_from_slice(&source[..8]);
            target[length - 8..].copy_from_slice(&source[length - 8..]);
        }
        _ => target.copy_from_slice(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_copies_of_every_length_copy_exactly() {
        let source: Vec<u8> = (1..=40).collect();
        for length in 0..=40 {
            let mut target = vec![0u8; length];
            copy_small(&mut target, &source[..length]);
            assert_eq!(target, source[..length], "length {length}");
        }
    }

    #[test]
    fn encodings_equal_postcards_whatever_the_buffer() {
        let value: Vec<(String, u64, u128)> =
            (0..300u64).map(|n| ("x".repeat((n % 37) as usize), n * 7919, u128::from(n) << 70)).collect();
        let expected = postcard::to_allocvec(&value).expect("encodes");
        for buffer_bytes in [1, 2, 3, 7, 16, 17, 100, 4096, 1 << 20] {
            let mut buffer = vec![0u8; buffer_bytes];
            let mut encoded = Vec::new();
            encode(&value, &mut buffer, |bytes| {
                encoded.extend_from_slice(bytes);
                true
            })
            .expect("encodes");
            assert_eq!(encoded, expected, "buffer of {buffer_bytes} bytes");
        }
        for length in [0, 1, 1023, 1024, 1025, 2048, 5000] {
            let value = "x".repeat(length);
            let expected = postcard::to_allocvec(&(&value, 7u8, &value)).expect("encodes");
            with_encoded(&(&value, 7u8, &value), |encoded| assert_eq!(encoded, expected, "strings of {length} bytes"));
        }
    }

    #[test]
    fn a_refused_spill_stops_the_encoding() {
        let value = vec![7u64; 100];
        let result = encode(&value, &mut [0u8; 16], |_| false);
        assert_eq!(result, Err(postcard::Error::SerializeBufferFull));
    }
}
