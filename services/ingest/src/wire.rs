//! An `Event` read where it lies, and stored as it came.
//!
//! [`EventView::parse`] reads a protobuf `millrace.v1.Event` without copying
//! or allocating its strings: validation needs to look at the fields, not to
//! own them. It accepts only what prost decodes, to the same values (the last
//! occurrence of a scalar wins, a map key seen twice keeps its last value, a
//! `Value` seen twice merges); anything it does not recognise as plainly
//! valid (groups, a wire type that does not match the field, a varint of more
//! than 10 bytes, invalid UTF-8) gives `None`, and the caller decodes with
//! prost instead, which then either errs or decodes it.
//!
//! [`Stamps::append_to`] then stores the producer's bytes as they are, with
//! the fields ingest sets appended: protobuf merges concatenated messages, the
//! last value of a scalar field winning, so the stored message decodes to the
//! event with ingest's fields set, without decoding and encoding it again.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};

/// A field's value as the event carries it; `Null` is a `Value` without a kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue<'a> {
    Null,
    Double(f64),
    Int(i64),
    Str(&'a str),
    Bool(bool),
    Timestamp(i64),
}

impl<'a> FieldValue<'a> {
    /// The view of a decoded `Value`.
    pub fn of(value: &'a millrace_proto::Value) -> Self {
        use millrace_proto::value::Kind;
        match &value.kind {
            None => Self::Null,
            Some(Kind::DoubleValue(x)) => Self::Double(*x),
            Some(Kind::IntValue(i)) => Self::Int(*i),
            Some(Kind::StringValue(s)) => Self::Str(s),
            Some(Kind::BoolValue(b)) => Self::Bool(*b),
            Some(Kind::TimestampUs(t)) => Self::Timestamp(*t),
        }
    }

    /// The value printed as a key, exactly as `Value::key_text` prints it.
    pub fn key_text(&self) -> Option<Cow<'a, str>> {
        Some(match *self {
            Self::Null => return None,
            Self::Str(s) => Cow::Borrowed(s),
            Self::Int(i) | Self::Timestamp(i) => Cow::Owned(i.to_string()),
            Self::Bool(b) => Cow::Owned(b.to_string()),
            Self::Double(d) => Cow::Owned(d.to_string()),
        })
    }
}

impl fmt::Display for FieldValue<'_> {
    /// The value in a rejection message: its type, then the value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Str(s) if s.len() > 40 => {
                write!(f, "string \"{}…\"", &s[..s.floor_char_boundary(40)])
            }
            Self::Str(s) => write!(f, "string \"{s}\""),
            Self::Double(x) => write!(f, "double {x}"),
            Self::Int(i) => write!(f, "int {i}"),
            Self::Bool(b) => write!(f, "bool {b}"),
            Self::Timestamp(t) => write!(f, "timestamp {t}"),
            Self::Null => f.write_str("null"),
        }
    }
}

/// An `Event`, borrowed from its encoding (or from a decoded `Event`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventView<'a> {
    pub event_id: &'a str,
    pub r#type: &'a str,
    pub schema_version: u32,
    pub key: &'a str,
    pub event_time_us: i64,
    pub ingest_time_us: i64,
    pub partition: u32,
    /// The `fields` map, each name once, in the order first seen.
    pub fields: Vec<(&'a str, FieldValue<'a>)>,
}

impl<'a> EventView<'a> {
    /// The view of a decoded `Event`.
    pub fn of(event: &'a millrace_proto::Event) -> Self {
        Self {
            event_id: &event.event_id,
            r#type: &event.r#type,
            schema_version: event.schema_version,
            key: &event.key,
            event_time_us: event.event_time_us,
            ingest_time_us: event.ingest_time_us,
            partition: event.partition,
            fields: event
                .fields
                .iter()
                .map(|(k, v)| (k.as_str(), FieldValue::of(v)))
                .collect(),
        }
    }

    pub fn field(&self, name: &str) -> Option<FieldValue<'a>> {
        self.fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    /// Reads an encoded `Event`; `None` when it is not plainly valid (see the module).
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let mut view = Self {
            fields: Vec::with_capacity(16),
            ..Self::default()
        };
        let mut r = Reader { buf: bytes };
        while !r.buf.is_empty() {
            let (tag, wire) = r.key()?;
            match (tag, wire) {
                (1, LEN) => view.event_id = r.string()?,
                (2, LEN) => view.r#type = r.string()?,
                // uint32 takes the varint's low 32 bits, as prost does.
                (3, VARINT) => view.schema_version = r.varint()? as u32,
                (4, LEN) => view.key = r.string()?,
                (5, VARINT) => view.event_time_us = r.varint()? as i64,
                (6, VARINT) => view.ingest_time_us = r.varint()? as i64,
                (7, LEN) => {
                    let (name, value) = map_entry(r.bytes()?)?;
                    match view.fields.iter_mut().find(|(n, _)| *n == name) {
                        Some(slot) => slot.1 = value,
                        None => view.fields.push((name, value)),
                    }
                }
                (8, VARINT) => view.partition = r.varint()? as u32,
                (1..=8, _) => return None,
                _ => r.skip(wire)?,
            }
        }
        Some(view)
    }
}

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

/// One `fields` entry: key (1) and `Value` (2), each defaulted when absent.
fn map_entry(bytes: &[u8]) -> Option<(&str, FieldValue<'_>)> {
    let mut r = Reader { buf: bytes };
    let (mut name, mut value) = ("", FieldValue::Null);
    while !r.buf.is_empty() {
        let (tag, wire) = r.key()?;
        match (tag, wire) {
            (1, LEN) => name = r.string()?,
            // A message seen twice merges into the first.
            (2, LEN) => merge_value(r.bytes()?, &mut value)?,
            (1 | 2, _) => return None,
            _ => r.skip(wire)?,
        }
    }
    Some((name, value))
}

/// Merges an encoded `Value` into `value`: the last field of its oneof wins.
fn merge_value<'a>(bytes: &'a [u8], value: &mut FieldValue<'a>) -> Option<()> {
    let mut r = Reader { buf: bytes };
    while !r.buf.is_empty() {
        let (tag, wire) = r.key()?;
        *value = match (tag, wire) {
            (1, I64) => FieldValue::Double(f64::from_bits(u64::from_le_bytes(r.fixed()?))),
            (2, VARINT) => FieldValue::Int(r.varint()? as i64),
            (3, LEN) => FieldValue::Str(r.string()?),
            (4, VARINT) => FieldValue::Bool(r.varint()? != 0),
            (5, VARINT) => FieldValue::Timestamp(r.varint()? as i64),
            (1..=5, _) => return None,
            _ => {
                r.skip(wire)?;
                continue;
            }
        };
    }
    Some(())
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A varint as prost reads it: at most 10 bytes, the 10th at most 1.
    fn varint(&mut self) -> Option<u64> {
        // Keys, lengths and small numbers: one byte.
        if let Some((&byte, rest)) = self.buf.split_first() {
            if byte < 0x80 {
                self.buf = rest;
                return Some(u64::from(byte));
            }
        }
        let mut value = 0u64;
        for (i, &byte) in self.buf.iter().enumerate().take(10) {
            if i == 9 && byte > 1 {
                return None;
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                self.buf = &self.buf[i + 1..];
                return Some(value);
            }
        }
        None
    }

    /// A field key: tag (1..=u32::MAX >> 3) and wire type.
    fn key(&mut self) -> Option<(u32, u8)> {
        let key = self.varint()?;
        let key = u32::try_from(key).ok()?;
        let tag = key >> 3;
        (tag != 0).then_some((tag, (key & 7) as u8))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > self.buf.len() {
            return None;
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Some(head)
    }

    fn string(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }

    fn fixed<const N: usize>(&mut self) -> Option<[u8; N]> {
        let head = self.buf.get(..N)?.try_into().ok()?;
        self.buf = &self.buf[N..];
        Some(head)
    }

    fn skip(&mut self, wire: u8) -> Option<()> {
        match wire {
            VARINT => self.varint().map(drop),
            I64 => self.fixed::<8>().map(drop),
            LEN => self.bytes().map(drop),
            I32 => self.fixed::<4>().map(drop),
            // Groups (3, 4) and the undefined wire types: prost's business.
            _ => None,
        }
    }
}

/// What ingest sets on an accepted event. `None`: left as the producer sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stamps<'a> {
    pub r#type: Option<&'a str>,
    pub schema_version: Option<u32>,
    pub key: Option<&'a str>,
    pub event_time_us: Option<i64>,
    pub ingest_time_us: Option<i64>,
    pub partition: Option<u32>,
}

impl Stamps<'_> {
    /// `original` (an encoded `Event`) with these fields appended. Each is
    /// written even when it is the default value, so that it overrides
    /// whatever the producer sent.
    pub fn append_to(&self, original: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(original.len() + self.encoded_len());
        out.put_slice(original);
        if let Some(t) = self.r#type {
            put_string(2, t, &mut out);
        }
        if let Some(v) = self.schema_version {
            put_varint(3, u64::from(v), &mut out);
        }
        if let Some(k) = self.key {
            put_string(4, k, &mut out);
        }
        if let Some(t) = self.event_time_us {
            put_varint(5, t as u64, &mut out);
        }
        if let Some(t) = self.ingest_time_us {
            put_varint(6, t as u64, &mut out);
        }
        if let Some(p) = self.partition {
            put_varint(8, u64::from(p), &mut out);
        }
        out.freeze()
    }

    fn encoded_len(&self) -> usize {
        // A key is one byte for tags below 16; a varint at most 10.
        let strings = [self.r#type, self.key]
            .iter()
            .flatten()
            .map(|s| 1 + encoded_len_varint(s.len() as u64) + s.len())
            .sum::<usize>();
        strings + 6 * 11
    }
}

fn put_varint(tag: u32, value: u64, out: &mut BytesMut) {
    encode_key(tag, WireType::Varint, out);
    encode_varint(value, out);
}

fn put_string(tag: u32, value: &str, out: &mut BytesMut) {
    put_bytes(tag, value.as_bytes(), out);
}

fn put_bytes(tag: u32, value: &[u8], out: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(value.len() as u64, out);
    out.put_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::{Event, Value};
    use prost::Message as _;

    fn flight() -> Event {
        let fields = [
            ("flight_id", Value::string("2013-01-01-UA-1545")),
            ("carrier", Value::string("UA")),
            ("flight", Value::int(1545)),
            ("distance", Value::double(1400.5)),
            ("late", Value::bool(false)),
            ("sched_dep_time", Value::timestamp_us(1_357_034_400_000_000)),
            ("note", Value { kind: None }),
            ("negative", Value::int(-3)),
        ];
        Event {
            event_id: "fs-1".into(),
            r#type: "flight_scheduled".into(),
            schema_version: 0,
            key: String::new(),
            event_time_us: 1_357_032_600_000_000,
            ingest_time_us: 0,
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            partition: 0,
        }
    }

    fn sorted(mut view: EventView<'_>) -> EventView<'_> {
        view.fields.sort_by(|a, b| a.0.cmp(b.0));
        view
    }

    #[test]
    fn a_parsed_event_reads_as_prost_decodes_it() {
        let mut event = flight();
        event.key = "k".into();
        event.partition = 3;
        event.ingest_time_us = -7;
        event.schema_version = 2;
        let bytes = event.encode_to_vec();
        let parsed = EventView::parse(&bytes).expect("plainly valid");
        let decoded = Event::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(sorted(parsed), sorted(EventView::of(&decoded)));
        assert_eq!(
            EventView::parse(&bytes)
                .and_then(|v| v.field("flight"))
                .expect("a field"),
            FieldValue::Int(1545)
        );
    }

    /// Hand-written encodings with repeated fields, a repeated map key, a Value
    /// merged from two parts, unknown fields of every skippable wire type.
    #[test]
    fn repeats_and_unknown_fields_read_as_prost_reads_them() {
        let mut b = BytesMut::new();
        put_string(1, "first", &mut b);
        put_string(1, "e-9", &mut b);
        put_string(2, "t", &mut b);
        put_varint(3, (1u64 << 32) + 5, &mut b); // uint32: the low 32 bits
        put_varint(99, 12345, &mut b); // unknown varint
        encode_key(98, WireType::SixtyFourBit, &mut b);
        b.put_slice(&[1; 8]);
        encode_key(97, WireType::ThirtyTwoBit, &mut b);
        b.put_slice(&[2; 4]);
        put_string(96, "unknown bytes", &mut b);
        let entry = |name: &str, value: &[u8]| {
            let mut e = BytesMut::new();
            put_string(1, name, &mut e);
            put_bytes(2, value, &mut e);
            e
        };
        let int_value = Value::int(5).encode_to_vec();
        let string_value = Value::string("x").encode_to_vec();
        for e in [
            entry("a", &int_value),
            entry("b", &int_value),
            entry("a", &string_value), // `a` again: the last wins
        ] {
            put_bytes(7, &e, &mut b);
        }
        // One entry whose Value comes in two parts (merged) and an unknown field.
        let mut e = entry("c", &Value::double(1.0).encode_to_vec());
        put_bytes(2, &Value::bool(true).encode_to_vec(), &mut e);
        put_varint(5, 1, &mut e);
        put_bytes(7, &e, &mut b);
        // An entry without a value, and one without a key.
        let mut no_value = BytesMut::new();
        put_string(1, "d", &mut no_value);
        put_bytes(7, &no_value, &mut b);
        let mut no_key = BytesMut::new();
        put_bytes(2, &int_value, &mut no_key);
        put_bytes(7, &no_key, &mut b);
        put_varint(8, u64::MAX, &mut b);
        put_varint(5, u64::MAX, &mut b); // int64 -1

        let decoded = Event::decode(&b[..]).expect("prost decodes it");
        let parsed = EventView::parse(&b).expect("plainly valid");
        assert_eq!(sorted(parsed.clone()), sorted(EventView::of(&decoded)));
        assert_eq!(parsed.event_id, "e-9");
        assert_eq!(parsed.schema_version, 5);
        assert_eq!(parsed.field("a"), Some(FieldValue::Str("x")));
        assert_eq!(parsed.field("c"), Some(FieldValue::Bool(true)));
        assert_eq!(parsed.field("d"), Some(FieldValue::Null));
        assert_eq!(parsed.field(""), Some(FieldValue::Int(5)));
        assert_eq!(parsed.event_time_us, -1);
    }

    #[test]
    fn what_prost_refuses_or_that_is_not_plain_is_left_to_prost() {
        let good = flight().encode_to_vec();
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated", good[..good.len() - 3].to_vec()),
            ("length past the end", b"\x0a\xffnot protobuf".to_vec()),
            ("tag 0", vec![0x00, 0x01]),
            ("event_id as a varint", vec![0x08, 0x01]),
            ("a group", vec![0x0b, 0x0c]),
            ("wire type 7", vec![0x0f]),
            (
                "an 11-byte varint",
                [&[0x18][..], &[0xff; 10], &[0x01]].concat(),
            ),
            (
                "a 10th varint byte above 1",
                [&[0x18][..], &[0xff; 9], &[0x02]].concat(),
            ),
        ];
        let mut bad_utf8 = Vec::new();
        bad_utf8.extend_from_slice(&[0x0a, 0x02, 0xc3, 0x28]);
        cases.push(("invalid UTF-8", bad_utf8));
        for (name, bytes) in cases {
            assert!(EventView::parse(&bytes).is_none(), "{name} parsed");
        }
        // Refused by the view but decoded by prost: the caller falls back to prost.
        let mut group = good.clone();
        group.extend_from_slice(&[0x9b, 0x06, 0x9c, 0x06]); // an empty group, field 99
        assert!(EventView::parse(&group).is_none());
        assert!(Event::decode(group.as_slice()).is_ok());
    }

    #[test]
    fn appended_stamps_decode_to_the_re_encoded_event() {
        let original = flight();
        let bytes = original.encode_to_vec();
        // What ingest does to an accepted event it decoded and encoded again...
        let mut stamped = original.clone();
        stamped.schema_version = 1;
        stamped.key = "UA".into();
        stamped.ingest_time_us = 1_700_000_000_123_456;
        stamped.partition = 2;
        let re_encoded = stamped.encode_to_vec();
        // ... and the same as appended fields.
        let appended = Stamps {
            schema_version: Some(1),
            key: Some("UA"),
            ingest_time_us: Some(1_700_000_000_123_456),
            partition: Some(2),
            ..Stamps::default()
        }
        .append_to(&bytes);
        let from_appended = Event::decode(appended.clone()).expect("decodes");
        assert_eq!(
            from_appended,
            Event::decode(re_encoded.as_slice()).expect("decodes")
        );
        assert_eq!(from_appended, stamped);
        assert!(
            appended.starts_with(&bytes),
            "the producer's bytes come first"
        );
        // The view of the stored bytes agrees too.
        let view = EventView::parse(&appended).expect("plainly valid");
        assert_eq!(sorted(view), sorted(EventView::of(&stamped)));
    }

    #[test]
    fn stamps_override_what_the_producer_set_even_with_zero() {
        let mut sent = flight();
        sent.r#type = String::new();
        sent.partition = 3;
        sent.key = "theirs".into();
        sent.event_time_us = 0;
        sent.schema_version = 2;
        let appended = Stamps {
            r#type: Some("flight_scheduled"),
            schema_version: Some(2),
            key: Some(""),
            event_time_us: Some(0),
            ingest_time_us: Some(0),
            partition: Some(0),
        }
        .append_to(&sent.encode_to_vec());
        let stored = Event::decode(appended).expect("decodes");
        assert_eq!(
            (
                stored.r#type.as_str(),
                stored.key.as_str(),
                stored.partition,
                stored.event_time_us,
                stored.schema_version
            ),
            ("flight_scheduled", "", 0, 0, 2)
        );
        assert_eq!(stored.fields, sent.fields);
    }

    #[test]
    fn key_text_matches_the_proto_crates() {
        let values = [
            Value::string("abc"),
            Value::int(-42),
            Value::timestamp_us(1_357_034_400_000_000),
            Value::bool(true),
            Value::double(1.5),
            Value::double(2.0),
            Value::double(1e21),
            Value { kind: None },
        ];
        for v in &values {
            assert_eq!(
                FieldValue::of(v).key_text().map(Cow::into_owned),
                v.key_text(),
                "{v:?}"
            );
        }
    }
}
