//! Population Stability Index: Σ (c − r) · ln(c / r) over the bins, with r and
//! c the reference and current proportions. A bin empty on one side would make
//! the term infinite, so proportions are floored at [`EMPTY_BIN_PROPORTION`]
//! (the convention of Evidently and most PSI tooling); a bin empty on both
//! sides then contributes exactly 0.

use super::{Current, DriftStatistic, Reference};

/// The proportion an empty bin counts as.
pub const EMPTY_BIN_PROPORTION: f64 = 1e-4;

pub struct Psi;

impl DriftStatistic for Psi {
    fn measure(&self, reference: &Reference, current: &Current<'_>) -> Option<f64> {
        psi_of_counts(&reference.counts, current.counts)
    }
}

/// PSI between two histograms over the same bins; `None` when either is empty.
pub fn psi_of_counts(reference: &[u64], current: &[u64]) -> Option<f64> {
    let total = |c: &[u64]| c.iter().sum::<u64>();
    let (nr, nc) = (total(reference), total(current));
    if nr == 0 || nc == 0 || reference.len() != current.len() {
        return None;
    }
    let proportion = |count: u64, n: u64| (count as f64 / n as f64).max(EMPTY_BIN_PROPORTION);
    Some(
        reference
            .iter()
            .zip(current)
            .map(|(&r, &c)| {
                let (r, c) = (proportion(r, nr), proportion(c, nc));
                (c - r) * (c / r).ln()
            })
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_matches_hand_values_including_empty_bins() {
        let e = EMPTY_BIN_PROPORTION;
        // (name, reference counts, current counts, PSI worked out by hand)
        type Case<'a> = (&'a str, &'a [u64], &'a [u64], Option<f64>);
        let cases: [Case; 6] = [
            ("identical_is_zero", &[5, 3, 2], &[10, 6, 4], Some(0.0)),
            (
                // proportions .5/.5 → .25/.75
                "two_bins",
                &[50, 50],
                &[25, 75],
                Some((0.25 - 0.5) * (0.25f64 / 0.5).ln() + (0.75 - 0.5) * (0.75f64 / 0.5).ln()),
            ),
            (
                // the last bin is empty in the reference: it counts as 1e-4
                "empty_reference_bin_is_floored",
                &[4, 4, 2, 0],
                &[2, 2, 2, 4],
                Some(2.0 * (0.2 - 0.4) * (0.2f64 / 0.4).ln() + 0.0 + (0.4 - e) * (0.4 / e).ln()),
            ),
            (
                "empty_current_bin_is_floored",
                &[1, 1],
                &[2, 0],
                Some((1.0 - 0.5) * (1.0f64 / 0.5).ln() + (e - 0.5) * (e / 0.5).ln()),
            ),
            (
                "a_bin_empty_on_both_sides_adds_nothing",
                &[3, 0, 1],
                &[3, 0, 1],
                Some(0.0),
            ),
            ("an_empty_window_is_undefined", &[3, 1], &[0, 0], None),
        ];
        for (name, r, c, expected) in cases {
            let got = psi_of_counts(r, c);
            match (got, expected) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-12, "{name}: {g} vs {w}"),
                (g, w) => assert_eq!(g, w, "{name}"),
            }
        }
    }
}
