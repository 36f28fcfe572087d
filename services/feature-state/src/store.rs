//! The feature store: judges each enriched event against its partition's
//! watermark, routes it to the features it feeds, keeps their per-entity state
//! in partitions (an entity lives in the partition its key hashes to, whatever
//! partition the event came from, so a carrier's features see every airport's
//! flights), assembles point-in-time vectors for scored events and answers
//! online lookups. Plain state: the actor in [`crate::actor`] drives it and
//! the stage loop snapshots what [`FeatureStore::snapshot`] encodes.

use foldhash::HashMap;

use millrace_chassis::config::{EntityKey, FeatureDef, FeatureStateSettings, Pipeline};
use millrace_chassis::filter::Expr;
use millrace_chassis::metrics::Metrics;
use millrace_chassis::partition::{fnv1a64, partition_of};
use millrace_proto::view::{EnrichedView, EventRef, ValueRef};
use millrace_proto::{EnrichedEvent, EntityFeatures, FeatureStatus, FeatureValue, FeatureVector};

use crate::aggregate::Observation;
use crate::column::{column_for, Column};
use crate::metrics::StoreMetrics;
use crate::partition::{EntityTable, PartitionState, Sweep};
use crate::snapshot::{SWEEP_EVERY, SWEEP_SLICES};
use crate::watermark::{Verdict, Watermarks};

/// Events whose rows are asked for together ([`FeatureStore::prefetch_ahead`]),
/// one group ahead of the group being applied: enough for the lines to arrive meanwhile.
pub const PREFETCH_GROUP: usize = 8;

/// The pipeline's part feature-state needs.
#[derive(Debug, Clone)]
pub struct FeatureSpec {
    pub features: Vec<FeatureDef>,
    pub settings: FeatureStateSettings,
    /// Event types that get a feature vector.
    pub scored_types: Vec<String>,
    /// Field of a scored event that a later label will name (see `[label]`).
    pub label_key_field: Option<String>,
    /// Partitions of feature state (the pipeline's partition count).
    pub partitions: u32,
}

impl FeatureSpec {
    pub fn from_pipeline(p: &Pipeline) -> Self {
        Self {
            features: p.features.clone(),
            settings: p.feature_state.clone(),
            scored_types: p
                .events
                .iter()
                .filter(|(_, s)| s.score)
                .map(|(n, _)| n.clone())
                .collect(),
            label_key_field: p.label.as_ref().map(|l| l.scored_key_field.clone()),
            partitions: p.pipeline.partitions.max(1),
        }
    }
}

/// One declared feature, placed.
pub(crate) struct Feature {
    pub def: FeatureDef,
    /// Index of its entity kind.
    pub kind: usize,
    /// Its column in the kind's tables.
    pub column: usize,
    pub filter: Option<Expr>,
    /// Changes whenever the definition does: a snapshot's column is restored only into
    /// a feature with the same fingerprint.
    pub fingerprint: u64,
    /// The `names` entry of a FeatureVector holding its name, encoded once.
    pub name_field: Vec<u8>,
}

/// The entity kinds and features one event type feeds.
struct Route {
    kind: usize,
    features: Vec<usize>,
}

/// What applying one event did; `V` is the vector ([`FeatureStore::apply`]),
/// or `()` when it was encoded into a buffer ([`FeatureStore::apply_encoded`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Applied<V = FeatureVector> {
    /// Applied; with its vector when the event type is scored.
    OnTime(Option<V>),
    /// Older than its partition's watermark: nothing applied, nothing scored.
    Late { watermark_us: i64 },
    /// An enriched event without an event: nothing to do.
    Empty,
}

/// Why an event was not applied.
#[derive(Clone, Copy)]
enum NotApplied {
    Late { watermark_us: i64 },
    Empty,
}

impl<V> From<NotApplied> for Applied<V> {
    fn from(not: NotApplied) -> Self {
        match not {
            NotApplied::Late { watermark_us } => Applied::Late { watermark_us },
            NotApplied::Empty => Applied::Empty,
        }
    }
}

/// Where a scored event's entity of one kind stands.
#[derive(Clone, Copy)]
enum KindRow {
    /// Not looked up yet for this event.
    Unknown,
    /// The event does not carry the kind's fields.
    NoKey,
    Absent,
    Row {
        partition: usize,
        row: usize,
    },
}

/// A sweep done a slice at a time: the next slice and what the turn found so far.
#[derive(Debug, Default)]
struct Rotation {
    slice: usize,
    /// Per partition.
    found: Vec<Sweep>,
    last: Option<std::time::Instant>,
}

pub struct FeatureStore {
    pub(crate) spec: FeatureSpec,
    pub(crate) features: Vec<Feature>,
    pub(crate) kinds: Vec<EntityKey>,
    by_name: HashMap<String, usize>,
    routes: HashMap<String, Vec<Route>>,
    pub(crate) partitions: Vec<PartitionState>,
    pub(crate) watermarks: Watermarks,
    pub(crate) metrics: StoreMetrics,
    ttl_us: i64,
    key: String,
    /// [`FeatureStore::prefetch`]'s key, apart from `key`, which the applied event's read uses.
    ahead_key: String,
    /// [`FeatureStore::prefetch`]'s (partition, kind, key hash, then row) per entity asked for.
    ahead: Vec<(usize, usize, u64)>,
    text: String,
    pending: Vec<(usize, Observation)>,
    kind_rows: Vec<KindRow>,
    /// The field a label names, as an entity key (`label_key_field`).
    label_key: Option<EntityKey>,
    /// A vector's feature readings (feature index, value), reused.
    readings: Vec<(usize, f64)>,
    /// Bytes per entity of the last snapshot, to size the next one's buffer.
    pub(crate) snapshot_bytes_per_row: usize,
    sweeping: Rotation,
    /// What the stored snapshot chain holds.
    pub(crate) chain: crate::snapshot::ChainSize,
}

impl FeatureStore {
    /// An empty store for `spec`. Filters were checked when the pipeline was loaded.
    pub fn new(spec: FeatureSpec, metrics: &Metrics) -> Self {
        Self::with_metrics(spec, StoreMetrics::new(metrics))
    }

    pub(crate) fn with_metrics(spec: FeatureSpec, metrics: StoreMetrics) -> Self {
        let mut kinds: Vec<EntityKey> = Vec::new();
        let mut columns_per_kind: Vec<usize> = Vec::new();
        let mut features = Vec::with_capacity(spec.features.len());
        for def in &spec.features {
            let kind = match kinds.iter().position(|k| k == &def.entity) {
                Some(k) => k,
                None => {
                    kinds.push(def.entity.clone());
                    columns_per_kind.push(0);
                    kinds.len() - 1
                }
            };
            features.push(Feature {
                def: def.clone(),
                kind,
                column: columns_per_kind[kind],
                filter: def.filter.as_deref().and_then(|f| match Expr::parse(f) {
                    Ok(expr) => Some(expr),
                    Err(e) => {
                        tracing::error!(feature = %def.name, "filter does not parse, ignoring it: {e}");
                        None
                    }
                }),
                fingerprint: fingerprint(def, &spec.settings),
                name_field: string_field(NAMES_TAG, &def.name),
            });
            columns_per_kind[kind] += 1;
        }
        let mut routes: HashMap<String, Vec<Route>> = HashMap::default();
        for (i, f) in features.iter().enumerate() {
            let routes = routes.entry(f.def.source.clone()).or_default();
            match routes.iter_mut().find(|r| r.kind == f.kind) {
                Some(route) => route.features.push(i),
                None => routes.push(Route {
                    kind: f.kind,
                    features: vec![i],
                }),
            }
        }
        let partitions = (0..spec.partitions)
            .map(|_| {
                let mut columns: Vec<Vec<Box<dyn Column>>> =
                    kinds.iter().map(|_| Vec::new()).collect();
                for f in &features {
                    columns[f.kind].push(column_for(&f.def, &spec.settings, &metrics.saturated));
                }
                PartitionState {
                    tables: columns.into_iter().map(EntityTable::new).collect(),
                }
            })
            .collect();
        Self {
            by_name: features
                .iter()
                .enumerate()
                .map(|(i, f)| (f.def.name.clone(), i))
                .collect(),
            ttl_us: spec.settings.entity_ttl.as_micros(),
            watermarks: Watermarks::new(spec.settings.allowed_lateness.as_micros()),
            kind_rows: vec![KindRow::Unknown; kinds.len()],
            label_key: spec
                .label_key_field
                .as_deref()
                .and_then(|field| EntityKey::new(vec![field.to_string()]).ok()),
            readings: Vec::new(),
            spec,
            features,
            kinds,
            routes,
            partitions,
            metrics,
            key: String::new(),
            ahead_key: String::new(),
            ahead: Vec::new(),
            text: String::new(),
            pending: Vec::new(),
            snapshot_bytes_per_row: 0,
            sweeping: Rotation::default(),
            chain: Default::default(),
        }
    }

    pub fn watermarks(&self) -> &Watermarks {
        &self.watermarks
    }

    pub(crate) fn partition_of_key(&self, key: &str) -> usize {
        partition_of(key, self.spec.partitions) as usize
    }

    /// Applies one event to every feature it feeds; returns its point-in-time
    /// vector when its type is scored. The vector includes this event.
    pub fn apply(&mut self, enriched: &EnrichedEvent, now_us: i64) -> Applied {
        self.apply_view(&EnrichedView::from(enriched), now_us)
    }

    /// [`Self::apply`] for an event read in place.
    pub fn apply_view(&mut self, enriched: &EnrichedView, now_us: i64) -> Applied {
        let event = match self.update(enriched) {
            Ok(event) => event,
            Err(not) => return not.into(),
        };
        if !self.is_scored(event.r#type()) {
            return Applied::OnTime(None);
        }
        let own = self.read_vector(enriched, event);
        let label_key = self.label_key_of(enriched).to_string();
        let mut names = Vec::with_capacity(self.readings.len() + own.len());
        let mut values = Vec::with_capacity(self.readings.len() + own.len());
        for &(f, x) in &self.readings {
            names.push(self.features[f].def.name.clone());
            values.push(x);
        }
        for (name, x) in own {
            names.push(name.to_string());
            values.push(x);
        }
        Applied::OnTime(Some(FeatureVector {
            label_key,
            event_id: enriched.event_id().to_string(),
            event_type: event.r#type().to_string(),
            entity_key: event.key().to_string(),
            partition: event.partition(),
            event_time_us: event.event_time_us(),
            ingest_time_us: event.ingest_time_us(),
            feature_time_us: now_us,
            names,
            values,
        }))
    }

    /// [`Self::apply_view`], appending the vector's protobuf encoding to `out`
    /// instead of building it: the same bytes, without a `String` per name.
    pub fn apply_encoded(
        &mut self,
        enriched: &EnrichedView,
        now_us: i64,
        out: &mut Vec<u8>,
    ) -> Applied<()> {
        use prost::encoding::{encode_key, encode_varint, WireType};
        let event = match self.update(enriched) {
            Ok(event) => event,
            Err(not) => return not.into(),
        };
        if !self.is_scored(event.r#type()) {
            return Applied::OnTime(None);
        }
        let own = self.read_vector(enriched, event);
        // Fields in number order, defaults left out, as prost encodes them.
        put_string(out, 1, enriched.event_id());
        put_string(out, 2, event.r#type());
        put_string(out, 3, event.key());
        put_int(out, 4, u64::from(event.partition()));
        put_int(out, 5, event.event_time_us() as u64);
        put_int(out, 6, event.ingest_time_us() as u64);
        put_int(out, 7, now_us as u64);
        for &(f, _) in &self.readings {
            out.extend_from_slice(&self.features[f].name_field);
        }
        for (name, _) in &own {
            put_string_entry(out, NAMES_TAG, name);
        }
        let count = self.readings.len() + own.len();
        if count > 0 {
            encode_key(9, WireType::LengthDelimited, out);
            encode_varint(8 * count as u64, out);
            for &(_, x) in &self.readings {
                out.extend_from_slice(&x.to_le_bytes());
            }
            for (_, x) in &own {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        let label_key = self.label_key_of(enriched);
        put_string(out, 10, label_key);
        Applied::OnTime(Some(()))
    }

    /// Called before applying event `i` of a batch whose views `view` reads:
    /// at the start of each group of [`PREFETCH_GROUP`] events, asks for the
    /// next group's rows (and, before the first event, for the first group's).
    pub fn prefetch_ahead<'e, T>(
        &mut self,
        batch: &'e [T],
        i: usize,
        view: impl Fn(&'e T) -> &'e EnrichedView,
    ) {
        if !i.is_multiple_of(PREFETCH_GROUP) {
            return;
        }
        let group = |from: usize| batch.iter().skip(from).take(PREFETCH_GROUP).map(&view);
        if i == 0 {
            self.prefetch(group(0));
        }
        self.prefetch(group(i + PREFETCH_GROUP));
    }

    /// Starts loading into the cache the rows the `events` will update or
    /// read, so that a caller applying a batch can ask for a group of events
    /// ahead of the ones it applies (see [`crate::prefetch`]). Changes no
    /// state. The group's index lookups run back to back, so that their cache
    /// misses overlap instead of following one another.
    pub fn prefetch<'e>(&mut self, events: impl IntoIterator<Item = &'e EnrichedView>) {
        let mut ahead = std::mem::take(&mut self.ahead);
        ahead.clear();
        for enriched in events {
            let Some(event) = enriched.event() else {
                continue;
            };
            let scored = self.is_scored(event.r#type());
            let lookup = |name: &str| enriched.field(name);
            let mut ask = |kind: usize| {
                if self.kinds[kind].write_key(lookup, &mut self.ahead_key) {
                    let partition = partition_of(&self.ahead_key, self.spec.partitions) as usize;
                    let table = &self.partitions[partition].tables[kind];
                    ahead.push((partition, kind, table.hash(&self.ahead_key)));
                }
            };
            // A scored event reads every kind its fields name; another updates its routes' kinds.
            if scored {
                (0..self.kinds.len()).for_each(&mut ask);
            } else if let Some(routes) = self.routes.get(event.r#type()) {
                routes.iter().for_each(|route| ask(route.kind));
            }
        }
        // Each entry's hash becomes its row (`u64::MAX`: none), then the rows are asked for.
        for (partition, kind, hash) in ahead.iter_mut() {
            let row = self.partitions[*partition].tables[*kind].row_by_hash(*hash);
            *hash = row.map_or(u64::MAX, |row| row as u64);
        }
        for &(partition, kind, row) in &ahead {
            if row != u64::MAX {
                self.partitions[partition].tables[kind].prefetch_row(row as usize);
            }
        }
        self.ahead = ahead;
    }

    fn is_scored(&self, event_type: &str) -> bool {
        self.spec.scored_types.iter().any(|s| s == event_type)
    }

    /// Updates every feature the event feeds; the event, or what became of it
    /// when it could not be applied. Notes the rows it touched in `kind_rows`.
    fn update<'e>(&mut self, enriched: &'e EnrichedView) -> Result<EventRef<'e>, NotApplied> {
        let Some(event) = enriched.event() else {
            return Err(NotApplied::Empty);
        };
        let t = event.event_time_us();
        // An event that feeds no feature and asks for no vector (reference
        // data on its way to enrich's tables) moves no clock: the flights'
        // plane records, stamped before the year, would otherwise hold one
        // partition's watermark there, the floor with it, and no window would
        // ever shed a bucket.
        if !self.routes.contains_key(event.r#type()) && !self.is_scored(event.r#type()) {
            return Ok(event);
        }
        if let Verdict::Late { watermark_us } = self.watermarks.observe(event.partition(), t) {
            self.metrics.late.inc();
            return Err(NotApplied::Late { watermark_us });
        }
        self.kind_rows.fill(KindRow::Unknown);
        let floor = self.watermarks.floor();
        let lookup = |name: &str| enriched.field(name);
        let tiebreak = fnv1a64(enriched.event_id().as_bytes());
        let mut updates = 0u64;
        if let Some(routes) = self.routes.get(event.r#type()) {
            for route in routes {
                if !self.kinds[route.kind].write_key(lookup, &mut self.key) {
                    self.kind_rows[route.kind] = KindRow::NoKey;
                    continue;
                }
                self.pending.clear();
                // Features of one route mostly read the same few fields: look each up once.
                let mut last_field: Option<(&str, Option<ValueRef<'_>>)> = None;
                for &f in &route.features {
                    let feature = &self.features[f];
                    if let Some(filter) = &feature.filter {
                        if !filter.eval(&lookup) {
                            continue;
                        }
                    }
                    let mut obs = Observation {
                        time_us: t,
                        value: 0.0,
                        fingerprint: 0,
                        tiebreak,
                    };
                    if let Some(field) = &feature.def.field {
                        let value = match last_field {
                            Some((name, value)) if name == field => value,
                            _ => {
                                let value = lookup(field);
                                last_field = Some((field, value));
                                value
                            }
                        };
                        let Some(value) = value else {
                            continue;
                        };
                        if feature.def.aggregation
                            == millrace_chassis::config::Aggregation::DistinctCount
                        {
                            obs.fingerprint = value_fingerprint(value, &mut self.text);
                        } else {
                            match value.as_f64() {
                                Some(x) => obs.value = x,
                                None => continue,
                            }
                        }
                    }
                    self.pending.push((feature.column, obs));
                }
                if self.pending.is_empty() {
                    continue;
                }
                let partition = partition_of(&self.key, self.spec.partitions) as usize;
                let table = &mut self.partitions[partition].tables[route.kind];
                let row = table.row_for_update(&self.key, t, self.ttl_us);
                // Trimmed first: what the floor has passed leaves the row's recent
                // events before this one joins them (an event on time is not below
                // the floor, so trimming before or after it changes no value).
                table.evict(row, floor);
                for (column, obs) in &self.pending {
                    table.add(row, *column, obs);
                }
                self.kind_rows[route.kind] = KindRow::Row { partition, row };
                updates += self.pending.len() as u64;
            }
        }
        self.metrics.updates.inc_by(updates);
        Ok(event)
    }

    /// Reads every feature whose entity the event names at the event's time
    /// into `readings` (in pipeline order; a feature with no value in its
    /// window is left out); answers the event's own numeric fields and joined
    /// values, by name.
    fn read_vector<'e>(
        &mut self,
        enriched: &'e EnrichedView,
        event: EventRef<'e>,
    ) -> Vec<(&'e str, f64)> {
        let t = event.event_time_us();
        let lookup = |name: &str| enriched.field(name);
        for (k, kind) in self.kinds.iter().enumerate() {
            if !matches!(self.kind_rows[k], KindRow::Unknown) {
                continue;
            }
            self.kind_rows[k] = if !kind.write_key(lookup, &mut self.key) {
                KindRow::NoKey
            } else {
                let partition = partition_of(&self.key, self.spec.partitions) as usize;
                match self.partitions[partition].tables[k].live_row(&self.key, t, self.ttl_us) {
                    Some(row) => KindRow::Row { partition, row },
                    None => KindRow::Absent,
                }
            };
        }
        self.readings.clear();
        for (i, f) in self.features.iter().enumerate() {
            let reading = match self.kind_rows[f.kind] {
                KindRow::NoKey | KindRow::Unknown => continue,
                KindRow::Absent => {
                    self.partitions[0].tables[f.kind].columns()[f.column].read_absent()
                }
                KindRow::Row { partition, row } => {
                    self.partitions[partition].tables[f.kind].read(row, f.column, t)
                }
            };
            if let Some(x) = reading.as_f64() {
                self.readings.push((i, x));
            }
        }
        // By name; a joined value wins over an event field of the same name,
        // and within a map the last entry of a name wins, as a decoded map keeps.
        let (fields, joined) = (event.fields(), enriched.joined());
        let mut own: Vec<(&str, f64)> = Vec::with_capacity(fields.len() + joined.len());
        for (name, value) in fields.iter().chain(joined.iter()) {
            own.retain(|(n, _)| *n != name);
            if let Some(x) = value.and_then(ValueRef::as_f64) {
                own.push((name, x));
            }
        }
        own.sort_by(|a, b| a.0.cmp(b.0));
        self.metrics.vectors.inc();
        own
    }

    /// The label key of a scored event: the field a label names, or its id.
    fn label_key_of<'a>(&'a mut self, enriched: &'a EnrichedView) -> &'a str {
        match &self.label_key {
            Some(key) if key.write_key(|name| enriched.field(name), &mut self.text) => &self.text,
            _ => enriched.event_id(),
        }
    }

    /// Latest values, evaluated at the clock (the newest event time applied);
    /// every requested feature of every entity gets an answer.
    pub fn lookup(&self, entity_keys: &[String], features: &[String]) -> Vec<EntityFeatures> {
        let wanted: Vec<&str> = if features.is_empty() {
            self.features.iter().map(|f| f.def.name.as_str()).collect()
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
        let Some(f) = self.by_name.get(name).map(|&i| &self.features[i]) else {
            return answer(FeatureStatus::UnknownFeature);
        };
        let Some(at) = self.watermarks.clock() else {
            return answer(FeatureStatus::NotFound);
        };
        let table = &self.partitions[self.partition_of_key(entity)].tables[f.kind];
        let Some(row) = table.live_row(entity, at, self.ttl_us) else {
            return answer(FeatureStatus::NotFound);
        };
        let updated = table.columns()[f.column].updated_us(row);
        let value = table.read(row, f.column, at).to_value();
        let status = match value {
            Some(_) => FeatureStatus::Present,
            None => FeatureStatus::Empty,
        };
        FeatureValue {
            name: name.to_string(),
            value,
            status: status as i32,
            event_time_us: if updated == i64::MIN { 0 } else { updated },
        }
    }

    /// Frees expired entities and trims windows to the floor; measures what is
    /// left and reports it. Restarts the sliced sweep.
    pub fn sweep(&mut self) -> Sweep {
        let (expire_before, floor) = self.sweep_bounds();
        let found: Vec<Sweep> = self
            .partitions
            .iter_mut()
            .map(|partition| {
                let mut found = Sweep::default();
                for table in &mut partition.tables {
                    found += table.sweep(expire_before, floor);
                }
                found
            })
            .collect();
        self.sweeping = Rotation {
            last: Some(std::time::Instant::now()),
            ..Rotation::default()
        };
        let total = self.report_sweep(&found);
        self.metrics.expired.inc_by(total.expired as u64);
        total
    }

    /// Sweeps the next of [`SWEEP_SLICES`] slices of every table when one is
    /// due, so that a whole sweep takes [`SWEEP_EVERY`] and no snapshot stops
    /// the actor for a walk over every row. The gauges follow each full turn.
    pub fn sweep_slice_if_due(&mut self) {
        let period = SWEEP_EVERY / SWEEP_SLICES as u32;
        if self.sweeping.last.is_some_and(|at| at.elapsed() < period) {
            return;
        }
        self.sweep_slice();
    }

    /// Sweeps the next slice; answers the turn's total after its last slice.
    pub fn sweep_slice(&mut self) -> Option<Sweep> {
        let (expire_before, floor) = self.sweep_bounds();
        let slice = self.sweeping.slice;
        let last_slice = slice + 1 == SWEEP_SLICES;
        self.sweeping
            .found
            .resize(self.partitions.len(), Sweep::default());
        let mut expired = 0;
        for (partition, found) in self.partitions.iter_mut().zip(&mut self.sweeping.found) {
            for table in &mut partition.tables {
                let per_slice = table.row_count().div_ceil(SWEEP_SLICES);
                let mut s = table.sweep_rows(
                    slice * per_slice..(slice + 1) * per_slice,
                    expire_before,
                    floor,
                );
                if last_slice {
                    s.bytes += table.table_bytes();
                }
                expired += s.expired;
                *found += s;
            }
        }
        self.metrics.expired.inc_by(expired as u64);
        self.sweeping.last = Some(std::time::Instant::now());
        self.sweeping.slice += 1;
        if !last_slice {
            return None;
        }
        let found = std::mem::take(&mut self.sweeping.found);
        self.sweeping.slice = 0;
        Some(self.report_sweep(&found))
    }

    /// Entities last seen before the first bound are expired; windows are trimmed to the second.
    fn sweep_bounds(&self) -> (i64, i64) {
        let floor = self.watermarks.floor();
        (floor.saturating_sub(self.ttl_us), floor)
    }

    /// Sets the gauges from what a sweep found per partition; answers the total.
    fn report_sweep(&self, found: &[Sweep]) -> Sweep {
        let mut total = Sweep::default();
        for (p, s) in found.iter().enumerate() {
            total += *s;
            self.metrics
                .entities
                .with_label_values(&[&p.to_string()])
                .set(i64::try_from(s.rows).unwrap_or(i64::MAX));
        }
        self.metrics
            .state_bytes
            .set(i64::try_from(total.bytes).unwrap_or(i64::MAX));
        self.metrics.bytes_per_entity.set(if total.rows == 0 {
            0.0
        } else {
            total.bytes as f64 / total.rows as f64
        });
        total
    }

    pub fn report_watermarks(&self) {
        for (p, w) in self.watermarks.partitions() {
            self.metrics
                .watermark
                .with_label_values(&[&p.to_string()])
                .set(w as f64 / 1e6);
        }
    }

    /// Entities held, summed over entity kinds and partitions.
    pub fn entity_count(&self) -> usize {
        self.partitions
            .iter()
            .flat_map(|p| p.tables.iter())
            .map(EntityTable::len)
            .sum()
    }
}

/// `FeatureVector.names`' field number.
const NAMES_TAG: u32 = 8;

/// A string field as prost encodes it (nothing for an empty string).
fn put_string(out: &mut Vec<u8>, tag: u32, value: &str) {
    if !value.is_empty() {
        put_string_entry(out, tag, value);
    }
}

/// One entry of a string field, empty or not (as a repeated field holds it).
fn put_string_entry(out: &mut Vec<u8>, tag: u32, value: &str) {
    use prost::encoding::{encode_key, encode_varint, WireType};
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(value.len() as u64, out);
    out.extend_from_slice(value.as_bytes());
}

/// An integer field as prost encodes it (nothing for 0; negatives in ten bytes).
fn put_int(out: &mut Vec<u8>, tag: u32, value: u64) {
    use prost::encoding::{encode_key, encode_varint, WireType};
    if value != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(value, out);
    }
}

/// [`put_string_entry`] into a buffer of its own.
fn string_field(tag: u32, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    put_string_entry(&mut out, tag, value);
    out
}

/// FNV-1a of the value's canonical text (the text an entity key would print).
fn value_fingerprint(value: ValueRef<'_>, scratch: &mut String) -> u64 {
    use std::fmt::Write as _;
    if let ValueRef::Str(s) = value {
        return fnv1a64(s.as_bytes());
    }
    scratch.clear();
    // Writing into a String cannot fail.
    let _ = match value {
        ValueRef::Int(v) => write!(scratch, "{v}"),
        ValueRef::TimestampUs(v) => write!(scratch, "{v}"),
        ValueRef::Bool(v) => write!(scratch, "{v}"),
        ValueRef::Double(v) => write!(scratch, "{v}"),
        ValueRef::Str(_) => Ok(()),
    };
    fnv1a64(scratch.as_bytes())
}

/// Fingerprint of everything that decides a feature's state.
fn fingerprint(def: &FeatureDef, settings: &FeatureStateSettings) -> u64 {
    let decisive = (
        &def.source,
        def.entity.fields(),
        def.aggregation,
        &def.field,
        &def.filter,
        def.window,
        def.distinct_bound(settings),
    );
    postcard::to_stdvec(&decisive)
        .map(|bytes| fnv1a64(&bytes))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::EncodedState;
    use millrace_chassis::config::{Aggregation, EventDuration, WindowDef};
    use millrace_chassis::stage::Part;
    use millrace_proto::{Event, Value};
    use prost::Message as _;

    const MIN: i64 = 60_000_000;

    fn feature(
        name: &str,
        entity: &[&str],
        aggregation: Aggregation,
        field: Option<&str>,
        window: WindowDef,
    ) -> FeatureDef {
        FeatureDef {
            name: name.into(),
            source: "flight_scheduled".into(),
            entity: EntityKey::new(entity.iter().map(|s| s.to_string()).collect()).expect("entity"),
            aggregation,
            field: field.map(str::to_string),
            filter: None,
            window,
            max_distinct: None,
        }
    }

    fn minutes(n: i64) -> EventDuration {
        EventDuration::from_micros(n * MIN)
    }

    /// Lateness 10 min, TTL 1 day, 4 partitions.
    fn spec(features: Vec<FeatureDef>) -> FeatureSpec {
        FeatureSpec {
            features,
            settings: FeatureStateSettings {
                allowed_lateness: minutes(10),
                entity_ttl: minutes(24 * 60),
                max_distinct: 100,
            },
            scored_types: vec!["flight_scheduled".into()],
            label_key_field: Some("flight_id".into()),
            partitions: 4,
        }
    }

    fn flight(
        id: &str,
        origin: &str,
        dest: &str,
        distance: f64,
        minute: i64,
        partition: u32,
    ) -> EnrichedEvent {
        EnrichedEvent {
            event_id: id.into(),
            event: Some(Event {
                event_id: id.into(),
                r#type: "flight_scheduled".into(),
                key: origin.into(),
                partition,
                event_time_us: minute * MIN,
                fields: [
                    ("flight_id".to_string(), Value::string(format!("f-{id}"))),
                    ("origin".to_string(), Value::string(origin)),
                    ("dest".to_string(), Value::string(dest)),
                    ("distance".to_string(), Value::double(distance)),
                ]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn store(features: Vec<FeatureDef>) -> FeatureStore {
        FeatureStore::new(spec(features), &Metrics::new())
    }

    fn vector(s: &mut FeatureStore, e: &EnrichedEvent) -> Vec<(String, f64)> {
        match s.apply(e, 0) {
            Applied::OnTime(Some(v)) => v.names.into_iter().zip(v.values).collect(),
            other => panic!("{}: expected a vector, got {other:?}", e.event_id),
        }
    }

    fn get(v: &[(String, f64)], name: &str) -> Option<f64> {
        v.iter().find(|(n, _)| n == name).map(|(_, x)| *x)
    }

    #[test]
    fn vectors_are_point_in_time_and_include_the_event() {
        let sliding = WindowDef::Sliding {
            size: minutes(60),
            granularity: minutes(1),
        };
        let mut s = store(vec![
            feature(
                "origin_flights_1h",
                &["origin"],
                Aggregation::Count,
                None,
                sliding,
            ),
            feature(
                "route_mean_distance",
                &["origin", "dest"],
                Aggregation::Mean,
                Some("distance"),
                WindowDef::Lifetime,
            ),
            feature(
                "origin_dests_1h",
                &["origin"],
                Aggregation::DistinctCount,
                Some("dest"),
                sliding,
            ),
            feature(
                "origin_last_distance",
                &["origin"],
                Aggregation::Last,
                Some("distance"),
                WindowDef::Lifetime,
            ),
        ]);
        // (event, minute, expected origin_flights_1h, route mean, distinct dests, last)
        let cases = [
            (
                flight("a", "JFK", "LAX", 2475.0, 0, 1),
                1.0,
                2475.0,
                1.0,
                2475.0,
            ),
            (
                flight("b", "JFK", "SFO", 2586.0, 10, 1),
                2.0,
                2586.0,
                2.0,
                2586.0,
            ),
            (
                flight("c", "JFK", "LAX", 2475.0, 59, 1),
                3.0,
                2475.0,
                2.0,
                2475.0,
            ),
            // Minute 60: the flight at minute 0 slid out of the hour.
            (
                flight("d", "JFK", "LAX", 2477.0, 60, 1),
                3.0,
                2_475.666_666_666_666_5,
                2.0,
                2477.0,
            ),
            // Another origin: its own entity; JFK untouched.
            (
                flight("e", "EWR", "LAX", 2454.0, 61, 2),
                1.0,
                2454.0,
                1.0,
                2454.0,
            ),
            // Out of order within lateness (minute 55 < 60): read as of minute 55, the
            // flights of minutes 59 and 60 are later and not counted, `last` included
            // (as of minute 55 the latest is this one).
            (
                flight("f", "JFK", "BOS", 187.0, 55, 1),
                3.0,
                187.0,
                3.0,
                187.0,
            ),
        ];
        for (event, count, mean, distinct, last) in cases {
            let v = vector(&mut s, &event);
            let id = &event.event_id;
            assert_eq!(get(&v, "origin_flights_1h"), Some(count), "{id}: count");
            let got_mean = get(&v, "route_mean_distance").expect("mean");
            assert!(
                (got_mean - mean).abs() < 1e-6,
                "{id}: mean {got_mean} != {mean}"
            );
            assert_eq!(get(&v, "origin_dests_1h"), Some(distinct), "{id}: distinct");
            assert_eq!(get(&v, "origin_last_distance"), Some(last), "{id}: last");
            assert_eq!(
                get(&v, "distance"),
                Some(
                    event
                        .event
                        .as_ref()
                        .map_or(0.0, |e| e.fields["distance"].as_f64().unwrap_or(0.0))
                ),
                "{id}: own field"
            );
        }
    }

    #[test]
    fn vector_names_run_in_pipeline_order_then_own_fields_and_carry_the_label_key() {
        let mut s = store(vec![
            feature(
                "b_count",
                &["origin"],
                Aggregation::Count,
                None,
                WindowDef::Lifetime,
            ),
            feature(
                "a_mean",
                &["dest"],
                Aggregation::Mean,
                Some("distance"),
                WindowDef::Lifetime,
            ),
        ]);
        let Applied::OnTime(Some(v)) = s.apply(&flight("a", "JFK", "LAX", 10.0, 0, 1), 7) else {
            panic!("no vector")
        };
        assert_eq!(v.names, ["b_count", "a_mean", "distance"]);
        assert_eq!(v.values, [1.0, 10.0, 10.0]);
        assert_eq!(
            (v.label_key.as_str(), v.feature_time_us, v.partition),
            ("f-a", 7, 1)
        );
    }

    #[test]
    fn empty_window_leaves_value_features_out_but_counts_read_zero() {
        let tumbling = WindowDef::Tumbling { size: minutes(60) };
        let mut s = store(vec![
            feature(
                "origin_flights_prev_hour",
                &["origin"],
                Aggregation::Count,
                None,
                tumbling,
            ),
            feature(
                "origin_mean_distance_prev_hour",
                &["origin"],
                Aggregation::Mean,
                Some("distance"),
                tumbling,
            ),
        ]);
        let v = vector(&mut s, &flight("a", "JFK", "LAX", 100.0, 5, 1));
        assert_eq!(get(&v, "origin_flights_prev_hour"), Some(0.0));
        assert_eq!(get(&v, "origin_mean_distance_prev_hour"), None);
        let v = vector(&mut s, &flight("b", "JFK", "LAX", 300.0, 65, 1));
        assert_eq!(get(&v, "origin_flights_prev_hour"), Some(1.0));
        assert_eq!(get(&v, "origin_mean_distance_prev_hour"), Some(100.0));
    }

    #[test]
    fn late_event_beyond_allowed_lateness_is_neither_applied_nor_scored() {
        let mut s = store(vec![feature(
            "origin_flights",
            &["origin"],
            Aggregation::Count,
            None,
            WindowDef::Lifetime,
        )]);
        vector(&mut s, &flight("a", "JFK", "LAX", 1.0, 100, 1));
        // Lateness 10 min: minute 90 is on time, 89 late (watermark 90), in partition 1 only.
        vector(&mut s, &flight("b", "JFK", "LAX", 1.0, 90, 1));
        assert_eq!(
            s.apply(&flight("c", "JFK", "LAX", 1.0, 89, 1), 0),
            Applied::Late {
                watermark_us: 90 * MIN
            }
        );
        // Partition 3 has no watermark yet: minute 5 is on time there.
        assert!(matches!(
            s.apply(&flight("d", "JFK", "LAX", 1.0, 5, 3), 0),
            Applied::OnTime(Some(_))
        ));
        let v = vector(&mut s, &flight("e", "JFK", "LAX", 1.0, 100, 1));
        assert_eq!(
            get(&v, "origin_flights"),
            Some(4.0),
            "the late one was not counted"
        );
        assert_eq!(s.metrics.late.get(), 1);
    }

    /// A `flight_departed` (a label type that features read) leaving `origin`
    /// at `minute` with `delay` minutes, on `partition` (departures are keyed by flight).
    fn departure(
        id: &str,
        origin: &str,
        tailnum: &str,
        delay: f64,
        minute: i64,
        partition: u32,
    ) -> EnrichedEvent {
        EnrichedEvent {
            event_id: id.into(),
            event: Some(Event {
                event_id: id.into(),
                r#type: "flight_departed".into(),
                key: id.into(),
                partition,
                event_time_us: minute * MIN,
                fields: [
                    ("flight_id".to_string(), Value::string(id)),
                    ("origin".to_string(), Value::string(origin)),
                    ("tailnum".to_string(), Value::string(tailnum)),
                    ("dep_delay".to_string(), Value::double(delay)),
                ]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_departure_after_the_scoring_time_is_not_counted_even_when_applied_first() {
        let from_departures = |mut def: FeatureDef| {
            def.source = "flight_departed".into();
            def
        };
        let sliding = WindowDef::Sliding {
            size: minutes(60),
            granularity: minutes(5),
        };
        let mut s = store(vec![
            from_departures(feature(
                "origin_delay_mean_1h",
                &["origin"],
                Aggregation::Mean,
                Some("dep_delay"),
                sliding,
            )),
            from_departures(feature(
                "origin_departures_1h",
                &["origin"],
                Aggregation::Count,
                None,
                sliding,
            )),
            from_departures(feature(
                "tailnum_last_delay",
                &["tailnum"],
                Aggregation::Last,
                Some("dep_delay"),
                WindowDef::Lifetime,
            )),
            from_departures(feature(
                "tailnum_secs_since_departure",
                &["tailnum"],
                Aggregation::SinceLast,
                None,
                WindowDef::Lifetime,
            )),
        ]);
        let mut scored = flight("s", "JFK", "LAX", 2475.0, 101, 1);
        if let Some(e) = scored.event.as_mut() {
            e.fields.insert("tailnum".into(), Value::string("N1"));
        }
        // Departures not scored: no vector.
        assert_eq!(
            s.apply(&departure("d1", "JFK", "N1", 10.0, 90, 2), 0),
            Applied::OnTime(None)
        );
        // Departs at minute 103, in the 5-minute bucket [100, 105) of the scoring
        // time 101, and reaches feature-state first (another partition ran ahead).
        s.apply(&departure("d2", "JFK", "N1", 40.0, 103, 3), 0);
        let v = vector(&mut s, &scored);
        assert_eq!(get(&v, "origin_delay_mean_1h"), Some(10.0), "d2 left out");
        assert_eq!(get(&v, "origin_departures_1h"), Some(1.0));
        assert_eq!(
            get(&v, "tailnum_last_delay"),
            Some(10.0),
            "the plane's departure by 101"
        );
        assert_eq!(
            get(&v, "tailnum_secs_since_departure"),
            Some(660.0),
            "11 minutes"
        );
        // Once scored later, both count.
        let mut later = flight("s2", "JFK", "SFO", 2586.0, 104, 1);
        if let Some(e) = later.event.as_mut() {
            e.fields.insert("tailnum".into(), Value::string("N1"));
        }
        let v = vector(&mut s, &later);
        assert_eq!(get(&v, "origin_delay_mean_1h"), Some(25.0));
        assert_eq!(get(&v, "origin_departures_1h"), Some(2.0));
        assert_eq!(get(&v, "tailnum_last_delay"), Some(40.0));
        assert_eq!(get(&v, "tailnum_secs_since_departure"), Some(60.0));
        // What a lookup answers is as of the clock (minute 104).
        let got = s.lookup(&["N1".into()], &["tailnum_secs_since_departure".into()]);
        assert_eq!(got[0].values[0].value, Some(Value::double(60.0)));
    }

    #[test]
    fn filter_selects_the_events_a_feature_counts() {
        let mut long_haul = feature(
            "origin_long_haul",
            &["origin"],
            Aggregation::Count,
            None,
            WindowDef::Lifetime,
        );
        long_haul.filter = Some("distance >= 1000".into());
        let mut s = store(vec![long_haul]);
        for (id, d) in [("a", 2475.0), ("b", 187.0), ("c", 1000.0)] {
            s.apply(&flight(id, "JFK", "LAX", d, 1, 1), 0);
        }
        let got = s.lookup(&["JFK".into()], &[]);
        assert_eq!(got[0].values[0].value, Some(Value::int(2)));
    }

    #[test]
    fn lookup_answers_present_not_found_unknown_and_valueless() {
        let mut s = store(vec![
            feature(
                "origin_flights",
                &["origin"],
                Aggregation::Count,
                None,
                WindowDef::Lifetime,
            ),
            feature(
                "origin_prev_hour_mean",
                &["origin"],
                Aggregation::Mean,
                Some("distance"),
                WindowDef::Tumbling { size: minutes(60) },
            ),
        ]);
        let nothing = s.lookup(&["JFK".into()], &["origin_flights".into()]);
        assert_eq!(
            nothing[0].values[0].status,
            FeatureStatus::NotFound as i32,
            "before any event"
        );
        s.apply(&flight("a", "JFK", "LAX", 10.0, 5, 1), 0);
        let got = s.lookup(
            &["JFK".into(), "nowhere".into()],
            &[
                "origin_flights".into(),
                "origin_prev_hour_mean".into(),
                "nope".into(),
            ],
        );
        let v = |e: usize, f: usize| &got[e].values[f];
        assert_eq!(
            (v(0, 0).status, v(0, 0).value.clone(), v(0, 0).event_time_us),
            (FeatureStatus::Present as i32, Some(Value::int(1)), 5 * MIN)
        );
        assert_eq!(
            (v(0, 1).status, v(0, 1).value.clone()),
            (FeatureStatus::Empty as i32, None),
            "known entity, empty window"
        );
        assert_eq!(v(0, 2).status, FeatureStatus::UnknownFeature as i32);
        assert_eq!(v(1, 0).status, FeatureStatus::NotFound as i32);
        assert_eq!(v(1, 2).status, FeatureStatus::UnknownFeature as i32);
    }

    #[test]
    fn reference_events_that_feed_nothing_hold_no_watermark_back() {
        let mut s = store(vec![feature(
            "origin_flights",
            &["origin"],
            Aggregation::Count,
            None,
            WindowDef::Lifetime,
        )]);
        // A plane record a day before the flights, alone on partition 3.
        let mut plane = flight("p", "JFK", "LAX", 1.0, 0, 3);
        if let Some(event) = plane.event.as_mut() {
            event.r#type = "plane_registered".into();
        }
        assert!(matches!(s.apply(&plane, 0), Applied::OnTime(None)));
        s.apply(&flight("a", "JFK", "LAX", 1.0, 24 * 60, 1), 0);
        assert_eq!(
            s.watermarks
                .partitions()
                .map(|(p, _)| p)
                .collect::<Vec<_>>(),
            vec![1],
            "only the partition that fed a feature has a clock"
        );
        assert!(s.watermarks.floor() > 0, "the floor follows the flights");
    }

    #[test]
    fn entities_expire_after_their_ttl_of_event_time() {
        let mut s = store(vec![feature(
            "origin_flights",
            &["origin"],
            Aggregation::Count,
            None,
            WindowDef::Lifetime,
        )]);
        s.apply(&flight("a", "JFK", "LAX", 1.0, 0, 1), 0);
        s.apply(&flight("b", "EWR", "LAX", 1.0, 24 * 60 + 20, 2), 0);
        // The clock is a day and 20 minutes on, JFK idle since minute 0 (TTL one day).
        let got = s.lookup(&["JFK".into()], &[]);
        assert_eq!(got[0].values[0].status, FeatureStatus::NotFound as i32);
        // Partition 1's watermark still holds the floor back: the row stays until it moves.
        s.sweep();
        assert_eq!(s.entity_count(), 2);
        s.apply(&flight("c", "LGA", "LAX", 1.0, 24 * 60 + 20, 1), 0);
        assert_eq!(s.sweep().expired, 1);
        assert_eq!(s.entity_count(), 2);
        let v = vector(&mut s, &flight("d", "JFK", "LAX", 1.0, 24 * 60 + 25, 1));
        assert_eq!(
            get(&v, "origin_flights"),
            Some(1.0),
            "a returning entity starts afresh"
        );
    }

    fn every_kind() -> Vec<FeatureDef> {
        vec![
            feature(
                "c",
                &["origin"],
                Aggregation::Count,
                None,
                WindowDef::Lifetime,
            ),
            feature(
                "s",
                &["origin"],
                Aggregation::Sum,
                Some("distance"),
                WindowDef::Sliding {
                    size: minutes(60),
                    granularity: minutes(5),
                },
            ),
            feature(
                "m",
                &["origin", "dest"],
                Aggregation::Mean,
                Some("distance"),
                WindowDef::Hopping {
                    size: minutes(60),
                    hop: minutes(15),
                },
            ),
            feature(
                "lo",
                &["dest"],
                Aggregation::Min,
                Some("distance"),
                WindowDef::Tumbling { size: minutes(30) },
            ),
            feature(
                "hi",
                &["dest"],
                Aggregation::Max,
                Some("distance"),
                WindowDef::Session { gap: minutes(20) },
            ),
            feature(
                "sd",
                &["origin"],
                Aggregation::Stddev,
                Some("distance"),
                WindowDef::Lifetime,
            ),
            feature(
                "l",
                &["origin"],
                Aggregation::Last,
                Some("distance"),
                WindowDef::Lifetime,
            ),
            feature(
                "d",
                &["origin"],
                Aggregation::DistinctCount,
                Some("dest"),
                WindowDef::Sliding {
                    size: minutes(120),
                    granularity: minutes(10),
                },
            ),
        ]
    }

    fn traffic(range: std::ops::Range<i64>) -> Vec<EnrichedEvent> {
        let origins = ["JFK", "EWR", "LGA"];
        let dests = ["LAX", "SFO", "BOS", "ORD", "ATL"];
        range
            .map(|i| {
                let origin = origins[(i % 3) as usize];
                flight(
                    &format!("e{i}"),
                    origin,
                    dests[((i * 7) % 5) as usize],
                    (100 + (i * 37) % 900) as f64,
                    i * 3 - (i % 4),
                    (i % 3) as u32,
                )
            })
            .collect()
    }

    #[test]
    fn snapshot_restores_the_same_state_and_the_same_future() {
        let events = traffic(0..400);
        let (first, second) = events.split_at(250);
        let mut straight = store(every_kind());
        let mut resumed = store(every_kind());
        for e in first {
            straight.apply(e, 0);
            resumed.apply(e, 0);
        }
        let taken = resumed.snapshot().expect("encode");
        assert_eq!(taken.part, Part::Whole, "the first snapshot is whole");
        let (mut resumed, restored) = store(every_kind()).restore(&[taken.state]).expect("decode");
        assert!(
            restored.started_empty.is_empty() && restored.dropped.is_empty(),
            "{restored:?}"
        );
        assert_eq!(restored.entities, straight.entity_count());
        for e in second {
            assert_eq!(straight.apply(e, 0), resumed.apply(e, 0), "{}", e.event_id);
        }
        let keys: Vec<String> = ["JFK", "EWR", "LGA", "LAX", "BOS", "JFK|LAX", "EWR|ORD"]
            .map(String::from)
            .to_vec();
        assert_eq!(straight.lookup(&keys, &[]), resumed.lookup(&keys, &[]));
        // The same state encodes to the same size (rows may sit in other slots).
        straight.sweep();
        resumed.sweep();
        assert_eq!(
            straight.encode().expect("a").0.len(),
            resumed.encode().expect("b").0.len()
        );
    }

    #[test]
    fn prefetching_ahead_changes_no_vector_and_no_value() {
        let events = traffic(0..300);
        let mut plain = store(every_kind());
        let mut ahead = store(every_kind());
        for (i, e) in events.iter().enumerate() {
            // Every distance ahead the actor could use, and events not yet seen.
            if let Some(next) = events.get(i + 1 + i % 5) {
                ahead.prefetch([&EnrichedView::from(next)]);
            }
            assert_eq!(plain.apply(e, 0), ahead.apply(e, 0), "{}", e.event_id);
        }
        let keys: Vec<String> = ["JFK", "EWR", "LAX", "JFK|LAX", "nowhere"]
            .map(String::from)
            .to_vec();
        assert_eq!(plain.lookup(&keys, &[]), ahead.lookup(&keys, &[]));
    }

    #[test]
    fn a_chain_of_changes_restores_what_the_whole_state_would() {
        let step = |i: i64, minute: i64| {
            let origin = format!("A{:03}", i % 200);
            flight(
                &format!("e{i}"),
                &origin,
                "LAX",
                100.0 + i as f64,
                minute,
                (i % 3) as u32,
            )
        };
        // All 200 origins, then a few at a time; then, two days on, a few of
        // them again (starting afresh), and a sweep frees the rest (TTL one day).
        let mut batches: Vec<Vec<EnrichedEvent>> = vec![(0..200).map(|i| step(i, i)).collect()];
        for b in 0..4 {
            batches.push((0..5).map(|j| step(200 + b * 5 + j, 400 + b)).collect());
        }
        let later = 2 * 24 * 60;
        batches.push((0..5).map(|j| step(300 + j, later + j)).collect());
        let mut straight = store(every_kind());
        let mut live = store(every_kind());
        let (mut chain, mut parts) = (Vec::new(), Vec::new());
        for (n, batch) in batches.iter().enumerate() {
            for e in batch {
                assert_eq!(straight.apply(e, 0), live.apply(e, 0), "{}", e.event_id);
            }
            if n == batches.len() - 1 {
                assert!(live.sweep().expired > 150);
                straight.sweep();
            }
            let taken = live.snapshot().expect("encode");
            if taken.part == Part::Whole {
                chain.clear();
            }
            parts.push(taken.part);
            chain.push(taken.state);
        }
        assert_eq!(parts[0], Part::Whole);
        assert!(parts[1..].iter().all(|&p| p == Part::Changes), "{parts:?}");
        assert!(
            chain[1].0.len() * 10 < chain[0].0.len(),
            "changes of 5 entities: {} bytes against {} for the whole",
            chain[1].0.len(),
            chain[0].0.len()
        );

        let (mut restored, report) = store(every_kind()).restore(&chain).expect("restore");
        assert_eq!(report.entities, straight.entity_count());
        let keys: Vec<String> = (0..200).map(|i| format!("A{i:03}")).collect();
        assert_eq!(straight.lookup(&keys, &[]), restored.lookup(&keys, &[]));
        for i in 0..40 {
            let e = step(400 + i * 5, later + 10 + i);
            assert_eq!(
                straight.apply(&e, 0),
                restored.apply(&e, 0),
                "{}",
                e.event_id
            );
        }
        assert_eq!(straight.lookup(&keys, &[]), restored.lookup(&keys, &[]));
        straight.sweep();
        restored.sweep();
        assert_eq!(
            straight.encode().expect("a").0.len(),
            restored.encode().expect("b").0.len()
        );
    }

    #[test]
    fn a_chain_of_small_changes_is_bounded_in_records() {
        // A whole state large enough that the record count, not the size, ends the chain.
        let mut s = store(every_kind());
        for i in 0..10_000 {
            let e = flight(&format!("e{i}"), &format!("A{i:05}"), "LAX", 1.0, i / 20, 0);
            s.apply(&e, 0);
        }
        let parts: Vec<Part> = (0..=crate::snapshot::MAX_CHANGE_RECORDS + 1)
            .map(|i| {
                let i = i as i64;
                s.apply(
                    &flight(&format!("q{i}"), "A00000", "LAX", 1.0, 500 + i, 0),
                    0,
                );
                s.snapshot().expect("encode").part
            })
            .collect();
        let wholes: Vec<usize> = (0..parts.len())
            .filter(|&i| parts[i] == Part::Whole)
            .collect();
        assert_eq!(wholes, [0, crate::snapshot::MAX_CHANGE_RECORDS + 1]);
    }

    #[test]
    fn a_sweep_in_slices_finds_what_one_whole_sweep_finds() {
        // 300 origins over a day, then a few more a day later: most expire (TTL one day).
        let mut events: Vec<EnrichedEvent> = (0..300)
            .map(|i| {
                flight(
                    &format!("e{i}"),
                    &format!("A{i:03}"),
                    "LAX",
                    1.0,
                    i,
                    (i % 3) as u32,
                )
            })
            .collect();
        let later = 24 * 60 + 200;
        events.extend((0..6).map(|i| {
            flight(
                &format!("l{i}"),
                "JFK",
                "SFO",
                1.0,
                later + i,
                (i % 3) as u32,
            )
        }));
        let mut whole = store(every_kind());
        let mut sliced = store(every_kind());
        for e in &events {
            whole.apply(e, 0);
            sliced.apply(e, 0);
        }
        let once = whole.sweep();
        assert!(once.expired > 100, "{once:?}");
        let turns: Vec<Option<Sweep>> = (0..SWEEP_SLICES).map(|_| sliced.sweep_slice()).collect();
        assert!(turns[..SWEEP_SLICES - 1].iter().all(Option::is_none));
        let turn = turns[SWEEP_SLICES - 1].expect("the last slice ends the turn");
        assert_eq!((turn.expired, turn.rows), (once.expired, once.rows));
        // What the tables take besides their rows' states (keys, index, per-row
        // vectors) follows the index's capacity, which depends on each map's
        // random hash seed (hashbrown reuses or grows its table by where the
        // keys fell); the rows' states must be equal.
        let table_bytes = |s: &FeatureStore| -> usize {
            s.partitions
                .iter()
                .flat_map(|p| &p.tables)
                .map(|t| t.table_bytes())
                .sum()
        };
        assert_eq!(
            turn.bytes - table_bytes(&sliced),
            once.bytes - table_bytes(&whole),
            "{turn:?} {once:?}"
        );
        assert_eq!(sliced.entity_count(), whole.entity_count());
        assert_eq!(
            sliced.encode().expect("a").0.len(),
            whole.encode().expect("b").0.len()
        );
    }

    #[test]
    fn restore_keeps_unchanged_features_and_starts_changed_ones_empty() {
        let mut before = store(every_kind());
        for e in traffic(0..50) {
            before.apply(&e, 0);
        }
        let bytes = before.snapshot().expect("encode").state;
        let mut changed = every_kind();
        changed.retain(|f| f.name != "l");
        changed[0].window = WindowDef::Sliding {
            size: minutes(60),
            granularity: minutes(1),
        };
        changed.push(feature(
            "new",
            &["carrier"],
            Aggregation::Count,
            None,
            WindowDef::Lifetime,
        ));
        let (after, restored) = store(changed).restore(&[bytes]).expect("decode");
        assert_eq!(restored.started_empty, ["c", "new"]);
        assert_eq!(restored.dropped, ["l"]);
        let kept = |s: &FeatureStore| s.lookup(&["JFK".into()], &["sd".into(), "s".into()]);
        assert_eq!(kept(&before), kept(&after));
    }

    #[test]
    fn the_flights_pipeline_builds_a_store() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/flights/pipeline.toml");
        let p = Pipeline::load(&path).expect("the flights pipeline parses");
        let s = FeatureStore::new(FeatureSpec::from_pipeline(&p), &Metrics::new());
        assert!(s.features.len() >= 10, "{} features", s.features.len());
        assert!(s
            .features
            .iter()
            .all(|f| f.def.filter.is_none() || f.filter.is_some()));
    }

    #[test]
    fn corrupt_snapshot_bytes_are_refused_with_the_reason() {
        let mut s = store(every_kind());
        for e in traffic(0..20) {
            s.apply(&e, 0);
        }
        let good = s.snapshot().expect("encode").state.0;
        let cases: [(&str, Vec<u8>, &str); 3] = [
            ("bad_magic", b"XXXX".to_vec(), "bad magic"),
            (
                "future_version",
                [b"MRFS".as_slice(), &[9]].concat(),
                "format version 9",
            ),
            ("truncated", good[..good.len() - 3].to_vec(), "truncated"),
        ];
        for (name, bytes, expected) in cases {
            let err = store(every_kind())
                .restore(&[EncodedState(bytes)])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(expected), "{name}: {err}");
        }
    }

    #[test]
    fn encoded_vectors_are_the_bytes_prost_encodes_for_the_vector() {
        let features = || {
            vec![
                feature(
                    "origin_flights",
                    &["origin"],
                    Aggregation::Count,
                    None,
                    WindowDef::Lifetime,
                ),
                feature(
                    "route_mean_distance",
                    &["origin", "dest"],
                    Aggregation::Mean,
                    Some("distance"),
                    WindowDef::Lifetime,
                ),
                feature(
                    "tail_max_distance",
                    &["tailnum"],
                    Aggregation::Max,
                    Some("distance"),
                    WindowDef::Lifetime,
                ),
                feature(
                    "origin_dests",
                    &["origin"],
                    Aggregation::DistinctCount,
                    Some("dest"),
                    WindowDef::Tumbling { size: minutes(60) },
                ),
            ]
        };
        let mut joined = flight("j", "JFK", "LAX", 100.0, 3, 2);
        joined.joined = [
            ("distance".to_string(), Value::double(-7.5)),
            ("weather_temp".to_string(), Value::int(-4)),
            ("weather_sky".to_string(), Value::string("clear")),
        ]
        .into();
        let mut unlabelled = flight("u", "EWR", "SFO", 5.0, 4, 0);
        if let Some(e) = unlabelled.event.as_mut() {
            e.fields.remove("flight_id");
            e.ingest_time_us = -3;
        }
        let events = [
            flight("a", "JFK", "LAX", 2475.0, 0, 1),
            flight("b", "JFK", "SFO", 2586.0, 1, 1),
            joined,
            unlabelled,
            flight("late", "JFK", "LAX", 1.0, -100, 1),
            flight("c", "JFK", "LAX", 2475.0, 90, 3),
        ];
        for label in [Some("flight_id"), None] {
            let mut spec = spec(features());
            spec.label_key_field = label.map(str::to_string);
            let mut built = FeatureStore::new(spec.clone(), &Metrics::new());
            let mut encoded = FeatureStore::new(spec, &Metrics::new());
            for (i, e) in events.iter().enumerate() {
                let mut out = vec![0xff];
                let got = encoded.apply_encoded(&EnrichedView::from(e), i as i64 * 1000, &mut out);
                match built.apply(e, i as i64 * 1000) {
                    Applied::OnTime(Some(v)) => {
                        assert_eq!(got, Applied::OnTime(Some(())), "{}", e.event_id);
                        assert_eq!(out[1..], v.encode_to_vec(), "{} {label:?}", e.event_id);
                    }
                    Applied::OnTime(None) => assert_eq!(got, Applied::OnTime(None)),
                    Applied::Late { watermark_us } => {
                        assert_eq!(got, Applied::Late { watermark_us }, "{}", e.event_id);
                        assert_eq!(out, [0xff], "nothing written for a late event");
                    }
                    Applied::Empty => assert_eq!(got, Applied::Empty),
                }
            }
        }
    }
}
