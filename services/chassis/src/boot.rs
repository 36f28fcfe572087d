//! The start and the end every service shares, so that a service's `main`
//! holds only what is its own.
//!
//! [`Boot::load`] reads the environment and the pipeline file and installs
//! logging and span export, before any network, so a bad file fails at once
//! rather than after NATS is reached. [`Boot::connect`] reaches NATS, creates
//! the streams the service touches and opens its snapshot store. The
//! [`Running`] service then serves gRPC and HTTP and runs its stage (or its
//! own loop) until a signal, and [`Running::finish`] stops the servers and
//! flushes the spans still buffered.

use std::net::SocketAddr;

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler};
use serde::Serialize;
use tokio::task::{AbortHandle, JoinHandle};

use crate::bus::{Bus, StreamKind};
use crate::config::{Pipeline, Service, ServiceEnv};
use crate::http::{self, Readiness};
use crate::metrics::{Metrics, StageMetrics};
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::snapshot::SnapshotStore;
use crate::stage::{self, Apply, Resume, StageInput, StageSpec, TakeSnapshot};
use crate::telemetry::{self, Telemetry};
use crate::ChassisError;

/// A service configured but not yet connected.
pub struct Boot {
    pub env: ServiceEnv,
    pub pipeline: Pipeline,
    telemetry: Telemetry,
}

impl Boot {
    /// Must run inside the runtime (span export needs it).
    pub fn load(service: Service) -> Result<Self, ChassisError> {
        let env = ServiceEnv::from_env(service)?;
        let telemetry = telemetry::init(env.service)?;
        let pipeline = Pipeline::load(&env.pipeline_path)?;
        Ok(Self {
            env,
            pipeline,
            telemetry,
        })
    }

    /// Connects to NATS (retrying until a signal), creates `streams` if they
    /// are missing and opens the snapshot store under the data dir.
    pub async fn connect(self, streams: &[StreamKind]) -> Result<Running, ChassisError> {
        let (shutdown, trigger) = Shutdown::on_signals();
        let bus = Bus::connect(
            &self.env.nats,
            &format!("millrace-{}", self.env.service.name()),
            self.pipeline.streams.clone(),
            &shutdown,
        )
        .await?;
        bus.provision(streams).await?;
        let store = SnapshotStore::open(&self.env.data_dir)?;
        let readiness = Readiness::new(Some(bus.client().clone()));
        Ok(Running {
            env: self.env,
            pipeline: self.pipeline,
            shutdown,
            metrics: Metrics::new(),
            bus,
            store,
            readiness,
            telemetry: self.telemetry,
            _trigger: trigger,
            servers: Vec::new(),
        })
    }
}

/// A connected service.
pub struct Running {
    pub env: ServiceEnv,
    pub pipeline: Pipeline,
    pub shutdown: Shutdown,
    pub metrics: Metrics,
    pub bus: Bus,
    pub store: SnapshotStore,
    pub readiness: Readiness,
    telemetry: Telemetry,
    _trigger: ShutdownTrigger,
    servers: Vec<AbortHandle>,
}

impl Running {
    /// A stage with the snapshot cadence the environment sets, whose snapshot
    /// key and span are named after the stage.
    pub fn stage_spec(
        &self,
        stage: &'static str,
        sources: Vec<stage::Source>,
        output: Option<StreamKind>,
        batch_size: usize,
    ) -> StageSpec {
        StageSpec {
            stage,
            sources,
            output,
            snapshot_key: stage.into(),
            batch_size,
            snapshot_interval: self.env.snapshot_interval,
            snapshot_every: self.env.snapshot_every,
            span_name: stage,
            heartbeat: None,
        }
    }

    /// Serves `router` on the service's gRPC address until shutdown; the
    /// handle lets a service wait for requests in flight to finish.
    pub fn serve_grpc(
        &mut self,
        router: tonic::transport::server::Router,
    ) -> Result<JoinHandle<Result<(), tonic::transport::Error>>, ChassisError> {
        let addr = self.grpc_addr()?;
        let handle = crate::grpc::spawn(addr, router, self.shutdown.clone())?;
        self.servers.push(handle.abort_handle());
        Ok(handle)
    }

    /// Serves `/metrics`, `/healthz`, `/readyz` and `routes`, and reports the
    /// service started: call it last, once everything it answers for exists.
    pub fn serve_http(&mut self, routes: axum::Router) {
        let handle = tokio::spawn(http::serve(
            self.env.http_addr,
            self.metrics.clone(),
            self.readiness.clone(),
            routes,
            self.shutdown.clone(),
        ));
        self.servers.push(handle.abort_handle());
        self.readiness.set_started();
    }

    /// Runs the stage loop until shutdown (or its first error), then finishes.
    pub async fn run_stage<A, T, S>(
        self,
        spec: StageSpec,
        actor: Addr<A>,
        resume: Resume,
    ) -> Result<(), ChassisError>
    where
        A: Actor + Handler<Apply<T>> + Handler<TakeSnapshot<S>>,
        A::Context: ToEnvelope<A, Apply<T>> + ToEnvelope<A, TakeSnapshot<S>>,
        T: StageInput,
        S: Serialize + Send + 'static,
    {
        let result = stage::run(
            self.bus.clone(),
            self.store.clone(),
            spec,
            actor,
            resume,
            StageMetrics::new(&self.metrics),
            self.shutdown.clone(),
        )
        .await;
        self.finish();
        result
    }

    /// Stops the servers still running and flushes buffered spans.
    pub fn finish(self) {
        for server in self.servers {
            server.abort();
        }
        self.telemetry.shutdown();
    }

    fn grpc_addr(&self) -> Result<SocketAddr, ChassisError> {
        self.env.grpc_addr.ok_or_else(|| ChassisError::Env {
            name: "MILLRACE_GRPC_ADDR",
            message: format!("{} serves no gRPC", self.env.service.name()),
        })
    }
}
