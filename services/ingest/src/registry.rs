//! The `SchemaBook` actor: owns the registered schemas and snapshots them, so
//! a restarted ingest knows what it accepted before. The pipeline file seeds
//! it; validation reads an immutable copy that the actor hands out.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::{Actor, Context, Handler, Message, MessageResult};
use millrace_chassis::config::EventSchema;
use serde::{Deserialize, Serialize};

use crate::schema::SchemaRegistry;

/// What the book snapshots: each event type's schema as registered.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RegisteredSchemas {
    pub schemas: BTreeMap<String, EventSchema>,
}

pub struct SchemaBook {
    schemas: BTreeMap<String, EventSchema>,
    current: Arc<SchemaRegistry>,
}

impl SchemaBook {
    /// The pipeline file's schemas win for the types it declares; types only
    /// the snapshot knows (registered earlier) stay registered.
    pub fn new(
        from_pipeline: &BTreeMap<String, EventSchema>,
        registered: RegisteredSchemas,
    ) -> Self {
        let mut schemas = registered.schemas;
        schemas.extend(from_pipeline.iter().map(|(k, v)| (k.clone(), v.clone())));
        let current = Arc::new(SchemaRegistry::new(schemas.clone()));
        Self { schemas, current }
    }
}

impl Actor for SchemaBook {
    type Context = Context<Self>;
}

/// The registry validation runs against right now.
pub struct CurrentSchemas;

impl Message for CurrentSchemas {
    type Result = Arc<SchemaRegistry>;
}

impl Handler<CurrentSchemas> for SchemaBook {
    type Result = MessageResult<CurrentSchemas>;

    fn handle(&mut self, _: CurrentSchemas, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.current.clone())
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
            schemas: self.schemas.clone(),
        })
    }
}
