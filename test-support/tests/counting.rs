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
