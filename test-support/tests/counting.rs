//! The counting allocator counts what it must (so that the no-allocation
//! tests using it can fail), and only on the threads that opted in.

use ferrite_test_support::alloc::CountingAllocator;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

#[test]
fn counts_allocations_and_reallocations_of_counted_threads_only() {
    let (v, n) = ALLOC.count(|| {
        let mut v: Vec<u64> = Vec::with_capacity(1);
        v.extend([1, 2, 3, 4, 5]); // grows: a reallocation
        v
    });
    assert_eq!(n, 2, "one allocation and one reallocation");
    assert_eq!(ALLOC.last_size(), v.capacity() * 8);
    let ((), n) = ALLOC.count(|| {
        // A thread that did not opt in is not counted (its spawn is).
        std::thread::spawn(|| drop(std::hint::black_box(vec![0u8; 100]))).join().expect("thread");
    });
    assert!(n >= 1, "the spawn allocates on this thread");
    let before = n;
    let ((), n) = ALLOC.count(|| drop(std::hint::black_box(Vec::<u8>::new())));
    assert_eq!(n, 0, "an empty Vec does not allocate (after {before})");
}

/// Two tests of one binary counting at once (libtest runs them on separate
/// threads): neither is charged the other's allocations, also when the
/// other thread counted something before (the CI failure of 2026-12-02:
/// 385 allocations charged to a loop that made none).
#[test]
fn a_thread_that_counted_before_is_not_charged_to_another_count() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static COUNTED_ONCE: AtomicBool = AtomicBool::new(false);
    static DONE: AtomicBool = AtomicBool::new(false);
    let other = std::thread::spawn(|| {
        let ((), _) = ALLOC.count(|| ());
        COUNTED_ONCE.store(true, Ordering::SeqCst);
        while !DONE.load(Ordering::SeqCst) {
            drop(std::hint::black_box(vec![0u8; 64]));
        }
    });
    while !COUNTED_ONCE.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    let ((), n) = ALLOC.count(|| {
        for _ in 0..1000 {
            std::hint::black_box(0u8);
            std::thread::yield_now();
        }
    });
    DONE.store(true, Ordering::SeqCst);
    other.join().expect("thread");
    assert_eq!(n, 0, "the other thread's allocations were counted");
}
