//! Just enough HTTP to read `/readyz` and `/metrics`: one GET per connection
//! (`Connection: close`), and a parser for the Prometheus text format.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// `GET http://<addr><path>`, answered within 10 s.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.context("connecting")?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .context("sending the request")?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .context("reading the response")?;
        parse_response(&raw)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("GET http://{addr}{path}: no answer within 10 s"))?
        .with_context(|| format!("GET http://{addr}{path}"))
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the response has no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = &raw[split + 4..];
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    let body = String::from_utf8(body).context("the body is not UTF-8")?;
    Ok(HttpResponse { status, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk size line has no end")?;
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            bail!("a chunk of {size} bytes is cut short");
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// The body of `GET /metrics`, which must answer 200.
pub async fn metrics(http_addr: SocketAddr) -> Result<String> {
    let response = http_get(http_addr, "/metrics").await?;
    if response.status != 200 {
        bail!(
            "GET http://{http_addr}/metrics answered {}: {}",
            response.status,
            response.body
        );
    }
    Ok(response.body)
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample in a Prometheus text exposition; comments and unparsable lines are skipped
/// (`promtool check metrics` is the judge of the format, not this).
pub fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_sample_line).collect()
}

fn parse_sample_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Parses `a="x",b="y\"z"}` and returns the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.push((key, value));
        s = &s[end + 1..];
    }
}

/// The value of the sample named `name` whose labels include all of `labels`; when several
/// samples match (other labels differ), their sum.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = parse_samples(text)
        .into_iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = r#"# HELP millrace_monitor_predictions_total Predictions seen.
# TYPE millrace_monitor_predictions_total counter
millrace_monitor_predictions_total{model="fraud",model_version="1"} 1000
millrace_monitor_predictions_total{model="fraud",model_version="2"} 5 1700000000000
millrace_weird{path="a\"b,c}",x="1"} +Inf
process_open_fds 12
"#;

    type Labels = &'static [(&'static str, &'static str)];

    #[test]
    fn samples_are_found_by_name_and_label_subset() {
        let cases: &[(&str, Labels, Option<f64>)] = &[
            (
                "millrace_monitor_predictions_total",
                &[("model", "fraud"), ("model_version", "1")],
                Some(1000.0),
            ),
            (
                "millrace_monitor_predictions_total",
                &[("model", "fraud")],
                Some(1005.0),
            ),
            (
                "millrace_monitor_predictions_total",
                &[("model", "other")],
                None,
            ),
            (
                "millrace_weird",
                &[("path", "a\"b,c}")],
                Some(f64::INFINITY),
            ),
            ("process_open_fds", &[], Some(12.0)),
            ("absent", &[], None),
        ];
        for (name, labels, expected) in cases {
            assert_eq!(
                metric_value(EXPOSITION, name, labels),
                *expected,
                "{name} {labels:?}"
            );
        }
    }

    #[test]
    fn chunked_and_plain_bodies_are_read() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let r = parse_response(plain).expect("plain");
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nnot\r\n6\r\n ready\r\n0\r\n\r\n";
        let r = parse_response(chunked).expect("chunked");
        assert_eq!((r.status, r.body.as_str()), (503, "not ready"));
    }
}
