//! Validation of incoming events against their registered schema. Every
//! refusal names the record, the field and the reason, with a stable code that
//! producers and the DLQ can act on.

use std::collections::BTreeMap;

use millrace_chassis::config::{EventSchema, FieldDef, FieldType};
use millrace_proto::value::Kind;
use millrace_proto::{Event, Value};

/// Why a record was refused: a machine-readable code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    fn new(code: &'static str, message: String) -> Self {
        Self { code, message }
    }
}

/// The schemas ingest accepts, by event type.
#[derive(Debug, Clone, Default)]
pub struct SchemaRegistry {
    schemas: BTreeMap<String, EventSchema>,
}

/// What validation tells the publisher about an accepted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub is_label: bool,
}

impl SchemaRegistry {
    pub fn new(schemas: BTreeMap<String, EventSchema>) -> Self {
        Self { schemas }
    }

    pub fn contains(&self, event_type: &str) -> bool {
        self.schemas.contains_key(event_type)
    }

    /// Checks `event` and fills in what ingest owns: the key from the schema's
    /// key field when the producer left it empty, and the schema version when 0.
    pub fn validate(&self, event: &mut Event) -> Result<Accepted, Rejection> {
        let id = if event.event_id.is_empty() {
            "<no id>"
        } else {
            event.event_id.as_str()
        };
        if event.event_id.is_empty() {
            return Err(Rejection::new(
                "missing_event_id",
                "event has no event_id (the producer's idempotency key)".into(),
            ));
        }
        let schema = self.schemas.get(&event.r#type).ok_or_else(|| {
            Rejection::new(
                "unknown_type",
                format!(
                    "event {id}: type `{}` is not registered (known: {})",
                    event.r#type,
                    self.known_types()
                ),
            )
        })?;
        let what = format!("event {id} ({} v{})", event.r#type, schema.version);
        match event.schema_version {
            0 => event.schema_version = schema.version,
            v if v == schema.version => {}
            v => {
                return Err(Rejection::new(
                    "unknown_schema_version",
                    format!(
                        "event {id}: {} has no schema version {v} (registered: v{})",
                        event.r#type, schema.version
                    ),
                ))
            }
        }
        for (name, def) in &schema.fields {
            match event.fields.get(name) {
                None | Some(Value { kind: None }) if def.required => {
                    return Err(Rejection::new(
                        "missing_field",
                        format!("{what}: required field `{name}` is missing"),
                    ));
                }
                None | Some(Value { kind: None }) => {}
                Some(value) => check_field(&what, name, def, value)?,
            }
        }
        if let Some(name) = event
            .fields
            .keys()
            .find(|k| !schema.fields.contains_key(*k))
        {
            return Err(Rejection::new(
                "unknown_field",
                format!("{what}: field `{name}` is not in the schema"),
            ));
        }
        if event.key.is_empty() {
            let from_field = schema
                .key_field
                .as_ref()
                .and_then(|f| event.fields.get(f))
                .and_then(key_text);
            event.key = from_field.ok_or_else(|| {
                Rejection::new(
                    "missing_key",
                    format!("{what}: no key given and the schema's key field is absent"),
                )
            })?;
        }
        Ok(Accepted {
            is_label: schema.label,
        })
    }

    fn known_types(&self) -> String {
        let names: Vec<&str> = self.schemas.keys().map(String::as_str).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}

fn key_text(v: &Value) -> Option<String> {
    Some(match v.kind.as_ref()? {
        Kind::StringValue(s) => s.clone(),
        Kind::IntValue(i) => i.to_string(),
        Kind::TimestampUs(t) => t.to_string(),
        Kind::BoolValue(b) => b.to_string(),
        Kind::DoubleValue(d) => d.to_string(),
    })
}

fn check_field(what: &str, name: &str, def: &FieldDef, value: &Value) -> Result<(), Rejection> {
    let wrong_type = || {
        Rejection::new(
            "wrong_type",
            format!(
                "{what}: field `{name}`: expected {}, got {}",
                def.kind.name(),
                describe(value)
            ),
        )
    };
    let number = match (def.kind, value.kind.as_ref()) {
        (FieldType::Double, Some(Kind::DoubleValue(x))) => {
            if !x.is_finite() {
                return Err(Rejection::new(
                    "out_of_range",
                    format!("{what}: field `{name}`: {x} is not a finite number"),
                ));
            }
            Some(*x)
        }
        // An int is a valid double: JSON producers cannot tell them apart.
        (FieldType::Double, Some(Kind::IntValue(i))) => Some(*i as f64),
        (FieldType::Int, Some(Kind::IntValue(i))) => Some(*i as f64),
        (FieldType::Timestamp, Some(Kind::TimestampUs(t))) => Some(*t as f64),
        (FieldType::Bool, Some(Kind::BoolValue(_))) => None,
        (FieldType::String, Some(Kind::StringValue(s))) => {
            if let Some(max) = def.max_len {
                if s.len() > max {
                    return Err(Rejection::new(
                        "too_long",
                        format!(
                            "{what}: field `{name}`: {} bytes, at most {max} allowed",
                            s.len()
                        ),
                    ));
                }
            }
            if let Some(allowed) = &def.allowed {
                if !allowed.iter().any(|a| a == s) {
                    return Err(Rejection::new(
                        "not_allowed",
                        format!("{what}: field `{name}`: \"{s}\" is not one of {allowed:?}"),
                    ));
                }
            }
            None
        }
        _ => return Err(wrong_type()),
    };
    if let Some(x) = number {
        let below = def.min.is_some_and(|min| x < min);
        let above = def.max.is_some_and(|max| x > max);
        if below || above {
            let bound = match (def.min, def.max) {
                (Some(lo), Some(hi)) => format!("[{lo}, {hi}]"),
                (Some(lo), None) => format!(">= {lo}"),
                (None, Some(hi)) => format!("<= {hi}"),
                (None, None) => String::new(),
            };
            return Err(Rejection::new(
                "out_of_range",
                format!("{what}: field `{name}`: {x} is outside {bound}"),
            ));
        }
    }
    Ok(())
}

fn describe(value: &Value) -> String {
    match value.kind.as_ref() {
        Some(Kind::StringValue(s)) if s.len() > 40 => {
            format!("string \"{}…\"", &s[..s.floor_char_boundary(40)])
        }
        Some(Kind::StringValue(s)) => format!("string \"{s}\""),
        Some(Kind::DoubleValue(x)) => format!("double {x}"),
        Some(Kind::IntValue(i)) => format!("int {i}"),
        Some(Kind::BoolValue(b)) => format!("bool {b}"),
        Some(Kind::TimestampUs(t)) => format!("timestamp {t}"),
        None => "null".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_chassis::config::Pipeline;
    use std::path::Path;

    fn registry() -> SchemaRegistry {
        let p = Pipeline::parse(
            r#"
            [pipeline]
            name = "t"
            partitions = 4
            [events.order_placed]
            key_field = "customer"
            score = true
            [events.order_placed.fields]
            customer = { type = "string", required = true, max_len = 8 }
            amount = { type = "double", required = true, min = 0.0 }
            qty = { type = "int", max = 100.0 }
            channel = { type = "string", allowed = ["web", "shop"] }
            gift = { type = "bool" }
            [events.delivered]
            label = true
            key_field = "order"
            [events.delivered.fields]
            order = { type = "string", required = true }
            late_minutes = { type = "double", required = true }
            [label]
            event = "delivered"
            key_field = "order"
            scored_key_field = "customer"
            value_field = "late_minutes"
            op = ">"
            threshold = 30.0
            [model]
            name = "m"
            version = "1"
            inputs = [{ name = "amount", weight = 1.0 }]
            "#,
            Path::new("t.toml"),
        )
        .expect("pipeline");
        SchemaRegistry::new(p.events)
    }

    fn order(fields: &[(&str, Value)]) -> Event {
        Event {
            event_id: "e1".into(),
            r#type: "order_placed".into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ..Default::default()
        }
    }

    fn good() -> Vec<(&'static str, Value)> {
        vec![
            ("customer", Value::string("c1")),
            ("amount", Value::double(3.5)),
        ]
    }

    fn with(extra: (&'static str, Value)) -> Vec<(&'static str, Value)> {
        let mut f = good();
        f.retain(|(k, _)| *k != extra.0);
        f.push(extra);
        f
    }

    #[test]
    fn each_bad_record_gets_its_code_and_names_the_field() {
        let cases: Vec<(&str, Event, &str, &str)> = vec![
            (
                "missing_required_field",
                order(&[("customer", Value::string("c1"))]),
                "missing_field",
                "`amount`",
            ),
            (
                "string_where_double",
                order(&with(("amount", Value::string("abc")))),
                "wrong_type",
                "expected double, got string \"abc\"",
            ),
            (
                "below_min",
                order(&with(("amount", Value::double(-5.0)))),
                "out_of_range",
                "`amount`: -5 is outside >= 0",
            ),
            (
                "above_max",
                order(&with(("qty", Value::int(101)))),
                "out_of_range",
                "`qty`",
            ),
            (
                "nan",
                order(&with(("amount", Value::double(f64::NAN)))),
                "out_of_range",
                "not a finite number",
            ),
            (
                "not_allowed",
                order(&with(("channel", Value::string("fax")))),
                "not_allowed",
                "\"fax\"",
            ),
            (
                "too_long",
                order(&with(("customer", Value::string("ccccccccc")))),
                "too_long",
                "9 bytes, at most 8",
            ),
            (
                "double_where_int",
                order(&with(("qty", Value::double(1.5)))),
                "wrong_type",
                "expected int, got double 1.5",
            ),
            (
                "null_required",
                order(&with(("amount", Value { kind: None }))),
                "missing_field",
                "`amount`",
            ),
            (
                "unknown_field",
                order(&with(("colour", Value::string("red")))),
                "unknown_field",
                "`colour`",
            ),
            (
                "unknown_type",
                Event {
                    r#type: "nope".into(),
                    ..order(&good())
                },
                "unknown_type",
                "`nope` is not registered",
            ),
            (
                "unknown_version",
                Event {
                    schema_version: 7,
                    ..order(&good())
                },
                "unknown_schema_version",
                "no schema version 7",
            ),
            (
                "no_event_id",
                Event {
                    event_id: String::new(),
                    ..order(&good())
                },
                "missing_event_id",
                "event_id",
            ),
        ];
        let reg = registry();
        for (name, mut event, code, fragment) in cases {
            let err = reg.validate(&mut event).expect_err(name);
            assert_eq!(err.code, code, "{name}: {err}");
            assert!(
                err.message.contains(fragment),
                "{name}: `{}` should contain `{fragment}`",
                err.message
            );
        }
    }

    #[test]
    fn accepted_events_get_key_and_version_filled_in() {
        let reg = registry();
        let mut e = order(&with(("qty", Value::int(3))));
        let ok = reg.validate(&mut e).expect("valid");
        assert!(!ok.is_label);
        assert_eq!(e.key, "c1");
        assert_eq!(e.schema_version, 1);
        // An int is accepted where a double is declared.
        let mut e = order(&with(("amount", Value::int(2))));
        reg.validate(&mut e).expect("int widens to double");
        // The producer's own key wins.
        let mut e = Event {
            key: "mine".into(),
            ..order(&good())
        };
        reg.validate(&mut e).expect("valid");
        assert_eq!(e.key, "mine");
    }

    #[test]
    fn label_types_are_marked() {
        let reg = registry();
        let mut e = Event {
            event_id: "l1".into(),
            r#type: "delivered".into(),
            fields: [
                ("order".to_string(), Value::string("o1")),
                ("late_minutes".to_string(), Value::double(3.0)),
            ]
            .into(),
            ..Default::default()
        };
        assert!(reg.validate(&mut e).expect("valid").is_label);
    }
}
