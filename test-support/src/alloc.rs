//! A global allocator that counts allocations, for the tests that prove a
//! session allocates nothing once it is created.
//!
//! ```ignore
//! use ferrite_test_support::alloc::CountingAllocator;
//! #[global_allocator]
//! static ALLOC: CountingAllocator = CountingAllocator::new();
//!
//! let (result, allocations) = ALLOC.count(|| session.step(id).map(|l| l[0]));
//! assert_eq!(allocations, 0);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

thread_local! {
    /// Whether this thread's allocations are counted (while counting is on).
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

/// The system allocator, counting the `alloc` and `realloc` calls of the
/// threads that opted in ([`CountingAllocator::count_this_thread`], or the
/// thread running [`CountingAllocator::count`]) while counting is on.
pub struct CountingAllocator {
    enabled: AtomicBool,
    /// Count every thread, not only those that opted in.
    all_threads: AtomicBool,
    allocations: AtomicUsize,
    last_size: AtomicUsize,
    /// Held by [`CountingAllocator::count`] while it runs.
    counting: AtomicBool,
}

impl CountingAllocator {
    /// Counting off, no thread counted.
    pub const fn new() -> Self {
        CountingAllocator {
            enabled: AtomicBool::new(false),
            all_threads: AtomicBool::new(false),
            allocations: AtomicUsize::new(0),
            last_size: AtomicUsize::new(0),
            counting: AtomicBool::new(false),
        }
    }

    /// Counts the current thread's allocations from now on, whenever
    /// counting is on (for a pool's worker threads: call it in their start
    /// handler).
    pub fn count_this_thread() {
        COUNTED.with(|c| c.set(true));
    }

    /// Sets the count to zero and turns counting on.
    pub fn start(&self) {
        self.all_threads.store(false, Ordering::SeqCst);
        self.allocations.store(0, Ordering::SeqCst);
        self.enabled.store(true, Ordering::SeqCst);
    }

    /// Like [`CountingAllocator::start`], but every thread of the process
    /// is counted (threads a library starts itself, e.g. a session's
    /// workers). Run nothing else meanwhile: other tests of the same binary
    /// would be counted too.
    pub fn start_all_threads(&self) {
        self.allocations.store(0, Ordering::SeqCst);
        self.all_threads.store(true, Ordering::SeqCst);
        self.enabled.store(true, Ordering::SeqCst);
    }

    /// Turns counting off and returns the allocations counted since
    /// [`CountingAllocator::start`].
    pub fn stop(&self) -> usize {
        self.enabled.store(false, Ordering::SeqCst);
        self.allocations.load(Ordering::SeqCst)
    }

    /// Runs `f` with the current thread counted and returns its result and
    /// the allocations it made. Counts of one binary's tests running at
    /// once are taken one after the other, and the thread is no longer
    /// counted afterwards, so a test allocating while another counts is not
    /// charged to it.
    pub fn count<R>(&self, f: impl FnOnce() -> R) -> (R, usize) {
        while self.counting.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            std::thread::yield_now();
        }
        let before = COUNTED.with(|c| c.replace(true));
        self.start();
        let result = f();
        let n = self.stop();
        COUNTED.with(|c| c.set(before));
        self.counting.store(false, Ordering::SeqCst);
        (result, n)
    }

    /// Size in bytes of the last allocation counted (for messages).
    pub fn last_size(&self) -> usize {
        self.last_size.load(Ordering::SeqCst)
    }

    fn record(&self, size: usize) {
        // `try_with`: a thread being torn down has no locals left.
        let counted = self.all_threads.load(Ordering::SeqCst) || COUNTED.try_with(Cell::get).unwrap_or(false);
        if self.enabled.load(Ordering::SeqCst) && counted {
            self.allocations.fetch_add(1, Ordering::SeqCst);
            self.last_size.store(size, Ordering::SeqCst);
        }
    }
}

impl Default for CountingAllocator {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every operation is the system allocator's, unchanged; counting
// touches only atomics and a const-initialized thread-local (no allocation).
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.record(layout.size());
        // SAFETY: the caller's contract is `GlobalAlloc::alloc`'s, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.record(layout.size());
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.record(new_size);
        // SAFETY: `ptr` came from `System`; the rest is the caller's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
