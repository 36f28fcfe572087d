//! Reference tables fed by events: a static table keeps the latest row per
//! key; a versioned one keeps each key's rows by event time, so a join can ask
//! for the row that was current at the event's time (an as-of join).
//! The tables are plain state: the stage loop snapshots them with the stream
//! sequence, so they survive a crash exactly like every other state.

use std::collections::{BTreeMap, HashMap};

use millrace_proto::view::ValueRef;
use millrace_proto::Value;
use serde::{Deserialize, Serialize};

/// One field value in a serialisable form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Cell {
    Double(f64),
    Int(i64),
    Text(String),
    Bool(bool),
    Timestamp(i64),
}

impl Cell {
    pub fn from_ref(v: ValueRef<'_>) -> Self {
        match v {
            ValueRef::Double(x) => Cell::Double(x),
            ValueRef::Int(i) => Cell::Int(i),
            ValueRef::Str(s) => Cell::Text(s.to_string()),
            ValueRef::Bool(b) => Cell::Bool(b),
            ValueRef::TimestampUs(t) => Cell::Timestamp(t),
        }
    }

    pub fn to_value(&self) -> Value {
        match self {
            Cell::Double(x) => Value::double(*x),
            Cell::Int(i) => Value::int(*i),
            Cell::Text(s) => Value::string(s.clone()),
            Cell::Bool(b) => Value::bool(*b),
            Cell::Timestamp(t) => Value::timestamp_us(*t),
        }
    }
}

pub type Row = BTreeMap<String, Cell>;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    pub versioned: bool,
    pub max_versions: usize,
    /// Key → event time → row (a static table keeps one entry per key, at time 0).
    pub rows: HashMap<String, BTreeMap<i64, Row>>,
}

impl Table {
    pub fn new(versioned: bool, max_versions: usize) -> Self {
        Self {
            versioned,
            max_versions: max_versions.max(1),
            rows: HashMap::new(),
        }
    }

    /// Upserting the same row twice changes nothing, so a replay is harmless.
    pub fn upsert(&mut self, key: String, time_us: i64, row: Row) {
        let versions = self.rows.entry(key).or_default();
        if self.versioned {
            versions.insert(time_us, row);
            while versions.len() > self.max_versions {
                versions.pop_first();
            }
        } else {
            versions.clear();
            versions.insert(0, row);
        }
    }

    /// The row for `key` current at `at_us`: for a versioned table the latest
    /// at or before that time, for a static one the only row.
    pub fn lookup(&self, key: &str, at_us: i64) -> Option<&Row> {
        let versions = self.rows.get(key)?;
        if self.versioned {
            versions.range(..=at_us).next_back().map(|(_, row)| row)
        } else {
            versions.values().next()
        }
    }

    pub fn len(&self) -> usize {
        self.rows.values().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(temp: f64) -> Row {
        [("temp".to_string(), Cell::Double(temp))].into()
    }

    #[test]
    fn as_of_lookup_takes_the_latest_version_at_or_before_the_time() {
        let mut weather = Table::new(true, 100);
        weather.upsert("EWR".into(), 100, row(1.0));
        weather.upsert("EWR".into(), 200, row(2.0));
        // Out of order arrival does not matter: versions are by event time.
        weather.upsert("EWR".into(), 150, row(1.5));
        let cases = [
            (99, None),
            (100, Some(1.0)),
            (149, Some(1.0)),
            (150, Some(1.5)),
            (199, Some(1.5)),
            (200, Some(2.0)),
            (10_000, Some(2.0)),
        ];
        for (at, expected) in cases {
            let got = weather.lookup("EWR", at).and_then(|r| match r.get("temp") {
                Some(Cell::Double(t)) => Some(*t),
                _ => None,
            });
            assert_eq!(got, expected, "at {at}");
        }
        assert!(weather.lookup("JFK", 150).is_none());
    }

    #[test]
    fn versions_are_bounded_and_static_tables_keep_the_last_row() {
        let mut t = Table::new(true, 2);
        for time in [1, 2, 3] {
            t.upsert("k".into(), time, row(time as f64));
        }
        assert_eq!(t.len(), 2);
        assert!(t.lookup("k", 1).is_none(), "the oldest version was dropped");

        let mut planes = Table::new(false, 1);
        planes.upsert("N1".into(), 500, row(1.0));
        planes.upsert("N1".into(), 100, row(2.0));
        assert_eq!(
            planes.lookup("N1", 0),
            Some(&row(2.0)),
            "static: the last upsert wins, whatever its time"
        );
        assert_eq!(planes.len(), 1);
    }
}
