//! The allocator of the `headroom` binary and of the benchmarks that
//! measure what it runs: mimalloc, called the way the standard library
//! calls the system's allocator.
//!
//! Why mimalloc: the engine allocates answers and events that other threads
//! free, which glibc's allocator handles with locks and consolidation.
//!
//! Why not the `mimalloc` crate's own `MiMalloc`: it asks for every block
//! through `mi_malloc_aligned`, whose checks and fallback path cost about 5 %
//! of a decision's instructions. Nearly every block needs no more alignment
//! than mimalloc gives any block of its size (16 bytes from 16 bytes up),
//! so those go through `mi_malloc`, and only the rest through the aligned
//! entry points: the rule of the standard library's `System`.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Alignment mimalloc gives every block of at least this size.
const NATURAL_ALIGNMENT: usize = 16;

pub struct Allocator;

/// Whether a plain block of `size` bytes is aligned enough for `align`:
/// Rust's sizes are multiples of their alignment, so `align <= size` means
/// the block is at least `align` bytes long.
fn plain_suffices(align: usize, size: usize) -> bool {
    align <= NATURAL_ALIGNMENT && align <= size
}

/// A block for `layout` from `plain` where mimalloc's own alignment
/// suffices, else from `aligned`.
///
/// # Safety
/// `plain` and `aligned` are mimalloc's entry points of those shapes.
#[inline(always)]
unsafe fn allocate(
    layout: Layout,
    plain: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    // SAFETY: the caller passes mimalloc's functions, which accept any size.
    unsafe {
        if plain_suffices(layout.align(), layout.size()) {
            plain(layout.size()).cast()
        } else {
            aligned(layout.size(), layout.align()).cast()
        }
    }
}

// SAFETY: every block comes from mimalloc and goes back to it; the plain
// entry points are used only where mimalloc's own guarantee (every block of
// 16 bytes or more is 16-byte aligned, smaller ones 8) meets the layout's
// alignment, and the aligned ones otherwise.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation functions accept any size.
        unsafe { allocate(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe { allocate(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, pointer: *mut u8, _layout: Layout) {
        // SAFETY: `pointer` came from this allocator, so from mimalloc,
        // which frees aligned and plain blocks alike.
        unsafe { mi::mi_free(pointer.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `pointer` came from this allocator with `layout`; the
        // moved block keeps the alignment the layout asks for.
        unsafe {
            if plain_suffices(layout.align(), new_size) {
                mi::mi_realloc(pointer.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(pointer.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every alignment up to a page, at sizes around each: the blocks are
    /// aligned as asked, keep their bytes when grown and shrunk, and zeroed
    /// ones are zero.
    #[test]
    fn blocks_are_aligned_as_asked_and_keep_their_bytes() {
        let allocator = Allocator;
        for align in (0..13).map(|power| 1usize << power) {
            for size in [align, 2 * align, 3 * align, 16, 24, 48, 100 * align, 5000] {
                let size = size.next_multiple_of(align);
                let layout = Layout::from_size_align(size, align).expect("a valid layout");
                // SAFETY: the layout is valid and not zero-sized; every block
                // is freed once, with the layout it has at that moment.
                unsafe {
                    let zeroed = allocator.alloc_zeroed(layout);
                    assert_eq!(zeroed as usize % align, 0, "zeroed: align {align}, size {size}");
                    assert!(std::slice::from_raw_parts(zeroed, size).iter().all(|byte| *byte == 0));
                    allocator.dealloc(zeroed, layout);

                    let block = allocator.alloc(layout);
                    assert_eq!(block as usize % align, 0, "align {align}, size {size}");
                    block.write_bytes(0xa5, size);
                    let grown = allocator.realloc(block, layout, 3 * size);
                    assert_eq!(grown as usize % align, 0, "grown: align {align}, size {size}");
                    assert!(std::slice::from_raw_parts(grown, size).iter().all(|byte| *byte == 0xa5));
                    let grown_layout = Layout::from_size_align(3 * size, align).expect("a valid layout");
                    let shrunk = allocator.realloc(grown, grown_layout, align);
                    assert_eq!(shrunk as usize % align, 0, "shrunk: align {align}, size {size}");
                    assert!(std::slice::from_raw_parts(shrunk, align).iter().all(|byte| *byte == 0xa5));
                    allocator.dealloc(shrunk, Layout::from_size_align(align, align).expect("a valid layout"));
                }
            }
        }
    }
}
