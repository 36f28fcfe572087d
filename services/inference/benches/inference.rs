//! Inference benchmark, one run, every figure the issue asks for:
//!
//! - OIP `ModelInfer`, one 20-feature row per request, over loopback gRPC to an
//!   in-process tonic server, from lean Rust clients (one HTTP/2 connection
//!   each): p50/p99 latency and requests/s with 1 and with 8 concurrent clients;
//! - rows/s for `ModelInfer` batches of 256 rows (raw FP32 bytes);
//! - streaming scoring: feature vectors/s through the `ModelServer` actor's
//!   `Apply` (score, tally, encode the prediction), without the broker;
//! - online predict-and-learn updates/s in process, 20 features, one core.
//!
//! Server and clients share the machine's cores, as they would on one host.
//! Run: `cargo bench -p millrace-inference --bench inference`
//! (`BENCH_SECONDS` sets the length of each timed phase, default 3).
//!
//! Baselines on this 2-core machine (DESIGN.md, issue 6): MLServer 1.7.1 with a
//! scikit-learn logistic regression answers ~900 single-row requests/s to 8
//! clients (p99 ~3 ms sequential); a bare tonic server ~64k requests/s to 8
//! clients, p99 ~0.3 ms. Targets: p99 < 1 ms with one client, ≥ 25,000
//! requests/s with 8, ≥ 1,000,000 online updates/s per core.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor;
use millrace_chassis::config::{ModelDef, ModelInput, OnlineSettings};
use millrace_chassis::http::Readiness;
use millrace_chassis::metrics::Metrics;
use millrace_chassis::stage::{Apply, Delivered};
use millrace_inference::catalog::Catalog;
use millrace_inference::oip::OpenInference;
use millrace_inference::online::{OnlineLogistic, Schedule};
use millrace_inference::registry::Registry;
use millrace_inference::scorer::ModelArtifact;
use millrace_inference::serving::{InferenceInput, ModelServer, ServingState};
use millrace_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use millrace_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use millrace_proto::inference::model_infer_request::InferInputTensor;
use millrace_proto::inference::{InferTensorContents, ModelInferRequest};
use millrace_proto::FeatureVector;

const FEATURES: usize = 20;

fn phase() -> Duration {
    let secs = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

fn names() -> Vec<String> {
    (0..FEATURES).map(|i| format!("f{i:02}")).collect()
}

fn model_def() -> ModelDef {
    ModelDef {
        name: "bench".into(),
        version: "1".into(),
        threshold: 0.5,
        intercept: -0.3,
        inputs: names()
            .into_iter()
            .enumerate()
            .map(|(i, name)| ModelInput {
                name,
                weight: (i as f64 - 10.0) / 50.0,
            })
            .collect(),
        online: OnlineSettings::default(),
        retrain: Default::default(),
    }
}

/// A deterministic stream of numbers in [0, 1).
struct Noise(u64);
impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn single_row_request(i: u64) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "bench".into(),
        id: i.to_string(),
        inputs: vec![InferInputTensor {
            name: "features".into(),
            datatype: "FP32".into(),
            shape: vec![1, FEATURES as i64],
            contents: Some(InferTensorContents {
                fp32_contents: (0..FEATURES)
                    .map(|j| (i as usize + j) as f32 * 0.01)
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn batch_request(rows: usize) -> ModelInferRequest {
    let raw: Vec<u8> = (0..rows * FEATURES)
        .flat_map(|k| ((k % 97) as f32 * 0.01).to_le_bytes())
        .collect();
    ModelInferRequest {
        model_name: "bench".into(),
        inputs: vec![InferInputTensor {
            name: "features".into(),
            datatype: "FP32".into(),
            shape: vec![rows as i64, FEATURES as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![raw],
        ..Default::default()
    }
}

struct Load {
    requests: u64,
    seconds: f64,
    p50: Duration,
    p99: Duration,
}

/// `clients` connections each sending one request at a time for `length`.
async fn drive(url: &str, clients: usize, length: Duration, rows: usize) -> Load {
    let mut tasks = Vec::new();
    let started = Instant::now();
    for c in 0..clients {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let mut client = GrpcInferenceServiceClient::connect(url)
                .await
                .unwrap_or_else(|e| panic!("connecting: {e}"));
            let batch = (rows > 1).then(|| batch_request(rows));
            let mut latencies = Vec::with_capacity(200_000);
            let deadline = Instant::now() + length;
            let mut i = c as u64 * 1_000_000;
            while Instant::now() < deadline {
                let request = batch.clone().unwrap_or_else(|| single_row_request(i));
                let t = Instant::now();
                let response = client.model_infer(request).await;
                latencies.push(t.elapsed());
                if let Err(e) = response {
                    panic!("ModelInfer failed: {e}");
                }
                i += 1;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let seconds = started.elapsed().as_secs_f64();
    all.sort_unstable();
    Load {
        requests: all.len() as u64,
        seconds,
        p50: quantile(&all, 0.5),
        p99: quantile(&all, 0.99),
    }
}

fn grpc_figures(catalog: Arc<Catalog>) {
    // The server on its own runtime (as the service runs it), the clients on another.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("server runtime: {e}"));
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap_or_else(|e| panic!("binding: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("address: {e}"));
    let readiness = Readiness::new(None);
    readiness.set_started();
    let service = OpenInference::new(catalog, readiness, &Metrics::new());
    server_rt.spawn(async move {
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let _ = tonic::transport::Server::builder()
            .add_service(GrpcInferenceServiceServer::new(service))
            .serve_with_incoming(incoming)
            .await;
    });
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("client runtime: {e}"));
    let url = format!("http://{addr}");
    let length = phase();
    client_rt.block_on(async {
        // Warm up connections and code paths.
        drive(&url, 2, Duration::from_millis(300), 1).await;
        for clients in [1, 8] {
            let load = drive(&url, clients, length, 1).await;
            println!(
                "ModelInfer, 1 row x {FEATURES} features, {clients} client(s): {:>8.0} req/s   p50 {:>6.1} µs   p99 {:>6.1} µs   ({} requests)",
                load.requests as f64 / load.seconds,
                load.p50.as_secs_f64() * 1e6,
                load.p99.as_secs_f64() * 1e6,
                load.requests
            );
        }
        let load = drive(&url, 1, length, 256).await;
        println!(
            "ModelInfer, batches of 256 rows (raw FP32), 1 client: {:>10.0} rows/s   p50 {:>6.1} µs per batch",
            (load.requests * 256) as f64 / load.seconds,
            load.p50.as_secs_f64() * 1e6
        );
    });
}

fn streaming_figures(catalog: Arc<Catalog>) {
    let system = actix::System::new();
    system.block_on(async move {
        let server = ModelServer::new(catalog, ServingState::default(), &Metrics::new()).start();
        let names = names();
        let mut noise = Noise(5);
        let make_batch = |noise: &mut Noise, base: u64| -> Vec<Delivered<InferenceInput>> {
            (0..512u64)
                .map(|k| Delivered {
                    source: 0,
                    sequence: base + k,
                    pending: 0,
                    message: InferenceInput::Vector(FeatureVector {
                        event_id: format!("e{}", base + k),
                        entity_key: "k".into(),
                        label_key: format!("e{}", base + k),
                        names: names.clone(),
                        values: (0..FEATURES).map(|_| noise.next()).collect(),
                        ..Default::default()
                    }),
                    trace: opentelemetry::Context::new(),
                })
                .collect()
        };
        let batches: Vec<Vec<Delivered<InferenceInput>>> =
            (0..64u64).map(|b| make_batch(&mut noise, b * 512)).collect();
        let deadline = Instant::now() + phase();
        let started = Instant::now();
        let mut events = 0u64;
        let mut published = 0usize;
        let mut round = 0u64;
        while Instant::now() < deadline {
            for batch in &batches {
                // Copying the batch stands in for the stage loop's decoding; it is timed too.
                let batch: Vec<Delivered<InferenceInput>> = batch
                    .iter()
                    .map(|d| Delivered {
                        source: d.source,
                        sequence: d.sequence + round,
                        pending: 0,
                        message: d.message.clone(),
                        trace: d.trace.clone(),
                    })
                    .collect();
                let out = server.send(Apply(batch)).await.unwrap_or_default();
                published += out.len();
                events += 512;
            }
            round += 1;
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "streaming scoring through the ModelServer actor (batches of 512, no broker): {:>10.0} events/s ({published} predictions)",
            events as f64 / seconds
        );
    });
}

fn online_figures() {
    let schedule = Schedule::from_settings(&OnlineSettings::default());
    let mut learner = OnlineLogistic::new(names(), 0.5, schedule);
    let mut noise = Noise(9);
    let rows: Vec<[f64; FEATURES]> = (0..65_536)
        .map(|_| {
            let mut r = [0.0; FEATURES];
            for x in &mut r {
                *x = noise.next() * 10.0;
            }
            r
        })
        .collect();
    let labels: Vec<f64> = rows
        .iter()
        .map(|r| f64::from(u8::from(r[0] + r[1] > r[2] + 10.0 * noise.next())))
        .collect();
    let deadline = Instant::now() + phase();
    let started = Instant::now();
    let mut updates = 0u64;
    let mut sink = 0.0;
    while Instant::now() < deadline {
        for (row, &y) in rows.iter().zip(&labels) {
            sink += learner.learn(row, y);
        }
        updates += rows.len() as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "online predict-and-learn, {FEATURES} features, in process, 1 thread: {:>11.0} updates/s (checksum {sink:.1})",
        updates as f64 / seconds
    );
}

fn main() {
    // cargo bench passes `--bench`; nothing else to parse.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let registry = Registry::open(dir.path()).unwrap_or_else(|e| panic!("registry: {e}"));
    let catalog = Arc::new(
        Catalog::open(registry, &ModelArtifact::from_def(&model_def()), None)
            .unwrap_or_else(|e| panic!("catalog: {e}")),
    );
    println!(
        "millrace inference benchmark ({} s per phase; MLServer 1.7.1 ~900 req/s with 8 clients; bare tonic ~64k req/s, p99 ~0.3 ms)",
        phase().as_secs_f64()
    );
    online_figures();
    streaming_figures(catalog.clone());
    grpc_figures(catalog);
}
