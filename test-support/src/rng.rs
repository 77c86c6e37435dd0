//! Seeded pseudo-random generators for tests: small, deterministic, not
//! statistically strong (tests need varied cases that repeat, not quality).

/// SplitMix64 (Steele, Lea and Flood): a 64-bit counter through a
/// bijective mixer; every seed gives a good stream.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Below `n` (> 0); slightly biased for huge `n`, which tests do not use.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// In `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// One of `items` (not empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// True `p` times in 100.
    pub fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    /// A character with a code point in `lo..=hi` (surrogates skipped).
    pub fn char_in(&mut self, lo: u32, hi: u32) -> char {
        loop {
            if let Some(c) = char::from_u32(lo + (self.next_u64() % u64::from(hi - lo + 1)) as u32) {
                return c;
            }
        }
    }

    /// Uniform in [-1, 1), on a grid of 2^-23.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// The 64-bit linear congruential generator of Knuth's MMIX
/// (`s = s * 6364136223846793005 + 1442695040888963407`); its high bits are
/// the random ones.
#[derive(Clone, Debug)]
pub struct Lcg(u64);

impl Lcg {
    /// The stream whose first step starts from state `seed`.
    pub fn new(seed: u64) -> Self {
        Lcg(seed)
    }

    /// Advances and returns the whole new state (use its high bits).
    pub fn step(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0
    }

    /// The next 53 random bits (the state's top 53).
    pub fn next_u53(&mut self) -> u64 {
        self.step() >> 11
    }

    /// Uniform in [-scale, scale), on a grid of 2^-23 · scale.
    pub fn f32(&mut self, scale: f32) -> f32 {
        ((self.next_u53() >> 29) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
    }

    /// `n` values of [`Lcg::f32`].
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32(scale)).collect()
    }
}

/// `n` values uniform in [-scale, scale) from `seed` (any seed, 0 included:
/// it is mixed first); the stream of the kernels' and the CUDA backend's
/// tests.
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    Lcg::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(7)).vec(n, scale)
}

/// Marsaglia's xorshift64 (shifts 13, 7, 17); the seed must not be 0.
#[derive(Clone, Debug)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// The stream of `seed` (not 0: that stream is all zeros).
    pub fn new(seed: u64) -> Self {
        assert_ne!(seed, 0, "xorshift64 needs a nonzero seed");
        XorShift64(seed)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streams are the ones the tests were written with: pinned here so
    /// that a change to a generator cannot silently change every test's cases.
    #[test]
    fn streams_are_pinned() {
        // splitmix64(0)'s first output, as published with the algorithm.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
        let mut lcg = Lcg::new(1);
        assert_eq!(lcg.step(), 1u64.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
        let v = values(1000, 3, 2.0);
        assert!(v.iter().all(|x| (-2.0..2.0).contains(x)));
        // Inline formula of the old copies: ((s >> 40) / 2^23 - 1) * scale.
        let mut s = 3u64.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(7);
        for &x in &v[..50] {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            assert_eq!(x.to_bits(), (((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * 2.0).to_bits());
        }
        let mut x = XorShift64::new(0x9E37_79B9_7F4A_7C15);
        let first = x.next_u64();
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        assert_eq!(first, s);
    }

    #[test]
    fn helpers_stay_in_range() {
        let mut r = SplitMix64::new(7);
        for _ in 0..1000 {
            assert!(r.below(10) < 10);
            assert!((3..=5).contains(&r.range(3, 5)));
            let u = r.unit();
            assert!((-1.0..1.0).contains(&u));
            let c = r.char_in(0xD7F0, 0xE010);
            assert!(!(0xD800..0xE000).contains(&(c as u32)));
        }
    }
}
