//! The `Enricher` actor: for each event in stream order it applies the filter
//! rules, upserts the reference tables the event feeds, joins the tables the
//! pipeline names onto it, and answers what to publish (the enriched event, or
//! a dead letter naming the rule or the missing reference).

use std::collections::{BTreeMap, HashMap};

use actix::{Actor, Context, Handler};
use bytes::Bytes;
use millrace_chassis::bus::{subject, Outgoing};
use millrace_chassis::config::{EnrichSettings, JoinDef, OnMissing, TableDef};
use millrace_chassis::metrics::Metrics;
use millrace_chassis::stage::{Apply, TakeSnapshot, Taken};
use millrace_proto::view::{EventRef, EventView, ValueRef};
use millrace_proto::{DeadLetter, Value};
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use serde::{Deserialize, Serialize};

use crate::rules::Filters;
use crate::tables::{Cell, Row, Table};

/// What enrich snapshots: its reference tables and what it passed, per type.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrichState {
    pub enriched_by_type: BTreeMap<String, u64>,
    pub tables: BTreeMap<String, Table>,
}

/// What became of one event.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Enriched(millrace_proto::EnrichedEvent),
    Refused(Refusal),
}

/// Why an event is not enriched: machine-readable reason and the sentence for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reason: String,
    pub message: String,
}

pub struct Enricher {
    state: EnrichState,
    filters: Filters,
    tables: Vec<TableDef>,
    joins: Vec<JoinDef>,
    enriched: IntCounterVec,
    dropped: IntCounterVec,
    join_misses: IntCounterVec,
    table_rows: IntGauge,
    /// `enriched`'s child per event type, looked up once (types are few).
    enriched_by_type: Vec<(String, IntCounter)>,
    subjects: subject::ByPartition,
}

impl Enricher {
    pub fn new(
        mut state: EnrichState,
        settings: &EnrichSettings,
        partitions: u32,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let filters = Filters::new(&settings.filters).map_err(|e| e.to_string())?;
        for t in &settings.tables {
            state
                .tables
                .entry(t.name.clone())
                .or_insert_with(|| Table::new(t.versioned, t.max_versions));
        }
        let enricher = Self {
            state,
            filters,
            tables: settings.tables.clone(),
            joins: settings.joins.clone(),
            enriched: metrics.counter_vec(
                "enrich_events_total",
                "Events enriched and published to ENRICHED, by event type.",
                &["event_type"],
            ),
            dropped: metrics.counter_vec(
                "enrich_filtered_total",
                "Events dropped to the DLQ, by filter rule.",
                &["rule"],
            ),
            join_misses: metrics.counter_vec(
                "enrich_join_misses_total",
                "Joins that found no reference row, by table and what was done.",
                &["table", "on_missing"],
            ),
            table_rows: metrics.gauge(
                "enrich_reference_rows",
                "Rows held in the reference tables, all versions.",
            ),
            enriched_by_type: Vec::new(),
            subjects: subject::ByPartition::new(partitions, subject::enriched),
        };
        enricher.update_rows_gauge();
        Ok(enricher)
    }

    fn update_rows_gauge(&self) {
        let rows: usize = self.state.tables.values().map(Table::len).sum();
        self.table_rows.set(i64::try_from(rows).unwrap_or(i64::MAX));
    }

    /// Filters, feeds the tables, joins.
    #[cfg(test)]
    pub fn enrich(&mut self, event: millrace_proto::Event, now_us: i64) -> Outcome {
        match self.judge(EventView::from(&event).event()) {
            Ok(joined) => Outcome::Enriched(millrace_proto::EnrichedEvent {
                event_id: event.event_id.clone(),
                event: Some(event),
                joined,
                enrich_time_us: now_us,
            }),
            Err(refusal) => Outcome::Refused(refusal),
        }
    }

    /// Filters, feeds the tables, joins: the values joined onto the event, or
    /// why it is refused. Counts the event as enriched when it is.
    fn judge(&mut self, event: EventRef<'_>) -> Result<HashMap<String, Value>, Refusal> {
        let fields = event.fields();
        if let Some(rule) = self.filters.dropping(event) {
            self.dropped.with_label_values(&[rule.name.as_str()]).inc();
            return Err(Refusal {
                reason: format!("filter:{}", rule.name),
                message: format!(
                    "event {} ({}): dropped by filter rule `{}`",
                    event.event_id(),
                    event.r#type(),
                    rule.name
                ),
            });
        }
        for def in self.tables.iter().filter(|t| t.source == event.r#type()) {
            let Some(key) = fields.get(&def.key).map(ValueRef::key_text) else {
                continue;
            };
            // A name given twice keeps its last value, as a decoded map would.
            let row: Row = fields
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), Cell::from_ref(v?))))
                .collect();
            if let Some(table) = self.state.tables.get_mut(&def.name) {
                table.upsert(key, event.event_time_us(), row);
            }
        }
        let mut joined = HashMap::new();
        for join in self.joins.iter().filter(|j| j.event == event.r#type()) {
            let row = fields
                .get(&join.on)
                .map(ValueRef::key_text)
                .and_then(|key| {
                    self.state
                        .tables
                        .get(&join.table)?
                        .lookup(&key, event.event_time_us())
                });
            match (row, join.on_missing) {
                (Some(row), _) => {
                    for f in &join.fields {
                        if let Some(cell) = row.get(f) {
                            joined.insert(format!("{}{f}", join.prefix), cell.to_value());
                        }
                    }
                }
                (None, OnMissing::Null) => self.miss(join, "null"),
                (None, OnMissing::Default) => {
                    self.miss(join, "default");
                    for f in &join.fields {
                        if let Some(lit) = join.defaults.get(f) {
                            joined.insert(format!("{}{f}", join.prefix), lit.to_value());
                        }
                    }
                }
                (None, OnMissing::Reject) => {
                    self.miss(join, "reject");
                    let key = fields
                        .get(&join.on)
                        .map(ValueRef::key_text)
                        .unwrap_or_default();
                    return Err(Refusal {
                        reason: "missing_reference".into(),
                        message: format!(
                            "event {} ({}): no `{}` row for {} = \"{key}\"",
                            event.event_id(),
                            event.r#type(),
                            join.table,
                            join.on
                        ),
                    });
                }
            }
        }
        self.count_enriched(event.r#type());
        Ok(joined)
    }

    fn count_enriched(&mut self, event_type: &str) {
        match self.state.enriched_by_type.get_mut(event_type) {
            Some(n) => *n += 1,
            None => {
                self.state
                    .enriched_by_type
                    .insert(event_type.to_string(), 1);
            }
        }
        match self.enriched_by_type.iter().find(|(t, _)| t == event_type) {
            Some((_, counter)) => counter.inc(),
            None => {
                let counter = self.enriched.with_label_values(&[event_type]);
                counter.inc();
                self.enriched_by_type
                    .push((event_type.to_string(), counter));
            }
        }
    }

    fn miss(&self, join: &JoinDef, what: &str) {
        self.join_misses
            .with_label_values(&[join.table.as_str(), what])
            .inc();
    }
}

impl Actor for Enricher {
    type Context = Context<Self>;
}

impl Handler<Apply<EventView>> for Enricher {
    type Result = Vec<Outgoing>;

    fn handle(&mut self, Apply(batch): Apply<EventView>, _: &mut Self::Context) -> Self::Result {
        let now = millrace_chassis::time::now_us();
        let out = batch
            .into_iter()
            .map(|d| {
                let event = d.message.event();
                let raw = d.message.raw();
                match self.judge(event) {
                    Ok(joined) => Outgoing::record(
                        self.subjects.get(event.partition()),
                        Bytes::from(encode_enriched(event.event_id(), raw, joined, now)),
                        d.trace,
                    ),
                    Err(Refusal { reason, message }) => {
                        let id = format!("dlq:enrich:{reason}:{}", event.event_id());
                        let letter = DeadLetter {
                            stage: "enrich".into(),
                            reason,
                            message,
                            event_id: event.event_id().to_string(),
                            event_type: event.r#type().to_string(),
                            payload: raw.to_vec(),
                            time_us: now,
                        };
                        Outgoing::new(subject::dlq("enrich"), id, &letter, d.trace)
                    }
                }
            })
            .collect();
        self.update_rows_gauge();
        out
    }
}

/// The `EnrichedEvent` of an event received as `raw`, byte for byte what
/// prost encodes for it (fields in number order), without encoding the event again.
fn encode_enriched(
    event_id: &str,
    raw: &[u8],
    joined: HashMap<String, Value>,
    enrich_time_us: i64,
) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, hash_map, int64, message, string, WireType};
    let mut buf = Vec::with_capacity(event_id.len() + raw.len() + 24 + 32 * joined.len());
    if !event_id.is_empty() {
        encode_key(1, WireType::LengthDelimited, &mut buf);
        encode_varint(event_id.len() as u64, &mut buf);
        buf.extend_from_slice(event_id.as_bytes());
    }
    encode_key(2, WireType::LengthDelimited, &mut buf);
    encode_varint(raw.len() as u64, &mut buf);
    buf.extend_from_slice(raw);
    hash_map::encode(
        string::encode,
        string::encoded_len,
        message::encode,
        message::encoded_len,
        3,
        &joined,
        &mut buf,
    );
    if enrich_time_us != 0 {
        int64::encode(4, &enrich_time_us, &mut buf);
    }
    buf
}

impl Handler<TakeSnapshot<EnrichState>> for Enricher {
    type Result = actix::MessageResult<TakeSnapshot<EnrichState>>;

    fn handle(&mut self, _: TakeSnapshot<EnrichState>, _: &mut Self::Context) -> Self::Result {
        actix::MessageResult(Taken::whole(self.state.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_chassis::config::{FilterRule, Literal};
    use millrace_proto::{EnrichedEvent, Event};
    use prost::Message as _;

    fn settings(on_missing: OnMissing) -> EnrichSettings {
        EnrichSettings {
            filters: vec![FilterRule {
                name: "no_tailnum".into(),
                event: Some("flight".into()),
                drop_when: "tailnum is null".into(),
            }],
            tables: vec![
                TableDef {
                    name: "planes".into(),
                    source: "plane".into(),
                    key: "tailnum".into(),
                    versioned: false,
                    max_versions: 1,
                },
                TableDef {
                    name: "weather".into(),
                    source: "weather".into(),
                    key: "origin".into(),
                    versioned: true,
                    max_versions: 100,
                },
            ],
            joins: vec![
                JoinDef {
                    event: "flight".into(),
                    table: "planes".into(),
                    on: "tailnum".into(),
                    fields: vec!["seats".into()],
                    prefix: "plane_".into(),
                    on_missing,
                    defaults: [("seats".to_string(), Literal::Int(150))].into(),
                },
                JoinDef {
                    event: "flight".into(),
                    table: "weather".into(),
                    on: "origin".into(),
                    fields: vec!["temp".into()],
                    prefix: "weather_".into(),
                    on_missing: OnMissing::Null,
                    defaults: BTreeMap::new(),
                },
            ],
        }
    }

    fn event(id: &str, ty: &str, t: i64, fields: &[(&str, Value)]) -> Event {
        Event {
            event_id: id.into(),
            r#type: ty.into(),
            event_time_us: t,
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ..Default::default()
        }
    }

    fn joined(outcome: &Outcome) -> BTreeMap<String, Value> {
        match outcome {
            Outcome::Enriched(e) => e.joined.clone().into_iter().collect(),
            Outcome::Refused(Refusal { reason, .. }) => panic!("refused: {reason}"),
        }
    }

    #[test]
    fn tables_fed_by_events_are_joined_as_of_the_event_time() {
        let mut e = Enricher::new(
            EnrichState::default(),
            &settings(OnMissing::Null),
            4,
            &Metrics::new(),
        )
        .expect("valid");
        e.enrich(
            event(
                "p1",
                "plane",
                0,
                &[("tailnum", Value::string("N1")), ("seats", Value::int(180))],
            ),
            0,
        );
        e.enrich(
            event(
                "w1",
                "weather",
                100,
                &[
                    ("origin", Value::string("EWR")),
                    ("temp", Value::double(30.0)),
                ],
            ),
            0,
        );
        e.enrich(
            event(
                "w2",
                "weather",
                200,
                &[
                    ("origin", Value::string("EWR")),
                    ("temp", Value::double(40.0)),
                ],
            ),
            0,
        );
        let flight = |id: &str, t: i64| {
            event(
                id,
                "flight",
                t,
                &[
                    ("tailnum", Value::string("N1")),
                    ("origin", Value::string("EWR")),
                ],
            )
        };
        let got = joined(&e.enrich(flight("f1", 150), 0));
        assert_eq!(got["plane_seats"], Value::int(180));
        assert_eq!(
            got["weather_temp"],
            Value::double(30.0),
            "the weather at 150 is the 100 observation"
        );
        let got = joined(&e.enrich(flight("f2", 250), 0));
        assert_eq!(got["weather_temp"], Value::double(40.0));
        let got = joined(&e.enrich(flight("f0", 50), 0));
        assert!(
            !got.contains_key("weather_temp"),
            "no weather before the first observation: {got:?}"
        );
    }

    #[test]
    fn missing_reference_rows_follow_the_pipeline_policy() {
        let flight = event(
            "f1",
            "flight",
            10,
            &[
                ("tailnum", Value::string("N9")),
                ("origin", Value::string("JFK")),
            ],
        );
        let cases = [
            (OnMissing::Null, None),
            (OnMissing::Default, Some(Value::int(150))),
        ];
        for (policy, expected) in cases {
            let mut e = Enricher::new(
                EnrichState::default(),
                &settings(policy),
                4,
                &Metrics::new(),
            )
            .expect("valid");
            assert_eq!(
                joined(&e.enrich(flight.clone(), 0))
                    .get("plane_seats")
                    .cloned(),
                expected,
                "{policy:?}"
            );
        }
        let mut e = Enricher::new(
            EnrichState::default(),
            &settings(OnMissing::Reject),
            4,
            &Metrics::new(),
        )
        .expect("valid");
        match e.enrich(flight, 0) {
            Outcome::Refused(Refusal { reason, message }) => {
                assert_eq!(reason, "missing_reference");
                assert!(
                    message.contains("no `planes` row for tailnum = \"N9\""),
                    "{message}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn filtered_events_are_refused_with_the_rule_name_and_not_counted() {
        let mut e = Enricher::new(
            EnrichState::default(),
            &settings(OnMissing::Null),
            4,
            &Metrics::new(),
        )
        .expect("valid");
        let outcome = e.enrich(
            event("f1", "flight", 1, &[("origin", Value::string("EWR"))]),
            0,
        );
        assert!(
            matches!(outcome, Outcome::Refused(Refusal { ref reason, .. }) if reason == "filter:no_tailnum"),
            "{outcome:?}"
        );
        assert!(e.state.enriched_by_type.is_empty());
    }

    #[test]
    fn the_enriched_record_embeds_the_received_bytes_as_prost_would_encode_them() {
        let event = event(
            "f1",
            "flight",
            7,
            &[
                ("tailnum", Value::string("N1")),
                ("distance", Value::int(1400)),
            ],
        );
        let raw = event.encode_to_vec();
        // (event id, joined values, enrich time)
        type Case<'a> = (&'a str, &'a [(&'a str, Value)], i64);
        let cases: [Case; 4] = [
            ("f1", &[], 99),
            ("f1", &[("plane_seats", Value::int(180))], 99),
            ("", &[], 0),
            ("f1", &[("weather_temp", Value::double(-3.5))], -1),
        ];
        for (id, joined, time) in cases {
            let joined: HashMap<String, Value> = joined
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            let expected = EnrichedEvent {
                event_id: id.into(),
                event: Some(event.clone()),
                joined: joined.clone(),
                enrich_time_us: time,
            };
            let got = encode_enriched(id, &raw, joined, time);
            assert_eq!(got, expected.encode_to_vec(), "{id:?} {time}");
            assert_eq!(prost::Message::decode(got.as_slice()).ok(), Some(expected));
        }
    }
}
