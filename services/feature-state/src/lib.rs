//! millrace-feature-state: turns enriched events into per-entity features in
//! event time, publishes a point-in-time feature vector to FEATURES for every
//! scored event, and serves `GetOnlineFeatures`.
//!
//! # Layout
//! - [`aggregate`]: the [`aggregate::Aggregator`] trait, one file per aggregation
//!   (count, sum, mean, min, max, stddev, last, distinct_count, since_last).
//! - [`window`]: the [`window::Window`] trait, one file per window (lifetime,
//!   tumbling, hopping, sliding, session), and what each reads as of a time.
//! - [`watermark`]: per-partition watermarks, lateness, the floor and the clock.
//! - [`column`], [`partition`]: a feature's per-entity states; a partition's
//!   entity tables with TTL expiry and memory accounting; [`prefetch`]: asking
//!   the cache for rows ahead of use.
//! - [`store`]: routing, lateness, point-in-time vectors, lookups — plain state.
//! - [`snapshot`]: the bytes the stage loop snapshots, and restoring from them.
//! - [`actor`]: the actor the stage loop feeds; [`api`]: the gRPC adapter.

pub mod actor;
pub mod aggregate;
pub mod api;
pub mod column;
pub mod metrics;
pub mod partition;
pub mod prefetch;
pub mod snapshot;
pub mod store;
pub mod watermark;
pub mod window;

pub use actor::{FeatureStoreActor, STAGE};
pub use snapshot::{EncodedState, Restored, SnapshotError};
pub use store::{Applied, FeatureSpec, FeatureStore};
