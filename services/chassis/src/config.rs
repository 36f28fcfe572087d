//! Configuration: the pipeline file (what the pipeline computes) and the
//! environment (where this process connects and listens). Each service reads
//! the part of the pipeline it needs; nothing here is passed around as maps of
//! strings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use millrace_proto::view::ValueRef;
use serde::{Deserialize, Serialize};

use crate::ChassisError;

/// The pipeline file: one TOML document shared by every service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub pipeline: PipelineMeta,
    #[serde(default)]
    pub streams: StreamSettings,
    #[serde(default)]
    pub events: BTreeMap<String, EventSchema>,
    #[serde(default)]
    pub features: Vec<FeatureDef>,
    pub model: ModelDef,
    /// How label events become labels; required when any event type is a label.
    pub label: Option<LabelRule>,
    /// What monitor watches and when it alerts (`[monitor]`); defaults when absent.
    #[serde(default)]
    pub monitor: MonitorSettings,
    #[serde(default)]
    pub ingest: IngestLimits,
    #[serde(default)]
    pub enrich: EnrichSettings,
    /// Event time and state bounds of feature-state (`[feature_state]`).
    #[serde(default)]
    pub feature_state: FeatureStateSettings,
}

/// What enrich does to each event: drop noise by rule, keep reference tables
/// fed by events, and join them onto the events that name them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichSettings {
    pub filters: Vec<FilterRule>,
    pub tables: Vec<TableDef>,
    pub joins: Vec<JoinDef>,
}

/// Drops an event (to the DLQ, counted under the rule's name) when `drop_when` matches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterRule {
    pub name: String,
    /// Event type the rule applies to; every type when absent.
    pub event: Option<String>,
    /// An expression in the [`crate::filter`] form.
    pub drop_when: String,
}

/// A reference table: rows are upserted by events of `source`, keyed by `key`.
/// A versioned table keeps each key's rows by event time for as-of joins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableDef {
    pub name: String,
    pub source: String,
    pub key: String,
    #[serde(default)]
    pub versioned: bool,
    /// Versions kept per key; the oldest go first.
    #[serde(default = "default_max_versions")]
    pub max_versions: usize,
}

fn default_max_versions() -> usize {
    10_000
}

/// Copies `fields` of the table row whose key is the event's `on` field (for a
/// versioned table: the latest row at or before the event's time) into the
/// event's joined values, named `prefix` + field.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinDef {
    pub event: String,
    pub table: String,
    pub on: String,
    pub fields: Vec<String>,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub on_missing: OnMissing,
    /// Values used by `on_missing = "default"`, by field name (without prefix).
    #[serde(default)]
    pub defaults: BTreeMap<String, Literal>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    /// Leave the joined fields absent.
    #[default]
    Null,
    /// Fill them from `defaults`.
    Default,
    /// Refuse the event to the DLQ.
    Reject,
}

/// A constant written in the pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Literal {
    Bool(bool),
    Int(i64),
    Double(f64),
    Text(String),
}

impl Literal {
    pub fn to_value(&self) -> millrace_proto::Value {
        match self {
            Self::Bool(b) => millrace_proto::Value::bool(*b),
            Self::Int(i) => millrace_proto::Value::int(*i),
            Self::Double(d) => millrace_proto::Value::double(*d),
            Self::Text(t) => millrace_proto::Value::string(t.clone()),
        }
    }
}

/// What one producer may send at once, and how much ingest holds before it
/// pushes back with `RESOURCE_EXHAUSTED`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestLimits {
    pub max_batch_records: usize,
    pub max_batch_bytes: usize,
    pub max_record_bytes: usize,
    /// Records taken in and not yet answered, across all producers.
    pub max_pending_records: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_batch_records: 10_000,
            max_batch_bytes: 32 * 1024 * 1024,
            max_record_bytes: 1024 * 1024,
            max_pending_records: 100_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineMeta {
    pub name: String,
    /// How many partitions keys hash into; see [`crate::partition`].
    pub partitions: u32,
}

/// Stream names and the settings every stream shares.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSettings {
    pub events: String,
    pub enriched: String,
    pub features: String,
    pub predictions: String,
    pub labels: String,
    pub dlq: String,
    pub alerts: String,
    /// How long JetStream remembers a `Nats-Msg-Id`: a replay after a crash must
    /// fall inside it to be deduplicated.
    pub duplicate_window_secs: u64,
    /// Stream replicas; 1 on a single node, 3 on a cluster.
    pub replicas: usize,
    /// Per-stream limits (-1: none). When reached, JetStream refuses new
    /// messages (discard-new) instead of dropping stored ones.
    pub max_bytes: i64,
    pub max_messages: i64,
    /// Streams stored S2-compressed, by subject prefix (`events`, `labels`, …).
    /// The default leaves out `enriched` and `features`: they are derived, read
    /// moments after they are written, and compressing them cost nats-server
    /// about a fifth of its CPU per event in the enrich → feature-state bench.
    pub compressed: Vec<String>,
}

impl StreamSettings {
    /// Whether the stream with this subject prefix is stored compressed.
    pub fn compresses(&self, prefix: &str) -> bool {
        self.compressed.iter().any(|s| s == prefix)
    }
}

/// Every stream's subject prefix, the names `streams.compressed` takes.
pub const STREAM_PREFIXES: [&str; 7] = [
    "events",
    "enriched",
    "features",
    "predictions",
    "labels",
    "dlq",
    "alerts",
];

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            events: "EVENTS".into(),
            enriched: "ENRICHED".into(),
            features: "FEATURES".into(),
            predictions: "PREDICTIONS".into(),
            labels: "LABELS".into(),
            dlq: "DLQ".into(),
            alerts: "ALERTS".into(),
            duplicate_window_secs: 600,
            replicas: 1,
            max_bytes: -1,
            max_messages: -1,
            compressed: ["events", "predictions", "labels", "dlq", "alerts"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// The registered schema of one event type.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSchema {
    #[serde(default = "one")]
    pub version: u32,
    /// Field whose value becomes the event's key when the producer leaves `key` empty.
    pub key_field: Option<String>,
    /// Feature-state assembles a feature vector for every event of this type.
    #[serde(default)]
    pub score: bool,
    /// Events of this type are labels: ingest stores them in LABELS, and in
    /// EVENTS as well when a feature reads them.
    #[serde(default)]
    pub label: bool,
    #[serde(default)]
    pub fields: BTreeMap<String, FieldDef>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    #[serde(rename = "type")]
    pub kind: FieldType,
    #[serde(default)]
    pub required: bool,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub allowed: Option<Vec<String>>,
    pub max_len: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Double,
    Int,
    String,
    Bool,
    Timestamp,
}

impl FieldType {
    pub fn name(self) -> &'static str {
        match self {
            Self::Double => "double",
            Self::Int => "int",
            Self::String => "string",
            Self::Bool => "bool",
            Self::Timestamp => "timestamp",
        }
    }
}

/// One feature feature-state maintains per entity: the `aggregation` of the
/// `source` events of each entity (only those matching `filter`, when given)
/// over `window` in event time. feature-state's `aggregate` and `window`
/// modules say exactly what each one computes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureDef {
    pub name: String,
    /// Event type that updates it.
    pub source: String,
    /// Field (`entity = "origin"`) or fields (`entity = ["origin", "dest"]`)
    /// of the source event whose values name the entity.
    pub entity: EntityKey,
    pub aggregation: Aggregation,
    /// The field aggregated: every aggregation but `count` reads one.
    #[serde(default)]
    pub field: Option<String>,
    /// Only events matching this expression (the [`crate::filter`] form) count.
    #[serde(default)]
    pub filter: Option<String>,
    /// `{ kind = "sliding", size = "1h", granularity = "1m" }` and the like;
    /// the entity's lifetime when absent.
    #[serde(default)]
    pub window: WindowDef,
    /// `distinct_count` only: distinct values kept per entity and window
    /// before the count saturates; `[feature_state] max_distinct` when absent.
    #[serde(default)]
    pub max_distinct: Option<usize>,
}

impl FeatureDef {
    /// How many distinct values a `distinct_count` keeps before it saturates.
    pub fn distinct_bound(&self, settings: &FeatureStateSettings) -> usize {
        self.max_distinct.unwrap_or(settings.max_distinct)
    }
}

/// What a feature computes over the events in its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Events seen.
    Count,
    Sum,
    Mean,
    Min,
    Max,
    /// Population standard deviation (Welford).
    Stddev,
    /// The value of the event with the latest event time.
    Last,
    /// Distinct values of the field, exact up to `max_distinct`.
    DistinctCount,
    /// Seconds from the entity's latest event (its event time) to the time
    /// the feature is read at; it reads no field. Lifetime only: a window
    /// would only hide the latest event from it.
    SinceLast,
}

impl Aggregation {
    pub fn name(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Sum => "sum",
            Self::Mean => "mean",
            Self::Min => "min",
            Self::Max => "max",
            Self::Stddev => "stddev",
            Self::Last => "last",
            Self::DistinctCount => "distinct_count",
            Self::SinceLast => "since_last",
        }
    }

    /// Whether it reads a `field`, and whether that field must be numeric.
    fn reads(self) -> (bool, bool) {
        match self {
            Self::Count | Self::SinceLast => (false, false),
            Self::DistinctCount => (true, false),
            _ => (true, true),
        }
    }
}

/// The stretch of event time a feature summarises, as of an event's time `t`.
/// Windows are aligned to the Unix epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowDef {
    /// Every event since the entity appeared (or reappeared after its TTL).
    #[default]
    Lifetime,
    /// The last complete window `[k·size, (k+1)·size)` ending at or before `t`.
    Tumbling { size: EventDuration },
    /// The last complete window of length `size` ending at a multiple of `hop` at or before `t`.
    Hopping {
        size: EventDuration,
        hop: EventDuration,
    },
    /// The trailing window `(t − size, t]`, its older edge moving in steps of `granularity`.
    Sliding {
        size: EventDuration,
        granularity: EventDuration,
    },
    /// The entity's session open at `t`: events less than `gap` apart.
    Session { gap: EventDuration },
}

impl WindowDef {
    /// How far before `t` the oldest event the window can hold lies (0 for lifetime).
    pub fn reach(self) -> EventDuration {
        match self {
            Self::Lifetime => EventDuration::ZERO,
            Self::Tumbling { size } => EventDuration(size.0.saturating_mul(2)),
            Self::Hopping { size, hop } => EventDuration(size.0.saturating_add(hop.0)),
            Self::Sliding { size, .. } => size,
            Self::Session { gap } => gap,
        }
    }

    fn check(self) -> Result<(), String> {
        let positive = |what: &str, d: EventDuration| {
            if d.0 > 0 {
                Ok(())
            } else {
                Err(format!("window {what} must be longer than 0"))
            }
        };
        match self {
            Self::Lifetime => Ok(()),
            Self::Tumbling { size } => positive("size", size),
            Self::Session { gap } => positive("gap", gap),
            Self::Hopping { size, hop: step }
            | Self::Sliding {
                size,
                granularity: step,
            } => {
                positive("size", size)?;
                positive("step", step)?;
                if size.0 % step.0 != 0 {
                    return Err(format!(
                        "window size {size} is not a whole number of steps of {step}"
                    ));
                }
                Ok(())
            }
        }
    }
}

/// A length of event time, written `500ms`, `90s`, `15m`, `1h` or `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventDuration(i64);

impl EventDuration {
    pub const ZERO: Self = Self(0);

    pub fn from_micros(us: i64) -> Self {
        Self(us.max(0))
    }

    pub fn from_secs(secs: i64) -> Self {
        Self(secs.max(0).saturating_mul(1_000_000))
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }
}

impl TryFrom<String> for EventDuration {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let unit_us: i64 = match unit {
            "ms" => 1_000,
            "s" => 1_000_000,
            "m" => 60_000_000,
            "h" => 3_600_000_000,
            "d" => 86_400_000_000,
            _ => {
                return Err(format!(
                    "duration `{text}`: write a whole number and a unit: ms, s, m, h or d (e.g. \"15m\")"
                ))
            }
        };
        let n: i64 = digits
            .parse()
            .map_err(|_| format!("duration `{text}`: `{digits}` is not a whole number"))?;
        n.checked_mul(unit_us)
            .map(Self)
            .ok_or_else(|| format!("duration `{text}` is too long"))
    }
}

impl From<EventDuration> for String {
    fn from(d: EventDuration) -> String {
        d.to_string()
    }
}

impl std::fmt::Display for EventDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let units = [
            (86_400_000_000, "d"),
            (3_600_000_000, "h"),
            (60_000_000, "m"),
            (1_000_000, "s"),
            (1_000, "ms"),
        ];
        for (size, unit) in units {
            if self.0 % size == 0 {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}us", self.0)
    }
}

/// The entity a feature is kept for: one field or a combination of fields.
/// It reads as its name (`origin`, `origin+dest`) where a `&str` is expected.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "EntityFields", into = "EntityFields")]
pub struct EntityKey {
    fields: Vec<String>,
    name: String,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum EntityFields {
    One(String),
    Many(Vec<String>),
}

impl TryFrom<EntityFields> for EntityKey {
    type Error = String;

    fn try_from(f: EntityFields) -> Result<Self, String> {
        let fields = match f {
            EntityFields::One(one) => vec![one],
            EntityFields::Many(many) => many,
        };
        Self::new(fields)
    }
}

impl From<EntityKey> for EntityFields {
    fn from(k: EntityKey) -> Self {
        match <[String; 1]>::try_from(k.fields) {
            Ok([one]) => EntityFields::One(one),
            Err(many) => EntityFields::Many(many),
        }
    }
}

impl EntityKey {
    pub fn new(fields: Vec<String>) -> Result<Self, String> {
        if fields.is_empty() || fields.iter().any(|f| f.is_empty()) {
            return Err("entity: name one field or a list of fields".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = fields.iter().find(|f| !seen.insert(f.as_str())) {
            return Err(format!("entity: field `{twice}` is named twice"));
        }
        Ok(Self {
            name: fields.join("+"),
            fields,
        })
    }

    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// `origin`, or `origin+dest` for a combination.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key of the entity a record names: the field's value printed
    /// (strings as they are, numbers and bools in Rust's `Display`); for a
    /// combination, the values joined with `|`, with `|` and `\` inside a string
    /// escaped by `\` (`JFK|LAX`). `None` when a field is absent or null.
    pub fn key_of<'a>(&self, lookup: impl Fn(&str) -> Option<ValueRef<'a>>) -> Option<String> {
        let mut key = String::new();
        self.write_key(lookup, &mut key).then_some(key)
    }

    /// Like [`Self::key_of`] into a reused buffer (cleared first); false when a field is missing.
    pub fn write_key<'a>(
        &self,
        lookup: impl Fn(&str) -> Option<ValueRef<'a>>,
        out: &mut String,
    ) -> bool {
        use std::fmt::Write as _;
        out.clear();
        for (i, field) in self.fields.iter().enumerate() {
            let Some(value) = lookup(field) else {
                return false;
            };
            if i > 0 {
                out.push('|');
            }
            // Writing into a String cannot fail.
            let _ = match value {
                ValueRef::Str(s) if self.fields.len() == 1 => {
                    out.push_str(s);
                    Ok(())
                }
                ValueRef::Str(s) => {
                    for c in s.chars() {
                        if c == '|' || c == '\\' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    Ok(())
                }
                ValueRef::Int(v) => write!(out, "{v}"),
                ValueRef::TimestampUs(v) => write!(out, "{v}"),
                ValueRef::Bool(v) => write!(out, "{v}"),
                ValueRef::Double(v) => write!(out, "{v}"),
            };
        }
        true
    }
}

impl std::ops::Deref for EntityKey {
    type Target = str;

    fn deref(&self) -> &str {
        &self.name
    }
}

/// How feature-state treats event time and bounds its state (`[feature_state]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureStateSettings {
    /// An event older than its partition's newest event time minus this is
    /// late: counted, sent to `dlq.feature-state` (reason `late`), not applied.
    pub allowed_lateness: EventDuration,
    /// An entity without events for this long in event time is forgotten.
    /// At least the reach of every window.
    pub entity_ttl: EventDuration,
    /// Default bound of `distinct_count` features.
    pub max_distinct: usize,
}

impl Default for FeatureStateSettings {
    fn default() -> Self {
        Self {
            allowed_lateness: EventDuration::from_secs(300),
            entity_ttl: EventDuration::from_secs(7 * 86_400),
            max_distinct: 10_000,
        }
    }
}

impl Pipeline {
    /// Fields an event of type `event` carries once enriched: its own and
    /// those enrich joins onto it.
    fn enriched_field_type(&self, event: &str, field: &str) -> Option<Option<FieldType>> {
        if let Some(def) = self.events.get(event).and_then(|s| s.fields.get(field)) {
            return Some(Some(def.kind));
        }
        self.enrich
            .joins
            .iter()
            .filter(|j| j.event == event)
            .find_map(|j| {
                let column = field.strip_prefix(j.prefix.as_str())?;
                j.fields.iter().any(|f| f == column).then(|| {
                    let table = self.enrich.tables.iter().find(|t| t.name == j.table)?;
                    Some(self.events.get(&table.source)?.fields.get(column)?.kind)
                })
            })
    }

    fn check_features(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        let settings = &self.feature_state;
        for f in &self.features {
            let what = format!("feature {}", f.name);
            if !names.insert(f.name.as_str()) {
                return Err(format!("{what}: declared twice"));
            }
            // A label type may be a source too: ingest then stores its events
            // in EVENTS as well as their labels in LABELS.
            if !self.events.contains_key(&f.source) {
                return Err(format!(
                    "{what}: source event type `{}` is not declared",
                    f.source
                ));
            }
            for field in f.entity.fields() {
                if self.enriched_field_type(&f.source, field).is_none() {
                    return Err(format!(
                        "{what}: entity field `{field}` is not a field of `{}`",
                        f.source
                    ));
                }
            }
            let (reads, numeric) = f.aggregation.reads();
            match (&f.field, reads) {
                (None, true) => {
                    return Err(format!(
                        "{what}: {} needs `field`, the field it aggregates",
                        f.aggregation.name()
                    ))
                }
                (Some(_), false) => {
                    return Err(format!(
                        "{what}: {} reads no `field`; leave it out",
                        f.aggregation.name()
                    ))
                }
                (Some(field), true) => match self.enriched_field_type(&f.source, field) {
                    None => {
                        return Err(format!(
                            "{what}: field `{field}` is not a field of `{}`",
                            f.source
                        ))
                    }
                    Some(Some(FieldType::String)) if numeric => {
                        return Err(format!(
                            "{what}: {} needs a numeric field; `{field}` is a string",
                            f.aggregation.name()
                        ))
                    }
                    Some(_) => {}
                },
                (None, false) => {}
            }
            if let Some(text) = &f.filter {
                let expr =
                    crate::filter::Expr::parse(text).map_err(|e| format!("{what}: filter: {e}"))?;
                if let Some(field) = expr
                    .fields()
                    .into_iter()
                    .find(|x| self.enriched_field_type(&f.source, x).is_none())
                {
                    return Err(format!(
                        "{what}: filter reads `{field}`, which is not a field of `{}`",
                        f.source
                    ));
                }
            }
            f.window.check().map_err(|e| format!("{what}: {e}"))?;
            if f.aggregation == Aggregation::SinceLast && f.window != WindowDef::Lifetime {
                return Err(format!(
                    "{what}: since_last measures from the entity's latest event, which a window \
                     can only hide (a complete window ends before the read, a trailing one empties \
                     while the entity is idle); leave `window` out"
                ));
            }
            if f.max_distinct.is_some() && f.aggregation != Aggregation::DistinctCount {
                return Err(format!("{what}: max_distinct is for distinct_count only"));
            }
            if f.distinct_bound(settings) == 0 {
                return Err(format!("{what}: max_distinct must be at least 1"));
            }
            if f.window.reach() > settings.entity_ttl {
                return Err(format!(
                    "{what}: its window reaches back {}, longer than feature_state.entity_ttl ({}): entities would be forgotten while the window still holds their events",
                    f.window.reach(),
                    settings.entity_ttl
                ));
            }
            if let Some((t, _)) = self
                .events
                .iter()
                .find(|(_, s)| s.score && s.fields.contains_key(&f.name))
            {
                return Err(format!(
                    "{what}: `{t}` has a field of the same name; a feature vector would carry both"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod feature_tests {
    use super::*;

    const BASE: &str = r#"
        [pipeline]
        name = "t"
        partitions = 2
        [events.flight]
        key_field = "origin"
        score = true
        [events.flight.fields]
        origin = { type = "string", required = true }
        dest = { type = "string", required = true }
        distance = { type = "double" }
        [events.departed]
        label = true
        [events.departed.fields]
        id = { type = "string", required = true }
        delay = { type = "double", required = true }
        [label]
        event = "departed"
        key_field = "id"
        scored_key_field = "origin"
        value_field = "delay"
        op = ">="
        threshold = 15.0
        [model]
        name = "m"
        version = "1"
        inputs = [{ name = "x", weight = 0.5 }]
    "#;

    fn with(feature: &str) -> Result<Pipeline, String> {
        Pipeline::parse(
            &format!("{BASE}\n[[features]]\n{feature}"),
            Path::new("t.toml"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn feature_definitions_parse_with_their_windows() {
        let us = |s: i64| EventDuration::from_secs(s);
        let cases = [
            (
                r#"name = "n"
                source = "flight"
                entity = "origin"
                aggregation = "count""#,
                Aggregation::Count,
                WindowDef::Lifetime,
                vec!["origin"],
            ),
            (
                r#"name = "n"
                source = "flight"
                entity = ["origin", "dest"]
                aggregation = "mean"
                field = "distance"
                window = { kind = "sliding", size = "1h", granularity = "1m" }"#,
                Aggregation::Mean,
                WindowDef::Sliding {
                    size: us(3600),
                    granularity: us(60),
                },
                vec!["origin", "dest"],
            ),
            (
                r#"name = "n"
                source = "flight"
                entity = "dest"
                aggregation = "distinct_count"
                field = "origin"
                max_distinct = 50
                window = { kind = "hopping", size = "1d", hop = "6h" }"#,
                Aggregation::DistinctCount,
                WindowDef::Hopping {
                    size: us(86_400),
                    hop: us(21_600),
                },
                vec!["dest"],
            ),
            (
                r#"name = "n"
                source = "flight"
                entity = "origin"
                aggregation = "stddev"
                field = "distance"
                filter = "distance > 100"
                window = { kind = "tumbling", size = "30m" }"#,
                Aggregation::Stddev,
                WindowDef::Tumbling { size: us(1800) },
                vec!["origin"],
            ),
            (
                r#"name = "n"
                source = "flight"
                entity = "origin"
                aggregation = "last"
                field = "distance"
                window = { kind = "session", gap = "90s" }"#,
                Aggregation::Last,
                WindowDef::Session { gap: us(90) },
                vec!["origin"],
            ),
        ];
        for (text, aggregation, window, entity) in cases {
            let p = with(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let f = &p.features[0];
            assert_eq!((f.aggregation, f.window), (aggregation, window), "{text}");
            assert_eq!(f.entity.fields(), entity.as_slice());
            assert_eq!(&*f.entity, entity.join("+"));
        }
    }

    #[test]
    fn invalid_feature_definitions_are_refused_with_the_reason() {
        let base = "name = \"n\"\nsource = \"flight\"\nentity = \"origin\"\n";
        let cases = [
            ("aggregation = \"sum\"", "sum needs `field`"),
            ("aggregation = \"count\"\nfield = \"distance\"", "count reads no `field`"),
            ("aggregation = \"mean\"\nfield = \"dest\"", "needs a numeric field; `dest` is a string"),
            ("aggregation = \"sum\"\nfield = \"nope\"", "field `nope` is not a field of `flight`"),
            ("aggregation = \"count\"\nfilter = \"distance >\"", "filter"),
            ("aggregation = \"count\"\nfilter = \"seats > 3\"", "filter reads `seats`"),
            ("aggregation = \"count\"\nwindow = { kind = \"sliding\", size = \"1h\", granularity = \"7m\" }", "not a whole number of steps"),
            ("aggregation = \"count\"\nwindow = { kind = \"tumbling\", size = \"0s\" }", "longer than 0"),
            ("aggregation = \"count\"\nwindow = { kind = \"tumbling\", size = \"1 hour\" }", "duration `1 hour`"),
            ("aggregation = \"count\"\nwindow = { kind = \"tumbling\", size = \"60\" }", "a unit"),
            ("aggregation = \"count\"\nwindow = { kind = \"weekly\" }", "unknown variant `weekly`"),
            ("aggregation = \"count\"\nwindow = { kind = \"session\", gap = \"8d\" }", "longer than feature_state.entity_ttl"),
            ("aggregation = \"count\"\nmax_distinct = 5", "max_distinct is for distinct_count"),
            ("aggregation = \"median\"", "unknown variant `median`"),
            ("aggregation = \"since_last\"\nfield = \"distance\"", "since_last reads no `field`"),
            ("aggregation = \"since_last\"\nwindow = { kind = \"sliding\", size = \"1h\", granularity = \"5m\" }", "since_last measures from the entity's latest event"),
            ("aggregation = \"since_last\"\nwindow = { kind = \"session\", gap = \"1h\" }", "leave `window` out"),
        ];
        for (rest, expected) in cases {
            let err = with(&format!("{base}{rest}")).expect_err(expected);
            assert!(err.contains(expected), "{rest}: {err}");
        }
        let others = [
            ("name = \"n\"\nsource = \"flight\"\nentity = [\"origin\", \"nope\"]\naggregation = \"count\"", "entity field `nope`"),
            ("name = \"n\"\nsource = \"flight\"\nentity = [\"origin\", \"origin\"]\naggregation = \"count\"", "named twice"),
            ("name = \"n\"\nsource = \"flight\"\nentity = []\naggregation = \"count\"", "name one field"),
            ("name = \"dest\"\nsource = \"flight\"\nentity = \"origin\"\naggregation = \"count\"", "has a field of the same name"),
            ("name = \"n\"\nsource = \"flight\"\nentity = \"origin\"\naggregation = \"count\"\n[[features]]\nname = \"n\"\nsource = \"flight\"\nentity = \"dest\"\naggregation = \"count\"", "declared twice"),
        ];
        for (text, expected) in others {
            let err = with(text).expect_err(expected);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn a_label_type_can_be_a_feature_source() {
        let p = with(
            r#"name = "mean_delay"
            source = "departed"
            entity = "id"
            aggregation = "mean"
            field = "delay"
            window = { kind = "sliding", size = "1h", granularity = "5m" }
            [[features]]
            name = "since_departure"
            source = "departed"
            entity = "id"
            aggregation = "since_last""#,
        )
        .unwrap_or_else(|e| panic!("a label source is refused: {e}"));
        let sources: Vec<(&str, Aggregation, WindowDef)> = p
            .features
            .iter()
            .map(|f| (f.source.as_str(), f.aggregation, f.window))
            .collect();
        assert_eq!(
            sources,
            vec![
                (
                    "departed",
                    Aggregation::Mean,
                    WindowDef::Sliding {
                        size: EventDuration::from_secs(3600),
                        granularity: EventDuration::from_secs(300),
                    }
                ),
                ("departed", Aggregation::SinceLast, WindowDef::Lifetime),
            ]
        );
        assert!(p.events["departed"].label, "still a label type");
        // The label type's own fields are checked as any source's are.
        let err = with(
            "name = \"n\"\nsource = \"departed\"\nentity = \"origin\"\naggregation = \"count\"",
        )
        .expect_err("no such field");
        assert!(
            err.contains("entity field `origin` is not a field of `departed`"),
            "{err}"
        );
    }

    #[test]
    fn feature_state_settings_default_and_parse() {
        let p =
            with("name = \"n\"\nsource = \"flight\"\nentity = \"origin\"\naggregation = \"count\"")
                .expect("parses");
        assert_eq!(p.feature_state, FeatureStateSettings::default());
        assert_eq!(p.feature_state.allowed_lateness.to_string(), "5m");
        let p = Pipeline::parse(
            &format!("{BASE}\n[feature_state]\nallowed_lateness = \"2h\"\nentity_ttl = \"30d\"\nmax_distinct = 7\n"),
            Path::new("t.toml"),
        )
        .expect("parses");
        assert_eq!(
            p.feature_state.allowed_lateness,
            EventDuration::from_secs(7200)
        );
        assert_eq!(p.feature_state.entity_ttl.to_string(), "30d");
        assert_eq!(p.feature_state.max_distinct, 7);
    }

    #[test]
    fn entity_keys_join_field_values_deterministically() {
        let v = millrace_proto::Value::string;
        let fields: BTreeMap<&str, millrace_proto::Value> = [
            ("origin", v("JFK")),
            ("dest", v("LAX")),
            ("odd", v("a|b\\c")),
            ("flight", millrace_proto::Value::int(1545)),
            ("delayed", millrace_proto::Value::bool(true)),
        ]
        .into();
        let key = |names: &[&str]| {
            EntityKey::new(names.iter().map(|s| s.to_string()).collect())
                .expect("entity")
                .key_of(|f| fields.get(f).and_then(ValueRef::of))
        };
        let cases: [(&[&str], Option<&str>); 6] = [
            (&["origin"], Some("JFK")),
            (&["origin", "dest"], Some("JFK|LAX")),
            (&["dest", "origin"], Some("LAX|JFK")),
            (&["odd"], Some("a|b\\c")),
            (&["origin", "odd"], Some("JFK|a\\|b\\\\c")),
            (&["origin", "missing"], None),
        ];
        for (names, expected) in cases {
            assert_eq!(key(names).as_deref(), expected, "{names:?}");
        }
        assert_eq!(key(&["flight", "delayed"]).as_deref(), Some("1545|true"));
    }
}

/// Turns a label event into a [`millrace_proto::Label`]: which field names the
/// scored event (by a business key both events carry) and when the outcome is positive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRule {
    /// The label event type (declared with `label = true`).
    pub event: String,
    /// Field of the label event holding the key of what it labels.
    pub key_field: String,
    /// Field of the scored event holding the same key.
    pub scored_key_field: String,
    /// Numeric field of the label event the rule reads.
    pub value_field: String,
    /// The outcome is positive when `value_field <op> threshold`.
    pub op: Comparison,
    pub threshold: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    #[serde(rename = ">")]
    Greater,
    #[serde(rename = ">=")]
    GreaterOrEqual,
    #[serde(rename = "<")]
    Less,
    #[serde(rename = "<=")]
    LessOrEqual,
    #[serde(rename = "==")]
    Equal,
}

impl Comparison {
    pub fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Self::Greater => left > right,
            Self::GreaterOrEqual => left >= right,
            Self::Less => left < right,
            Self::LessOrEqual => left <= right,
            Self::Equal => left == right,
        }
    }
}

impl LabelRule {
    /// The label an accepted label event carries; `None` when the event lacks
    /// the key or a numeric value (schema validation requires both).
    pub fn label_of(&self, event: &millrace_proto::Event) -> Option<millrace_proto::Label> {
        use millrace_proto::value::Kind;
        let label_key = match event.fields.get(&self.key_field)?.kind.as_ref()? {
            Kind::StringValue(s) => s.clone(),
            Kind::IntValue(i) => i.to_string(),
            _ => return None,
        };
        let observed = event.fields.get(&self.value_field)?.as_f64()?;
        Some(millrace_proto::Label {
            event_id: event.event_id.clone(),
            label_key,
            value: if self.op.holds(observed, self.threshold) {
                1.0
            } else {
                0.0
            },
            event_time_us: event.event_time_us,
            ingest_time_us: event.ingest_time_us,
            event_type: event.r#type.clone(),
            observed,
        })
    }
}

/// The model inference serves until a registry replaces it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDef {
    pub name: String,
    pub version: String,
    #[serde(default = "half")]
    pub threshold: f64,
    #[serde(default)]
    pub intercept: f64,
    /// Inputs in the order the model reads them: OIP tensors follow this order.
    pub inputs: Vec<ModelInput>,
    /// How inference learns online from labels (`[model.online]`).
    #[serde(default)]
    pub online: OnlineSettings,
    /// How inference retrains a model on the labelled flights (`[model.retrain]`).
    #[serde(default)]
    pub retrain: RetrainSettings,
}

/// Continuous training. At every `period_secs` boundary of event time
/// (counted from the Unix epoch, so every replay puts them at the same
/// moments) inference trains a gradient-boosted model on the examples whose
/// labels it had by then (the last `window_secs` of them, all when 0), off
/// the serving path. The new version serves from `ready_after_secs` of event
/// time after the boundary, in shadow first: after `shadow_labels` labelled
/// flights scored by both, it is promoted if its log loss on them beats the
/// active version's. `params` are the trainer's (see inference's `gbdt`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrainSettings {
    pub enabled: bool,
    pub period_secs: u64,
    pub window_secs: u64,
    pub min_examples: usize,
    pub ready_after_secs: u64,
    pub shadow_labels: u64,
    /// Inputs the trained models read; empty means the model's inputs.
    pub inputs: Vec<String>,
    pub params: toml::Table,
}

impl Default for RetrainSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            period_secs: 7 * 86_400,
            window_secs: 0,
            min_examples: 5_000,
            ready_after_secs: 3_600,
            shadow_labels: 1_000,
            inputs: Vec::new(),
            params: toml::Table::new(),
        }
    }
}

fn half() -> f64 {
    0.5
}

/// The online learner inference trains from LABELS: SGD logistic regression
/// with the step `learning_rate / (1 + decay·t)^power`, never below
/// `min_learning_rate` (so it keeps following drift), L2 penalty `l2`, inputs
/// standardised with running means and variances. Labels join their feature
/// vectors in a store of at most `join_capacity` entries; an entry older than
/// `label_ttl_secs` of event time is dropped and counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnlineSettings {
    pub enabled: bool,
    /// Inputs the learner reads; empty means the model's inputs.
    pub inputs: Vec<String>,
    pub learning_rate: f64,
    pub decay: f64,
    pub power: f64,
    pub min_learning_rate: f64,
    pub l2: f64,
    pub label_ttl_secs: u64,
    pub join_capacity: usize,
}

impl Default for OnlineSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            inputs: Vec::new(),
            learning_rate: 0.1,
            decay: 0.001,
            power: 0.5,
            min_learning_rate: 0.01,
            l2: 1e-5,
            label_ttl_secs: 86_400,
            join_capacity: 100_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInput {
    pub name: String,
    pub weight: f64,
}

impl Pipeline {
    pub fn load(path: &Path) -> Result<Self, ChassisError> {
        let text = std::fs::read_to_string(path).map_err(|source| ChassisError::PipelineRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks cross-references; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ChassisError> {
        let pipeline: Self = toml::from_str(text).map_err(|e| ChassisError::PipelineParse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        pipeline
            .check()
            .map_err(|message| ChassisError::PipelineInvalid {
                path: origin.to_path_buf(),
                message,
            })?;
        Ok(pipeline)
    }

    fn check(&self) -> Result<(), String> {
        if self.pipeline.partitions == 0 {
            return Err("pipeline.partitions must be at least 1".into());
        }
        if let Some(unknown) = self
            .streams
            .compressed
            .iter()
            .find(|s| !STREAM_PREFIXES.contains(&s.as_str()))
        {
            return Err(format!(
                "streams.compressed: `{unknown}` is not a stream; the streams are {}",
                STREAM_PREFIXES.join(", ")
            ));
        }
        for (name, schema) in &self.events {
            if !is_subject_token(name) {
                return Err(format!(
                    "event type `{name}` must be letters, digits, `_` or `-`: it becomes a NATS subject token"
                ));
            }
            if let Some(key) = &schema.key_field {
                if !schema.fields.contains_key(key) {
                    return Err(format!(
                        "events.{name}: key_field `{key}` is not a declared field"
                    ));
                }
            }
        }
        self.check_features()?;
        let label_types: Vec<&String> = self
            .events
            .iter()
            .filter(|(_, s)| s.label)
            .map(|(n, _)| n)
            .collect();
        match &self.label {
            None if !label_types.is_empty() => {
                return Err(format!(
                    "event type `{}` is a label but there is no [label] rule",
                    label_types[0]
                ));
            }
            Some(rule) => {
                let schema = self
                    .events
                    .get(&rule.event)
                    .filter(|s| s.label)
                    .ok_or_else(|| {
                        format!(
                            "label.event `{}` is not an event type declared with label = true",
                            rule.event
                        )
                    })?;
                if label_types.len() > 1 {
                    return Err(
                        "only one event type can be a label; the [label] rule names it".into(),
                    );
                }
                for field in [&rule.key_field, &rule.value_field] {
                    if !schema.fields.get(field).is_some_and(|f| f.required) {
                        return Err(format!(
                            "label: `{field}` must be a required field of `{}`",
                            rule.event
                        ));
                    }
                }
                if !self
                    .events
                    .values()
                    .any(|s| s.score && s.fields.contains_key(&rule.scored_key_field))
                {
                    return Err(format!(
                        "label.scored_key_field `{}` is not a field of any scored event type",
                        rule.scored_key_field
                    ));
                }
            }
            None => {}
        }
        self.check_enrich()?;
        if !is_subject_token(&self.model.name) {
            return Err(format!(
                "model name `{}` must be letters, digits, `_` or `-`",
                self.model.name
            ));
        }
        if self.model.inputs.is_empty() {
            return Err(format!(
                "model {}: needs at least one input",
                self.model.name
            ));
        }
        Ok(())
    }

    pub fn duplicate_window(&self) -> Duration {
        Duration::from_secs(self.streams.duplicate_window_secs)
    }
}

impl Pipeline {
    fn check_enrich(&self) -> Result<(), String> {
        let declared = |t: &str, what: &str| -> Result<&EventSchema, String> {
            self.events
                .get(t)
                .ok_or_else(|| format!("{what}: event type `{t}` is not declared"))
        };
        for rule in &self.enrich.filters {
            let expr = crate::filter::Expr::parse(&rule.drop_when)
                .map_err(|e| format!("enrich filter {}: {e}", rule.name))?;
            if let Some(t) = &rule.event {
                let schema = declared(t, &format!("enrich filter {}", rule.name))?;
                if let Some(f) = expr
                    .fields()
                    .into_iter()
                    .find(|f| !schema.fields.contains_key(*f))
                {
                    return Err(format!(
                        "enrich filter {}: `{f}` is not a field of `{t}`",
                        rule.name
                    ));
                }
            }
        }
        for table in &self.enrich.tables {
            let schema = declared(&table.source, &format!("enrich table {}", table.name))?;
            if !schema.fields.contains_key(&table.key) {
                return Err(format!(
                    "enrich table {}: key `{}` is not a field of `{}`",
                    table.name, table.key, table.source
                ));
            }
        }
        for join in &self.enrich.joins {
            let what = format!("enrich join {} onto {}", join.table, join.event);
            let schema = declared(&join.event, &what)?;
            let table = self
                .enrich
                .tables
                .iter()
                .find(|t| t.name == join.table)
                .ok_or_else(|| format!("{what}: no table `{}`", join.table))?;
            if !schema.fields.contains_key(&join.on) {
                return Err(format!(
                    "{what}: `{}` is not a field of `{}`",
                    join.on, join.event
                ));
            }
            let source = declared(&table.source, &what)?;
            if let Some(f) = join.fields.iter().find(|f| !source.fields.contains_key(*f)) {
                return Err(format!(
                    "{what}: `{f}` is not a column of `{}` (fields of `{}`)",
                    table.name, table.source
                ));
            }
            if join.on_missing == OnMissing::Default {
                if let Some(f) = join.fields.iter().find(|f| !join.defaults.contains_key(*f)) {
                    return Err(format!(
                        "{what}: on_missing = \"default\" but `{f}` has no default"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn is_subject_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What monitor watches and when it alerts (`[monitor]`). Every part has
/// defaults, so a pipeline without the section is monitored with them; monitor
/// checks the rules when it starts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorSettings {
    pub join: LabelJoinSettings,
    pub quality: QualitySettings,
    pub drift: DriftSettings,
    pub latency: LatencySettings,
    /// `[[monitor.alerts]]`: the rules, evaluated per model version / feature.
    pub alerts: Vec<AlertRule>,
}

/// How predictions wait for their labels and labels for their predictions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabelJoinSettings {
    /// Either side waits this long in event time for the other, then counts as expired.
    pub ttl_secs: u64,
    /// Beyond this many waiting predictions the oldest is evicted (counted).
    pub max_pending_predictions: usize,
    /// Beyond this many waiting labels the oldest is evicted (counted).
    pub max_pending_labels: usize,
}

impl Default for LabelJoinSettings {
    fn default() -> Self {
        Self {
            ttl_secs: 86_400,
            max_pending_predictions: 100_000,
            max_pending_labels: 100_000,
        }
    }
}

/// Model quality from labelled predictions, per model version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualitySettings {
    /// The label-count window: the last this many labelled predictions.
    pub window_labels: usize,
    /// The event-time window: labelled predictions at most this old (prediction
    /// event time) relative to the newest one.
    pub window_secs: u64,
    /// The event-time window keeps at most this many, dropping the oldest.
    pub max_window_samples: usize,
    pub calibration_bins: usize,
    /// Alert rules on quality are evaluated every this many labelled predictions.
    pub evaluate_every: u64,
}

impl Default for QualitySettings {
    fn default() -> Self {
        Self {
            window_labels: 1000,
            window_secs: 3600,
            max_window_samples: 10_000,
            calibration_bins: 10,
            evaluate_every: 100,
        }
    }
}

/// Drift of features and prediction scores against a reference window.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftSettings {
    /// The reference of every model without its own under `models`.
    pub reference: DriftReference,
    /// Size of the reference window.
    pub reference_events: usize,
    /// Size of the sliding window compared with the reference.
    pub window_events: usize,
    /// Numeric values fall into this many bins (quantiles of the reference).
    pub bins: usize,
    /// Categorical features keep this many categories, the rest fall into one.
    pub max_categories: usize,
    /// Drift is measured (and its rules evaluated) every this many values.
    pub evaluate_every: u64,
    pub psi_moderate: f64,
    pub psi_significant: f64,
    /// Kolmogorov–Smirnov statistic above which drift is significant.
    pub ks_significant: f64,
    /// Per-feature overrides, by feature name.
    pub features: BTreeMap<String, FeatureDriftSettings>,
    /// Per-model overrides (`[monitor.drift.models.<model>]`), by model name.
    pub models: BTreeMap<String, ModelDriftSettings>,
}

impl DriftSettings {
    /// The reference `model`'s scores (and the features it reads) are compared with.
    pub fn reference_of(&self, model: &str) -> DriftReference {
        self.models
            .get(model)
            .and_then(|m| m.reference)
            .unwrap_or(self.reference)
    }

    /// Whether some model takes its reference from its training metadata.
    pub fn wants_training(&self) -> bool {
        self.reference == DriftReference::Training
            || self
                .models
                .values()
                .any(|m| m.reference == Some(DriftReference::Training))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelDriftSettings {
    pub reference: Option<DriftReference>,
}

impl Default for DriftSettings {
    fn default() -> Self {
        Self {
            reference: DriftReference::FirstEvents,
            reference_events: 1000,
            window_events: 1000,
            bins: 10,
            max_categories: 50,
            evaluate_every: 100,
            psi_moderate: 0.1,
            psi_significant: 0.2,
            ks_significant: 0.1,
            features: BTreeMap::new(),
            models: BTreeMap::new(),
        }
    }
}

/// Where the reference distribution comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftReference {
    /// The first `reference_events` values seen.
    FirstEvents,
    /// The distribution the model version was trained on, from its registry
    /// metadata; the first `reference_events` values where it has none.
    Training,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureDriftSettings {
    pub kind: FeatureKind,
    pub bins: Option<usize>,
    pub psi_moderate: Option<f64>,
    pub psi_significant: Option<f64>,
    pub ks_significant: Option<f64>,
    /// Not watched for drift at all.
    pub ignore: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    #[default]
    Numeric,
    /// Each distinct value is a category (PSI over categories, no KS).
    Categorical,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatencySettings {
    /// Latency quantiles are taken over the last this many predictions per model version.
    pub window_predictions: usize,
    /// ... and alert rules on them evaluated every this many predictions.
    pub evaluate_every: u64,
}

impl Default for LatencySettings {
    fn default() -> Self {
        Self {
            window_predictions: 1000,
            evaluate_every: 100,
        }
    }
}

/// One alert rule: fires when `metric <op> threshold` has held for `for_events`
/// events and `for_secs` of event time; resolves once the value is back past
/// the threshold by `hysteresis`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub name: String,
    pub metric: MonitorMetric,
    pub op: Comparison,
    /// Required, except for drift metrics, which default to the feature's significant level.
    pub threshold: Option<f64>,
    /// Quality metrics: the label-count or the event-time window.
    #[serde(default)]
    pub window: QualityWindow,
    /// Latency metrics: the quantile over the latency window (default 0.95).
    pub quantile: Option<f64>,
    /// Only this model (all when absent).
    pub model: Option<String>,
    /// Feature drift: only this feature (all when absent).
    pub feature: Option<String>,
    #[serde(default)]
    pub for_events: u64,
    #[serde(default)]
    pub for_secs: u64,
    #[serde(default)]
    pub hysteresis: f64,
}

/// What an alert rule can watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorMetric {
    Psi,
    Ks,
    ScorePsi,
    ScoreKs,
    Accuracy,
    Precision,
    Recall,
    RocAuc,
    LogLoss,
    Brier,
    CalibrationError,
    PredictedPositiveRate,
    LabelPositiveRate,
    EventToPredictionSeconds,
    IngestToPredictionSeconds,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityWindow {
    #[default]
    Labels,
    Time,
}

/// The five services, with the ports users and tools rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Ingest,
    Enrich,
    FeatureState,
    Inference,
    Monitor,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Enrich => "enrich",
            Self::FeatureState => "feature-state",
            Self::Inference => "inference",
            Self::Monitor => "monitor",
        }
    }

    pub fn default_http_port(self) -> u16 {
        match self {
            Self::Ingest => 8081,
            Self::Enrich => 8082,
            Self::FeatureState => 8083,
            Self::Inference => 8084,
            Self::Monitor => 8085,
        }
    }

    /// Enrich serves no gRPC API.
    pub fn default_grpc_port(self) -> Option<u16> {
        match self {
            Self::Ingest => Some(50051),
            Self::Enrich => None,
            Self::FeatureState => Some(50053),
            Self::Inference => Some(50054),
            Self::Monitor => Some(50055),
        }
    }
}

/// How to reach NATS. TLS files and credentials are optional.
#[derive(Debug, Clone, Default)]
pub struct NatsSettings {
    pub url: String,
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub creds_file: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_required: bool,
}

/// Everything a service takes from its environment.
#[derive(Debug, Clone)]
pub struct ServiceEnv {
    pub service: Service,
    pub pipeline_path: PathBuf,
    pub data_dir: PathBuf,
    pub http_addr: SocketAddr,
    pub grpc_addr: Option<SocketAddr>,
    pub nats: NatsSettings,
    /// Snapshot at least this often while events flow.
    pub snapshot_interval: Duration,
    /// ... and at least every this many applied events. The interval is what
    /// bounds the replay after a crash at any usual rate; a count of 10k took
    /// feature-state a sixth of its CPU at 100k events/s, when almost every
    /// entity changes between snapshots, to shorten a replay of one second.
    pub snapshot_every: u64,
}

impl ServiceEnv {
    /// Reads `MILLRACE_*` and `NATS_*` variables, with the documented defaults.
    /// (`OTEL_*` are read by [`crate::telemetry`].)
    pub fn from_env(service: Service) -> Result<Self, ChassisError> {
        Self::from_lookup(service, |k| std::env::var(k).ok())
    }

    pub fn from_lookup(
        service: Service,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ChassisError> {
        let non_empty = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let addr = |name: &'static str, default: u16| -> Result<SocketAddr, ChassisError> {
            match non_empty(name) {
                Some(v) => v.parse().map_err(|e| ChassisError::Env {
                    name,
                    message: format!("`{v}` is not a socket address like 0.0.0.0:{default}: {e}"),
                }),
                None => Ok(SocketAddr::from(([0, 0, 0, 0], default))),
            }
        };
        let number = |name: &'static str, default: u64| -> Result<u64, ChassisError> {
            match non_empty(name) {
                Some(v) => v.parse().map_err(|e| ChassisError::Env {
                    name,
                    message: format!("`{v}` is not a whole number: {e}"),
                }),
                None => Ok(default),
            }
        };
        let grpc_addr = match service.default_grpc_port() {
            Some(port) => Some(addr("MILLRACE_GRPC_ADDR", port)?),
            None => None,
        };
        Ok(Self {
            service,
            pipeline_path: non_empty("MILLRACE_PIPELINE")
                .unwrap_or_else(|| "examples/flights/pipeline.toml".into())
                .into(),
            data_dir: non_empty("MILLRACE_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("data").join(service.name())),
            http_addr: addr("MILLRACE_HTTP_ADDR", service.default_http_port())?,
            grpc_addr,
            nats: NatsSettings {
                url: non_empty("NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
                token: non_empty("NATS_TOKEN"),
                user: non_empty("NATS_USER"),
                password: non_empty("NATS_PASSWORD"),
                creds_file: non_empty("NATS_CREDS").map(PathBuf::from),
                tls_ca: non_empty("NATS_TLS_CA").map(PathBuf::from),
                tls_cert: non_empty("NATS_TLS_CERT").map(PathBuf::from),
                tls_key: non_empty("NATS_TLS_KEY").map(PathBuf::from),
                tls_required: non_empty("NATS_TLS_REQUIRED")
                    .is_some_and(|v| v == "true" || v == "1"),
            },
            snapshot_interval: Duration::from_millis(number(
                "MILLRACE_SNAPSHOT_INTERVAL_MS",
                1000,
            )?),
            snapshot_every: number("MILLRACE_SNAPSHOT_EVERY", 1_000_000)?.max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [pipeline]
        name = "t"
        partitions = 2
        [events.ping]
        key_field = "host"
        score = true
        [events.ping.fields.host]
        type = "string"
        required = true
        [[features]]
        name = "host_pings"
        source = "ping"
        entity = "host"
        aggregation = "count"
        [model]
        name = "m"
        version = "1"
        inputs = [{ name = "host_pings", weight = 0.5 }]
    "#;

    #[test]
    fn minimal_pipeline_parses_with_defaults() {
        let p = Pipeline::parse(MINIMAL, Path::new("t.toml")).expect("parses");
        assert_eq!(p.pipeline.partitions, 2);
        assert_eq!(p.streams.events, "EVENTS");
        assert_eq!(p.events["ping"].version, 1);
        assert_eq!(p.model.threshold, 0.5);
    }

    #[test]
    fn derived_streams_are_stored_uncompressed_unless_configured() {
        let p = Pipeline::parse(MINIMAL, Path::new("t.toml")).expect("parses");
        for prefix in ["events", "predictions", "labels", "dlq", "alerts"] {
            assert!(p.streams.compresses(prefix), "{prefix}");
        }
        assert!(!p.streams.compresses("enriched"));
        assert!(!p.streams.compresses("features"));

        let all = format!("[streams]\ncompressed = {STREAM_PREFIXES:?}\n{MINIMAL}");
        let p = Pipeline::parse(&all, Path::new("t.toml")).expect("parses");
        assert!(STREAM_PREFIXES.iter().all(|s| p.streams.compresses(s)));

        let typo = format!("[streams]\ncompressed = [\"event\"]\n{MINIMAL}");
        let e = Pipeline::parse(&typo, Path::new("t.toml")).expect_err("refused");
        assert!(
            e.to_string()
                .contains("streams.compressed: `event` is not a stream"),
            "{e}"
        );
    }

    #[test]
    fn invalid_pipelines_are_refused_with_the_reason() {
        let cases = [
            (
                MINIMAL.replace("partitions = 2", "partitions = 0"),
                "partitions must be at least 1",
            ),
            (
                MINIMAL.replace("entity = \"host\"", "entity = \"nope\""),
                "entity field `nope`",
            ),
            (
                MINIMAL.replace("source = \"ping\"", "source = \"pong\""),
                "`pong` is not declared",
            ),
            (
                MINIMAL.replace("key_field = \"host\"", "key_field = \"k\""),
                "key_field `k`",
            ),
            (
                MINIMAL.replace("\"count\"", "\"median\""),
                "unknown variant `median`",
            ),
            (
                MINIMAL
                    .replace("[events.ping", "[events.\"a.b\"")
                    .replace("\"ping\"", "\"a.b\""),
                "event type `a.b`",
            ),
        ];
        for (text, expected) in cases {
            let err = Pipeline::parse(&text, Path::new("t.toml"))
                .expect_err(expected)
                .to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
            assert!(err.contains("t.toml"), "{err} should name the file");
        }
    }

    const WITH_LABEL: &str = r#"
        [events.pong]
        label = true
        [events.pong.fields]
        host = { type = "string", required = true }
        latency = { type = "double", required = true }
        [label]
        event = "pong"
        key_field = "host"
        scored_key_field = "host"
        value_field = "latency"
        op = ">="
        threshold = 15.0
    "#;

    #[test]
    fn drift_reference_is_first_events_unless_a_model_asks_for_training() {
        let p = Pipeline::parse(MINIMAL, Path::new("t.toml")).expect("parses");
        assert_eq!(
            p.monitor.drift.reference_of("any"),
            DriftReference::FirstEvents
        );
        assert!(!p.monitor.drift.wants_training());
        let text = format!("{MINIMAL}\n[monitor.drift.models.fraud]\nreference = \"training\"\n");
        let p = Pipeline::parse(&text, Path::new("t.toml")).expect("parses");
        let d = &p.monitor.drift;
        assert_eq!(d.reference_of("fraud"), DriftReference::Training);
        assert_eq!(d.reference_of("other"), DriftReference::FirstEvents);
        assert!(d.wants_training());
        let text = format!("{MINIMAL}\n[monitor.drift]\nreference = \"training\"\n");
        let p = Pipeline::parse(&text, Path::new("t.toml")).expect("parses");
        assert_eq!(
            p.monitor.drift.reference_of("any"),
            DriftReference::Training
        );
        let text = format!("{MINIMAL}\n[monitor.drift]\nreference = \"holdout\"\n");
        assert!(Pipeline::parse(&text, Path::new("t.toml")).is_err());
    }

    #[test]
    fn label_rule_turns_a_label_event_into_a_label() {
        let text = format!("{MINIMAL}{WITH_LABEL}");
        let p = Pipeline::parse(&text, Path::new("t.toml")).expect("parses");
        let rule = p.label.expect("rule");
        let event = |latency: f64| millrace_proto::Event {
            event_id: "l1".into(),
            r#type: "pong".into(),
            fields: [
                ("host".to_string(), millrace_proto::Value::string("h1")),
                (
                    "latency".to_string(),
                    millrace_proto::Value::double(latency),
                ),
            ]
            .into(),
            ..Default::default()
        };
        for (latency, expected) in [(14.9, 0.0), (15.0, 1.0), (300.0, 1.0)] {
            let label = rule.label_of(&event(latency)).expect("label");
            assert_eq!(
                (label.label_key.as_str(), label.value, label.observed),
                ("h1", expected, latency)
            );
        }
        assert!(rule.label_of(&millrace_proto::Event::default()).is_none());
    }

    #[test]
    fn label_rules_must_name_a_label_type_and_required_fields() {
        let cases = [
            (
                WITH_LABEL.replace("event = \"pong\"", "event = \"ping\""),
                "label.event `ping`",
            ),
            (
                WITH_LABEL[..WITH_LABEL.find("[label]").unwrap_or(0)].to_string(),
                "no [label] rule",
            ),
            (
                WITH_LABEL.replace(
                    "latency = { type = \"double\", required = true }",
                    "latency = { type = \"double\" }",
                ),
                "`latency` must be a required field",
            ),
            (
                WITH_LABEL.replace("scored_key_field = \"host\"", "scored_key_field = \"nope\""),
                "scored_key_field `nope`",
            ),
        ];
        for (extra, expected) in cases {
            let text = format!("{MINIMAL}{extra}");
            let err = Pipeline::parse(&text, Path::new("t.toml"))
                .expect_err(expected)
                .to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
    }

    #[test]
    fn env_defaults_and_overrides() {
        let env = ServiceEnv::from_lookup(Service::Inference, |_| None).expect("defaults");
        assert_eq!(env.http_addr.port(), 8084);
        assert_eq!(env.grpc_addr.map(|a| a.port()), Some(50054));
        assert_eq!(env.nats.url, "nats://127.0.0.1:4222");
        assert!(ServiceEnv::from_lookup(Service::Enrich, |_| None)
            .expect("defaults")
            .grpc_addr
            .is_none());

        let env = ServiceEnv::from_lookup(Service::Monitor, |k| match k {
            "MILLRACE_HTTP_ADDR" => Some("127.0.0.1:9000".into()),
            "NATS_URL" => Some("nats://h:1".into()),
            _ => None,
        })
        .expect("overrides");
        assert_eq!(env.http_addr.port(), 9000);
        assert_eq!(env.nats.url, "nats://h:1");

        let err = ServiceEnv::from_lookup(Service::Monitor, |k| {
            (k == "MILLRACE_GRPC_ADDR").then(|| "nowhere".into())
        })
        .expect_err("bad address");
        assert!(err.to_string().contains("MILLRACE_GRPC_ADDR"));
    }
}
