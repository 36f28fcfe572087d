//! Per-entity feature state and the point-in-time vectors built from it.
//!
//! The `FeatureStore` actor owns every feature's values; the stage loop feeds
//! it enriched events in stream order and snapshots it, and the gRPC API reads
//! it. Nothing here touches NATS or sled.

use std::collections::{BTreeMap, HashMap};

use actix::{Actor, Context, Handler, Message, MessageResult};
use millrace_chassis::bus::{subject, Outgoing};
use millrace_chassis::config::{Aggregation, FeatureDef, Pipeline};
use millrace_chassis::metrics::Metrics;
use millrace_chassis::stage::{Apply, TakeSnapshot};
use millrace_proto::{
    EnrichedEvent, EntityFeatures, FeatureStatus, FeatureValue, FeatureVector, Value,
};
use prometheus::{IntCounter, IntGauge};
use serde::{Deserialize, Serialize};

/// One feature's value for one entity.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    pub count: u64,
    /// Event time of the last event applied.
    pub event_time_us: i64,
}

impl Aggregate {
    fn apply(&mut self, aggregation: Aggregation, event_time_us: i64) {
        match aggregation {
            Aggregation::Count => self.count += 1,
        }
        self.event_time_us = self.event_time_us.max(event_time_us);
    }

    fn value(&self, aggregation: Aggregation) -> f64 {
        match aggregation {
            Aggregation::Count => self.count as f64,
        }
    }

    fn proto_value(&self, aggregation: Aggregation) -> Value {
        match aggregation {
            Aggregation::Count => Value::int(i64::try_from(self.count).unwrap_or(i64::MAX)),
        }
    }
}

/// What feature-state snapshots: feature name → entity key → aggregate.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureTables {
    pub features: BTreeMap<String, HashMap<String, Aggregate>>,
}

/// The pipeline's part feature-state needs.
#[derive(Debug, Clone)]
pub struct FeatureSpec {
    pub features: Vec<FeatureDef>,
    /// Event types that get a feature vector.
    pub scored_types: Vec<String>,
    /// Field of a scored event that a later label will name (see `[label]`).
    pub label_key_field: Option<String>,
}

impl FeatureSpec {
    pub fn from_pipeline(p: &Pipeline) -> Self {
        Self {
            features: p.features.clone(),
            scored_types: p
                .events
                .iter()
                .filter(|(_, s)| s.score)
                .map(|(n, _)| n.clone())
                .collect(),
            label_key_field: p.label.as_ref().map(|l| l.scored_key_field.clone()),
        }
    }
}

pub struct FeatureStore {
    spec: FeatureSpec,
    tables: FeatureTables,
    vectors: IntCounter,
    entities: IntGauge,
}

impl FeatureStore {
    pub fn new(spec: FeatureSpec, tables: FeatureTables, metrics: &Metrics) -> Self {
        let store = Self {
            spec,
            tables,
            vectors: metrics.counter(
                "feature_state_vectors_total",
                "Feature vectors assembled for scoring events.",
            ),
            entities: metrics.gauge(
                "feature_state_entities",
                "Entity rows held, summed over features.",
            ),
        };
        store.update_entity_gauge();
        store
    }

    fn update_entity_gauge(&self) {
        let rows: usize = self.tables.features.values().map(HashMap::len).sum();
        self.entities.set(i64::try_from(rows).unwrap_or(i64::MAX));
    }

    /// Applies one event to every feature it feeds; returns the point-in-time
    /// vector when its type is scored. The vector includes this event.
    pub fn apply(&mut self, enriched: &EnrichedEvent, now_us: i64) -> Option<FeatureVector> {
        let event = enriched.event.as_ref()?;
        let field_key = |name: &str| -> Option<String> {
            let v = event
                .fields
                .get(name)
                .or_else(|| enriched.joined.get(name))?;
            entity_key(v)
        };
        for def in &self.spec.features {
            if def.source != event.r#type {
                continue;
            }
            let Some(entity) = field_key(&def.entity) else {
                continue;
            };
            self.tables
                .features
                .entry(def.name.clone())
                .or_default()
                .entry(entity)
                .or_default()
                .apply(def.aggregation, event.event_time_us);
        }
        if !self.spec.scored_types.contains(&event.r#type) {
            return None;
        }
        let mut names = Vec::new();
        let mut values = Vec::new();
        for def in &self.spec.features {
            let Some(entity) = field_key(&def.entity) else {
                continue;
            };
            let value = self
                .tables
                .features
                .get(&def.name)
                .and_then(|t| t.get(&entity))
                .map_or(0.0, |a| a.value(def.aggregation));
            names.push(def.name.clone());
            values.push(value);
        }
        // The event's own numeric fields, in a stable order.
        let own: BTreeMap<&String, &Value> =
            event.fields.iter().chain(enriched.joined.iter()).collect();
        for (name, value) in own {
            if let Some(x) = value.as_f64() {
                names.push(name.clone());
                values.push(x);
            }
        }
        self.vectors.inc();
        let label_key = self
            .spec
            .label_key_field
            .as_deref()
            .and_then(field_key)
            .unwrap_or_else(|| enriched.event_id.clone());
        Some(FeatureVector {
            label_key,
            event_id: enriched.event_id.clone(),
            event_type: event.r#type.clone(),
            entity_key: event.key.clone(),
            partition: event.partition,
            event_time_us: event.event_time_us,
            ingest_time_us: event.ingest_time_us,
            feature_time_us: now_us,
            names,
            values,
        })
    }

    /// Latest values for each entity; every requested feature gets an answer.
    pub fn lookup(&self, entity_keys: &[String], features: &[String]) -> Vec<EntityFeatures> {
        let wanted: Vec<&str> = if features.is_empty() {
            self.spec.features.iter().map(|f| f.name.as_str()).collect()
        } else {
            features.iter().map(String::as_str).collect()
        };
        entity_keys
            .iter()
            .map(|entity| EntityFeatures {
                entity_key: entity.clone(),
                values: wanted
                    .iter()
                    .map(|name| self.feature_value(name, entity))
                    .collect(),
            })
            .collect()
    }

    fn feature_value(&self, name: &str, entity: &str) -> FeatureValue {
        let answer = |status: FeatureStatus| FeatureValue {
            name: name.to_string(),
            status: status as i32,
            ..Default::default()
        };
        let Some(def) = self.spec.features.iter().find(|f| f.name == name) else {
            return answer(FeatureStatus::UnknownFeature);
        };
        match self.tables.features.get(name).and_then(|t| t.get(entity)) {
            Some(agg) => FeatureValue {
                name: name.to_string(),
                value: Some(agg.proto_value(def.aggregation)),
                status: FeatureStatus::Present as i32,
                event_time_us: agg.event_time_us,
            },
            None => answer(FeatureStatus::NotFound),
        }
    }
}

/// The entity key a field value names; strings as they are, numbers and bools printed.
fn entity_key(v: &Value) -> Option<String> {
    use millrace_proto::value::Kind;
    Some(match v.kind.as_ref()? {
        Kind::StringValue(s) => s.clone(),
        Kind::IntValue(i) => i.to_string(),
        Kind::TimestampUs(t) => t.to_string(),
        Kind::BoolValue(b) => b.to_string(),
        Kind::DoubleValue(d) => d.to_string(),
    })
}

impl Actor for FeatureStore {
    type Context = Context<Self>;
}

impl Handler<Apply<EnrichedEvent>> for FeatureStore {
    type Result = Vec<Outgoing>;

    fn handle(
        &mut self,
        Apply(batch): Apply<EnrichedEvent>,
        _: &mut Self::Context,
    ) -> Self::Result {
        let now = millrace_chassis::time::now_us();
        let out = batch
            .into_iter()
            .filter_map(|d| {
                let vector = self.apply(&d.message, now)?;
                let id = format!("features:{}", vector.event_id);
                Some(Outgoing::new(
                    subject::features(vector.partition),
                    id,
                    &vector,
                    d.trace,
                ))
            })
            .collect();
        self.update_entity_gauge();
        out
    }
}

impl Handler<TakeSnapshot<FeatureTables>> for FeatureStore {
    type Result = MessageResult<TakeSnapshot<FeatureTables>>;

    fn handle(&mut self, _: TakeSnapshot<FeatureTables>, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.tables.clone())
    }
}

/// The gRPC API's read of the latest values.
pub struct Lookup {
    pub entity_keys: Vec<String>,
    pub features: Vec<String>,
}

impl Message for Lookup {
    type Result = Vec<EntityFeatures>;
}

impl Handler<Lookup> for FeatureStore {
    type Result = MessageResult<Lookup>;

    fn handle(&mut self, msg: Lookup, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.lookup(&msg.entity_keys, &msg.features))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_proto::Event;

    fn spec() -> FeatureSpec {
        FeatureSpec {
            features: vec![FeatureDef {
                name: "customer_orders".into(),
                source: "order_placed".into(),
                entity: "customer".into(),
                aggregation: Aggregation::Count,
            }],
            scored_types: vec!["order_placed".into()],
            label_key_field: None,
        }
    }

    fn order(id: &str, customer: &str, amount: f64, t: i64) -> EnrichedEvent {
        EnrichedEvent {
            event_id: id.into(),
            event: Some(Event {
                event_id: id.into(),
                r#type: "order_placed".into(),
                key: customer.into(),
                event_time_us: t,
                fields: [
                    ("customer".to_string(), Value::string(customer)),
                    ("amount".to_string(), Value::double(amount)),
                ]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn count_per_entity_includes_the_scored_event_and_its_numeric_fields() {
        let mut s = FeatureStore::new(spec(), FeatureTables::default(), &Metrics::new());
        let v1 = s.apply(&order("a", "c1", 10.0, 5), 0).expect("scored");
        assert_eq!(v1.names, ["customer_orders", "amount"]);
        assert_eq!(v1.values, [1.0, 10.0]);
        s.apply(&order("b", "c2", 1.0, 6), 0);
        let v3 = s.apply(&order("c", "c1", 2.5, 4), 0).expect("scored");
        assert_eq!(v3.values, [2.0, 2.5]);
        // The latest event time wins even when events arrive out of order.
        assert_eq!(
            s.tables.features["customer_orders"]["c1"],
            Aggregate {
                count: 2,
                event_time_us: 5
            }
        );
    }

    #[test]
    fn lookup_answers_present_not_found_and_unknown_feature() {
        let mut s = FeatureStore::new(spec(), FeatureTables::default(), &Metrics::new());
        s.apply(&order("a", "c1", 10.0, 5), 0);
        let got = s.lookup(
            &["c1".into(), "nobody".into()],
            &["customer_orders".into(), "nope".into()],
        );
        let status = |e: usize, f: usize| got[e].values[f].status;
        assert_eq!(status(0, 0), FeatureStatus::Present as i32);
        assert_eq!(got[0].values[0].value, Some(Value::int(1)));
        assert_eq!(status(0, 1), FeatureStatus::UnknownFeature as i32);
        assert_eq!(status(1, 0), FeatureStatus::NotFound as i32);
        assert_eq!(status(1, 1), FeatureStatus::UnknownFeature as i32);
    }

    #[test]
    fn snapshot_state_round_trips_through_postcard() {
        let mut s = FeatureStore::new(spec(), FeatureTables::default(), &Metrics::new());
        s.apply(&order("a", "c1", 10.0, 5), 0);
        let bytes = postcard::to_stdvec(&s.tables).expect("encode");
        let back: FeatureTables = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, s.tables);
    }
}
