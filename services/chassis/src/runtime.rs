//! The actix system every service runs in. Actors live on the system arbiter
//! (the main thread); what else runs beside them depends on the service.

use std::future::Future;

/// Threads a service's tokio runtime runs its tasks on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// Everything on the main thread, beside the actors: for a service whose
    /// work is a stage loop (enrich, feature-state, monitor). Its NATS
    /// connection then hands each message to the loop without waking another
    /// thread; on 2 cores shared with nats-server, those wake-ups cost enrich
    /// about a fifth of its CPU per event (BENCHMARKS.md, feature-state).
    One,
    /// gRPC, HTTP and NATS tasks spread over one worker per core: for a service
    /// answering requests that must not wait behind a batch (ingest, inference).
    PerCore,
}

pub fn block_on<F: Future>(threads: Threads, fut: F) -> F::Output {
    actix::System::with_tokio_rt(move || {
        match threads {
            Threads::One => tokio::runtime::Builder::new_current_thread(),
            Threads::PerCore => tokio::runtime::Builder::new_multi_thread(),
        }
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot build the tokio runtime: {e}"))
    })
    .block_on(fut)
}
