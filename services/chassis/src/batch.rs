//! Events travel between stages many to a JetStream message: one broker round
//! trip per event would cap every hop near the server's message rate (DESIGN.md,
//! "Performance"). This module packs a stage's outputs into [`Batch`]es, unpacks
//! them on the consuming side, and keeps exactly-once across a crash.
//!
//! Exactly-once without per-event ids: a stage publishes the batches of one
//! chunk of input only after every batch of the previous chunk is stored, and
//! stamps each with the input position it covers (`Millrace-Upto`: the last
//! applied sequence of every source). So what a subject holds is always every
//! output of the inputs up to its last batch's stamp. After a restart the
//! stage replays from its snapshot and drops the outputs of inputs at or below
//! that stamp, because the stream has them already ([`Covered`]). Batch ids stay
//! deterministic as well, so the server's duplicate window catches a resend.

use std::collections::HashMap;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::TryStreamExt;
use millrace_proto::{Batch, BatchItem};
use opentelemetry::Context;
use prost::Message as _;

use crate::bus::{Bus, Outgoing, StreamKind, Subject, MSG_ID_HEADER};
use crate::telemetry;
use crate::ChassisError;

/// Marks a batch message; the value is its record count.
pub const BATCH_HEADER: &str = "Millrace-Batch";
/// The producing stage's input position a batch covers: one sequence per source, comma-separated.
pub const UPTO_HEADER: &str = "Millrace-Upto";

/// One record out of a stream message, with the trace it belongs to.
#[derive(Debug, Clone)]
pub struct Record {
    pub payload: Bytes,
    pub trace: Context,
}

/// The records a stream message holds: the items of a batch, or the message
/// itself. Their trace contexts are read only when `traced`.
pub fn unbatch(
    headers: Option<&HeaderMap>,
    payload: Bytes,
    traced: bool,
) -> Result<Vec<Record>, prost::DecodeError> {
    if !is_batch(headers) {
        return Ok(vec![Record {
            payload,
            trace: match traced {
                true => telemetry::context_from_headers(headers),
                false => Context::new(),
            },
        }]);
    }
    let batch = Batch::decode(payload)?;
    Ok(batch
        .items
        .into_iter()
        .map(|item| Record {
            payload: item.payload,
            trace: match traced {
                true => telemetry::context_from_traceparent(&item.traceparent),
                false => Context::new(),
            },
        })
        .collect())
}

/// Decodes every record of a stream message as `M`.
pub fn decode_records<M: prost::Message + Default>(
    headers: Option<&HeaderMap>,
    payload: Bytes,
) -> Result<Vec<M>, prost::DecodeError> {
    unbatch(headers, payload, false)?
        .into_iter()
        .map(|r| M::decode(r.payload))
        .collect()
}

/// [`BATCH_HEADER`] as a constant: looked up by `&str`, every message allocated a new name.
const BATCH_NAME: async_nats::HeaderName = async_nats::HeaderName::from_static(BATCH_HEADER);

pub fn is_batch(headers: Option<&HeaderMap>) -> bool {
    headers.is_some_and(|h| h.get(BATCH_NAME).is_some())
}

/// How many records a stream message holds: its batch's count, or one.
pub fn record_count(headers: Option<&HeaderMap>) -> usize {
    headers
        .and_then(|h| h.get(BATCH_NAME))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(1)
}

/// A batch above this many payload bytes is split in parts (NATS refuses
/// messages over `max_payload`, 1 MiB by default).
pub const MAX_BATCH_BYTES: usize = 512 * 1024;

/// Packs the outputs bound for `stream` into one batch per subject, in order of
/// first appearance; other outputs (DLQ, alerts) pass through unchanged, after them.
///
/// `upto` is the input position after the outputs' inputs, `from` the one
/// before. A batch too large for one message goes in parts; all but the last
/// carry `from`, so a crash between parts can repeat records but never lose one.
pub fn pack(
    stage: &str,
    stream: StreamKind,
    from: &[u64],
    upto: &[u64],
    outputs: Vec<Outgoing>,
) -> Vec<Outgoing> {
    let prefix = stream.subject_prefix();
    let mut subjects: Vec<(Subject, Vec<BatchItem>)> = Vec::new();
    let mut others = Vec::new();
    // Records of one input message share a subject, and a stage writes a few
    // subjects: the last one used, then a scan, beats hashing every record's.
    let mut last = 0;
    for out in outputs {
        if !in_stream(out.subject.as_str(), prefix) {
            others.push(out);
            continue;
        }
        let item = BatchItem {
            payload: out.payload,
            traceparent: telemetry::traceparent(&out.trace).unwrap_or_default(),
        };
        let found = match subjects.get(last) {
            Some((subject, _)) if *subject == out.subject => Some(last),
            _ => subjects.iter().position(|(s, _)| *s == out.subject),
        };
        match found {
            Some(i) => {
                subjects[i].1.push(item);
                last = i;
            }
            None => {
                last = subjects.len();
                subjects.push((out.subject, vec![item]));
            }
        }
    }
    let (from, upto) = (upto_text(from), upto_text(upto));
    let mut packed = Vec::with_capacity(subjects.len() + others.len());
    for (subject, items) in subjects {
        let parts = split(items, MAX_BATCH_BYTES);
        let last = parts.len() - 1;
        for (i, items) in parts.into_iter().enumerate() {
            let (stamp, msg_id) = if i == last && i == 0 {
                (upto.clone(), format!("{stage}:{subject}:{upto}"))
            } else if i == last {
                (upto.clone(), format!("{stage}:{subject}:{upto}:{i}"))
            } else {
                (from.clone(), format!("{stage}:{subject}:{upto}:{i}"))
            };
            packed.push(Outgoing {
                headers: vec![
                    (BATCH_HEADER, items.len().to_string()),
                    (UPTO_HEADER, stamp),
                ],
                payload: Bytes::from(Batch { items }.encode_to_vec()),
                msg_id,
                subject: subject.clone(),
                trace: Context::new(),
            });
        }
    }
    packed.append(&mut others);
    packed
}

/// Splits items into runs of at most `max_bytes` encoded (at least one item each).
fn split(items: Vec<BatchItem>, max_bytes: usize) -> Vec<Vec<BatchItem>> {
    let mut parts = vec![Vec::new()];
    let mut bytes = 0;
    for item in items {
        let size = item.encoded_len() + 8;
        if bytes + size > max_bytes && !parts.last().is_some_and(Vec::is_empty) {
            parts.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(part) = parts.last_mut() {
            part.push(item);
        }
    }
    parts
}

pub(crate) fn in_stream(subject: &str, prefix: &str) -> bool {
    subject.len() > prefix.len()
        && subject.starts_with(prefix)
        && subject.as_bytes()[prefix.len()] == b'.'
}

fn upto_text(upto: &[u64]) -> String {
    upto.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_upto(text: &str, sources: usize) -> Option<Vec<u64>> {
    let upto: Vec<u64> = text
        .split(',')
        .map(|s| s.trim().parse().ok())
        .collect::<Option<_>>()?;
    (upto.len() == sources).then_some(upto)
}

/// What a stage's output stream already holds from an earlier run: per subject,
/// the input position its last batch covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Covered {
    by_subject: HashMap<String, Vec<u64>>,
    /// Per source, the highest sequence any subject covers: replay below it needs care.
    reach: Vec<u64>,
}

impl Covered {
    /// Reads the last batch of every subject in `stream` that this stage wrote.
    pub async fn load(
        bus: &Bus,
        stream: StreamKind,
        stage: &str,
        sources: usize,
    ) -> Result<Self, ChassisError> {
        let name = bus.stream_name(stream).to_string();
        let err = |message: String| ChassisError::Consume {
            stream: name.clone(),
            consumer: format!("{stage} (reading what it published)"),
            message,
        };
        let handle = bus
            .jetstream()
            .get_stream(&name)
            .await
            .map_err(|e| err(e.to_string()))?;
        let subjects: Vec<(String, usize)> = handle
            .info_with_subjects(format!("{}.>", stream.subject_prefix()))
            .await
            .map_err(|e| err(e.to_string()))?
            .try_collect()
            .await
            .map_err(|e| err(e.to_string()))?;
        let own = format!("{stage}:");
        let mut covered = Covered {
            by_subject: HashMap::new(),
            reach: vec![0; sources],
        };
        for (subject, _) in subjects {
            let last = handle
                .get_last_raw_message_by_subject(&subject)
                .await
                .map_err(|e| err(format!("last message on {subject}: {e}")))?;
            let ours = last
                .headers
                .get(MSG_ID_HEADER)
                .is_some_and(|id| id.as_str().starts_with(&own));
            let upto = last
                .headers
                .get(UPTO_HEADER)
                .and_then(|v| parse_upto(v.as_str(), sources));
            if let (true, Some(upto)) = (ours, upto) {
                covered.insert(subject, upto);
            }
        }
        Ok(covered)
    }

    fn insert(&mut self, subject: String, upto: Vec<u64>) {
        for (reach, &u) in self.reach.iter_mut().zip(&upto) {
            *reach = (*reach).max(u);
        }
        self.by_subject.insert(subject, upto);
    }

    /// True while an input may have outputs the stream holds already.
    pub fn in_replay(&self, source: usize, sequence: u64) -> bool {
        self.reach.get(source).is_some_and(|&r| sequence <= r)
    }

    /// Whether an output on `subject` derived from input (`source`, `sequence`) still has to be published.
    pub fn keep(&self, subject: &str, source: usize, sequence: u64) -> bool {
        match self.by_subject.get(subject).and_then(|u| u.get(source)) {
            Some(&upto) => sequence > upto,
            None => true,
        }
    }

    /// True once every source is past what any subject covers.
    pub fn passed(&self, applied: &[u64]) -> bool {
        self.reach.iter().zip(applied).all(|(r, a)| a >= r)
    }

    pub fn is_empty(&self) -> bool {
        self.by_subject.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::FeatureVector;

    fn out(subject: &str, event: &str) -> Outgoing {
        let v = FeatureVector {
            event_id: event.into(),
            ..Default::default()
        };
        Outgoing::new(subject, format!("x:{event}"), &v, Context::new())
    }

    #[test]
    fn packs_one_batch_per_subject_in_order_and_leaves_other_streams_alone() {
        let packed = pack(
            "feature-state",
            StreamKind::Features,
            &[40],
            &[42],
            vec![
                out("features.1", "a"),
                out("dlq.feature-state", "late"),
                out("features.0", "b"),
                out("features.1", "c"),
                out("featuresque.1", "not-ours"),
            ],
        );
        let subjects: Vec<&str> = packed.iter().map(|o| o.subject.as_str()).collect();
        assert_eq!(
            subjects,
            [
                "features.1",
                "features.0",
                "dlq.feature-state",
                "featuresque.1"
            ]
        );
        assert_eq!(packed[0].msg_id, "feature-state:features.1:42");
        let mut headers = HeaderMap::new();
        for (k, v) in &packed[0].headers {
            headers.insert(*k, v.as_str());
        }
        assert_eq!(headers.get(BATCH_HEADER).map(|v| v.as_str()), Some("2"));
        let ids: Vec<String> =
            decode_records::<FeatureVector>(Some(&headers), packed[0].payload.clone())
                .expect("decodes")
                .into_iter()
                .map(|v| v.event_id)
                .collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(packed[2].msg_id, "x:late", "a DLQ record keeps its own id");
    }

    #[test]
    fn an_oversized_batch_goes_in_parts_and_only_the_last_claims_the_new_position() {
        let big = |i: usize| {
            let v = FeatureVector {
                event_id: format!("{i}:{}", "x".repeat(100_000)),
                ..Default::default()
            };
            Outgoing::new("features.0", format!("x:{i}"), &v, Context::new())
        };
        let packed = pack(
            "fs",
            StreamKind::Features,
            &[7],
            &[9],
            (0..12).map(big).collect(),
        );
        assert_eq!(
            packed.len(),
            3,
            "12 records of 100 kB in parts of at most 512 KiB"
        );
        let stamps: Vec<&str> = packed
            .iter()
            .map(|o| {
                o.headers
                    .iter()
                    .find(|(k, _)| *k == UPTO_HEADER)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("")
            })
            .collect();
        assert_eq!(stamps, ["7", "7", "9"]);
        let ids: Vec<&str> = packed.iter().map(|o| o.msg_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "fs:features.0:9:0",
                "fs:features.0:9:1",
                "fs:features.0:9:2"
            ]
        );
        assert!(packed
            .iter()
            .all(|o| o.payload.len() <= MAX_BATCH_BYTES + 1024));
    }

    #[test]
    fn a_message_without_the_header_is_one_record() {
        let v = FeatureVector {
            event_id: "solo".into(),
            ..Default::default()
        };
        let got =
            decode_records::<FeatureVector>(None, Bytes::from(v.encode_to_vec())).expect("decodes");
        assert_eq!(got, vec![v]);
    }

    #[test]
    fn covered_keeps_only_outputs_past_each_subjects_stamp() {
        let mut c = Covered {
            by_subject: HashMap::new(),
            reach: vec![0, 0],
        };
        c.insert("predictions.a".into(), vec![10, 3]);
        c.insert("predictions.b".into(), vec![12, 2]);
        assert!(c.in_replay(0, 12) && !c.in_replay(0, 13));
        assert!(c.in_replay(1, 3) && !c.in_replay(1, 4));
        assert!(!c.keep("predictions.a", 0, 10));
        assert!(c.keep("predictions.a", 0, 11), "b got further than a");
        assert!(!c.keep("predictions.b", 0, 11));
        assert!(c.keep("predictions.c", 0, 1), "a subject never written");
        assert!(c.keep("predictions.a", 1, 4));
        assert!(!c.passed(&[12, 2]) && c.passed(&[12, 3]));
    }

    #[test]
    fn stamps_round_trip_and_bad_ones_are_ignored() {
        assert_eq!(parse_upto(&upto_text(&[5, 0, 7]), 3), Some(vec![5, 0, 7]));
        assert_eq!(parse_upto("5,x", 2), None);
        assert_eq!(
            parse_upto("5", 2),
            None,
            "written by a stage with other sources"
        );
    }
}
