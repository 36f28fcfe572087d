//! `GetOnlineFeatures` over gRPC: a thin adapter onto the store's actor.
//!
//! Windows are evaluated at feature-state's clock, the newest event time it has
//! applied (not the wall clock: a replay of 2013 reads as of 2013). Each value
//! answers PRESENT with the event time of the newest event that updated it (its
//! freshness is the clock minus that), NOT_FOUND for an entity never seen or
//! forgotten after its TTL, UNKNOWN_FEATURE for a name the pipeline does not
//! declare, and EMPTY, with no value, when the entity is known but the window
//! holds nothing to summarise (the mean of no events).

use actix::Addr;
use millrace_proto::feature_state_server::FeatureState;
use millrace_proto::{GetOnlineFeaturesRequest, GetOnlineFeaturesResponse};
use tonic::{Request, Response, Status};

use crate::actor::{FeatureStoreActor, Lookup};

/// Most entities one call may ask for, so one caller cannot stall the actor.
const MAX_ENTITIES: usize = 10_000;

pub struct OnlineFeatures {
    pub store: Addr<FeatureStoreActor>,
}

#[tonic::async_trait]
impl FeatureState for OnlineFeatures {
    async fn get_online_features(
        &self,
        request: Request<GetOnlineFeaturesRequest>,
    ) -> Result<Response<GetOnlineFeaturesResponse>, Status> {
        let req = request.into_inner();
        if req.entity_keys.len() > MAX_ENTITIES {
            return Err(Status::invalid_argument(format!(
                "{} entity keys asked for, at most {MAX_ENTITIES} per call",
                req.entity_keys.len()
            )));
        }
        let entities = self
            .store
            .send(Lookup {
                entity_keys: req.entity_keys,
                features: req.features,
            })
            .await
            .map_err(|e| Status::unavailable(format!("feature store is not running: {e}")))?;
        Ok(Response::new(GetOnlineFeaturesResponse { entities }))
    }
}
