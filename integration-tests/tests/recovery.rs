//! A service that dies, is killed or is stopped comes back exactly where it was: no event
//! lost, none counted twice. Every test ends with the full exactly-once check, which a
//! lost event fails (a missing prediction, a low count) and so does a repeated one (a
//! duplicate prediction, a count or score one too high).

use anyhow::{ensure, Result};
use millrace_integration_tests::{
    check_exactly_once, orders, publish_all_accepted, wait_for_stream_count, Pipeline, Service,
    LONG,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feature_state_killed_mid_stream_resumes_without_loss_or_repeat() {
    killed_mid_stream(Service::FeatureState).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrich_killed_mid_stream_resumes_without_loss_or_repeat() {
    killed_mid_stream(Service::Enrich).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_killed_mid_stream_resumes_without_loss_or_repeat() {
    killed_mid_stream(Service::Inference).await;
}

async fn killed_mid_stream(victim: Service) {
    let mut pipeline = Pipeline::start().await.expect("pipeline starts");
    kill_send_restart(&mut pipeline, victim)
        .await
        .expect("exactly once across a SIGKILL");
}

/// 500 events sent in small batches while the pipeline works on them; SIGKILL `victim` as
/// soon as the first prediction is out, so it dies with work in flight and more arriving;
/// 500 more while it is down; restart; everything exactly once.
async fn kill_send_restart(pipeline: &mut Pipeline, victim: Service) -> Result<()> {
    let first = orders("crash", 0..500, 50);
    let second = orders("crash", 500..1000, 50);
    let mut ingest = pipeline.ingest().await?;
    let publisher = {
        let (mut ingest, first) = (ingest.clone(), first.clone());
        tokio::spawn(async move { publish_all_accepted(&mut ingest, &first, 20).await })
    };
    wait_for_stream_count(pipeline.jetstream(), "PREDICTIONS", 1, LONG).await?;
    pipeline.service_mut(victim).kill().await?;
    let at_kill = pipeline.stream_count("PREDICTIONS").await?;
    publisher.await??;

    publish_all_accepted(&mut ingest, &second, 100).await?;
    let while_down = pipeline.stream_count("PREDICTIONS").await?;
    // Predictions still flow from work the victim handed on before it died, never from
    // events it has not seen: the second 500 wait for it.
    ensure!(
        while_down <= 500,
        "with {} down, predictions for the second 500 events appeared anyway: {while_down}",
        victim.binary()
    );
    eprintln!(
        "{} killed with {at_kill} of 500 predictions out; {while_down} while it was down",
        victim.binary()
    );
    pipeline.service_mut(victim).restart().await?;

    let sent: Vec<_> = first.into_iter().chain(second).collect();
    check_exactly_once(pipeline, &sent).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_sigterm_snapshots_and_resumes() {
    let mut pipeline = Pipeline::start().await.expect("pipeline starts");
    sigterm_restart(&mut pipeline)
        .await
        .expect("exactly once across a SIGTERM");
}

/// Traffic fully processed; SIGTERM feature-state, which must exit cleanly (drain,
/// snapshot, ack); restart; more traffic; counts continue from where they were.
async fn sigterm_restart(pipeline: &mut Pipeline) -> Result<()> {
    let first = orders("graceful", 0..300, 50);
    let second = orders("graceful", 300..600, 50);
    let mut ingest = pipeline.ingest().await?;
    publish_all_accepted(&mut ingest, &first, 100).await?;
    check_exactly_once(pipeline, &first).await?;

    let status = pipeline
        .service_mut(Service::FeatureState)
        .terminate()
        .await?;
    ensure!(
        status.success(),
        "millrace-feature-state exited with {status} on SIGTERM; log tail:\n{}",
        pipeline.service(Service::FeatureState).log_tail(40)
    );
    pipeline
        .service_mut(Service::FeatureState)
        .restart()
        .await?;

    publish_all_accepted(&mut ingest, &second, 100).await?;
    let sent: Vec<_> = first.into_iter().chain(second).collect();
    check_exactly_once(pipeline, &sent).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_carry_on_after_the_broker_restarts() {
    let mut pipeline = Pipeline::start().await.expect("pipeline starts");
    broker_restart(&mut pipeline)
        .await
        .expect("exactly once across a broker restart");
}

/// Traffic fully processed; nats-server stopped and started again on the same
/// store under the running services, which lose their connections and their
/// consumers' open pull requests; more traffic; everything exactly once. The
/// stages must notice that their requests are gone and ask again by themselves.
async fn broker_restart(pipeline: &mut Pipeline) -> Result<()> {
    let first = orders("broker", 0..300, 50);
    let second = orders("broker", 300..600, 50);
    let mut ingest = pipeline.ingest().await?;
    publish_all_accepted(&mut ingest, &first, 100).await?;
    check_exactly_once(pipeline, &first).await?;

    pipeline.nats_mut().restart().await?;
    publish_all_accepted(&mut ingest, &second, 100).await?;
    let sent: Vec<_> = first.into_iter().chain(second).collect();
    check_exactly_once(pipeline, &sent).await?;
    for service in [Service::Enrich, Service::FeatureState, Service::Inference] {
        let running = pipeline.service_mut(service).is_running();
        ensure!(
            running,
            "{} stopped across the broker restart; log tail:\n{}",
            service.binary(),
            pipeline.service(service).log_tail(40)
        );
    }
    Ok(())
}
