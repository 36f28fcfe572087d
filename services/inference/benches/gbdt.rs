//! Gradient-boosted trees on the flight-delay task (issue 20), next to the
//! smartcore random forest `millrace train --algorithm forest` fits, in one run:
//! fit seconds, scoring rows/s, ROC AUC and log loss on a later month.
//!
//! The rows come from `data/nycflights/flights.csv` with as-of features built
//! independently of the pipeline (see `flights/mod.rs`). Three splits, all
//! trained on earlier days and tested on later ones:
//! - January 1–24 → January 25–31: the only split parameters may be chosen on;
//! - January → February;
//! - January–June → July (a half-year retrain);
//! - January–November → December (about 300k rows: a year's retrain).
//!
//! Run: `cargo bench -p millrace-inference --bench gbdt`. `GBDT_PARAMS` (JSON,
//! any subset of `GbdtParams`) overrides the defaults; `GBDT_SKIP_FOREST=1`
//! leaves the forest out; `GBDT_SPLITS=1` runs the first split alone (for
//! choosing parameters without looking at the test months). Without flights.csv (`scripts/get-nycflights.sh`
//! fetches it) the bench says so and exits.

mod flights;

use std::path::PathBuf;
use std::time::Instant;

use millrace_inference::evaluation::Holdout;
use millrace_inference::forest::{ForestModel, ForestShape};
use millrace_inference::gbdt::{self, GbdtParams};
use millrace_inference::scorer::Scorer;

/// A value below every feature's range, for the forest: smartcore has no
/// notion of a missing value.
const FOREST_MISSING: f64 = -1e9;

type Days = fn(u32, u32) -> bool;

const SPLITS: [(&str, Days, Days); 4] = [
    (
        "Jan 1-24 -> Jan 25-31",
        |m, d| m == 1 && d <= 24,
        |m, d| m == 1 && d > 24,
    ),
    ("Jan -> Feb", |m, _| m == 1, |m, _| m == 2),
    ("Jan-Jun -> Jul", |m, _| m <= 6, |m, _| m == 7),
    ("Jan-Nov -> Dec", |m, _| m <= 11, |m, _| m == 12),
];

fn main() {
    let dir = std::env::var_os("MILLRACE_FLIGHTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/nycflights"));
    let started = Instant::now();
    let data = match flights::load(&dir) {
        Ok(Some(d)) => d,
        Ok(None) => {
            println!(
                "gbdt bench skipped: no flights.csv in {} (scripts/get-nycflights.sh fetches it)",
                dir.display()
            );
            return;
        }
        Err(e) => {
            eprintln!("gbdt bench: {e}");
            std::process::exit(1);
        }
    };
    let params: GbdtParams = match std::env::var("GBDT_PARAMS") {
        Ok(json) => match serde_json::from_str(&json) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("GBDT_PARAMS: {e}");
                std::process::exit(2);
            }
        },
        Err(_) => GbdtParams::default(),
    };
    let skip_forest = std::env::var_os("GBDT_SKIP_FOREST").is_some();
    let positives = data.labels.iter().sum::<f64>() / data.len() as f64;
    println!(
        "{} labelled flights, {} features, {:.1}% late; built in {:.2} s",
        data.len(),
        data.width(),
        100.0 * positives,
        started.elapsed().as_secs_f64()
    );
    println!(
        "gbdt params: {}",
        serde_json::to_string(&params).unwrap_or_default()
    );
    let splits = std::env::var("GBDT_SPLITS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SPLITS.len());
    for (name, train_days, test_days) in SPLITS.into_iter().take(splits) {
        let (train_rows, train_labels) = data.subset(train_days);
        let (test_rows, test_labels) = data.subset(test_days);
        println!(
            "\n{name}: {} training rows, {} test rows",
            train_labels.len(),
            test_labels.len()
        );
        let t = Instant::now();
        match gbdt::fit(&data.names, &train_rows, &train_labels, &params) {
            Ok(model) => {
                let fit = t.elapsed().as_secs_f64();
                report("gbdt", &model, fit, &test_rows, &test_labels);
            }
            Err(e) => println!("  gbdt: {e}"),
        }
        if skip_forest {
            continue;
        }
        let impute = |rows: &[f64]| -> Vec<f64> {
            rows.iter()
                .map(|&x| if x.is_finite() { x } else { FOREST_MISSING })
                .collect()
        };
        let t = Instant::now();
        match ForestModel::fit(
            data.names.clone(),
            0.5,
            &impute(&train_rows),
            &train_labels,
            ForestShape::default(),
        ) {
            Ok(model) => {
                let fit = t.elapsed().as_secs_f64();
                report(
                    "random forest (smartcore, 50 trees, depth 8)",
                    &model,
                    fit,
                    &impute(&test_rows),
                    &test_labels,
                );
            }
            Err(e) => println!("  random forest: {e}"),
        }
    }
}

fn report(name: &str, model: &dyn Scorer, fit_secs: f64, rows: &[f64], labels: &[f64]) {
    let mut scores = Vec::with_capacity(labels.len());
    let t = Instant::now();
    model.score_rows(rows, &mut scores);
    let score_secs = t.elapsed().as_secs_f64();
    let h = Holdout::of(&scores, labels);
    println!(
        "  {name}: ROC AUC {:.4}, log loss {:.4}, Brier {:.4}; fit {:.2} s; scoring {:.0} rows/s (one thread)",
        h.roc_auc,
        h.log_loss,
        h.brier,
        fit_secs,
        labels.len() as f64 / score_secs.max(1e-9)
    );
}
