//! The `SchemaBook` actor: owns every registered schema version, takes new
//! ones (only when backward compatible), and hands validation an immutable
//! copy through a [`SchemaHandle`]. Its state is snapshotted so a restarted
//! ingest knows what it registered before; the pipeline file seeds it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use actix::{Actor, Context, Handler, Message, MessageResult};
use millrace_chassis::config::{EventSchema, FieldDef, FieldType};
use millrace_proto as pb;
use serde::{Deserialize, Serialize};

use crate::schema::{Rejection, SchemaRegistry};

/// What the book snapshots: event type → version → schema.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RegisteredSchemas {
    pub versions: BTreeMap<String, BTreeMap<u32, EventSchema>>,
}

/// The registry validation reads now; swapped whole when a version is added,
/// so a record is always checked against one consistent registry.
#[derive(Clone, Default)]
pub struct SchemaHandle(Arc<RwLock<Arc<SchemaRegistry>>>);

impl SchemaHandle {
    pub fn current(&self) -> Arc<SchemaRegistry> {
        match self.0.read() {
            Ok(guard) => guard.clone(),
            // A writer panicked mid-swap; the Arc inside is still whole.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, registry: SchemaRegistry) {
        let fresh = Arc::new(registry);
        match self.0.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
    }
}

pub struct SchemaBook {
    registry: SchemaRegistry,
    handle: SchemaHandle,
}

impl SchemaBook {
    /// Starts from the snapshot; the pipeline file's schemas are added, and
    /// where the file and the snapshot disagree on a version, the file wins.
    pub fn new(
        from_pipeline: &BTreeMap<String, EventSchema>,
        registered: RegisteredSchemas,
    ) -> Self {
        let mut versions = registered.versions;
        for (name, schema) in from_pipeline {
            versions
                .entry(name.clone())
                .or_default()
                .insert(schema.version, schema.clone());
        }
        let registry = SchemaRegistry::from_versions(versions);
        let handle = SchemaHandle::default();
        handle.replace(registry.clone());
        Self { registry, handle }
    }

    pub fn handle(&self) -> SchemaHandle {
        self.handle.clone()
    }
}

impl Actor for SchemaBook {
    type Context = Context<Self>;
}

/// Registers a new version; answers the version number.
pub struct Register(pub pb::EventSchema);

impl Message for Register {
    type Result = Result<u32, Rejection>;
}

impl Handler<Register> for SchemaBook {
    type Result = Result<u32, Rejection>;

    fn handle(&mut self, Register(schema): Register, _: &mut Self::Context) -> Self::Result {
        let (name, schema) = from_proto(&schema)?;
        let mut next = self.registry.clone();
        let version = next.register(&name, schema)?;
        self.registry = next;
        self.handle.replace(self.registry.clone());
        tracing::info!(event_type = %name, version, "schema registered");
        Ok(version)
    }
}

/// Lists every version of one type, or of all types when empty.
pub struct List(pub String);

impl Message for List {
    type Result = Vec<pb::EventSchema>;
}

impl Handler<List> for SchemaBook {
    type Result = MessageResult<List>;

    fn handle(&mut self, List(event_type): List, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.registry
                .all()
                .filter(|(name, _)| event_type.is_empty() || **name == event_type)
                .map(|(name, schema)| to_proto(name, schema))
                .collect(),
        )
    }
}

/// The book's state to snapshot.
pub struct ExportSchemas;

impl Message for ExportSchemas {
    type Result = RegisteredSchemas;
}

impl Handler<ExportSchemas> for SchemaBook {
    type Result = MessageResult<ExportSchemas>;

    fn handle(&mut self, _: ExportSchemas, _: &mut Self::Context) -> Self::Result {
        MessageResult(RegisteredSchemas {
            versions: self.registry.export(),
        })
    }
}

pub fn to_proto(name: &str, schema: &EventSchema) -> pb::EventSchema {
    pb::EventSchema {
        event_type: name.to_string(),
        version: schema.version,
        key_field: schema.key_field.clone().unwrap_or_default(),
        score: schema.score,
        label: schema.label,
        fields: schema
            .fields
            .iter()
            .map(|(field, def)| pb::FieldSchema {
                name: field.clone(),
                r#type: field_type_to_proto(def.kind) as i32,
                required: def.required,
                min: def.min,
                max: def.max,
                allowed: def.allowed.clone().unwrap_or_default(),
                max_len: def.max_len.map(|n| n as u64),
            })
            .collect(),
    }
}

pub fn from_proto(schema: &pb::EventSchema) -> Result<(String, EventSchema), Rejection> {
    let invalid = |message: String| Rejection {
        code: "invalid_schema",
        message,
    };
    let name = schema.event_type.clone();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(invalid(format!(
            "event type `{name}` must be letters, digits, `_` or `-` (it becomes a NATS subject token)"
        )));
    }
    let mut fields = BTreeMap::new();
    for f in &schema.fields {
        let kind = match pb::FieldType::try_from(f.r#type) {
            Ok(pb::FieldType::Double) => FieldType::Double,
            Ok(pb::FieldType::Int) => FieldType::Int,
            Ok(pb::FieldType::String) => FieldType::String,
            Ok(pb::FieldType::Bool) => FieldType::Bool,
            Ok(pb::FieldType::Timestamp) => FieldType::Timestamp,
            _ => return Err(invalid(format!("{name}: field `{}` has no type", f.name))),
        };
        let def = FieldDef {
            kind,
            required: f.required,
            min: f.min,
            max: f.max,
            allowed: (!f.allowed.is_empty()).then(|| f.allowed.clone()),
            max_len: f.max_len.and_then(|n| usize::try_from(n).ok()),
        };
        if fields.insert(f.name.clone(), def).is_some() {
            return Err(invalid(format!(
                "{name}: field `{}` is declared twice",
                f.name
            )));
        }
    }
    let schema = EventSchema {
        version: schema.version,
        key_field: (!schema.key_field.is_empty()).then(|| schema.key_field.clone()),
        score: schema.score,
        label: schema.label,
        fields,
    };
    Ok((name, schema))
}

fn field_type_to_proto(kind: FieldType) -> pb::FieldType {
    match kind {
        FieldType::Double => pb::FieldType::Double,
        FieldType::Int => pb::FieldType::Int,
        FieldType::String => pb::FieldType::String,
        FieldType::Bool => pb::FieldType::Bool,
        FieldType::Timestamp => pb::FieldType::Timestamp,
    }
}
