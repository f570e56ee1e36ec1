//! The process's global allocator: the system allocator, except that huge
//! allocations (1 GiB and up) are reserved lazily with `MAP_NORESERVE`.
//!
//! Why: the Kafka request decoder (`kafka-protocol`) sizes a `Vec` from the
//! element count a client sends before reading the elements, so a 30-byte
//! frame claiming two billion topics asks for hundreds of gigabytes. The
//! system allocator refuses, and Rust turns a refused allocation into an
//! abort: one hostile client would take the broker down. A lazy reservation
//! costs address space only; the decoder then fails on the missing bytes and
//! the reservation is returned. Legitimate huge buffers behave as before
//! (pages are committed on first touch).
//!
//! It must never change the behaviour of allocations below the threshold,
//! which all go to the system allocator untouched.
//!
//! [`tune_system_allocator`] keeps glibc from mapping and unmapping each
//! batch-sized buffer (1 MiB read chunks, decoded columns): with its default
//! dynamic threshold such buffers come from `mmap` and go back with
//! `munmap`, and the page faults of refilling them cost the SQL jobs up to
//! a third of their time in the kernel (Nexmark q0: 1.4 s → 0.4 s of system
//! time, same user time, +10 MiB peak RSS; q5 −4 % CPU, +80 MiB). A 64 MiB
//! threshold kept too much: q5 grew by 200 MiB and slowed by 7 %.

use std::alloc::{GlobalAlloc, Layout, System};

/// Serves allocations up to 4 MiB from the heap, which keeps up to 32 MiB
/// of freed memory at its top instead of returning it at once, so buffers
/// of one batch reuse the pages of the last. Call before starting threads. A
/// no-op off glibc.
pub fn tune_system_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts glibc's allocator parameters; called
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

/// Allocations at least this large are mapped lazily.
const LAZY_THRESHOLD: usize = 1 << 30;
/// mmap returns page-aligned memory; stricter alignments use the system path.
const PAGE: usize = 4096;

/// Install with `#[global_allocator] static A: sluice::alloc::LazyHugeAlloc = sluice::alloc::LazyHugeAlloc;`.
pub struct LazyHugeAlloc;

fn is_lazy(size: usize, align: usize) -> bool {
    size >= LAZY_THRESHOLD && align <= PAGE
}

unsafe fn map_lazy(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping touches no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every block is released by the same path that produced it, decided
// by its layout alone (size and alignment are passed back unchanged by Rust).
unsafe impl GlobalAlloc for LazyHugeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_lazy(layout.size(), layout.align()) {
            unsafe { map_lazy(layout.size()) }
        } else {
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_lazy(layout.size(), layout.align()) {
            // Anonymous mappings are zero-filled.
            unsafe { map_lazy(layout.size()) }
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_lazy(layout.size(), layout.align()) {
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_lazy = is_lazy(layout.size(), layout.align());
        let new_lazy = is_lazy(new_size, layout.align());
        if !old_lazy && !new_lazy {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        if old_lazy && new_lazy {
            let p =
                unsafe { libc::mremap(ptr.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE) };
            return if p == libc::MAP_FAILED {
                std::ptr::null_mut()
            } else {
                p.cast()
            };
        }
        // Crossing the threshold: move between the two allocators.
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_reservation_succeeds_and_small_ones_round_trip() {
        let a = LazyHugeAlloc;
        unsafe {
            // 256 GiB: more than this machine has, as a hostile count asks.
            let huge = Layout::from_size_align(256 << 30, 8).unwrap();
            let p = a.alloc(huge);
            assert!(!p.is_null());
            *p = 7;
            assert_eq!(*p, 7);
            a.dealloc(p, huge);

            let small = Layout::from_size_align(100, 8).unwrap();
            let q = a.alloc(small);
            assert!(!q.is_null());
            let r = a.realloc(q, small, LAZY_THRESHOLD + 1);
            assert!(!r.is_null());
            let big = Layout::from_size_align(LAZY_THRESHOLD + 1, 8).unwrap();
            let s = a.realloc(r, big, 64);
            assert!(!s.is_null());
            a.dealloc(s, Layout::from_size_align(64, 8).unwrap());
        }
    }
}
