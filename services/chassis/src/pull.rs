//! A durable pull consumer's messages, read off a plain subscription.
//!
//! async-nats' `consumer.stream().messages()` wraps every message in a
//! `jetstream::Message` that holds a clone of the JetStream context, built and
//! dropped per message: with the stream's own bookkeeping, a sixth of enrich's
//! CPU per event. A stage needs only the message, its headers and its reply
//! subject (which names the stream sequence), so it reads them here. It asks
//! for `batch` messages, again whenever half of what it asked for has come,
//! and reads the server's status messages as async-nats does.
//!
//! A reconnect loses the open requests. The consumer asks again as soon as
//! the bus has made a new connection, and whenever neither a message nor a
//! heartbeat, which the server sends while a request waits, has come for
//! [`QUIET_TICKS`] intervals. async-nats reported a missed heartbeat and
//! waited on, which stalled a stage for about 35 s. A request nobody answers
//! (JetStream not up yet after a restart) is asked again after [`NO_RESPONDERS_PAUSE`].

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::{Client, Message, StatusCode, Subscriber};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::watch;

use crate::bus::Bus;

/// How long the server keeps a pull request open.
const EXPIRES: Duration = Duration::from_secs(30);
/// How often the server sends a heartbeat while a request waits.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Heartbeat intervals without a word from the server before asking again.
const QUIET_TICKS: u32 = 2;
/// How long to wait before asking again when no one answered a request.
const NO_RESPONDERS_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("the consumer was deleted")]
    Deleted,
    #[error("the server refused the pull request: {0}")]
    Refused(String),
    #[error("sending a pull request: {0}")]
    Request(String),
    #[error("JetStream did not answer the pull request (no responders)")]
    NoResponders,
}

impl PullError {
    /// Whether the consumer can deliver nothing more.
    fn is_final(&self) -> bool {
        matches!(self, Self::Deleted | Self::Refused(_))
    }
}

pub struct Pull {
    client: Client,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`.
    api: String,
    inbox: String,
    request: Bytes,
    subscriber: Subscriber,
    batch: usize,
    /// Messages asked for that have neither come nor expired.
    outstanding: usize,
    asking: Option<BoxFuture<'static, Result<(), async_nats::PublishError>>>,
    tick: tokio::time::Interval,
    /// Ticks since the server last sent anything.
    quiet: u32,
    /// Resolves when the bus makes a new connection (with the receiver, to
    /// wait for the next); `None` once the bus is gone.
    reconnected: Option<BoxFuture<'static, Option<watch::Receiver<u64>>>>,
    /// No request goes before this, after one that no one answered.
    paused: Option<Pin<Box<tokio::time::Sleep>>>,
    ended: bool,
}

/// Waits for the connection count to move.
fn next_connection(
    mut connections: watch::Receiver<u64>,
) -> BoxFuture<'static, Option<watch::Receiver<u64>>> {
    async move { connections.changed().await.ok().map(|()| connections) }.boxed()
}

impl Pull {
    /// Subscribes to a new inbox for the consumer `durable` of `stream`; the
    /// first request goes when the stream is first polled.
    pub async fn start(
        bus: &Bus,
        stream: &str,
        durable: &str,
        batch: usize,
    ) -> Result<Self, async_nats::SubscribeError> {
        let client = bus.client().clone();
        let inbox = client.new_inbox();
        let subscriber = client.subscribe(inbox.clone()).await?;
        let batch = batch.max(1);
        let request = format!(
            r#"{{"batch":{batch},"expires":{},"idle_heartbeat":{}}}"#,
            EXPIRES.as_nanos(),
            HEARTBEAT.as_nanos()
        );
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            client,
            api: format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"),
            inbox,
            request: Bytes::from(request),
            subscriber,
            batch,
            outstanding: 0,
            asking: None,
            tick,
            quiet: 0,
            reconnected: Some(next_connection(bus.connections())),
            paused: None,
            ended: false,
        })
    }

    fn ask(&mut self) {
        let client = self.client.clone();
        let (api, inbox, body) = (self.api.clone(), self.inbox.clone(), self.request.clone());
        self.asking =
            Some(async move { client.publish_with_reply(api, inbox, body).await }.boxed());
    }

    /// What a status message means for the requests; an error to report, if any.
    fn status(&mut self, message: &Message, status: StatusCode) -> Option<PullError> {
        let description = message.description.as_deref().unwrap_or_default();
        match status {
            StatusCode::IDLE_HEARTBEAT => None,
            StatusCode::NO_RESPONDERS => {
                // The request is gone: ask again after a pause, not in a spin.
                self.outstanding = 0;
                self.paused = Some(Box::pin(tokio::time::sleep(NO_RESPONDERS_PAUSE)));
                Some(PullError::NoResponders)
            }
            _ if description == "Consumer Deleted" => Some(PullError::Deleted),
            _ if description == "Consumer is push based"
                || description.starts_with("Exceeded MaxRequest") =>
            {
                Some(PullError::Refused(description.to_string()))
            }
            // A request expired or ended (timeout, leadership change, …):
            // what it still had to deliver will not come.
            StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED | StatusCode::NOT_FOUND => {
                let left = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Pending-Messages"))
                    .and_then(|v| v.as_str().parse().ok())
                    .unwrap_or(self.batch);
                self.outstanding = self.outstanding.saturating_sub(left);
                None
            }
            other => {
                tracing::warn!(consumer = %self.api, status = %other, description, "unexpected status from a pull request");
                None
            }
        }
    }
}

impl Stream for Pull {
    type Item = Result<Message, PullError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            if let Some(paused) = &mut this.paused {
                if paused.poll_unpin(cx).is_ready() {
                    this.paused = None;
                }
            }
            if this.asking.is_none() && this.paused.is_none() && this.outstanding <= this.batch / 2
            {
                this.ask();
            }
            if let Some(asking) = &mut this.asking {
                if let Poll::Ready(sent) = asking.poll_unpin(cx) {
                    this.asking = None;
                    // Counted as asked for even when sending failed, so that
                    // a failure is retried after the quiet ticks, not at once.
                    this.outstanding += this.batch;
                    if let Err(e) = sent {
                        return Poll::Ready(Some(Err(PullError::Request(e.to_string()))));
                    }
                }
            }
            let message = match this.subscriber.poll_next_unpin(cx) {
                Poll::Ready(Some(message)) => message,
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    let mut lost = false;
                    if let Some(reconnected) = &mut this.reconnected {
                        if let Poll::Ready(connections) = reconnected.poll_unpin(cx) {
                            tracing::info!(consumer = %this.api, "reconnected: asking again");
                            this.reconnected = connections.map(next_connection);
                            lost = true;
                        }
                    }
                    // The clock is read only while waiting: not per message.
                    while this.tick.poll_tick(cx).is_ready() {
                        this.quiet += 1;
                        if this.quiet > QUIET_TICKS {
                            tracing::warn!(consumer = %this.api, "no message nor heartbeat for {QUIET_TICKS} heartbeat intervals: asking again");
                            lost = true;
                        }
                    }
                    if lost {
                        (this.quiet, this.outstanding, this.paused) = (0, 0, None);
                    }
                    match lost {
                        true => continue,
                        false => return Poll::Pending,
                    }
                }
            };
            this.quiet = 0;
            match message.status {
                None | Some(StatusCode::OK) => {
                    this.outstanding = this.outstanding.saturating_sub(1);
                    return Poll::Ready(Some(Ok(message)));
                }
                Some(status) => {
                    if let Some(e) = this.status(&message, status) {
                        this.ended = e.is_final();
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
        }
    }
}
