//! Enrichment. The spine passes each event through unchanged and stamps the
//! enrichment time; reference tables and filters join here.

use actix::{Actor, Context, Handler};
use millrace_chassis::bus::{subject, Outgoing};
use millrace_chassis::metrics::Metrics;
use millrace_chassis::stage::{Apply, TakeSnapshot};
use millrace_proto::{EnrichedEvent, Event};
use prometheus::IntCounterVec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What enrich snapshots: events passed per type, so counts survive restarts.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrichState {
    pub enriched_by_type: BTreeMap<String, u64>,
}

pub struct Enricher {
    state: EnrichState,
    enriched: IntCounterVec,
}

impl Enricher {
    pub fn new(state: EnrichState, metrics: &Metrics) -> Self {
        let enriched = metrics.counter_vec(
            "enrich_events_total",
            "Events enriched and published to ENRICHED, by event type.",
            &["event_type"],
        );
        Self { state, enriched }
    }

    /// The enriched form of one event, published under a stable id.
    pub fn enrich(&mut self, event: Event, now_us: i64) -> EnrichedEvent {
        *self
            .state
            .enriched_by_type
            .entry(event.r#type.clone())
            .or_default() += 1;
        self.enriched
            .with_label_values(&[event.r#type.as_str()])
            .inc();
        EnrichedEvent {
            event_id: event.event_id.clone(),
            event: Some(event),
            joined: Default::default(),
            enrich_time_us: now_us,
        }
    }
}

impl Actor for Enricher {
    type Context = Context<Self>;
}

impl Handler<Apply<Event>> for Enricher {
    type Result = Vec<Outgoing>;

    fn handle(&mut self, Apply(batch): Apply<Event>, _: &mut Self::Context) -> Self::Result {
        let now = millrace_chassis::time::now_us();
        batch
            .into_iter()
            .map(|d| {
                let partition = d.message.partition;
                let enriched = self.enrich(d.message, now);
                let id = format!("enrich:{}", enriched.event_id);
                Outgoing::new(subject::enriched(partition), id, &enriched, d.trace)
            })
            .collect()
    }
}

impl Handler<TakeSnapshot<EnrichState>> for Enricher {
    type Result = actix::MessageResult<TakeSnapshot<EnrichState>>;

    fn handle(&mut self, _: TakeSnapshot<EnrichState>, _: &mut Self::Context) -> Self::Result {
        actix::MessageResult(self.state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrich_keeps_the_event_and_counts_by_type() {
        let mut e = Enricher::new(EnrichState::default(), &Metrics::new());
        let ev = Event {
            event_id: "e1".into(),
            r#type: "ping".into(),
            partition: 3,
            ..Default::default()
        };
        let out = e.enrich(ev.clone(), 7);
        assert_eq!(out.event_id, "e1");
        assert_eq!(out.event, Some(ev));
        assert_eq!(out.enrich_time_us, 7);
        assert_eq!(e.state.enriched_by_type["ping"], 1);
    }
}
