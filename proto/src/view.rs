//! An enriched event read in place ([`EnrichedView`]). Feature-state reads
//! every event the pipeline carries and needs a handful of its fields; built
//! as the generated [`EnrichedEvent`], each event cost a `String` and a
//! hash-map entry per field, about a tenth of feature-state's CPU.

use bytes::Bytes;
use prost::Message as _;

use crate::v1::value::Kind;
use crate::wire::{decode_in_place, Span, Value as Wired, Wire};
use crate::{EnrichedEvent, Event, Value};

/// A field's value, borrowed from where it lies. Null is no value at all:
/// readers take an `Option<ValueRef>`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Double(f64),
    Int(i64),
    Str(&'a str),
    Bool(bool),
    TimestampUs(i64),
}

impl<'a> ValueRef<'a> {
    /// The value of a generated [`Value`]; `None` for null.
    pub fn of(value: &'a Value) -> Option<Self> {
        Some(match value.kind.as_ref()? {
            Kind::DoubleValue(v) => Self::Double(*v),
            Kind::IntValue(v) => Self::Int(*v),
            Kind::StringValue(s) => Self::Str(s),
            Kind::BoolValue(b) => Self::Bool(*b),
            Kind::TimestampUs(t) => Self::TimestampUs(*t),
        })
    }

    /// The numeric reading, as [`Value::as_f64`] gives it (bools as 0/1, strings none).
    pub fn as_f64(self) -> Option<f64> {
        match self {
            Self::Double(v) => Some(v),
            Self::Int(v) | Self::TimestampUs(v) => Some(v as f64),
            Self::Bool(b) => Some(f64::from(u8::from(b))),
            Self::Str(_) => None,
        }
    }

    /// The value printed as a key (strings as they are, the rest by `Display`).
    pub fn key_text(self) -> String {
        match self {
            Self::Str(s) => s.to_string(),
            Self::Int(v) | Self::TimestampUs(v) => v.to_string(),
            Self::Bool(b) => b.to_string(),
            Self::Double(d) => d.to_string(),
        }
    }

    pub fn to_value(self) -> Value {
        match self {
            Self::Double(v) => Value::double(v),
            Self::Int(v) => Value::int(v),
            Self::Str(s) => Value::string(s),
            Self::Bool(b) => Value::bool(b),
            Self::TimestampUs(t) => Value::timestamp_us(t),
        }
    }
}

/// A value as it lies in the buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
enum Slot {
    #[default]
    Null,
    Double(f64),
    Int(i64),
    Str(Span),
    Bool(bool),
    TimestampUs(i64),
}

impl Slot {
    fn of(value: &Value, b: &mut Builder) -> Self {
        match &value.kind {
            None => Self::Null,
            Some(Kind::DoubleValue(v)) => Self::Double(*v),
            Some(Kind::IntValue(v)) => Self::Int(*v),
            Some(Kind::StringValue(s)) => Self::Str(b.put(s)),
            Some(Kind::BoolValue(v)) => Self::Bool(*v),
            Some(Kind::TimestampUs(v)) => Self::TimestampUs(*v),
        }
    }

    fn get(self, buf: &[u8]) -> Option<ValueRef<'_>> {
        Some(match self {
            Self::Null => return None,
            Self::Double(v) => ValueRef::Double(v),
            Self::Int(v) => ValueRef::Int(v),
            Self::Str(s) => ValueRef::Str(s.text(buf)),
            Self::Bool(v) => ValueRef::Bool(v),
            Self::TimestampUs(v) => ValueRef::TimestampUs(v),
        })
    }
}

/// One map entry: a field's name and value.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    name: Span,
    value: Slot,
}

/// Where the embedded [`Event`]'s fields lie.
#[derive(Debug, Clone, Default, PartialEq)]
struct EventAt {
    event_id: Span,
    kind: Span,
    schema_version: u32,
    key: Span,
    event_time_us: i64,
    ingest_time_us: i64,
    partition: u32,
    /// Its map's entries are `entries[..fields_end]`.
    fields_end: usize,
}

/// A `millrace.v1.EnrichedEvent` over its received buffer: one reference to
/// it, and where each field lies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnrichedView {
    buf: Bytes,
    event_id: Span,
    event: Option<EventAt>,
    /// The event's fields, then the joined values.
    entries: Vec<Entry>,
    enrich_time_us: i64,
}

impl EnrichedView {
    /// Reads the canonical encoding in place; anything else through prost.
    pub fn decode(payload: Bytes) -> Result<Self, prost::DecodeError> {
        decode_in_place::<_, EnrichedEvent>(payload, Self::read, |v, buf| v.buf = buf)
    }

    pub fn event_id(&self) -> &str {
        self.event_id.text(&self.buf)
    }

    pub fn event(&self) -> Option<EventRef<'_>> {
        let at = self.event.as_ref()?;
        Some(EventRef {
            buf: &self.buf,
            at,
            fields: self.entries.get(..at.fields_end).unwrap_or_default(),
        })
    }

    /// The values enrich joined onto the event.
    pub fn joined(&self) -> Fields<'_> {
        let from = self.event.as_ref().map_or(0, |e| e.fields_end);
        Fields {
            buf: &self.buf,
            entries: self.entries.get(from..).unwrap_or_default(),
        }
    }

    pub fn enrich_time_us(&self) -> i64 {
        self.enrich_time_us
    }

    /// A field as the pipeline's rules name it: the event's own (null
    /// included), else the joined value.
    pub fn field(&self, name: &str) -> Option<ValueRef<'_>> {
        match self.event().and_then(|e| e.fields().entry(name)) {
            Some(own) => own,
            None => self.joined().get(name),
        }
    }

    /// The generated message with the same contents.
    pub fn to_message(&self) -> EnrichedEvent {
        let fields = |f: Fields<'_>| {
            f.iter()
                .map(|(name, v)| {
                    let value = v.map_or_else(Value::default, ValueRef::to_value);
                    (name.to_string(), value)
                })
                .collect()
        };
        EnrichedEvent {
            event_id: self.event_id().to_string(),
            event: self.event().map(|e| Event {
                event_id: e.event_id().to_string(),
                r#type: e.r#type().to_string(),
                schema_version: e.schema_version(),
                key: e.key().to_string(),
                event_time_us: e.event_time_us(),
                ingest_time_us: e.ingest_time_us(),
                fields: fields(e.fields()),
                partition: e.partition(),
            }),
            joined: fields(self.joined()),
            enrich_time_us: self.enrich_time_us,
        }
    }

    /// The fast path: what prost writes, the event once and before the joined
    /// values (other fields in any order). `None` sends the record to prost.
    fn read(buf: &[u8]) -> Option<Self> {
        let mut view = Self::default();
        let mut wire = Wire::new(buf);
        while let Some((tag, value)) = wire.next_field()? {
            match (tag, value) {
                (1, Wired::Len(at)) => view.event_id = Span::text_of(buf, at)?,
                (2, Wired::Len(at)) if view.event.is_none() && view.entries.is_empty() => {
                    view.event = Some(read_event(buf, at, &mut view.entries)?);
                }
                (3, Wired::Len(at)) => view.entries.push(read_entry(buf, at)?),
                (4, Wired::Varint(v)) => view.enrich_time_us = v as i64,
                (1..=4, _) => return None,
                _ => {}
            }
        }
        Some(view)
    }
}

/// The embedded event at `at` in `buf`; its map entries go to `entries`.
fn read_event(buf: &[u8], at: std::ops::Range<usize>, entries: &mut Vec<Entry>) -> Option<EventAt> {
    let mut e = EventAt::default();
    let base = at.start;
    let mut wire = Wire::new(buf.get(at)?);
    while let Some((tag, value)) = wire.next_field()? {
        let text = |r: std::ops::Range<usize>| Span::text_of(buf, r.start + base..r.end + base);
        match (tag, value) {
            (1, Wired::Len(r)) => e.event_id = text(r)?,
            (2, Wired::Len(r)) => e.kind = text(r)?,
            (3, Wired::Varint(v)) => e.schema_version = v as u32,
            (4, Wired::Len(r)) => e.key = text(r)?,
            (5, Wired::Varint(v)) => e.event_time_us = v as i64,
            (6, Wired::Varint(v)) => e.ingest_time_us = v as i64,
            (7, Wired::Len(r)) => entries.push(read_entry(buf, r.start + base..r.end + base)?),
            (8, Wired::Varint(v)) => e.partition = v as u32,
            (1..=8, _) => return None,
            _ => {}
        }
    }
    e.fields_end = entries.len();
    Some(e)
}

/// A `map<string, Value>` entry at `at` in `buf`: a missing key is empty, a missing value null.
fn read_entry(buf: &[u8], at: std::ops::Range<usize>) -> Option<Entry> {
    let base = at.start;
    let mut entry = Entry {
        name: Span::of(base..base)?,
        value: Slot::Null,
    };
    let mut wire = Wire::new(buf.get(at)?);
    while let Some((tag, value)) = wire.next_field()? {
        match (tag, value) {
            (1, Wired::Len(r)) => entry.name = Span::text_of(buf, r.start + base..r.end + base)?,
            (2, Wired::Len(r)) => entry.value = read_value(buf, r.start + base..r.end + base)?,
            (1 | 2, _) => return None,
            _ => {}
        }
    }
    Some(entry)
}

/// A `Value` at `at` in `buf`: the last member of its oneof, as prost keeps.
fn read_value(buf: &[u8], at: std::ops::Range<usize>) -> Option<Slot> {
    let base = at.start;
    let mut slot = Slot::Null;
    let mut wire = Wire::new(buf.get(at)?);
    while let Some((tag, value)) = wire.next_field()? {
        slot = match (tag, value) {
            (1, Wired::Fixed64(bits)) => Slot::Double(f64::from_bits(bits)),
            (2, Wired::Varint(v)) => Slot::Int(v as i64),
            (3, Wired::Len(r)) => Slot::Str(Span::text_of(buf, r.start + base..r.end + base)?),
            (4, Wired::Varint(v)) => Slot::Bool(v != 0),
            (5, Wired::Varint(v)) => Slot::TimestampUs(v as i64),
            (1..=5, _) => return None,
            _ => slot,
        };
    }
    Some(slot)
}

impl From<EnrichedEvent> for EnrichedView {
    fn from(m: EnrichedEvent) -> Self {
        Self::from(&m)
    }
}

impl From<&EnrichedEvent> for EnrichedView {
    /// The view of a generated message, its text laid out in a buffer of its own.
    fn from(m: &EnrichedEvent) -> Self {
        let mut b = Builder::default();
        let mut entries = Vec::new();
        let event_id = b.put(&m.event_id);
        let event = m.event.as_ref().map(|e| b.put_event(e, &mut entries));
        b.put_map(&m.joined, &mut entries);
        Self {
            buf: Bytes::from(b.0),
            event_id,
            event,
            entries,
            enrich_time_us: m.enrich_time_us,
        }
    }
}

/// The buffer of a view made from a generated message.
#[derive(Default)]
struct Builder(Vec<u8>);

impl Builder {
    fn put(&mut self, text: &str) -> Span {
        let start = self.0.len();
        self.0.extend_from_slice(text.as_bytes());
        // A message held in memory, far below 4 GiB.
        Span::of(start..self.0.len()).unwrap_or_default()
    }

    fn put_map(&mut self, map: &std::collections::HashMap<String, Value>, to: &mut Vec<Entry>) {
        for (name, value) in map {
            let name = self.put(name);
            let value = Slot::of(value, self);
            to.push(Entry { name, value });
        }
    }

    /// The event's text, and its fields appended to `to` (which holds nothing else yet).
    fn put_event(&mut self, e: &Event, to: &mut Vec<Entry>) -> EventAt {
        let mut at = EventAt {
            event_id: self.put(&e.event_id),
            kind: self.put(&e.r#type),
            schema_version: e.schema_version,
            key: self.put(&e.key),
            event_time_us: e.event_time_us,
            ingest_time_us: e.ingest_time_us,
            partition: e.partition,
            fields_end: 0,
        };
        self.put_map(&e.fields, to);
        at.fields_end = to.len();
        at
    }
}

/// A `millrace.v1.Event` over its received buffer, as enrich reads EVENTS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventView {
    /// The bytes as received: what enrich embeds and a dead letter carries.
    raw: Bytes,
    /// Where the spans point: `raw`, unless prost had to read it.
    buf: Bytes,
    at: EventAt,
    entries: Vec<Entry>,
}

impl EventView {
    /// Reads the canonical encoding in place; anything else through prost.
    pub fn decode(payload: Bytes) -> Result<Self, prost::DecodeError> {
        let mut entries = Vec::new();
        match read_event(&payload, 0..payload.len(), &mut entries) {
            Some(at) => Ok(Self {
                raw: payload.clone(),
                buf: payload,
                at,
                entries,
            }),
            None => {
                let mut view = Self::from(&Event::decode(payload.clone())?);
                view.raw = payload;
                Ok(view)
            }
        }
    }

    pub fn event(&self) -> EventRef<'_> {
        EventRef {
            buf: &self.buf,
            at: &self.at,
            fields: &self.entries,
        }
    }

    /// The bytes as received.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
}

impl From<&Event> for EventView {
    /// The view of a generated message; `raw` is its encoding.
    fn from(e: &Event) -> Self {
        let mut b = Builder::default();
        let mut entries = Vec::new();
        let at = b.put_event(e, &mut entries);
        Self {
            raw: Bytes::from(e.encode_to_vec()),
            buf: Bytes::from(b.0),
            at,
            entries,
        }
    }
}

/// An [`Event`] read in place: an [`EventView`]'s, or the one an [`EnrichedView`] embeds.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    buf: &'a [u8],
    at: &'a EventAt,
    fields: &'a [Entry],
}

impl<'a> EventRef<'a> {
    pub fn event_id(&self) -> &'a str {
        self.at.event_id.text(self.buf)
    }
    pub fn r#type(&self) -> &'a str {
        self.at.kind.text(self.buf)
    }
    pub fn key(&self) -> &'a str {
        self.at.key.text(self.buf)
    }
    pub fn schema_version(&self) -> u32 {
        self.at.schema_version
    }
    pub fn event_time_us(&self) -> i64 {
        self.at.event_time_us
    }
    pub fn ingest_time_us(&self) -> i64 {
        self.at.ingest_time_us
    }
    pub fn partition(&self) -> u32 {
        self.at.partition
    }
    pub fn fields(&self) -> Fields<'a> {
        Fields {
            buf: self.buf,
            entries: self.fields,
        }
    }
}

/// A `map<string, Value>` read in place.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    buf: &'a [u8],
    entries: &'a [Entry],
}

impl<'a> Fields<'a> {
    /// The entry of that name (the last, as a decoded map keeps): `Some(None)` when it is null.
    pub fn entry(&self, name: &str) -> Option<Option<ValueRef<'a>>> {
        let buf = self.buf;
        self.entries
            .iter()
            .rev()
            .find(|e| e.name.bytes(buf) == name.as_bytes())
            .map(|e| e.value.get(buf))
    }

    /// The value of that name; `None` when absent or null.
    pub fn get(&self, name: &str) -> Option<ValueRef<'a>> {
        self.entry(name).flatten()
    }

    /// Every entry in wire order (a name may repeat; the last one counts).
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Option<ValueRef<'a>>)> + 'a {
        let buf = self.buf;
        self.entries
            .iter()
            .map(move |e| (e.name.text(buf), e.value.get(buf)))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Appends a length-delimited field, for tests that write non-canonical records.
#[cfg(test)]
fn put_len(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    use crate::wire::put_varint;
    put_varint(u64::from(tag << 3 | 2), out);
    put_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::put_varint;

    fn enriched() -> EnrichedEvent {
        EnrichedEvent {
            event_id: "e-1".into(),
            event: Some(Event {
                event_id: "e-1".into(),
                r#type: "flight".into(),
                schema_version: 2,
                key: "N14228".into(),
                event_time_us: 1_357_020_000_000_000,
                ingest_time_us: -5,
                fields: [
                    ("origin".to_string(), Value::string("EWR")),
                    ("distance".to_string(), Value::double(1400.0)),
                    ("hour".to_string(), Value::int(5)),
                    ("cancelled".to_string(), Value::bool(false)),
                    ("sched".to_string(), Value::timestamp_us(-7)),
                    ("tailnum".to_string(), Value { kind: None }),
                    ("é".to_string(), Value::string("ü")),
                ]
                .into(),
                partition: 3,
            }),
            joined: [
                ("tailnum".to_string(), Value::string("N1")),
                ("seats".to_string(), Value::int(180)),
                ("name".to_string(), Value::string("")),
            ]
            .into(),
            enrich_time_us: 9,
        }
    }

    #[test]
    fn the_view_of_prosts_encoding_holds_what_prost_decodes() {
        let m = enriched();
        let view = EnrichedView::decode(Bytes::from(m.encode_to_vec())).expect("decodes");
        assert_eq!(view.to_message(), m);
        assert_eq!(view.event_id(), "e-1");
        let e = view.event().expect("an event");
        assert_eq!(
            (e.r#type(), e.key(), e.partition()),
            ("flight", "N14228", 3)
        );
        assert_eq!(e.fields().get("é"), Some(ValueRef::Str("ü")));
        assert_eq!(e.fields().get("sched"), Some(ValueRef::TimestampUs(-7)));
        // The event's own null shadows the joined value, as the rules read fields.
        assert_eq!(e.fields().entry("tailnum"), Some(None));
        assert_eq!(view.field("tailnum"), None);
        assert_eq!(view.field("seats"), Some(ValueRef::Int(180)));
        assert_eq!(view.field("name"), Some(ValueRef::Str("")));
        assert_eq!(view.field("missing"), None);
        assert_eq!(view.joined().len(), 3);
    }

    #[test]
    fn records_off_the_fast_path_read_as_prost_reads_them() {
        let m = enriched();
        // Joined values before the event, and the event id written twice (the last counts).
        let mut out = Vec::new();
        put_len(1, b"first", &mut out);
        for (name, value) in &m.joined {
            let mut entry = Vec::new();
            put_len(1, name.as_bytes(), &mut entry);
            put_len(2, &value.encode_to_vec(), &mut entry);
            put_len(3, &entry, &mut out);
        }
        let event = m.event.as_ref().expect("an event").encode_to_vec();
        put_len(2, &event, &mut out);
        put_len(1, b"e-1", &mut out);
        put_varint(4 << 3, &mut out);
        put_varint(9, &mut out);
        let view = EnrichedView::decode(Bytes::from(out)).expect("decodes");
        assert_eq!(view.to_message(), m);
        assert_eq!(view.field("seats"), Some(ValueRef::Int(180)));
    }

    #[test]
    fn an_event_is_read_in_place_and_keeps_the_bytes_it_came_in() {
        let m = enriched().event.expect("an event");
        let raw = Bytes::from(m.encode_to_vec());
        let view = EventView::decode(raw.clone()).expect("decodes");
        assert_eq!(view.raw(), &raw);
        assert_eq!(view, EventView::decode(raw.clone()).expect("decodes"));
        let e = view.event();
        assert_eq!(
            (e.event_id(), e.schema_version(), e.ingest_time_us()),
            ("e-1", 2, -5)
        );
        assert_eq!(e.fields().get("hour"), Some(ValueRef::Int(5)));
        assert_eq!(e.fields().entry("tailnum"), Some(None));

        // Fields out of number order and an id sent twice: the last id counts, as in prost.
        let mut out = Vec::new();
        put_len(2, b"flight", &mut out);
        put_len(1, b"e-1", &mut out);
        put_len(1, b"e-2", &mut out);
        put_varint(3 << 3, &mut out);
        put_varint(1, &mut out);
        put_varint(3 << 3 | 2, &mut out);
        let view = EventView::decode(Bytes::from(out.clone()));
        assert!(
            view.is_err(),
            "a varint field sent length-delimited is refused, as by prost"
        );
        out.truncate(out.len() - 1);
        let view = EventView::decode(Bytes::from(out.clone())).expect("decodes");
        assert_eq!(
            (view.event().event_id(), view.event().r#type()),
            ("e-2", "flight")
        );
        assert_eq!(view.raw().as_ref(), &out[..]);
    }

    #[test]
    fn a_repeated_map_key_keeps_its_last_value_and_bad_text_is_refused() {
        let entry = |name: &str, value: Value| {
            let mut e = Vec::new();
            put_len(1, name.as_bytes(), &mut e);
            put_len(2, &value.encode_to_vec(), &mut e);
            e
        };
        let mut out = Vec::new();
        put_len(3, &entry("x", Value::int(1)), &mut out);
        put_len(3, &entry("x", Value::int(2)), &mut out);
        let view = EnrichedView::decode(Bytes::from(out.clone())).expect("decodes");
        assert_eq!(view.field("x"), Some(ValueRef::Int(2)));
        assert_eq!(
            view.to_message(),
            EnrichedEvent::decode(&out[..]).expect("prost")
        );

        let mut bad = Vec::new();
        put_len(1, &[0xff, 0xfe], &mut bad);
        let ours = EnrichedView::decode(Bytes::from(bad.clone())).expect_err("not UTF-8");
        let prost = EnrichedEvent::decode(&bad[..]).expect_err("not UTF-8");
        assert_eq!(ours.to_string(), prost.to_string());
        assert!(EnrichedView::decode(Bytes::from_static(&[0x0a, 0x05, b'a'])).is_err());
    }
}
