//! RoPE stays exact however far a stream runs: the cosines and sines of
//! `rope_table` at positions 10^6 and 10^8 (and their neighbours) against
//! the angle computed in f64.

use ferrite_kernels::reference::rope_table;

#[test]
fn rope_tables_are_exact_at_large_positions() {
    let hd = 64;
    let inv: Vec<f32> = (0..hd / 2).map(|i| 1.0 / libm::powf(10000.0, (2 * i) as f32 / hd as f32)).collect();
    let mut cs = vec![0f32; hd];
    let mut worst = 0.0f64;
    for base in [1_000_000i64, 100_000_000, -100_000_000] {
        let mut prev = vec![0f32; hd];
        for pos in base..base + 3 {
            rope_table(pos, &inv, &mut cs);
            for (i, &f) in inv.iter().enumerate() {
                let angle = pos as f64 * f as f64;
                let err = (cs[i] as f64 - angle.cos()).abs().max((cs[hd / 2 + i] as f64 - angle.sin()).abs());
                worst = worst.max(err);
            }
            // Neighbouring positions keep distinct angles (in f32 they merge
            // near 2^24).
            assert_ne!(cs, prev, "position {pos} rotates like {}", pos - 1);
            prev.copy_from_slice(&cs);
        }
    }
    // f32 rounding of the results only (an angle formed in f32 is off by
    // ~0.06 rad at 10^6 and by whole turns at 10^8).
    assert!(worst <= 6e-8, "max error {worst}");
}
