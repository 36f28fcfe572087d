//! What monitor reads: three streams through one chassis stage, each with its
//! own durable consumer, and the records the board takes from them.
//!
//! One stage (not three) is what makes monitor exactly-once: the chassis keeps
//! a single snapshot holding the board's whole state and, beside it, the last
//! sequence applied from each of the three streams, written as one record. On
//! a restart every stream resumes right after its own sequence in that record,
//! so no message is applied twice or skipped, whatever order the streams
//! interleaved in before the crash or interleave in on the replay.
//!
//! # Records, not messages
//!
//! Monitor reads every prediction, label and feature vector of the pipeline,
//! so it does not build the generated proto structs (a `String` per text
//! field, 20-odd per feature vector). A record keeps the received buffer (one
//! reference, however many fields) and where the fields it needs lie in it; a
//! feature vector keeps its names and values as they were on the wire, and the
//! board walks them in place ([`VectorRecord::features`]), with the wire
//! reader of `millrace_proto::wire`. The fast path reads the canonical encoding
//! (what prost writes); anything else (fields out of order, unpacked values,
//! invalid data) goes through prost, so a record is accepted or refused
//! exactly as prost would, with prost's error.

use std::ops::Range;

use bytes::Bytes;
use millrace_chassis::bus::StreamKind;
use millrace_chassis::event_order::Arrival;
use millrace_chassis::stage::{Source, StageInput};
use millrace_proto::wire::{decode_in_place, is_text, put_varint, Span, Value, Wire};
use millrace_proto::{FeatureVector, Label, Prediction};

/// The stage's snapshot key.
pub const SNAPSHOT_KEY: &str = "monitor";

/// The streams read, in the order [`MonitorInput::decode`] expects them.
pub fn sources() -> Vec<Source> {
    vec![
        // The name the single-stream monitor used: its consumer is taken over.
        Source::new(StreamKind::Predictions, "monitor"),
        // One label per message, read in step with the batches.
        Source::new(StreamKind::Labels, "monitor-labels").of_single_records(),
        Source::new(StreamKind::Features, "monitor-features"),
    ]
}

/// How the three arrive ([`Arrival`]): quality pairs predictions with labels
/// in event-time order; drift reads the vectors in their own order.
pub const ARRIVALS: [Arrival; 3] = [Arrival::Derived, Arrival::Direct, Arrival::Unordered];

/// One record from any of the three streams.
#[derive(Debug, Clone, PartialEq)]
pub enum MonitorInput {
    Prediction(PredictionRecord),
    Label(LabelRecord),
    Features(VectorRecord),
}

impl StageInput for MonitorInput {
    fn decode(source: usize, payload: Bytes) -> Result<Self, prost::DecodeError> {
        Ok(match source {
            0 => Self::Prediction(PredictionRecord::decode(payload)?),
            1 => Self::Label(LabelRecord::decode(payload)?),
            _ => Self::Features(VectorRecord::decode(payload)?),
        })
    }

    fn event_id(&self) -> &str {
        match self {
            Self::Prediction(p) => p.event_id(),
            Self::Label(l) => l.event_id(),
            Self::Features(v) => v.event_id(),
        }
    }
}

impl MonitorInput {
    /// The time [`ARRIVALS`] orders it by: the scoring event's for a
    /// prediction or vector, the label event's for a label.
    pub fn event_time_us(&self) -> i64 {
        match self {
            Self::Prediction(p) => p.event_time_us,
            Self::Label(l) => l.event_time_us,
            Self::Features(v) => v.event_time_us,
        }
    }
}

/// A prediction or label held for the event-time order, with the span it was
/// delivered under. Snapshotted as its source and the proto it reads as; the
/// span does not survive a restart.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub input: MonitorInput,
    pub trace: opentelemetry::Context,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.input == other.input
    }
}

impl serde::Serialize for Waiting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use prost::Message as _;
        let (source, bytes) = match &self.input {
            MonitorInput::Prediction(p) => (0u8, p.to_proto().encode_to_vec()),
            MonitorInput::Label(l) => (1, l.to_proto().encode_to_vec()),
            // Never held (see ARRIVALS); kept as the vector's wire bytes all the same.
            MonitorInput::Features(v) => (2, v.buf.to_vec()),
        };
        (source, bytes).serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Waiting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (source, bytes) = <(u8, Vec<u8>)>::deserialize(d)?;
        let input = MonitorInput::decode(usize::from(source), Bytes::from(bytes))
            .map_err(serde::de::Error::custom)?;
        Ok(Self {
            input,
            trace: opentelemetry::Context::new(),
        })
    }
}

/// Builds the buffer of a record made from a generated proto struct.
#[derive(Default)]
struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    fn put(&mut self, bytes: &[u8]) -> Span {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        // Records come from NATS messages, far below 4 GiB.
        Span::of(start..self.buf.len()).unwrap_or_default()
    }
}

/// A `millrace.v1.Prediction` as monitor reads it: the received buffer (one
/// reference to it, whatever the number of fields) and where its text fields lie.
#[derive(Clone, Default)]
pub struct PredictionRecord {
    buf: Bytes,
    event_id: Span,
    model: Span,
    model_version: Span,
    label_key: Span,
    pub score: f64,
    pub predicted_positive: bool,
    pub event_time_us: i64,
    pub ingest_time_us: i64,
    pub predict_time_us: i64,
}

impl PredictionRecord {
    pub fn event_id(&self) -> &str {
        self.event_id.text(&self.buf)
    }

    pub fn model(&self) -> &str {
        self.model.text(&self.buf)
    }

    pub fn model_version(&self) -> &str {
        self.model_version.text(&self.buf)
    }

    pub fn label_key(&self) -> &str {
        self.label_key.text(&self.buf)
    }

    /// Whether the prediction is of `model` `version`, without checking the text again.
    pub fn is_of(&self, model: &str, version: &str) -> bool {
        self.model.bytes(&self.buf) == model.as_bytes()
            && self.model_version.bytes(&self.buf) == version.as_bytes()
    }

    pub fn decode(payload: Bytes) -> Result<Self, prost::DecodeError> {
        decode_in_place::<_, Prediction>(payload, Self::read, |r, buf| r.buf = buf)
    }

    /// The fields monitor reads, as a proto again.
    pub fn to_proto(&self) -> Prediction {
        Prediction {
            event_id: self.event_id().into(),
            model: self.model().into(),
            model_version: self.model_version().into(),
            score: self.score,
            predicted_positive: self.predicted_positive,
            event_time_us: self.event_time_us,
            ingest_time_us: self.ingest_time_us,
            predict_time_us: self.predict_time_us,
            label_key: self.label_key().into(),
            ..Default::default()
        }
    }

    /// The canonical fast path (the buffer is set by the caller); `None` for
    /// anything it does not read.
    fn read(payload: &[u8]) -> Option<Self> {
        let mut r = Self::default();
        let mut wire = Wire::new(payload);
        while let Some((tag, value)) = wire.next_field()? {
            match (tag, value) {
                (1, Value::Len(at)) => r.event_id = Span::text_of(payload, at)?,
                (2, Value::Len(at)) => r.model = Span::text_of(payload, at)?,
                (3, Value::Len(at)) => r.model_version = Span::text_of(payload, at)?,
                (4, Value::Fixed64(bits)) => r.score = f64::from_bits(bits),
                (5, Value::Varint(v)) => r.predicted_positive = v != 0,
                (6, Value::Len(at)) => {
                    Span::text_of(payload, at)?;
                }
                (7, Value::Varint(v)) => r.event_time_us = v as i64,
                (8, Value::Varint(v)) => r.ingest_time_us = v as i64,
                (9, Value::Varint(v)) => r.predict_time_us = v as i64,
                (10, Value::Len(at)) => r.label_key = Span::text_of(payload, at)?,
                (1..=10, _) => return None,
                _ => {}
            }
        }
        Some(r)
    }
}

impl From<Prediction> for PredictionRecord {
    fn from(p: Prediction) -> Self {
        let mut b = Builder::default();
        let (event_id, model, model_version, label_key) = (
            b.put(p.event_id.as_bytes()),
            b.put(p.model.as_bytes()),
            b.put(p.model_version.as_bytes()),
            b.put(p.label_key.as_bytes()),
        );
        Self {
            buf: Bytes::from(b.buf),
            event_id,
            model,
            model_version,
            label_key,
            score: p.score,
            predicted_positive: p.predicted_positive,
            event_time_us: p.event_time_us,
            ingest_time_us: p.ingest_time_us,
            predict_time_us: p.predict_time_us,
        }
    }
}

/// Records are equal by their fields, wherever they lie in their buffers.
impl PartialEq for PredictionRecord {
    fn eq(&self, o: &Self) -> bool {
        (
            self.event_id(),
            self.model(),
            self.model_version(),
            self.label_key(),
            self.score.to_bits(),
            self.predicted_positive,
            (
                self.event_time_us,
                self.ingest_time_us,
                self.predict_time_us,
            ),
        ) == (
            o.event_id(),
            o.model(),
            o.model_version(),
            o.label_key(),
            o.score.to_bits(),
            o.predicted_positive,
            (o.event_time_us, o.ingest_time_us, o.predict_time_us),
        )
    }
}

impl std::fmt::Debug for PredictionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionRecord")
            .field("event_id", &self.event_id())
            .field("model", &self.model())
            .field("model_version", &self.model_version())
            .field("label_key", &self.label_key())
            .field("score", &self.score)
            .field("predicted_positive", &self.predicted_positive)
            .field("event_time_us", &self.event_time_us)
            .field("ingest_time_us", &self.ingest_time_us)
            .field("predict_time_us", &self.predict_time_us)
            .finish()
    }
}

/// A `millrace.v1.Label` as monitor reads it.
#[derive(Clone, Default)]
pub struct LabelRecord {
    buf: Bytes,
    event_id: Span,
    label_key: Span,
    pub value: f64,
    pub event_time_us: i64,
    pub ingest_time_us: i64,
}

impl LabelRecord {
    pub fn event_id(&self) -> &str {
        self.event_id.text(&self.buf)
    }

    pub fn label_key(&self) -> &str {
        self.label_key.text(&self.buf)
    }

    pub fn decode(payload: Bytes) -> Result<Self, prost::DecodeError> {
        decode_in_place::<_, Label>(payload, Self::read, |r, buf| r.buf = buf)
    }

    /// The fields monitor reads, as a proto again.
    pub fn to_proto(&self) -> Label {
        Label {
            event_id: self.event_id().into(),
            label_key: self.label_key().into(),
            value: self.value,
            event_time_us: self.event_time_us,
            ingest_time_us: self.ingest_time_us,
            ..Default::default()
        }
    }

    fn read(payload: &[u8]) -> Option<Self> {
        let mut r = Self::default();
        let mut wire = Wire::new(payload);
        while let Some((tag, value)) = wire.next_field()? {
            match (tag, value) {
                (1, Value::Len(at)) => r.event_id = Span::text_of(payload, at)?,
                (2, Value::Len(at)) => r.label_key = Span::text_of(payload, at)?,
                (3, Value::Fixed64(bits)) => r.value = f64::from_bits(bits),
                (4, Value::Varint(v)) => r.event_time_us = v as i64,
                (5, Value::Varint(v)) => r.ingest_time_us = v as i64,
                (6, Value::Len(at)) => {
                    Span::text_of(payload, at)?;
                }
                (7, Value::Fixed64(_)) => {}
                (1..=7, _) => return None,
                _ => {}
            }
        }
        Some(r)
    }
}

impl From<Label> for LabelRecord {
    fn from(l: Label) -> Self {
        let mut b = Builder::default();
        let (event_id, label_key) = (b.put(l.event_id.as_bytes()), b.put(l.label_key.as_bytes()));
        Self {
            buf: Bytes::from(b.buf),
            event_id,
            label_key,
            value: l.value,
            event_time_us: l.event_time_us,
            ingest_time_us: l.ingest_time_us,
        }
    }
}

impl PartialEq for LabelRecord {
    fn eq(&self, o: &Self) -> bool {
        (
            self.event_id(),
            self.label_key(),
            self.value.to_bits(),
            self.event_time_us,
            self.ingest_time_us,
        ) == (
            o.event_id(),
            o.label_key(),
            o.value.to_bits(),
            o.event_time_us,
            o.ingest_time_us,
        )
    }
}

impl std::fmt::Debug for LabelRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelRecord")
            .field("event_id", &self.event_id())
            .field("label_key", &self.label_key())
            .field("value", &self.value)
            .field("event_time_us", &self.event_time_us)
            .field("ingest_time_us", &self.ingest_time_us)
            .finish()
    }
}

/// Field 8 of `FeatureVector`, `names`, as a length-delimited key byte.
const NAME_KEY: u8 = (8 << 3) | 2;

/// A `millrace.v1.FeatureVector` as monitor reads it: the names as their
/// run of wire fields (two vectors with the same features in the same order
/// have the same run, byte for byte) and the values as packed little-endian doubles.
#[derive(Clone, Default)]
pub struct VectorRecord {
    buf: Bytes,
    event_id: Span,
    names: Span,
    values: Span,
    pub event_time_us: i64,
    pub ingest_time_us: i64,
    pub feature_time_us: i64,
}

impl VectorRecord {
    pub fn event_id(&self) -> &str {
        self.event_id.text(&self.buf)
    }

    pub fn decode(payload: Bytes) -> Result<Self, prost::DecodeError> {
        decode_in_place::<_, FeatureVector>(payload, Self::read, |r, buf| r.buf = buf)
    }

    fn read(payload: &[u8]) -> Option<Self> {
        let mut r = Self::default();
        let mut names: Option<Range<usize>> = None;
        let mut wire = Wire::new(payload);
        let mut values_seen = false;
        loop {
            let start = wire.at;
            let Some((tag, value)) = wire.next_field()? else {
                break;
            };
            match (tag, value) {
                (1, Value::Len(at)) => r.event_id = Span::text_of(payload, at)?,
                (2 | 3 | 10, Value::Len(at)) => {
                    Span::text_of(payload, at)?;
                }
                (4, Value::Varint(_)) => {}
                (5, Value::Varint(v)) => r.event_time_us = v as i64,
                (6, Value::Varint(v)) => r.ingest_time_us = v as i64,
                (7, Value::Varint(v)) => r.feature_time_us = v as i64,
                (8, Value::Len(at)) => {
                    is_text(payload.get(at)?).then_some(())?;
                    // The names must be one run of consecutive fields.
                    match &mut names {
                        None => names = Some(start..wire.at),
                        Some(run) if run.end == start => run.end = wire.at,
                        Some(_) => return None,
                    }
                }
                // One packed field of whole doubles; anything else goes to prost.
                (9, Value::Len(at)) if !values_seen && at.len() % 8 == 0 => {
                    r.values = Span::of(at)?;
                    values_seen = true;
                }
                (1..=10, _) => return None,
                _ => {}
            }
        }
        if let Some(run) = names {
            r.names = Span::of(run)?;
        }
        Some(r)
    }

    /// The names' run of wire fields: equal runs mean the same features in the same order.
    pub fn names_wire(&self) -> &[u8] {
        self.names.bytes(&self.buf)
    }

    /// The feature names, in order.
    pub fn names(&self) -> Names<'_> {
        Names {
            wire: Wire::new(self.names_wire()),
        }
    }

    /// The values, in order.
    pub fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.values.bytes(&self.buf).chunks_exact(8).map(|chunk| {
            let mut le = [0u8; 8];
            le.copy_from_slice(chunk);
            f64::from_le_bytes(le)
        })
    }

    /// Each name with its value (as far as both go, like a zip of the two lists).
    pub fn features(&self) -> impl Iterator<Item = (&str, f64)> + '_ {
        self.names().zip(self.values())
    }
}

impl From<FeatureVector> for VectorRecord {
    fn from(v: FeatureVector) -> Self {
        let mut b = Builder::default();
        let event_id = b.put(v.event_id.as_bytes());
        let mut names = Vec::new();
        for name in &v.names {
            names.push(NAME_KEY);
            put_varint(name.len() as u64, &mut names);
            names.extend_from_slice(name.as_bytes());
        }
        let names = b.put(&names);
        let values: Vec<u8> = v.values.iter().flat_map(|x| x.to_le_bytes()).collect();
        let values = b.put(&values);
        Self {
            buf: Bytes::from(b.buf),
            event_id,
            names,
            values,
            event_time_us: v.event_time_us,
            ingest_time_us: v.ingest_time_us,
            feature_time_us: v.feature_time_us,
        }
    }
}

/// Equal by their fields (values by their bits), wherever they lie in their buffers.
impl PartialEq for VectorRecord {
    fn eq(&self, o: &Self) -> bool {
        (
            self.event_id(),
            self.names_wire(),
            self.values.bytes(&self.buf),
            (
                self.event_time_us,
                self.ingest_time_us,
                self.feature_time_us,
            ),
        ) == (
            o.event_id(),
            o.names_wire(),
            o.values.bytes(&o.buf),
            (o.event_time_us, o.ingest_time_us, o.feature_time_us),
        )
    }
}

impl std::fmt::Debug for VectorRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorRecord")
            .field("event_id", &self.event_id())
            .field("features", &self.features().collect::<Vec<_>>())
            .field("event_time_us", &self.event_time_us)
            .field("ingest_time_us", &self.ingest_time_us)
            .field("feature_time_us", &self.feature_time_us)
            .finish()
    }
}

/// The names of a [`VectorRecord`], read from their wire fields.
pub struct Names<'a> {
    wire: Wire<'a>,
}

impl<'a> Iterator for Names<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        // The run holds only name fields, checked when it was read.
        match self.wire.next_field() {
            Some(Some((_, Value::Len(at)))) => {
                let buf: &'a [u8] = self.wire.buf;
                buf.get(at)
                    .map(|b| std::str::from_utf8(b).unwrap_or_default())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn full_prediction() -> Prediction {
        Prediction {
            event_id: "p-1".into(),
            model: "fraud".into(),
            model_version: "7".into(),
            score: 0.625,
            predicted_positive: true,
            entity_key: "customer-1".into(),
            event_time_us: 1_000_001,
            ingest_time_us: -5,
            predict_time_us: 3_000_003,
            label_key: "k-1".into(),
        }
    }

    fn full_label() -> Label {
        Label {
            event_id: "l-1".into(),
            label_key: "k-1".into(),
            value: 1.0,
            event_time_us: 4_000_004,
            ingest_time_us: 5_000_005,
            event_type: "outcome".into(),
            observed: 42.5,
        }
    }

    fn full_vector() -> FeatureVector {
        FeatureVector {
            event_id: "v-1".into(),
            event_type: "order".into(),
            entity_key: "customer-1".into(),
            partition: 3,
            event_time_us: 1_000_001,
            ingest_time_us: 2_000_002,
            feature_time_us: 2_500_000,
            names: vec!["amount".into(), "hour".into(), "é".into()],
            values: vec![1.5, -2.0, f64::NAN],
            label_key: "k-1".into(),
        }
    }

    fn fast<T>(
        decode: fn(Bytes) -> Result<T, prost::DecodeError>,
        read: fn(&[u8]) -> Option<T>,
        m: &impl prost::Message,
    ) -> Option<T> {
        let bytes = m.encode_to_vec();
        read(&bytes)?;
        decode(Bytes::from(bytes)).ok()
    }

    #[test]
    fn each_source_decodes_as_its_own_record() {
        let kinds: Vec<StreamKind> = sources().iter().map(|s| s.stream).collect();
        assert_eq!(
            kinds,
            [
                StreamKind::Predictions,
                StreamKind::Labels,
                StreamKind::Features
            ]
        );
        let (p, l, v) = (full_prediction(), full_label(), full_vector());
        let cases = [
            (
                0,
                p.encode_to_vec(),
                MonitorInput::Prediction(p.clone().into()),
            ),
            (1, l.encode_to_vec(), MonitorInput::Label(l.clone().into())),
            (
                2,
                v.encode_to_vec(),
                MonitorInput::Features(v.clone().into()),
            ),
        ];
        for (source, bytes, expected) in cases {
            let got = MonitorInput::decode(source, bytes.into()).expect("decodes");
            assert_eq!(got.event_id(), expected.event_id());
            // Equal field by field (a NaN value by its bits).
            assert_eq!(got, expected);
        }
        assert!(MonitorInput::decode(0, vec![0xff, 0xff].into()).is_err());
    }

    #[test]
    fn the_fast_path_reads_what_prost_writes() {
        let p = fast(
            PredictionRecord::decode,
            PredictionRecord::read,
            &full_prediction(),
        )
        .expect("fast path");
        assert_eq!(p, PredictionRecord::from(full_prediction()));
        assert_eq!(p.ingest_time_us, -5, "negative int64 as ten varint bytes");
        let l = fast(LabelRecord::decode, LabelRecord::read, &full_label()).expect("fast path");
        assert_eq!(l, LabelRecord::from(full_label()));
        let v = fast(VectorRecord::decode, VectorRecord::read, &full_vector()).expect("fast path");
        let names: Vec<&str> = v.names().collect();
        assert_eq!(names, ["amount", "hour", "é"]);
        let features: Vec<(&str, f64)> = v.features().take(2).collect();
        assert_eq!(features, [("amount", 1.5), ("hour", -2.0)]);
        assert_eq!(
            v.names_wire(),
            VectorRecord::from(full_vector()).names_wire()
        );
        assert_eq!(v.feature_time_us, 2_500_000);
        // Defaults are left out on the wire and read as defaults.
        let empty = fast(
            VectorRecord::decode,
            VectorRecord::read,
            &FeatureVector::default(),
        )
        .expect("fast path");
        assert_eq!(empty, VectorRecord::default());
        assert_eq!(empty.features().count(), 0);
    }

    #[test]
    fn what_the_fast_path_leaves_goes_through_prost() {
        // Unpacked values (another encoder's choice): prost reads them.
        let mut unpacked = Vec::new();
        for x in [1.0f64, 2.0] {
            unpacked.push((9 << 3) | 1);
            unpacked.extend_from_slice(&x.to_le_bytes());
        }
        assert!(VectorRecord::read(&unpacked).is_none());
        let v = VectorRecord::decode(unpacked.into()).expect("prost reads it");
        assert_eq!(v.values().collect::<Vec<_>>(), [1.0, 2.0]);
        // Names split by another field: prost gathers them.
        let mut split = FeatureVector {
            names: vec!["a".into()],
            ..Default::default()
        }
        .encode_to_vec();
        split.extend(
            FeatureVector {
                event_time_us: 9,
                names: vec!["b".into()],
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let v = VectorRecord::decode(split.into()).expect("prost reads it");
        assert_eq!(v.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(v.event_time_us, 9);
        // Invalid UTF-8 and a wrong wire type are refused, as prost refuses them.
        let bad_text = [(2 << 3) | 2, 1, 0xff];
        assert!(PredictionRecord::decode(Bytes::copy_from_slice(&bad_text)).is_err());
        let wrong_type = [(4 << 3), 1];
        assert!(PredictionRecord::decode(Bytes::copy_from_slice(&wrong_type)).is_err());
        assert!(LabelRecord::decode(Bytes::from_static(&[0x0a, 0x05, b'a'])).is_err());
    }

    /// Random bytes: the fast path never accepts what prost refuses, and what
    /// both accept reads the same.
    #[test]
    fn the_fast_path_agrees_with_prost_on_arbitrary_bytes() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds = [
            full_prediction().encode_to_vec(),
            full_label().encode_to_vec(),
            full_vector().encode_to_vec(),
        ];
        for round in 0..20_000 {
            let mut bytes = seeds[round % 3].clone();
            // Flip, cut or splice a few bytes of a valid message.
            for _ in 0..1 + next() % 3 {
                match next() % 3 {
                    0 if !bytes.is_empty() => {
                        let i = (next() as usize) % bytes.len();
                        bytes[i] = next() as u8;
                    }
                    1 if !bytes.is_empty() => bytes.truncate((next() as usize) % bytes.len()),
                    _ => bytes.push(next() as u8),
                }
            }
            let payload = Bytes::from(bytes);
            match round % 3 {
                0 => {
                    let prost = <Prediction as prost::Message>::decode(payload.clone());
                    if let Some(mut fast) = PredictionRecord::read(&payload) {
                        fast.buf = payload.clone();
                        let prost = prost.expect("the fast path accepted what prost refuses");
                        assert_eq!(fast, PredictionRecord::from(prost), "round {round}");
                    }
                }
                1 => {
                    let prost = <Label as prost::Message>::decode(payload.clone());
                    if let Some(mut fast) = LabelRecord::read(&payload) {
                        fast.buf = payload.clone();
                        let prost = prost.expect("the fast path accepted what prost refuses");
                        assert_eq!(fast, LabelRecord::from(prost), "round {round}");
                    }
                }
                _ => {
                    let prost = <FeatureVector as prost::Message>::decode(payload.clone());
                    if let Some(mut fast) = VectorRecord::read(&payload) {
                        fast.buf = payload.clone();
                        let prost = prost.expect("the fast path accepted what prost refuses");
                        assert_eq!(fast, VectorRecord::from(prost), "round {round}");
                    }
                }
            }
        }
    }
}
