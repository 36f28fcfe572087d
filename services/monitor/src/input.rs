//! What monitor reads: three streams through one chassis stage, each with its
//! own durable consumer, and the one message type the board takes from them.
//!
//! One stage (not three) is what makes monitor exactly-once: the chassis keeps
//! a single snapshot holding the board's whole state and, beside it, the last
//! sequence applied from each of the three streams, written as one record. On
//! a restart every stream resumes right after its own sequence in that record,
//! so no message is applied twice or skipped, whatever order the streams
//! interleaved in before the crash or interleave in on the replay.

use millrace_chassis::bus::StreamKind;
use millrace_chassis::stage::{Source, StageInput};
use millrace_proto::{FeatureVector, Label, Prediction};

/// The stage's snapshot key.
pub const SNAPSHOT_KEY: &str = "monitor";

/// The streams read, in the order [`MonitorInput::decode`] expects them.
pub fn sources() -> Vec<Source> {
    vec![
        // The name the single-stream monitor used: its consumer is taken over.
        Source::new(StreamKind::Predictions, "monitor"),
        Source::new(StreamKind::Labels, "monitor-labels"),
        Source::new(StreamKind::Features, "monitor-features"),
    ]
}

/// One message from any of the three streams.
#[derive(Debug, Clone, PartialEq)]
pub enum MonitorInput {
    Prediction(Prediction),
    Label(Label),
    Features(FeatureVector),
}

impl StageInput for MonitorInput {
    fn decode(source: usize, payload: bytes::Bytes) -> Result<Self, prost::DecodeError> {
        use prost::Message;
        Ok(match source {
            0 => Self::Prediction(<Prediction as Message>::decode(payload)?),
            1 => Self::Label(<Label as Message>::decode(payload)?),
            _ => Self::Features(<FeatureVector as Message>::decode(payload)?),
        })
    }

    fn event_id(&self) -> &str {
        match self {
            Self::Prediction(p) => &p.event_id,
            Self::Label(l) => &l.event_id,
            Self::Features(v) => &v.event_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn each_source_decodes_as_its_own_message() {
        let p = Prediction {
            event_id: "p".into(),
            score: 0.5,
            ..Default::default()
        };
        let l = Label {
            event_id: "l".into(),
            value: 1.0,
            ..Default::default()
        };
        let v = FeatureVector {
            event_id: "v".into(),
            names: vec!["x".into()],
            values: vec![2.0],
            ..Default::default()
        };
        let kinds: Vec<StreamKind> = sources().iter().map(|s| s.stream).collect();
        assert_eq!(
            kinds,
            [
                StreamKind::Predictions,
                StreamKind::Labels,
                StreamKind::Features
            ]
        );
        let cases = [
            (0, p.encode_to_vec(), MonitorInput::Prediction(p)),
            (1, l.encode_to_vec(), MonitorInput::Label(l)),
            (2, v.encode_to_vec(), MonitorInput::Features(v)),
        ];
        for (source, bytes, expected) in cases {
            let got = MonitorInput::decode(source, bytes.into()).expect("decodes");
            assert_eq!(got.event_id(), expected.event_id());
            assert_eq!(got, expected);
        }
        assert!(MonitorInput::decode(0, vec![0xff, 0xff].into()).is_err());
    }
}
