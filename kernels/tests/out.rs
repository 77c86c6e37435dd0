//! `Out`, the matrix-product writer: `set_run` writes exactly its run and
//! refuses rows outside the writer's range or past the slice.

use ferrite_kernels::Out;
use std::panic::{catch_unwind, AssertUnwindSafe};

#[test]
fn set_run_writes_the_run_and_nothing_else() {
    let mut buf = vec![0.0f32; 3 * 10];
    let (_, part) = Out::new(&mut buf, 10).split_at_row(2);
    let (mut part, _) = part.split_at_row(9);
    part.set_run(1, 3, &[1.0, 2.0, 3.0]);
    part.set_run(2, 2, &[4.0; 7]);
    part.set_run(0, 5, &[]);
    let mut want = vec![0.0f32; 30];
    want[13..16].copy_from_slice(&[1.0, 2.0, 3.0]);
    want[22..29].fill(4.0);
    assert_eq!(buf, want);
}

#[test]
fn set_run_refuses_rows_outside_the_writer_or_the_slice() {
    let mut buf = vec![0.0f32; 2 * 8];
    let refused = |t: usize, r0: usize, n: usize, buf: &mut [f32]| {
        let (lo, hi) = Out::new(buf, 8).split_at_row(4);
        let vals = vec![1.0f32; n];
        let a = catch_unwind(AssertUnwindSafe(|| {
            let mut lo = lo;
            lo.set_run(t, r0, &vals)
        }));
        let b = catch_unwind(AssertUnwindSafe(|| {
            let mut hi = hi;
            hi.set_run(t, r0 + 4, &vals)
        }));
        a.is_err() && b.is_err()
    };
    // Runs that cross the end of the writer's rows, a token past the slice,
    // and an overflowing token index.
    assert!(refused(0, 2, 3, &mut buf));
    assert!(refused(2, 0, 1, &mut buf));
    assert!(refused(usize::MAX / 4, 0, 1, &mut buf));
    assert!(buf.iter().all(|&v| v == 0.0), "a refused run wrote something");
}
