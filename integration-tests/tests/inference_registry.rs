//! `millrace train` and `millrace models` against a running inference: a smartcore
//! model is trained from a CSV, registered and promoted; OIP then serves it; a forest
//! written to a file is registered and shadowed; rollback returns to the pipeline's model.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use millrace_integration_tests::service::bin_dir;
use millrace_integration_tests::{Pipeline, Service};
use millrace_proto::inference::model_infer_request::InferInputTensor;
use millrace_proto::inference::{InferTensorContents, ModelInferRequest};

/// Orders whose fraud odds fall with the amount: P = sigmoid(1.5 - 0.04·amount + 0.05·count).
fn write_csv(path: &Path) -> Result<()> {
    let mut s: u64 = 17;
    let mut u = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut text = String::from("event_time_us,customer_orders,amount,fraud\n");
    for i in 0..3000 {
        let count = (u() * 30.0).floor() + 1.0;
        let amount = u() * 200.0;
        let p = 1.0 / (1.0 + (-(1.5 - 0.04 * amount + 0.05 * count)).exp());
        let y = u8::from(u() < p);
        text.push_str(&format!("{i},{count},{amount:.3},{y}\n"));
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Runs the `millrace` CLI and returns its stdout; fails with its output when it fails.
async fn millrace(args: &[&str]) -> Result<String> {
    let program = bin_dir().join("millrace");
    let out = tokio::process::Command::new(&program)
        .args(args)
        .env_remove("MILLRACE_PIPELINE")
        .output()
        .await
        .with_context(|| format!("running {}", program.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "millrace {} exited with {}:\n{stdout}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

async fn served_version(pipeline: &Pipeline) -> Result<String> {
    let mut oip = pipeline.inference().await?;
    let response = oip
        .model_infer(ModelInferRequest {
            model_name: "fraud".into(),
            inputs: vec![InferInputTensor {
                name: "features".into(),
                datatype: "FP32".into(),
                shape: vec![1, 2],
                contents: Some(InferTensorContents {
                    fp32_contents: vec![3.0, 20.0],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .context("ModelInfer")?
        .into_inner();
    Ok(response.model_version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_register_promote_shadow_and_roll_back_from_the_cli() {
    let pipeline = Pipeline::builder()
        .only(&[Service::Inference])
        .start()
        .await
        .expect("inference starts");
    cli(&pipeline).await.expect("millrace train / models");
}

async fn cli(pipeline: &Pipeline) -> Result<()> {
    let url = pipeline.service(Service::Inference).grpc_url();
    let csv = pipeline.dir().join("orders.csv");
    write_csv(&csv)?;
    let csv = csv.display().to_string();
    let forest_file = pipeline.dir().join("forest.json").display().to_string();

    let out = millrace(&[
        "train",
        "--csv",
        &csv,
        "--label",
        "fraud",
        "--name",
        "fraud",
        "--version",
        "lr-1",
        "--promote",
        "--inference",
        &url,
    ])
    .await?;
    ensure!(
        out.contains("holdout (600 rows) ROC AUC") && out.contains("registered fraud vlr-1"),
        "{out}"
    );
    let auc: f64 = out
        .split("holdout (600 rows) ROC AUC ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no holdout AUC in:\n{out}"))?;
    ensure!(auc > 0.8, "holdout ROC AUC {auc}");
    ensure!(served_version(pipeline).await? == "lr-1");

    millrace(&[
        "train",
        "--csv",
        &csv,
        "--label",
        "fraud",
        "--name",
        "fraud",
        "--version",
        "rf-1",
        "--algorithm",
        "forest",
        "--trees",
        "20",
        "--out",
        &forest_file,
    ])
    .await?;
    millrace(&["models", "--inference", &url, "register", &forest_file]).await?;
    let shadow = millrace(&["models", "--inference", &url, "shadow", "rf-1"]).await?;
    ensure!(shadow.contains("active lr-1  shadow rf-1"), "{shadow}");
    let list = millrace(&["models", "--inference", &url, "list"]).await?;
    for want in [
        "active lr-1  shadow rf-1  rollback to 1",
        "random_forest",
        "holdout AUC",
    ] {
        ensure!(list.contains(want), "`{want}` is not in:\n{list}");
    }
    let get = millrace(&["models", "--inference", &url, "get", "rf-1"]).await?;
    ensure!(
        get.contains("holdout_brier") && get.contains("inputs: customer_orders, amount"),
        "{get}"
    );
    let rolled = millrace(&["models", "--inference", &url, "rollback"]).await?;
    ensure!(rolled.contains("active 1"), "{rolled}");
    ensure!(served_version(pipeline).await? == "1");

    // Registering another model with the same version is refused.
    let refused = tokio::process::Command::new(bin_dir().join("millrace"))
        .args([
            "train",
            "--csv",
            &csv,
            "--label",
            "fraud",
            "--name",
            "fraud",
            "--version",
            "lr-1",
            "--alpha",
            "5",
            "--register",
            "--inference",
            &url,
        ])
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && stderr.contains("already registered"),
        "{stderr}"
    );
    Ok(())
}
