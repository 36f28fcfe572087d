//! How good a probability is: ROC AUC, log loss, Brier score and
//! reliability (calibration) bins, exact over a holdout set ([`Holdout`]) and
//! streaming over a progressive-validation stream ([`Progressive`]).
//!
//! The streaming version keeps a histogram of scores per class (1000 bins),
//! so memory and snapshot size are constant however long it runs; its AUC
//! treats scores in the same bin as ties (within 0.001 of the exact AUC for
//! any reasonable score distribution).

use serde::{Deserialize, Serialize};

const BINS: usize = 1000;
/// Reliability bins, each 0.1 wide.
pub const RELIABILITY_BINS: usize = 10;
const EPS: f64 = 1e-15;

fn log_loss_of(p: f64, y: f64) -> f64 {
    let p = p.clamp(EPS, 1.0 - EPS);
    -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
}

/// One reliability bin: how many scores fell in it, their mean, and the
/// fraction of them that were positive. Calibrated scores have the two close.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub count: u64,
    pub mean_score: f64,
    pub positive_rate: f64,
}

/// Exact metrics of scores against 0/1 labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Holdout {
    pub rows: usize,
    pub roc_auc: f64,
    pub log_loss: f64,
    pub brier: f64,
    pub reliability: Vec<ReliabilityBin>,
}

impl Holdout {
    pub fn of(scores: &[f64], labels: &[f64]) -> Self {
        let n = scores.len().min(labels.len());
        let (scores, labels) = (&scores[..n], &labels[..n]);
        let mut bins = [(0u64, 0.0f64, 0.0f64); RELIABILITY_BINS];
        for (&p, &y) in scores.iter().zip(labels) {
            let b = ((p * RELIABILITY_BINS as f64) as usize).min(RELIABILITY_BINS - 1);
            bins[b].0 += 1;
            bins[b].1 += p;
            bins[b].2 += y;
        }
        let nf = n.max(1) as f64;
        Self {
            rows: n,
            roc_auc: roc_auc(scores, labels),
            log_loss: scores
                .iter()
                .zip(labels)
                .map(|(&p, &y)| log_loss_of(p, y))
                .sum::<f64>()
                / nf,
            brier: scores
                .iter()
                .zip(labels)
                .map(|(&p, &y)| (p - y).powi(2))
                .sum::<f64>()
                / nf,
            reliability: bins
                .iter()
                .map(|&(count, sum, pos)| ReliabilityBin {
                    count,
                    mean_score: if count > 0 { sum / count as f64 } else { 0.0 },
                    positive_rate: if count > 0 { pos / count as f64 } else { 0.0 },
                })
                .collect(),
        }
    }

    /// Expected calibration error: the count-weighted gap between mean score
    /// and positive rate over the reliability bins.
    pub fn calibration_error(&self) -> f64 {
        let total: u64 = self.reliability.iter().map(|b| b.count).sum();
        if total == 0 {
            return 0.0;
        }
        self.reliability
            .iter()
            .map(|b| b.count as f64 * (b.mean_score - b.positive_rate).abs())
            .sum::<f64>()
            / total as f64
    }
}

/// The exact ROC AUC (Mann–Whitney, ties count half); 0.5 when one class is absent.
pub fn roc_auc(scores: &[f64], labels: &[f64]) -> f64 {
    let mut pairs: Vec<(f64, bool)> = scores
        .iter()
        .zip(labels)
        .map(|(&s, &y)| (s, y >= 0.5))
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = pairs.iter().filter(|p| p.1).count() as f64;
    let negatives = pairs.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return 0.5;
    }
    // Sum of the (average) ranks of the positives.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            j += 1;
        }
        let average_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += average_rank * pairs[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// Progressive validation: every example is scored before the model learns
/// from it, and these running totals say how those scores fared.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progressive {
    pub examples: u64,
    pub positives: u64,
    log_loss_sum: f64,
    brier_sum: f64,
    /// Score histograms per class (allocated on first use).
    positive_bins: Vec<u64>,
    negative_bins: Vec<u64>,
}

impl Progressive {
    pub fn record(&mut self, score: f64, label: f64) {
        if !score.is_finite() {
            return;
        }
        if self.positive_bins.is_empty() {
            self.positive_bins = vec![0; BINS];
            self.negative_bins = vec![0; BINS];
        }
        let bin = ((score * BINS as f64) as usize).min(BINS - 1);
        self.examples += 1;
        if label >= 0.5 {
            self.positives += 1;
            self.positive_bins[bin] += 1;
        } else {
            self.negative_bins[bin] += 1;
        }
        self.log_loss_sum += log_loss_of(score, label);
        self.brier_sum += (score - label).powi(2);
    }

    pub fn log_loss(&self) -> f64 {
        self.log_loss_sum / self.examples.max(1) as f64
    }

    pub fn brier(&self) -> f64 {
        self.brier_sum / self.examples.max(1) as f64
    }

    /// ROC AUC over the histograms (scores in one bin count as ties).
    pub fn roc_auc(&self) -> f64 {
        let positives = self.positives as f64;
        let negatives = (self.examples - self.positives) as f64;
        if positives == 0.0 || negatives == 0.0 {
            return 0.5;
        }
        let mut negatives_below = 0.0;
        let mut wins = 0.0;
        for (pos, neg) in self.positive_bins.iter().zip(&self.negative_bins) {
            let (pos, neg) = (*pos as f64, *neg as f64);
            wins += pos * (negatives_below + 0.5 * neg);
            negatives_below += neg;
        }
        wins / (positives * negatives)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_auc_by_hand() {
        let cases: [(&str, &[f64], &[f64], f64); 5] = [
            ("perfect", &[0.1, 0.2, 0.8, 0.9], &[0.0, 0.0, 1.0, 1.0], 1.0),
            (
                "inverted",
                &[0.9, 0.8, 0.2, 0.1],
                &[0.0, 0.0, 1.0, 1.0],
                0.0,
            ),
            (
                "all tied",
                &[0.5, 0.5, 0.5, 0.5],
                &[0.0, 1.0, 0.0, 1.0],
                0.5,
            ),
            // Positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs.
            (
                "sklearn's example",
                &[0.1, 0.4, 0.35, 0.8],
                &[0.0, 0.0, 1.0, 1.0],
                0.75,
            ),
            ("one class", &[0.1, 0.9], &[1.0, 1.0], 0.5),
        ];
        for (rule, scores, labels, want) in cases {
            assert!((roc_auc(scores, labels) - want).abs() < 1e-12, "{rule}");
        }
    }

    #[test]
    fn progressive_agrees_with_the_exact_metrics() {
        let mut p = Progressive::default();
        let mut scores = Vec::new();
        let mut labels = Vec::new();
        let mut s: u64 = 11;
        for i in 0..5000 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            let y = f64::from(u8::from(u < 0.3 + 0.4 * f64::from(i % 2)));
            let score = (0.3 + 0.4 * f64::from(i % 2) + 0.2 * (u - 0.5)).clamp(0.0, 1.0);
            p.record(score, y);
            scores.push(score);
            labels.push(y);
        }
        let exact = Holdout::of(&scores, &labels);
        assert!(
            (p.roc_auc() - exact.roc_auc).abs() < 1e-3,
            "{} vs {}",
            p.roc_auc(),
            exact.roc_auc
        );
        assert!((p.log_loss() - exact.log_loss).abs() < 1e-9);
        assert!((p.brier() - exact.brier).abs() < 1e-9);
        assert_eq!(p.examples, 5000);
    }

    #[test]
    fn reliability_of_calibrated_scores_is_close() {
        // Scores equal to the true rate of their group are calibrated.
        let mut scores = Vec::new();
        let mut labels = Vec::new();
        for (rate, n) in [(0.15, 100), (0.55, 100), (0.85, 100)] {
            let positives = (rate * f64::from(n)) as i32;
            for i in 0..n {
                scores.push(rate);
                labels.push(f64::from(u8::from(i < positives)));
            }
        }
        let h = Holdout::of(&scores, &labels);
        assert!(h.calibration_error() < 1e-9, "{:?}", h.reliability);
        assert_eq!(h.reliability[1].count, 100);
        assert!((h.reliability[5].positive_rate - 0.55).abs() < 1e-12);
    }
}
