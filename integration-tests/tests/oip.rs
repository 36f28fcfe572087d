//! Inference speaks the Open Inference Protocol V2 (KServe / Triton `GRPCInferenceService`)
//! well enough that a stock client works unchanged.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use millrace_integration_tests::pipeline::orders_model_probability;
use millrace_integration_tests::{Pipeline, Service};
use millrace_proto::inference::model_infer_request::InferInputTensor;
use millrace_proto::inference::model_infer_response::InferOutputTensor;
use millrace_proto::inference::model_metadata_response::TensorMetadata;
use millrace_proto::inference::{
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
    ModelReadyRequest, ServerLiveRequest, ServerReadyRequest,
};

/// Two rows of `[customer_orders, amount]` and what the test model must answer for them.
const ROWS: [[f32; 2]; 2] = [[3.0, 50.0], [10.0, 100.0]];

fn expected_probabilities() -> Vec<f64> {
    ROWS.iter()
        .map(|[count, amount]| orders_model_probability(f64::from(*count), f64::from(*amount)))
        .collect()
}

async fn inference_only() -> Pipeline {
    Pipeline::builder()
        .only(&[Service::Inference])
        .start()
        .await
        .expect("inference starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_oip_client_sees_live_server_and_model_metadata() {
    // Before starting anything: a missing client library is a setup problem, said plainly.
    let import = Command::new("python3")
        .args(["-c", "import tritonclient.grpc"])
        .output()
        .expect("python3 runs (install python3)");
    assert!(
        import.status.success(),
        "`import tritonclient.grpc` fails; run scripts/install-deps.sh (it installs tritonclient[grpc]):\n{}",
        String::from_utf8_lossy(&import.stderr)
    );

    let pipeline = inference_only().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/oip_check.py");
    let url = pipeline.service(Service::Inference).grpc_addr().to_string();
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["--url", &url, "--model", "fraud"])
        .output()
        .await
        .expect("run scripts/oip_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/oip_check.py --url {url} --model fraud exited with {}:\n{stdout}\n{stderr}",
        out.status
    );
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("oip_check.py printed no JSON ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(report["ok"], serde_json::Value::Bool(true), "{report:#}");
    // The script checked the shape; this checks the numbers against the test model.
    let got: Vec<f64> = report["probabilities"]
        .as_array()
        .unwrap_or_else(|| panic!("no probabilities in {report:#}"))
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    let script_rows = [[1.0f32, 10.0], [20.0, 150.0]];
    let want: Vec<f64> = script_rows
        .iter()
        .map(|[c, a]| orders_model_probability(f64::from(*c), f64::from(*a)))
        .collect();
    assert_close(&got, &want).unwrap_or_else(|e| panic!("{e:#}; report: {report:#}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_answers_open_inference_protocol_v2() {
    let pipeline = inference_only().await;
    open_inference_protocol(&pipeline).await.expect("OIP V2");
}

async fn open_inference_protocol(pipeline: &Pipeline) -> Result<()> {
    let mut oip = pipeline.inference().await?;
    ensure!(
        oip.server_live(ServerLiveRequest {})
            .await?
            .into_inner()
            .live,
        "ServerLive: not live"
    );
    ensure!(
        oip.server_ready(ServerReadyRequest {})
            .await?
            .into_inner()
            .ready,
        "ServerReady: not ready"
    );
    let ready = oip
        .model_ready(ModelReadyRequest {
            name: "fraud".into(),
            version: String::new(),
        })
        .await?
        .into_inner();
    ensure!(ready.ready, "ModelReady(fraud): not ready");

    let metadata = oip
        .model_metadata(ModelMetadataRequest {
            name: "fraud".into(),
            version: String::new(),
        })
        .await
        .context("ModelMetadata(fraud)")?
        .into_inner();
    let tensor = |name: &str, shape: Vec<i64>| TensorMetadata {
        name: name.into(),
        datatype: "FP32".into(),
        shape,
    };
    ensure!(
        metadata.name == "fraud",
        "metadata names {:?}",
        metadata.name
    );
    ensure!(
        metadata.inputs == vec![tensor("features", vec![-1, 2])],
        "inputs {:?}",
        metadata.inputs
    );
    ensure!(
        metadata.outputs == vec![tensor("probability", vec![-1, 1])],
        "outputs {:?}",
        metadata.outputs
    );

    // The same rows as typed contents and as raw little-endian bytes.
    let flat: Vec<f32> = ROWS.iter().flatten().copied().collect();
    let typed = infer_request(
        Some(InferTensorContents {
            fp32_contents: flat.clone(),
            ..Default::default()
        }),
        Vec::new(),
    );
    let raw = infer_request(
        None,
        vec![flat.iter().flat_map(|v| v.to_le_bytes()).collect()],
    );
    for (how, request) in [("fp32_contents", typed), ("raw_input_contents", raw)] {
        let response = oip
            .model_infer(request)
            .await
            .with_context(|| format!("ModelInfer with {how}"))?
            .into_inner();
        ensure!(
            response.model_name == "fraud",
            "{how}: model_name {:?}",
            response.model_name
        );
        ensure!(
            response.id == "req-7",
            "{how}: the request id is not echoed: {:?}",
            response.id
        );
        let probabilities =
            probabilities(&response).with_context(|| format!("{how}: {response:?}"))?;
        assert_close(&probabilities, &expected_probabilities()).context(how)?;
    }

    // Requests the server must refuse, with the status a client can act on.
    let wrong_shape = {
        let mut r = infer_request(
            Some(InferTensorContents {
                fp32_contents: vec![1.0; 6],
                ..Default::default()
            }),
            Vec::new(),
        );
        r.inputs[0].shape = vec![2, 3];
        r
    };
    let too_few_values = infer_request(
        Some(InferTensorContents {
            fp32_contents: vec![1.0; 3],
            ..Default::default()
        }),
        Vec::new(),
    );
    let unknown_model = ModelInferRequest {
        model_name: "no-such-model".into(),
        ..infer_request(None, Vec::new())
    };
    let refusals = [
        (
            "an input of the wrong shape",
            wrong_shape,
            tonic::Code::InvalidArgument,
        ),
        (
            "fewer values than the shape says",
            too_few_values,
            tonic::Code::InvalidArgument,
        ),
        ("an unknown model", unknown_model, tonic::Code::NotFound),
    ];
    for (what, request, code) in refusals {
        match oip.model_infer(request).await {
            Err(status) if status.code() == code => {}
            other => anyhow::bail!("ModelInfer with {what}: expected {code:?}, got {other:?}"),
        }
    }
    match oip
        .model_metadata(ModelMetadataRequest {
            name: "no-such-model".into(),
            version: String::new(),
        })
        .await
    {
        Err(status) if status.code() == tonic::Code::NotFound => {}
        other => {
            anyhow::bail!("ModelMetadata of an unknown model: expected NotFound, got {other:?}")
        }
    }
    Ok(())
}

fn infer_request(contents: Option<InferTensorContents>, raw: Vec<Vec<u8>>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "fraud".into(),
        id: "req-7".into(),
        inputs: vec![InferInputTensor {
            name: "features".into(),
            datatype: "FP32".into(),
            shape: vec![ROWS.len() as i64, 2],
            contents,
            ..Default::default()
        }],
        raw_input_contents: raw,
        ..Default::default()
    }
}

/// The `probability` output, from typed contents or raw bytes (the protocol allows both).
fn probabilities(response: &ModelInferResponse) -> Result<Vec<f64>> {
    let (index, output): (usize, &InferOutputTensor) = response
        .outputs
        .iter()
        .enumerate()
        .find(|(_, o)| o.name == "probability")
        .context("no output named probability")?;
    ensure!(output.datatype == "FP32", "datatype {:?}", output.datatype);
    ensure!(
        output.shape == vec![ROWS.len() as i64, 1],
        "shape {:?}",
        output.shape
    );
    let values: Vec<f32> = match response.raw_output_contents.get(index) {
        Some(raw) => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        None => output
            .contents
            .as_ref()
            .map(|c| c.fp32_contents.clone())
            .unwrap_or_default(),
    };
    Ok(values.into_iter().map(f64::from).collect())
}

fn assert_close(got: &[f64], want: &[f64]) -> Result<()> {
    ensure!(
        got.len() == want.len() && got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-4),
        "probabilities {got:?}, expected {want:?} (sigmoid of the test model)"
    );
    Ok(())
}
