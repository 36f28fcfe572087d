//! Validation of incoming events against their registered schema. Every
//! refusal names the record, the field and the reason, with a stable code that
//! producers and the DLQ can act on.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use millrace_chassis::config::{EventSchema, FieldDef, FieldType};
use millrace_proto::Event;

use crate::wire::{EventView, FieldValue};

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

/// The schemas ingest accepts: every registered version of each event type.
#[derive(Debug, Clone, Default)]
pub struct SchemaRegistry {
    versions: BTreeMap<String, BTreeMap<u32, EventSchema>>,
}

/// What validation tells the publisher about an accepted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub is_label: bool,
}

/// What checking an [`EventView`] found: the version it was checked against,
/// the key taken from the schema's key field when the producer gave none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<'a> {
    pub schema_version: u32,
    /// `None`: the producer's key stands.
    pub key: Option<Cow<'a, str>>,
    pub is_label: bool,
}

/// Names the record in a rejection: "event <id> (<type> v<version>)".
struct What<'a> {
    id: &'a str,
    event_type: &'a str,
    version: u32,
}

impl fmt::Display for What<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event {} ({} v{})",
            self.id, self.event_type, self.version
        )
    }
}

impl SchemaRegistry {
    /// One version per type, as the pipeline file declares them.
    #[cfg(test)]
    pub fn new(schemas: BTreeMap<String, EventSchema>) -> Self {
        let mut registry = Self::default();
        for (name, schema) in schemas {
            registry
                .versions
                .entry(name)
                .or_default()
                .insert(schema.version, schema);
        }
        registry
    }

    pub fn contains(&self, event_type: &str) -> bool {
        self.versions.contains_key(event_type)
    }

    pub fn latest(&self, event_type: &str) -> Option<&EventSchema> {
        self.versions.get(event_type)?.values().next_back()
    }

    pub fn get(&self, event_type: &str, version: u32) -> Option<&EventSchema> {
        match version {
            0 => self.latest(event_type),
            v => self.versions.get(event_type)?.get(&v),
        }
    }

    /// Every version of every type (or of one type), oldest first.
    pub fn all(&self) -> impl Iterator<Item = (&String, &EventSchema)> {
        self.versions
            .iter()
            .flat_map(|(name, vs)| vs.values().map(move |s| (name, s)))
    }

    /// Adds `schema` as a new version of `event_type` when it is backward
    /// compatible with the latest one; version 0 means latest + 1. Returns the version.
    pub fn register(
        &mut self,
        event_type: &str,
        mut schema: EventSchema,
    ) -> Result<u32, Rejection> {
        let incompatible = |message: String| Rejection::new("incompatible_schema", message);
        if let Some(latest) = self.latest(event_type) {
            if schema.version == 0 {
                schema.version = latest.version + 1;
            }
            if schema.version <= latest.version {
                return Err(incompatible(format!(
                    "{event_type}: version {} is not newer than the latest, v{}",
                    schema.version, latest.version
                )));
            }
            backward_compatible(latest, &schema)
                .map_err(|why| incompatible(format!("{event_type} v{}: {why}", schema.version)))?;
        } else if schema.version == 0 {
            schema.version = 1;
        }
        if let Some(key) = &schema.key_field {
            if !schema.fields.contains_key(key) {
                return Err(incompatible(format!(
                    "{event_type}: key_field `{key}` is not a field"
                )));
            }
        }
        let version = schema.version;
        self.versions
            .entry(event_type.to_string())
            .or_default()
            .insert(version, schema);
        Ok(version)
    }

    /// Every registered version, for the snapshot.
    pub fn export(&self) -> BTreeMap<String, BTreeMap<u32, EventSchema>> {
        self.versions.clone()
    }

    pub fn from_versions(versions: BTreeMap<String, BTreeMap<u32, EventSchema>>) -> Self {
        Self { versions }
    }

    /// Checks `event` and fills in what ingest owns: the key from the schema's
    /// key field when the producer left it empty, and the schema version when 0.
    pub fn validate(&self, event: &mut Event) -> Result<Accepted, Rejection> {
        let checked = self.check(&EventView::of(event))?;
        let (version, key, is_label) = (
            checked.schema_version,
            checked.key.map(Cow::into_owned),
            checked.is_label,
        );
        event.schema_version = version;
        if let Some(key) = key {
            event.key = key;
        }
        Ok(Accepted { is_label })
    }

    /// Checks an event against the schema it names. Builds no message unless it refuses.
    pub fn check<'a>(&self, event: &EventView<'a>) -> Result<Checked<'a>, Rejection> {
        if event.event_id.is_empty() {
            return Err(Rejection::new(
                "missing_event_id",
                "event has no event_id (the producer's idempotency key)".into(),
            ));
        }
        let id = event.event_id;
        let versions = self.versions.get(event.r#type).ok_or_else(|| {
            Rejection::new(
                "unknown_type",
                format!(
                    "event {id}: type `{}` is not registered (known: {})",
                    event.r#type,
                    self.known_types()
                ),
            )
        })?;
        let schema = match event.schema_version {
            0 => versions.values().next_back(),
            v => versions.get(&v),
        }
        .ok_or_else(|| {
            let known: Vec<String> = versions.keys().map(|v| format!("v{v}")).collect();
            Rejection::new(
                "unknown_schema_version",
                format!(
                    "event {id}: {} has no schema version {} (registered: {})",
                    event.r#type,
                    event.schema_version,
                    known.join(", ")
                ),
            )
        })?;
        let what = What {
            id,
            event_type: event.r#type,
            version: schema.version,
        };
        if !fields_valid(&what, schema, event) {
            refuse_fields(&what, schema, event)?;
        }
        let key = if event.key.is_empty() {
            let from_field = schema
                .key_field
                .as_ref()
                .and_then(|f| event.field(f))
                .and_then(|v| v.key_text());
            Some(from_field.ok_or_else(|| {
                Rejection::new(
                    "missing_key",
                    format!("{what}: no key given and the schema's key field is absent"),
                )
            })?)
        } else {
            None
        };
        Ok(Checked {
            schema_version: schema.version,
            key,
            is_label: schema.label,
        })
    }

    fn known_types(&self) -> String {
        let names: Vec<&str> = self.versions.keys().map(String::as_str).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}

/// Whether `event`'s fields are all valid under `schema`, in one pass over
/// them (one lookup each): the common case, which builds no message.
fn fields_valid(what: &What<'_>, schema: &EventSchema, event: &EventView<'_>) -> bool {
    let mut required_present = 0;
    for (name, value) in &event.fields {
        let Some(def) = schema.fields.get(*name) else {
            return false;
        };
        if matches!(value, FieldValue::Null) {
            continue;
        }
        if check_field(what, name, def, *value).is_err() {
            return false;
        }
        required_present += usize::from(def.required);
    }
    required_present == schema.fields.values().filter(|d| d.required).count()
}

/// The refusal of an event whose fields are not all valid: the first of the
/// schema's fields (by name) that is missing or invalid, else the first field
/// the schema does not know.
fn refuse_fields(
    what: &What<'_>,
    schema: &EventSchema,
    event: &EventView<'_>,
) -> Result<(), Rejection> {
    for (name, def) in &schema.fields {
        match event.field(name) {
            None | Some(FieldValue::Null) if def.required => {
                return Err(Rejection::new(
                    "missing_field",
                    format!("{what}: required field `{name}` is missing"),
                ));
            }
            None | Some(FieldValue::Null) => {}
            Some(value) => check_field(what, name, def, value)?,
        }
    }
    if let Some((name, _)) = event
        .fields
        .iter()
        .find(|(k, _)| !schema.fields.contains_key(*k))
    {
        return Err(Rejection::new(
            "unknown_field",
            format!("{what}: field `{name}` is not in the schema"),
        ));
    }
    Ok(())
}

/// Whether every record valid under `old` is valid under `new`.
pub fn backward_compatible(old: &EventSchema, new: &EventSchema) -> Result<(), String> {
    if old.key_field != new.key_field {
        return Err(format!(
            "key_field changes from {:?} to {:?}",
            old.key_field, new.key_field
        ));
    }
    if old.label != new.label || old.score != new.score {
        return Err("the label and score flags cannot change between versions".into());
    }
    for (name, was) in &old.fields {
        let Some(now) = new.fields.get(name) else {
            return Err(format!("field `{name}` is removed"));
        };
        if now.kind != was.kind {
            return Err(format!(
                "field `{name}` changes type from {} to {}",
                was.kind.name(),
                now.kind.name()
            ));
        }
        if now.required && !was.required {
            return Err(format!("field `{name}` becomes required"));
        }
        let narrower_min = match (was.min, now.min) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(a), Some(b)) => b > a,
        };
        let narrower_max = match (was.max, now.max) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(a), Some(b)) => b < a,
        };
        if narrower_min || narrower_max {
            return Err(format!("field `{name}`: the range narrows"));
        }
        match (&was.allowed, &now.allowed) {
            (_, None) => {}
            (None, Some(_)) => {
                return Err(format!("field `{name}`: allowed values are introduced"))
            }
            (Some(a), Some(b)) => {
                if let Some(gone) = a.iter().find(|v| !b.contains(v)) {
                    return Err(format!(
                        "field `{name}`: allowed value \"{gone}\" is removed"
                    ));
                }
            }
        }
        let shorter = match (was.max_len, now.max_len) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(a), Some(b)) => b < a,
        };
        if shorter {
            return Err(format!("field `{name}`: max_len shrinks"));
        }
    }
    if let Some((name, _)) = new
        .fields
        .iter()
        .find(|(n, f)| f.required && !old.fields.contains_key(*n))
    {
        return Err(format!("new field `{name}` must be optional"));
    }
    Ok(())
}

fn check_field(
    what: &What<'_>,
    name: &str,
    def: &FieldDef,
    value: FieldValue<'_>,
) -> Result<(), Rejection> {
    let wrong_type = || {
        Rejection::new(
            "wrong_type",
            format!(
                "{what}: field `{name}`: expected {}, got {value}",
                def.kind.name(),
            ),
        )
    };
    let number = match (def.kind, value) {
        (FieldType::Double, FieldValue::Double(x)) => {
            if !x.is_finite() {
                return Err(Rejection::new(
                    "out_of_range",
                    format!("{what}: field `{name}`: {x} is not a finite number"),
                ));
            }
            Some(x)
        }
        // An int is a valid double: JSON producers cannot tell them apart.
        (FieldType::Double, FieldValue::Int(i)) => Some(i as f64),
        (FieldType::Int, FieldValue::Int(i)) => Some(i as f64),
        (FieldType::Timestamp, FieldValue::Timestamp(t)) => Some(t as f64),
        (FieldType::Bool, FieldValue::Bool(_)) => None,
        (FieldType::String, FieldValue::Str(s)) => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_chassis::config::Pipeline;
    use millrace_proto::Value;
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

    /// With several problems, the first of the schema's fields by name is named,
    /// then unknown fields: whatever order the producer sent them in.
    #[test]
    fn the_first_problem_in_schema_order_is_named() {
        let reg = registry();
        let cases = [
            (
                vec![
                    ("colour", Value::string("red")),
                    ("customer", Value::string("c1")),
                ],
                "missing_field",
                "`amount`",
            ),
            (
                vec![
                    ("qty", Value::double(1.5)),
                    ("customer", Value::string("c1")),
                ],
                "missing_field",
                "`amount`",
            ),
            (
                vec![
                    ("qty", Value::double(1.5)),
                    ("channel", Value::string("fax")),
                    ("amount", Value::double(1.0)),
                    ("customer", Value::string("c1")),
                ],
                "not_allowed",
                "`channel`",
            ),
            (
                vec![
                    ("zebra", Value::int(1)),
                    ("qty", Value::double(1.5)),
                    ("amount", Value::double(1.0)),
                    ("customer", Value::string("c1")),
                ],
                "wrong_type",
                "`qty`",
            ),
        ];
        for (fields, code, fragment) in cases {
            for reversed in [false, true] {
                let mut fields = fields.clone();
                if reversed {
                    fields.reverse();
                }
                let err = reg.validate(&mut order(&fields)).expect_err(code);
                assert_eq!(err.code, code, "{err}");
                assert!(err.message.contains(fragment), "{err}");
            }
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

    fn field(kind: FieldType, required: bool) -> FieldDef {
        FieldDef {
            kind,
            required,
            min: None,
            max: None,
            allowed: None,
            max_len: None,
        }
    }

    fn base() -> EventSchema {
        EventSchema {
            version: 1,
            key_field: Some("customer".into()),
            score: false,
            label: false,
            fields: [
                (
                    "customer".to_string(),
                    FieldDef {
                        max_len: Some(8),
                        ..field(FieldType::String, true)
                    },
                ),
                (
                    "amount".to_string(),
                    FieldDef {
                        min: Some(0.0),
                        max: Some(100.0),
                        ..field(FieldType::Double, true)
                    },
                ),
                (
                    "channel".to_string(),
                    FieldDef {
                        allowed: Some(vec!["web".into()]),
                        ..field(FieldType::String, false)
                    },
                ),
            ]
            .into(),
        }
    }

    fn field_mut<'a>(s: &'a mut EventSchema, name: &str) -> &'a mut FieldDef {
        s.fields
            .get_mut(name)
            .expect("the base schema has this field")
    }

    fn changed(f: impl FnOnce(&mut EventSchema)) -> EventSchema {
        let mut s = base();
        s.version = 0;
        f(&mut s);
        s
    }

    #[test]
    fn new_versions_are_accepted_only_when_backward_compatible() {
        let ok: Vec<(&str, EventSchema)> = vec![
            (
                "add_optional_field",
                changed(|s| {
                    s.fields
                        .insert("note".into(), field(FieldType::String, false));
                }),
            ),
            (
                "widen_range",
                changed(|s| {
                    let f = field_mut(s, "amount");
                    f.min = Some(-1.0);
                    f.max = None;
                }),
            ),
            (
                "extend_allowed",
                changed(|s| {
                    let f = field_mut(s, "channel");
                    f.allowed = Some(vec!["web".into(), "shop".into()]);
                }),
            ),
            (
                "relax_required",
                changed(|s| {
                    let f = field_mut(s, "amount");
                    f.required = false;
                }),
            ),
            (
                "raise_max_len",
                changed(|s| {
                    let f = field_mut(s, "customer");
                    f.max_len = Some(16);
                }),
            ),
        ];
        for (name, schema) in ok {
            let mut reg = SchemaRegistry::new([("order".to_string(), base())].into());
            assert_eq!(reg.register("order", schema), Ok(2), "{name}");
            assert_eq!(reg.latest("order").map(|s| s.version), Some(2), "{name}");
            assert!(reg.get("order", 1).is_some(), "{name}: v1 stays registered");
        }
        let refused: Vec<(&str, EventSchema, &str)> = vec![
            (
                "remove_field",
                changed(|s| {
                    s.fields.remove("channel");
                }),
                "`channel` is removed",
            ),
            (
                "change_type",
                changed(|s| {
                    let f = field_mut(s, "amount");
                    f.kind = FieldType::Int;
                }),
                "changes type",
            ),
            (
                "add_required_field",
                changed(|s| {
                    s.fields.insert("x".into(), field(FieldType::Int, true));
                }),
                "must be optional",
            ),
            (
                "make_required",
                changed(|s| {
                    let f = field_mut(s, "channel");
                    f.required = true;
                }),
                "becomes required",
            ),
            (
                "narrow_range",
                changed(|s| {
                    let f = field_mut(s, "amount");
                    f.max = Some(50.0);
                }),
                "range narrows",
            ),
            (
                "drop_allowed_value",
                changed(|s| {
                    let f = field_mut(s, "channel");
                    f.allowed = Some(vec!["shop".into()]);
                }),
                "\"web\" is removed",
            ),
            (
                "shrink_max_len",
                changed(|s| {
                    let f = field_mut(s, "customer");
                    f.max_len = Some(4);
                }),
                "max_len shrinks",
            ),
            (
                "change_key",
                changed(|s| s.key_field = Some("amount".into())),
                "key_field changes",
            ),
            (
                "old_version_number",
                changed(|s| s.version = 1),
                "not newer",
            ),
        ];
        for (name, schema, why) in refused {
            let mut reg = SchemaRegistry::new([("order".to_string(), base())].into());
            let err = reg.register("order", schema).expect_err(name);
            assert_eq!(err.code, "incompatible_schema", "{name}");
            assert!(err.message.contains(why), "{name}: {}", err.message);
            assert_eq!(
                reg.latest("order").map(|s| s.version),
                Some(1),
                "{name}: nothing registered"
            );
        }
    }

    #[test]
    fn events_are_checked_against_the_version_they_name() {
        let mut reg = SchemaRegistry::new([("order".to_string(), base())].into());
        let v2 = changed(|s| {
            s.fields
                .insert("note".into(), field(FieldType::String, false));
        });
        reg.register("order", v2).expect("compatible");
        let event = |version: u32, with_note: bool| {
            let mut fields: std::collections::HashMap<String, Value> = [
                ("customer".to_string(), Value::string("c")),
                ("amount".to_string(), Value::double(1.0)),
            ]
            .into();
            if with_note {
                fields.insert("note".into(), Value::string("hi"));
            }
            Event {
                event_id: "e".into(),
                r#type: "order".into(),
                schema_version: version,
                fields,
                ..Default::default()
            }
        };
        let mut latest = event(0, true);
        reg.validate(&mut latest)
            .expect("latest takes the new field");
        assert_eq!(latest.schema_version, 2);
        let err = reg
            .validate(&mut event(1, true))
            .expect_err("v1 has no note");
        assert_eq!(err.code, "unknown_field");
        let err = reg.validate(&mut event(3, false)).expect_err("no v3");
        assert_eq!(err.code, "unknown_schema_version");
        assert!(
            err.message.contains("registered: v1, v2"),
            "{}",
            err.message
        );
    }
}
