//! Atomic batch publishing (ADR-50, nats-server ≥ 2.12): many messages to one
//! stream, stored all or none, under one write of the server's store.
//!
//! With `sync_interval: always` (deploy/nats-server.conf) the server fsyncs
//! each stored message before its ack; one message per event then caps a
//! producer near a thousand events per second on an ordinary disk. An atomic
//! batch is fsynced once for all its messages, and each message keeps its own
//! `Nats-Msg-Id`, so deduplication still works event by event.
//!
//! The protocol: every message carries `Nats-Batch-Id` and its 1-based
//! `Nats-Batch-Sequence`; all but the last go as plain publishes (no reply
//! wanted), the last also carries `Nats-Batch-Commit: 1` and is a request
//! whose answer is the batch's ack: the stream sequence of its last message
//! and how many messages it stored. The server stores a batch's messages at
//! consecutive sequences, so message `i` is at `last - count + 1 + i`.
//!
//! The server stages a batch before it commits it, at a cost per batch: a
//! batch pays off from [`WORTH_IT`] messages on.
//!
//! Because a connection's messages reach the server in the order they were
//! sent, batches sent one after another over one client are committed in that
//! order; waiting for one batch's ack does not have to hold back the next.

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use tokio::time::Instant;

/// The server's limit on messages per atomic batch.
pub const MAX_MESSAGES: usize = 1000;

/// The fewest messages worth an atomic batch. On a file stream with one
/// replica the server stages each batch in a store of its own (created,
/// described and synced per batch), a setup that costs more than the fsyncs
/// of a few messages stored one by one (BENCHMARKS.md, "The year").
pub const WORTH_IT: usize = 16;

const BATCH_ID: &str = "Nats-Batch-Id";
const BATCH_SEQUENCE: &str = "Nats-Batch-Sequence";
const BATCH_COMMIT: &str = "Nats-Batch-Commit";

/// Why a batch was not stored (as far as the producer can tell).
#[derive(Debug, thiserror::Error)]
pub enum AtomicError {
    /// One of the batch's `Nats-Msg-Id`s is already stored (or repeated within
    /// the batch): the server refused the whole batch; nothing of it was stored.
    #[error("atomic batch {batch_id}: refused, it holds a message id the stream already has")]
    Duplicate { batch_id: String },
    /// The server refused the batch for another reason; nothing of it was stored.
    #[error("atomic batch {batch_id}: refused by the server: {message}")]
    Refused { batch_id: String, message: String },
    /// The batch could not be sent, or its commit was not answered: it may or
    /// may not be stored.
    #[error("atomic batch {batch_id}: not confirmed: {message}")]
    Unconfirmed { batch_id: String, message: String },
    /// Nothing to send, or more than [`MAX_MESSAGES`].
    #[error("atomic batch {batch_id}: {count} messages, a batch holds 1 to {MAX_MESSAGES}")]
    Size { batch_id: String, count: usize },
}

/// What the server stored for a committed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Stream sequence of the batch's last message.
    pub last_sequence: u64,
    /// Messages stored.
    pub count: u64,
}

impl Committed {
    /// The stream sequence of the batch's `index`-th message (from 0).
    pub fn sequence_of(&self, index: usize) -> u64 {
        (self.last_sequence + 1 + index as u64).saturating_sub(self.count)
    }
}

/// A sent batch whose commit answer is still to come.
#[derive(Debug)]
pub struct Commit {
    batch_id: String,
    count: usize,
    ack: PublishAckFuture,
}

/// A fresh batch id (the server allows at most 64 characters).
pub fn new_batch_id() -> String {
    nuid::next().to_string()
}

/// Sends `messages` (subject, headers, payload; at most [`MAX_MESSAGES`], all
/// bound for one stream) as one atomic batch, without waiting for the commit.
///
/// The commit's ack is awaited with the context's timeout and its in-flight
/// limit applies, as for any JetStream publish.
pub async fn send(
    js: &jetstream::Context,
    batch_id: &str,
    messages: Vec<(Subject, HeaderMap, Bytes)>,
) -> Result<Commit, AtomicError> {
    let count = messages.len();
    if count == 0 || count > MAX_MESSAGES {
        return Err(AtomicError::Size {
            batch_id: batch_id.to_string(),
            count,
        });
    }
    let client = js.client();
    let unconfirmed = |message: String| AtomicError::Unconfirmed {
        batch_id: batch_id.to_string(),
        message,
    };
    let mut messages = messages.into_iter();
    for sequence in 1..count {
        let Some((subject, mut headers, payload)) = messages.next() else {
            break;
        };
        headers.insert(BATCH_ID, batch_id);
        headers.insert(BATCH_SEQUENCE, sequence.to_string().as_str());
        client
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| unconfirmed(e.to_string()))?;
    }
    let Some((subject, mut headers, payload)) = messages.next() else {
        return Err(AtomicError::Size {
            batch_id: batch_id.to_string(),
            count,
        });
    };
    headers.insert(BATCH_ID, batch_id);
    headers.insert(BATCH_SEQUENCE, count.to_string().as_str());
    headers.insert(BATCH_COMMIT, "1");
    let publish = jetstream::message::PublishMessage::build()
        .payload(payload)
        .headers(headers);
    let ack = js
        .send_publish(subject, publish)
        .await
        .map_err(|e| unconfirmed(e.to_string()))?;
    Ok(Commit {
        batch_id: batch_id.to_string(),
        count,
        ack,
    })
}

impl Commit {
    /// The server's answer to the commit.
    pub async fn wait(self) -> Result<Committed, AtomicError> {
        let Self {
            batch_id,
            count,
            ack,
        } = self;
        match std::future::IntoFuture::into_future(ack).await {
            Ok(ack) => {
                let stored = ack.batch_size.unwrap_or(count as u64);
                if stored != count as u64 {
                    return Err(AtomicError::Unconfirmed {
                        message: format!("the server stored {stored} of {count} messages"),
                        batch_id,
                    });
                }
                Ok(Committed {
                    last_sequence: ack.sequence,
                    count: stored,
                })
            }
            Err(e) => Err(classify(batch_id, &e)),
        }
    }

    /// [`Commit::wait`], giving up at `deadline`.
    pub async fn wait_until(self, deadline: Instant) -> Result<Committed, AtomicError> {
        let batch_id = self.batch_id.clone();
        tokio::time::timeout_at(deadline, self.wait())
            .await
            .unwrap_or_else(|_| {
                Err(AtomicError::Unconfirmed {
                    batch_id,
                    message: "no answer in time".into(),
                })
            })
    }
}

/// Which [`AtomicError`] a failed commit is: the server's error code says
/// whether anything may have been stored.
fn classify(batch_id: String, error: &jetstream::context::PublishError) -> AtomicError {
    let code = std::error::Error::source(error)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .map(jetstream::Error::error_code);
    match (error.kind(), code) {
        (_, Some(ErrorCode::ATOMIC_PUBLISH_CONTAINS_DUPLICATE_MESSAGE)) => {
            AtomicError::Duplicate { batch_id }
        }
        (PublishErrorKind::Other, Some(_)) | (PublishErrorKind::StreamNotFound, _) => {
            AtomicError::Refused {
                batch_id,
                message: error_text(error),
            }
        }
        _ => AtomicError::Unconfirmed {
            batch_id,
            message: error_text(error),
        },
    }
}

/// The error with its source: async-nats' `Display` of a refused publish says
/// only "publish failed".
fn error_text(error: &jetstream::context::PublishError) -> String {
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_batch_numbers_its_messages_consecutively_up_to_the_last() {
        let committed = Committed {
            last_sequence: 1_000,
            count: 3,
        };
        assert_eq!(
            (0..3).map(|i| committed.sequence_of(i)).collect::<Vec<_>>(),
            vec![998, 999, 1_000]
        );
        let first = Committed {
            last_sequence: 1,
            count: 1,
        };
        assert_eq!(first.sequence_of(0), 1);
    }

    #[test]
    fn batch_ids_fit_the_servers_limit_and_differ() {
        let (a, b) = (new_batch_id(), new_batch_id());
        assert!(a.len() <= 64, "{a}");
        assert_ne!(a, b);
    }
}
