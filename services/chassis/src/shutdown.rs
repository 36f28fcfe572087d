//! Shutdown as a value: one listener turns SIGTERM/SIGINT into a flag that any
//! number of tasks can check or wait on, and that stays set once received.

use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Triggers a [`Shutdown`] by hand (tests, or a fatal error in one task).
#[derive(Clone, Debug)]
pub struct ShutdownTrigger {
    tx: std::sync::Arc<watch::Sender<bool>>,
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        // Receivers may all be gone already; then there is nobody to tell.
        let _ = self.tx.send(true);
    }
}

impl Shutdown {
    /// A shutdown that only fires when the returned trigger is pulled.
    pub fn manual() -> (Self, ShutdownTrigger) {
        let (tx, rx) = watch::channel(false);
        (
            Self { rx },
            ShutdownTrigger {
                tx: std::sync::Arc::new(tx),
            },
        )
    }

    /// A shutdown that fires on SIGTERM or SIGINT (and can also be triggered by hand).
    pub fn on_signals() -> (Self, ShutdownTrigger) {
        let (shutdown, trigger) = Self::manual();
        let on_signal = trigger.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received: draining");
            on_signal.trigger();
        });
        (shutdown, trigger)
    }

    pub fn is_shutdown(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown was requested; immediately if it already was.
    pub async fn recv(&mut self) {
        // An error means the sender is gone, which can only happen after it was dropped
        // without firing; treat that as shutdown too rather than waiting forever.
        let _ = self.rx.wait_for(|fired| *fired).await;
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; falling back to ctrl-c");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_wakes_every_clone_and_stays_set() {
        let (shutdown, trigger) = Shutdown::manual();
        let mut a = shutdown.clone();
        let mut b = shutdown.clone();
        assert!(!a.is_shutdown());
        trigger.trigger();
        a.recv().await;
        b.recv().await;
        assert!(shutdown.is_shutdown());
        // A late waiter returns at once.
        let mut late = shutdown.clone();
        late.recv().await;
    }
}
