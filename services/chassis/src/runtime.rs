//! The actix system every service runs in, on a multi-threaded tokio runtime:
//! actors live on the system arbiter, while gRPC, HTTP and NATS tasks spread
//! over the worker threads.

use std::future::Future;

pub fn block_on<F: Future>(fut: F) -> F::Output {
    actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot build the tokio runtime: {e}"))
    })
    .block_on(fut)
}
