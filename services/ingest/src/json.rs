//! JSON bodies for the NATS ingest path. JSON has one number type, so the
//! registered schema decides whether a number is an int, a double or a
//! timestamp (microseconds since the epoch); everything else maps directly.
//!
//! ```json
//! {"event_id": "f-1", "event_time_us": 1357034400000000,
//!  "fields": {"origin": "EWR", "distance": 1400, "hour": 5}}
//! ```

use std::collections::HashMap;

use millrace_chassis::config::FieldType;
use millrace_proto::{AckStatus, Event, EventAck, Value};
use serde_json::Value as Json;

use crate::schema::{Rejection, SchemaRegistry};

/// Builds the event a JSON body describes; `event_type` comes from the subject.
pub fn event_from_json(
    bytes: &[u8],
    event_type: &str,
    schemas: &SchemaRegistry,
) -> Result<Event, Rejection> {
    let malformed = |message: String| Rejection {
        code: "malformed",
        message,
    };
    let body: Json = serde_json::from_slice(bytes)
        .map_err(|e| malformed(format!("{event_type}: body is not JSON: {e}")))?;
    let Json::Object(mut body) = body else {
        return Err(malformed(format!(
            "{event_type}: body must be a JSON object"
        )));
    };
    let text = |body: &serde_json::Map<String, Json>, key: &str| -> Result<String, Rejection> {
        match body.get(key) {
            None | Some(Json::Null) => Ok(String::new()),
            Some(Json::String(s)) => Ok(s.clone()),
            Some(other) => Err(malformed(format!(
                "{event_type}: `{key}` must be a string, got {other}"
            ))),
        }
    };
    let integer = |body: &serde_json::Map<String, Json>, key: &str| -> Result<i64, Rejection> {
        match body.get(key) {
            None | Some(Json::Null) => Ok(0),
            Some(v) => v.as_i64().ok_or_else(|| {
                malformed(format!("{event_type}: `{key}` must be an integer, got {v}"))
            }),
        }
    };
    let event_id = text(&body, "event_id")?;
    let key = text(&body, "key")?;
    let event_time_us = integer(&body, "event_time_us")?;
    let schema_version = integer(&body, "schema_version")?;
    let schema_version = u32::try_from(schema_version).map_err(|_| {
        malformed(format!(
            "{event_type}: `schema_version` {schema_version} is out of range"
        ))
    })?;
    let schema = schemas.get(event_type, schema_version);
    let mut fields = HashMap::new();
    if let Some(raw) = body.remove("fields") {
        let Json::Object(raw) = raw else {
            return Err(malformed(format!(
                "event {event_id}: `fields` must be a JSON object"
            )));
        };
        for (name, v) in raw {
            let declared = schema.and_then(|s| s.fields.get(&name)).map(|f| f.kind);
            let value = typed(&v, declared).ok_or_else(|| Rejection {
                code: "wrong_type",
                message: format!(
                    "event {event_id}: field `{name}`: expected {}, got {v}",
                    declared.map_or("a scalar", FieldType::name)
                ),
            })?;
            fields.insert(name, value);
        }
    }
    Ok(Event {
        event_id,
        r#type: event_type.to_string(),
        schema_version,
        key,
        event_time_us,
        fields,
        ..Default::default()
    })
}

/// The value `v` stands for, read as the schema declares it (or by its JSON
/// shape for undeclared fields, which validation then refuses by name).
fn typed(v: &Json, declared: Option<FieldType>) -> Option<Value> {
    Some(match (declared, v) {
        (_, Json::Null) => Value { kind: None },
        (Some(FieldType::Int), Json::Number(n)) => Value::int(n.as_i64()?),
        (Some(FieldType::Timestamp), Json::Number(n)) => Value::timestamp_us(n.as_i64()?),
        (Some(FieldType::Double), Json::Number(n)) => Value::double(n.as_f64()?),
        (None, Json::Number(n)) => n
            .as_i64()
            .map_or_else(|| n.as_f64().map(Value::double), |i| Some(Value::int(i)))?,
        (Some(FieldType::String) | None, Json::String(s)) => Value::string(s.clone()),
        (Some(FieldType::Bool) | None, Json::Bool(b)) => Value::bool(*b),
        _ => return None,
    })
}

/// The JSON form of an answer on the NATS path.
pub fn ack_to_json(ack: &EventAck) -> Vec<u8> {
    let status = match AckStatus::try_from(ack.status) {
        Ok(AckStatus::Accepted) => "accepted",
        Ok(AckStatus::Duplicate) => "duplicate",
        Ok(AckStatus::Rejected) => "rejected",
        _ => "unspecified",
    };
    let body = serde_json::json!({
        "event_id": ack.event_id,
        "status": status,
        "code": ack.code,
        "message": ack.message,
        "stream_sequence": ack.stream_sequence,
    });
    body.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_chassis::config::{EventSchema, FieldDef};

    fn registry() -> SchemaRegistry {
        let def = |kind| FieldDef {
            kind,
            required: false,
            min: None,
            max: None,
            allowed: None,
            max_len: None,
        };
        let schema = EventSchema {
            version: 1,
            key_field: Some("origin".into()),
            score: false,
            label: false,
            fields: [
                ("origin".to_string(), def(FieldType::String)),
                ("hour".to_string(), def(FieldType::Int)),
                ("distance".to_string(), def(FieldType::Double)),
                ("at".to_string(), def(FieldType::Timestamp)),
                ("cancelled".to_string(), def(FieldType::Bool)),
            ]
            .into(),
        };
        SchemaRegistry::new([("flight".to_string(), schema)].into())
    }

    #[test]
    fn numbers_take_the_type_the_schema_declares() {
        let body = br#"{"event_id":"f1","event_time_us":5,"fields":{"origin":"EWR","hour":5,"distance":1400,"at":7,"cancelled":false,"extra":2.5}}"#;
        let e = event_from_json(body, "flight", &registry()).expect("valid JSON");
        assert_eq!(
            (e.event_id.as_str(), e.r#type.as_str(), e.event_time_us),
            ("f1", "flight", 5)
        );
        assert_eq!(e.fields["hour"], Value::int(5));
        assert_eq!(e.fields["distance"], Value::double(1400.0));
        assert_eq!(e.fields["at"], Value::timestamp_us(7));
        assert_eq!(e.fields["cancelled"], Value::bool(false));
        assert_eq!(e.fields["extra"], Value::double(2.5));
    }

    #[test]
    fn bad_bodies_are_refused_with_a_code_and_the_field() {
        let cases: [(&str, &[u8], &str, &str); 5] = [
            ("not_json", b"{nope", "malformed", "not JSON"),
            ("not_an_object", b"[1,2]", "malformed", "JSON object"),
            (
                "fields_not_object",
                br#"{"event_id":"a","fields":3}"#,
                "malformed",
                "`fields`",
            ),
            (
                "fraction_for_int",
                br#"{"event_id":"a","fields":{"hour":1.5}}"#,
                "wrong_type",
                "`hour`: expected int",
            ),
            (
                "string_for_double",
                br#"{"event_id":"a","fields":{"distance":"far"}}"#,
                "wrong_type",
                "`distance`",
            ),
        ];
        for (name, body, code, fragment) in cases {
            let err = event_from_json(body, "flight", &registry()).expect_err(name);
            assert_eq!(err.code, code, "{name}");
            assert!(err.message.contains(fragment), "{name}: {}", err.message);
        }
    }
}
