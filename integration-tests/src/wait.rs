//! Waiting for a condition by polling it, never by sleeping a guessed time: the tests run
//! on a loaded 2-core machine where "surely done after 2 s" is a flake.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::time::{sleep, timeout, Instant};

/// For conditions that need the whole pipeline to move (events through five services).
pub const LONG: Duration = Duration::from_secs(120);
/// For conditions one process settles by itself (a port opens, a flush).
pub const SHORT: Duration = Duration::from_secs(60);

/// Polls `probe` until it answers `(true, value)` and returns that value.
///
/// `probe` answers whether the condition holds together with what it observed; an error
/// counts as "not yet" (a service may still be starting). After `limit` this fails with a
/// message naming `what` and the last observation, so a timeout says how far it got.
/// Polls start 50 ms apart and back off to 500 ms.
pub async fn wait_until<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> Result<T>
where
    T: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(bool, T)>>,
{
    let deadline = Instant::now() + limit;
    let mut delay = Duration::from_millis(50);
    let mut last = String::from("nothing observed yet");
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match timeout(remaining.max(Duration::from_millis(10)), probe()).await {
            Ok(Ok((true, value))) => return Ok(value),
            Ok(Ok((false, value))) => last = format!("{value:?}"),
            Ok(Err(e)) => last = format!("error: {e:#}"),
            Err(_) => last = format!("the probe itself was still running (before that: {last})"),
        }
        let now = Instant::now();
        if now >= deadline {
            bail!("timed out after {limit:?} waiting until {what}; last observed: {last}");
        }
        sleep(delay.min(deadline - now)).await;
        delay = (delay * 3 / 2).min(Duration::from_millis(500));
    }
}
