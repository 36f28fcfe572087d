//! The two-sample Kolmogorov–Smirnov statistic: the largest gap between the
//! empirical distribution functions of the reference and the current window.
//! Not defined for categorical values, whose order means nothing.
//!
//! Two exact ways to the same number. [`ks_of_sorted`] merges two sorted
//! samples, taking every value equal to the current step from both before it
//! reads the gap (stepping through tied values one side at a time would report
//! gaps that do not exist). [`ks_of_buckets`], what monitor runs, reads the
//! window's counts per bucket of the frozen reference instead, so no window is
//! ever sorted.

use millrace_chassis::config::FeatureKind;

use super::{Current, DriftStatistic, Reference};

pub struct Ks;

impl DriftStatistic for Ks {
    fn measure(&self, reference: &Reference, current: &Current<'_>) -> Option<f64> {
        match reference.kind {
            FeatureKind::Numeric => ks_of_buckets(reference, current.bucket_counts, current.len),
            FeatureKind::Categorical => None,
        }
    }
}

/// KS statistic of the reference and a window given as counts per bucket (see
/// [`Reference::bucket_of`]); `None` when either is empty.
///
/// Both distribution functions are steps, so the largest gap is found at a data
/// point. At the j-th distinct reference value both functions are known exactly.
/// Between the (j−1)-th and the j-th the reference's is flat while the window's
/// climbs, so the gap there is largest either at the last window value of the
/// stretch (read after adding its count) or at its first, where it is never
/// larger than at the (j−1)-th reference value, already read. Integers
/// throughout: |R·m − C·n| / (n·m).
pub fn ks_of_buckets(reference: &Reference, bucket_counts: &[u32], len: u64) -> Option<f64> {
    let (n, m) = (reference.size, len);
    if n == 0 || m == 0 {
        return None;
    }
    // Every count is at most n (reference) or m (window), so with n·m in a u64
    // no product below overflows one; past that (windows of billions) u128.
    let widest = match n.checked_mul(m) {
        Some(_) => u128::from(widest_gap_u64(reference, bucket_counts, n, m)),
        None => widest_gap::<u128>(reference, bucket_counts, n.into(), m.into()),
    };
    Some(widest as f64 / (u128::from(n) * u128::from(m)) as f64)
}

/// [`widest_gap`] when n·m fits in a u64 (counts are held within n and m, so
/// every product does too), the common case. Where the window has nothing, its count stays put
/// while the reference's climbs, and |R·m − C·n| is convex in R: over such a
/// stretch the widest gap is at one of its ends, so only those are read.
fn widest_gap_u64(reference: &Reference, bucket_counts: &[u32], n: u64, m: u64) -> u64 {
    let (mut seen, mut widest, mut below) = (0u64, 0u64, 0u64);
    for (pair, &at_or_below) in bucket_counts.chunks_exact(2).zip(&reference.cumulative) {
        let (gap, at) = (u64::from(pair[0]), u64::from(pair[1]));
        if gap | at == 0 {
            below = at_or_below.min(n);
            continue;
        }
        // The end of the stretch before (or the previous step, again).
        widest = widest.max((below * m).abs_diff(seen * n));
        seen = (seen + gap).min(m);
        widest = widest.max((below * m).abs_diff(seen * n));
        seen = (seen + at).min(m);
        below = at_or_below.min(n);
        // The start of the next stretch.
        widest = widest.max((below * m).abs_diff(seen * n));
    }
    widest.max((below * m).abs_diff(seen * n))
}

/// max over the steps of |R·m − C·n| (R, C the reference's and the window's counts so far).
fn widest_gap<T>(reference: &Reference, bucket_counts: &[u32], n: T, m: T) -> T
where
    T: Copy
        + Ord
        + Default
        + From<u64>
        + std::ops::Add<Output = T>
        + std::ops::Mul<Output = T>
        + std::ops::Sub<Output = T>,
{
    let gap = |r: T, c: T| {
        let (a, b) = (r * m, c * n);
        if a > b {
            a - b
        } else {
            b - a
        }
    };
    // Bucket 2j (below the j-th value) and 2j + 1 (on it) side by side, so the
    // loop reads each count once, without a bounds check.
    let pairs = bucket_counts.chunks_exact(2);
    let (mut seen, mut widest, mut below) = (T::default(), T::default(), T::default());
    for (pair, &at_or_below) in pairs.zip(&reference.cumulative) {
        // Never past the window's size, so no product can overflow.
        seen = (seen + T::from(u64::from(pair[0]))).min(m);
        widest = widest.max(gap(below, seen));
        seen = (seen + T::from(u64::from(pair[1]))).min(m);
        below = T::from(at_or_below).min(n);
        widest = widest.max(gap(below, seen));
    }
    // Beyond the last reference value the reference's function is 1 and the
    // window's only climbs to 1: nothing wider there.
    widest
}

/// KS statistic of two ascending samples; `None` when either is empty.
pub fn ks_of_sorted(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut gap) = (0usize, 0usize, 0.0f64);
    while i < a.len() && j < b.len() {
        let step = a[i].min(b[j]);
        while i < a.len() && a[i] <= step {
            i += 1;
        }
        while j < b.len() && b[j] <= step {
            j += 1;
        }
        gap = gap.max((i as f64 / n - j as f64 / m).abs());
    }
    // Once one sample is used up its function is 1 and the other only climbs
    // towards 1: the gap can only shrink from here.
    Some(gap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ks_matches_hand_values_including_ties() {
        // (name, a, b, statistic worked out by hand)
        type Case<'a> = (&'a str, &'a [f64], &'a [f64], Option<f64>);
        let cases: [Case; 6] = [
            (
                "identical_is_zero",
                &[1.0, 2.0, 3.0],
                &[1.0, 2.0, 3.0],
                Some(0.0),
            ),
            ("disjoint_is_one", &[1.0, 2.0], &[3.0, 4.0], Some(1.0)),
            (
                // F_a / F_b after x = 1: .25 / 0; x = 2: .75 / .75; x = 3: 1 / .75
                "ties_are_stepped_together",
                &[1.0, 2.0, 2.0, 3.0],
                &[2.0, 2.0, 2.0, 4.0],
                Some(0.25),
            ),
            (
                // x = 1: 1/2 vs 1/3 ; x = 2: 1 vs 2/3
                "unequal_sizes",
                &[1.0, 2.0],
                &[1.0, 2.0, 3.0],
                Some(1.0 / 3.0),
            ),
            (
                // after x = 0: 1/2 vs 0; after x = 1: 1 vs 1/2 ; after 5: 1 vs 1
                "shifted_half",
                &[0.0, 1.0],
                &[1.0, 5.0],
                Some(0.5),
            ),
            ("empty_is_undefined", &[], &[1.0], None),
        ];
        for (name, a, b, expected) in cases {
            let got = ks_of_sorted(a, b);
            match (got, expected) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-12, "{name}: {g} vs {w}"),
                (g, w) => assert_eq!(g, w, "{name}"),
            }
            assert_eq!(got, ks_of_sorted(b, a), "{name}: symmetric");
        }
    }

    /// The buckets give exactly what the merge gives, ties and values outside the
    /// reference's range included.
    #[test]
    fn buckets_agree_with_the_merge() {
        use crate::drift::{DriftSpec, Reference};
        let mut state = 7u64;
        let mut next = |modulo: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % modulo
        };
        let spec = DriftSpec {
            kind: FeatureKind::Numeric,
            bins: 10,
            max_categories: 10,
            reference_events: 0,
            window_events: 0,
            evaluate_every: 1,
        };
        for round in 0..200 {
            // Few distinct values (many ties) in some rounds, many in others.
            let spread = [3, 10, 1000][round % 3];
            let shift = next(5);
            let reference: Vec<f64> = (0..50 + next(100)).map(|_| next(spread) as f64).collect();
            let window: Vec<f64> = (0..1 + next(100))
                .map(|_| (next(spread) + shift) as f64 - 2.0 + next(2) as f64 * 0.5)
                .collect();
            let r = Reference::freeze(reference.clone(), &spec);
            let mut counts = vec![0u32; r.buckets()];
            for v in &window {
                counts[r.bucket_of(*v) as usize] += 1;
            }
            let mut a = reference;
            let mut b = window.clone();
            a.sort_by(f64::total_cmp);
            b.sort_by(f64::total_cmp);
            let merged = ks_of_sorted(&a, &b).expect("non-empty");
            let bucketed = ks_of_buckets(&r, &counts, window.len() as u64).expect("non-empty");
            // The u64 fast path and the general scan (windows of billions) agree.
            let (n, m) = (r.size, window.len() as u64);
            assert_eq!(
                u128::from(widest_gap_u64(&r, &counts, n, m)),
                widest_gap::<u128>(&r, &counts, n.into(), m.into()),
                "round {round}"
            );
            assert!(
                (merged - bucketed).abs() < 1e-12,
                "round {round}: merge {merged}, buckets {bucketed}"
            );
        }
    }
}
