//! The online learner: logistic regression trained by stochastic gradient
//! descent, one labelled example at a time, as labels arrive from LABELS.
//!
//! - **Standardisation.** Each input is centred and scaled by its running mean
//!   and standard deviation (Welford), so inputs of very different scales
//!   (an hour of day, a distance in miles) learn at the same pace without a
//!   separate preprocessing step. A missing (non-finite) input counts as its
//!   mean and leaves the statistics alone.
//! - **Step size.** `η_t = max(min_learning_rate, learning_rate / (1 + decay·t)^power)`:
//!   large steps while the model knows nothing, small ones later, and a floor
//!   so it keeps following drift (delay rates move with the seasons).
//! - **Loss.** Log loss plus `l2/2·‖w‖²`; the intercept is not penalised.
//!
//! The whole learner is plain data (serde), so the serving actor snapshots it
//! with its stream sequences and a restart resumes it exactly.

use millrace_chassis::config::OnlineSettings;
use serde::{Deserialize, Serialize};

use crate::model::sigmoid;
use crate::scorer::Scorer;

/// Standard deviations below this are treated as 1: a constant input carries no signal.
const MIN_STD: f64 = 1e-9;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub learning_rate: f64,
    pub decay: f64,
    pub power: f64,
    pub min_learning_rate: f64,
    pub l2: f64,
}

impl Schedule {
    pub fn from_settings(s: &OnlineSettings) -> Self {
        Self {
            learning_rate: s.learning_rate,
            decay: s.decay,
            power: s.power,
            min_learning_rate: s.min_learning_rate,
            l2: s.l2,
        }
    }

    /// The step size for update number `t` (0-based).
    pub fn rate(&self, t: u64) -> f64 {
        let decayed = self.learning_rate / (1.0 + self.decay * t as f64).powf(self.power);
        decayed.max(self.min_learning_rate)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineLogistic {
    inputs: Vec<String>,
    threshold: f64,
    schedule: Schedule,
    weights: Vec<f64>,
    bias: f64,
    /// Per input: finite values seen, their running mean and sum of squared deviations.
    count: Vec<u64>,
    mean: Vec<f64>,
    m2: Vec<f64>,
    /// Per input: 1 / standard deviation, kept current so scoring needs no square root.
    inv_std: Vec<f64>,
    updates: u64,
}

impl OnlineLogistic {
    pub fn new(inputs: Vec<String>, threshold: f64, schedule: Schedule) -> Self {
        let n = inputs.len();
        Self {
            inputs,
            threshold,
            schedule,
            weights: vec![0.0; n],
            bias: 0.0,
            count: vec![0; n],
            mean: vec![0.0; n],
            m2: vec![0.0; n],
            inv_std: vec![1.0; n],
            updates: 0,
        }
    }

    pub fn updates(&self) -> u64 {
        self.updates
    }

    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    pub fn bias(&self) -> f64 {
        self.bias
    }

    fn standardised(&self, i: usize, x: f64) -> f64 {
        if x.is_finite() {
            (x - self.mean[i]) * self.inv_std[i]
        } else {
            0.0
        }
    }

    fn logit(&self, row: &[f64]) -> f64 {
        self.bias
            + self
                .weights
                .iter()
                .zip(row)
                .enumerate()
                .map(|(i, (w, &x))| w * self.standardised(i, x))
                .sum::<f64>()
    }

    /// The probability for one row in input order (missing columns count as their mean).
    pub fn predict(&self, row: &[f64]) -> f64 {
        sigmoid(self.logit(row))
    }

    /// One SGD step on `(row, label)`; answers the probability it predicted
    /// *before* learning, which is what progressive validation scores.
    pub fn learn(&mut self, row: &[f64], label: f64) -> f64 {
        let before = self.predict(row);
        self.observe(row);
        let p = self.predict(row);
        let rate = self.schedule.rate(self.updates);
        let g = p - label;
        let l2 = self.schedule.l2;
        for i in 0..self.weights.len() {
            let z = row.get(i).map_or(0.0, |&x| self.standardised(i, x));
            self.weights[i] -= rate * (g * z + l2 * self.weights[i]);
        }
        self.bias -= rate * g;
        self.updates += 1;
        before
    }

    /// Welford's update of the running means and variances.
    fn observe(&mut self, row: &[f64]) {
        for (i, &x) in row.iter().enumerate().take(self.inputs.len()) {
            if !x.is_finite() {
                continue;
            }
            self.count[i] += 1;
            let n = self.count[i] as f64;
            let delta = x - self.mean[i];
            self.mean[i] += delta / n;
            self.m2[i] += delta * (x - self.mean[i]);
            let std = (self.m2[i] / n).sqrt();
            self.inv_std[i] = if std > MIN_STD { 1.0 / std } else { 1.0 };
        }
    }

    /// The regularised log loss of one example at the current parameters and
    /// standardisation (what [`Self::gradient`] differentiates).
    pub fn loss(&self, row: &[f64], label: f64) -> f64 {
        let p = self.predict(row).clamp(1e-15, 1.0 - 1e-15);
        let data = -(label * p.ln() + (1.0 - label) * (1.0 - p).ln());
        data + 0.5 * self.schedule.l2 * self.weights.iter().map(|w| w * w).sum::<f64>()
    }

    /// ∂loss/∂w and ∂loss/∂b at the current parameters.
    pub fn gradient(&self, row: &[f64], label: f64) -> (Vec<f64>, f64) {
        let g = self.predict(row) - label;
        let dw = (0..self.weights.len())
            .map(|i| {
                let z = row.get(i).map_or(0.0, |&x| self.standardised(i, x));
                g * z + self.schedule.l2 * self.weights[i]
            })
            .collect();
        (dw, g)
    }
}

impl Scorer for OnlineLogistic {
    fn kind(&self) -> &'static str {
        "online_logistic"
    }

    fn inputs(&self) -> &[String] {
        &self.inputs
    }

    fn threshold(&self) -> f64 {
        self.threshold
    }

    fn score_row(&self, row: &[f64]) -> f64 {
        self.predict(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(l2: f64) -> Schedule {
        Schedule {
            learning_rate: 0.5,
            decay: 0.01,
            power: 0.5,
            min_learning_rate: 0.01,
            l2,
        }
    }

    fn learner(n: usize, l2: f64) -> OnlineLogistic {
        OnlineLogistic::new((0..n).map(|i| format!("x{i}")).collect(), 0.5, schedule(l2))
    }

    /// A deterministic stream of pseudo-random numbers in [0, 1) (xorshift).
    struct Noise(u64);
    impl Noise {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn the_schedule_decays_to_its_floor() {
        let s = schedule(0.0);
        assert_eq!(s.rate(0), 0.5);
        assert!((s.rate(300) - 0.25).abs() < 1e-12, "0.5 / sqrt(1 + 3)");
        assert!(s.rate(100) > s.rate(200));
        assert_eq!(s.rate(u64::MAX / 2), 0.01, "never below the floor");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let mut m = learner(3, 0.1);
        let mut noise = Noise(7);
        // Train a little so weights, means and scales are all non-trivial.
        for _ in 0..50 {
            let row = [
                noise.next() * 10.0,
                noise.next() - 0.5,
                100.0 * noise.next(),
            ];
            let y = f64::from(u8::from(row[0] > 5.0));
            m.learn(&row, y);
        }
        let row = [3.0, 0.2, 40.0];
        for label in [0.0, 1.0] {
            let (dw, db) = m.gradient(&row, label);
            let h = 1e-6;
            for (i, analytic) in dw.iter().enumerate() {
                let (mut plus, mut minus) = (m.clone(), m.clone());
                plus.weights[i] += h;
                minus.weights[i] -= h;
                let numeric = (plus.loss(&row, label) - minus.loss(&row, label)) / (2.0 * h);
                assert!(
                    (numeric - analytic).abs() < 1e-6,
                    "∂/∂w{i} (y = {label}): analytic {analytic} numeric {numeric}"
                );
            }
            let (mut plus, mut minus) = (m.clone(), m.clone());
            plus.bias += h;
            minus.bias -= h;
            let numeric = (plus.loss(&row, label) - minus.loss(&row, label)) / (2.0 * h);
            assert!(
                (numeric - db).abs() < 1e-6,
                "∂/∂b: analytic {db} numeric {numeric}"
            );
        }
    }

    #[test]
    fn converges_on_a_separable_set() {
        // y = 1 exactly when 2·x0 - x1 > 1; x2 is noise on another scale.
        let mut m = learner(3, 1e-5);
        let mut noise = Noise(42);
        let example = |noise: &mut Noise| {
            let row = [
                noise.next() * 2.0,
                noise.next() * 2.0,
                noise.next() * 1000.0,
            ];
            let y = f64::from(u8::from(2.0 * row[0] - row[1] > 1.0));
            (row, y)
        };
        for _ in 0..20_000 {
            let (row, y) = example(&mut noise);
            m.learn(&row, y);
        }
        let mut right = 0;
        let trials = 2000;
        for _ in 0..trials {
            let (row, y) = example(&mut noise);
            if (m.predict(&row) >= 0.5) == (y == 1.0) {
                right += 1;
            }
        }
        let accuracy = f64::from(right) / f64::from(trials);
        assert!(accuracy > 0.97, "accuracy {accuracy} on a separable set");
        // The learned direction is that of the rule: w0 > 0, w1 < 0, |w2| small.
        let w = m.weights();
        assert!(w[0] > 0.0 && w[1] < 0.0, "weights {w:?}");
        assert!(w[2].abs() < 0.2 * w[0].abs(), "noise weight {w:?}");
    }

    #[test]
    fn learn_answers_the_prediction_made_before_the_step() {
        let mut m = learner(1, 0.0);
        let before = m.predict(&[1.0]);
        assert_eq!(m.learn(&[1.0], 1.0), before);
        assert_ne!(m.predict(&[1.0]), before);
        assert_eq!(m.updates(), 1);
    }

    #[test]
    fn missing_inputs_count_as_their_mean_and_leave_the_statistics_alone() {
        let mut m = learner(2, 0.0);
        for i in 0..10 {
            m.learn(&[f64::from(i), 1.0], f64::from(i % 2));
        }
        let stats = (m.count.clone(), m.mean.clone());
        m.learn(&[f64::NAN, 1.0], 1.0);
        assert_eq!(m.count[0], stats.0[0]);
        assert_eq!(m.mean[0], stats.1[0]);
        assert!(m.predict(&[f64::NAN, 1.0]).is_finite());
    }

    #[test]
    fn a_learner_round_trips_through_serde_with_identical_predictions() {
        let mut m = learner(2, 1e-4);
        let mut noise = Noise(3);
        for _ in 0..100 {
            let row = [noise.next(), noise.next()];
            m.learn(&row, f64::from(u8::from(row[0] > row[1])));
        }
        let bytes = postcard::to_stdvec(&m).unwrap();
        let back: OnlineLogistic = postcard::from_bytes(&bytes).unwrap();
        for row in [[0.1, 0.9], [0.5, 0.5], [0.9, 0.1]] {
            assert_eq!(back.predict(&row).to_bits(), m.predict(&row).to_bits());
        }
    }
}
