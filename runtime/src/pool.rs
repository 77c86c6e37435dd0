//! The session's own worker threads (feature `std`): created with the
//! session, joined when it is dropped, and handed work without allocating.
//!
//! A parallel region is [`Pool::run`]`(parts, f)`: the calling thread runs
//! `f(0)`, worker `i` runs `f(i)`, and `run` returns when all are done. The
//! job is published through one atomic pointer to a description on the
//! caller's stack and an epoch counter; workers spin briefly for the next
//! epoch (regions follow each other within microseconds while a token is
//! computed) and then sleep on a condition variable. Nothing here allocates
//! after [`Pool::new`] — unlike handing work to a rayon pool from outside it,
//! which queues a heap block every few dozen calls — so a session with
//! several threads keeps the no-allocation promise for any caller thread,
//! the C API's included.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Busy spins before a waiting thread starts yielding its core.
const SPINS: u32 = 1 << 10;
/// Yields before a worker sleeps (the caller keeps yielding: its wait is
/// for work in progress).
const YIELDS: u32 = 1 << 12;

/// The closure of the current region: a pointer to the caller's
/// `&dyn Fn`, valid while a part of the region is unfinished.
type JobPtr = *const &'static (dyn Fn(usize) + Sync);

/// The claim word: the region's epoch (high 32 bits), its number of parts
/// (16 bits) and the next unclaimed part (low 16 bits). A compare-exchange
/// of it claims one part of one region.
fn claim_word(epoch: u64, parts: usize) -> u64 {
    (epoch << 32) | ((parts as u64) << 16)
}

struct Shared {
    /// The current region's closure (see [`JobPtr`]).
    job: AtomicPtr<&'static (dyn Fn(usize) + Sync)>,
    /// See [`claim_word`].
    claim: AtomicU64,
    /// Parts of the current region finished.
    done: AtomicUsize,
    /// A part panicked.
    panicked: AtomicBool,
    quit: AtomicBool,
    /// Workers asleep (or about to be): the publisher wakes them.
    sleepers: AtomicUsize,
    /// Workers that have started (and done what a thread's start allocates).
    started: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Shared {
    /// Claims and runs parts of the region `epoch` until none is left.
    fn work(&self, epoch: u64) {
        let mut word = self.claim.load(Ordering::Acquire);
        loop {
            let (e, parts, index) = (word >> 32, ((word >> 16) & 0xFFFF) as usize, (word & 0xFFFF) as usize);
            if e != epoch || index >= parts {
                return;
            }
            // Claim part `index` of this region only (a thread late for an
            // earlier region must not take a part of the next one).
            if let Err(now) = self.claim.compare_exchange_weak(word, word + 1, Ordering::AcqRel, Ordering::Acquire) {
                word = now;
                continue;
            }
            word += 1;
            // SAFETY: part `index` of region `epoch` is claimed and not done,
            // so the caller of `run` is still waiting inside it and the
            // closure it published (before the claim word, Release; read
            // after our AcqRel claim) is alive and is this region's: the
            // next region is published only once every part is done.
            let f = unsafe { *self.job.load(Ordering::Acquire).cast_const() };
            if catch_unwind(AssertUnwindSafe(|| f(index))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Worker threads owned by a session.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// The last region's epoch (only the owner publishes).
    epoch: core::cell::Cell<u64>,
}

// SAFETY: `epoch` is only touched by `run`, which takes `&self` but is only
// called by the session owning the pool, from one thread at a time (the
// session is `&mut` while it runs a forward pass).
unsafe impl Sync for Pool {}

impl Pool {
    /// A pool of `threads - 1` workers (the caller is the first thread).
    pub(crate) fn new(threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            job: AtomicPtr::new(core::ptr::null_mut()),
            claim: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            quit: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::with_capacity(threads.saturating_sub(1));
        for index in 1..threads {
            let mine = Arc::clone(&shared);
            let spawned = std::thread::Builder::new().name(format!("ferrite-{index}")).spawn(move || worker(&mine));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    // Stop the ones already started before reporting.
                    drop(Pool { shared, workers, epoch: core::cell::Cell::new(0) });
                    return Err(e);
                }
            }
        }
        // Return only once every worker runs its loop: whatever a thread's
        // start allocates (its name, thread-locals) happens before the
        // session is handed out, never during inference.
        while shared.started.load(Ordering::Acquire) < workers.len() {
            std::thread::yield_now();
        }
        Ok(Pool { shared, workers, epoch: core::cell::Cell::new(0) })
    }

    /// Threads, the caller's included.
    pub(crate) fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(i)` for every `i < parts` and returns when all have run. Parts
    /// are claimed one at a time by whichever thread is free — the caller
    /// too, so a worker the OS has not scheduled yet delays nothing — and
    /// a part is run by exactly one thread. A panic in a part is re-raised
    /// here.
    pub(crate) fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() || parts <= 1 || parts > 0xFFFF {
            (0..parts).for_each(f);
            return;
        }
        let s = &*self.shared;
        let epoch = (self.epoch.get() + 1) & 0xFFFF_FFFF;
        self.epoch.set(epoch);
        // SAFETY (lifetime): the pointer is used only for claimed parts of
        // this region, all finished before this function returns.
        let f_static: &'static (dyn Fn(usize) + Sync) = unsafe { core::mem::transmute(f) };
        let job: &&'static (dyn Fn(usize) + Sync) = &f_static;
        s.done.store(0, Ordering::Relaxed);
        s.job.store((job as JobPtr).cast_mut(), Ordering::Release);
        s.claim.store(claim_word(epoch, parts), Ordering::Release);
        if s.sleepers.load(Ordering::Acquire) > 0 {
            let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        s.work(epoch);
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < parts {
            if spins < SPINS {
                spins += 1;
                core::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            resume_unwind(Box::new("a part of a parallel region panicked"));
        }
    }
}

fn worker(s: &Shared) {
    // What the first lock needs is set up before the count.
    drop(s.lock.lock());
    s.started.fetch_add(1, Ordering::AcqRel);
    let mut seen = 0u64;
    let epoch_now = || s.claim.load(Ordering::Acquire) >> 32;
    loop {
        // Wait for the next region: spin, yield, then sleep.
        let mut spins = 0u32;
        while epoch_now() == seen && !s.quit.load(Ordering::Acquire) {
            if spins < SPINS + YIELDS {
                spins += 1;
                if spins <= SPINS {
                    core::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
                continue;
            }
            s.sleepers.fetch_add(1, Ordering::AcqRel);
            let mut guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            while epoch_now() == seen && !s.quit.load(Ordering::Acquire) {
                guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            drop(guard);
            s.sleepers.fetch_sub(1, Ordering::AcqRel);
        }
        if s.quit.load(Ordering::Acquire) {
            return;
        }
        seen = epoch_now();
        s.work(seen);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.quit.store(true, Ordering::Release);
        {
            let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A mutable slice that the parts of one region write in disjoint pieces.
pub(crate) struct Shards<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: core::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: a `Shards` hands out only disjoint pieces (the `piece` contract),
// like `&mut [T]` split with `split_at_mut`, which is `Send + Sync` for
// `T: Send`.
unsafe impl<T: Send> Sync for Shards<'_, T> {}

impl<'a, T> Shards<'a, T> {
    pub(crate) fn new(slice: &'a mut [T]) -> Self {
        Shards { ptr: slice.as_mut_ptr(), len: slice.len(), _borrow: core::marker::PhantomData }
    }

    /// Elements `range` (clamped to the slice).
    ///
    /// # Safety
    ///
    /// No two pieces alive at the same time may overlap.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn piece(&self, range: core::ops::Range<usize>) -> &'a mut [T] {
        let end = range.end.min(self.len);
        let start = range.start.min(end);
        // SAFETY: `start..end` lies inside the borrowed slice; the caller
        // guarantees no other live piece overlaps it.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(start), end - start) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regions per pool: 2000 natively, 200 under Miri (`scripts/miri.sh`,
    /// where each is interpreted about a thousand times slower).
    const REGIONS: usize = if cfg!(miri) { 200 } else { 2000 };

    #[test]
    fn every_part_runs_once_per_region() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads).expect("pool");
            assert_eq!(pool.threads(), threads);
            let counts: Vec<AtomicUsize> = (0..8).map(|_| AtomicUsize::new(0)).collect();
            for region in 0..REGIONS {
                let parts = 1 + region % 7;
                pool.run(parts, &|i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                });
                if region % (REGIONS / 4) == 0 {
                    // Let the workers fall asleep now and then.
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
            let want: Vec<usize> = (0..8).map(|i| (0..REGIONS).filter(|r| 1 + r % 7 > i).count()).collect();
            let got: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            assert_eq!(got, want, "{threads} threads");
        }
    }

    #[test]
    fn a_panicking_part_panics_the_caller_and_the_pool_goes_on() {
        let pool = Pool::new(3).expect("pool");
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(3, &|i| {
                if i == 2 {
                    panic!("part 2");
                }
            })
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.run(3, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 3);
    }
}
