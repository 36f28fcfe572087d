//! `millrace models …`: the model registry of a running inference service.

use std::path::PathBuf;

use anyhow::Context as _;
use millrace_proto::model_registry_client::ModelRegistryClient;
use millrace_proto::{
    GetModelRequest, ListModelsRequest, ModelRoles, ModelVersion, PromoteModelRequest,
    RegisterModelRequest, RollbackModelRequest, SetShadowRequest,
};
use tonic::transport::Channel;

#[derive(clap::Subcommand)]
pub enum ModelsAction {
    /// Every version, its role and its training and progressive metrics.
    List,
    /// One version (`online` is the live learner; empty means the active one).
    Get {
        #[arg(default_value = "")]
        version: String,
    },
    /// Register an artifact written by `millrace train --out`.
    Register {
        file: PathBuf,
        #[arg(long)]
        promote: bool,
    },
    /// Register the online learner's current parameters as VERSION.
    SnapshotOnline {
        version: String,
        #[arg(long)]
        promote: bool,
    },
    /// Make VERSION the active one (requests in flight finish on the old one).
    Promote { version: String },
    /// Make the previously active version active again.
    Rollback,
    /// Score every vector with VERSION too, recorded but not served.
    Shadow { version: String },
    /// Stop the shadow.
    Unshadow,
}

pub async fn run(url: &str, model: String, action: ModelsAction) -> anyhow::Result<()> {
    let mut client: ModelRegistryClient<Channel> = ModelRegistryClient::connect(url.to_string())
        .await
        .with_context(|| format!("connecting to inference at {url}"))?
        .max_encoding_message_size(64 * 1024 * 1024);
    match action {
        ModelsAction::List => {
            let list = client
                .list_models(ListModelsRequest { model })
                .await?
                .into_inner();
            println!(
                "active {}  shadow {}  rollback to {}",
                list.active,
                if list.shadow.is_empty() {
                    "-"
                } else {
                    &list.shadow
                },
                list.history.last().map_or("-", String::as_str)
            );
            for v in &list.versions {
                print_version(v);
                for note in &v.notes {
                    println!("    {note}");
                }
            }
        }
        ModelsAction::Get { version } => {
            let v = client
                .get_model(GetModelRequest { model, version })
                .await?
                .into_inner();
            print_version(&v);
            println!("  inputs: {}", v.inputs.join(", "));
            if !v.description.is_empty() {
                println!("  {}", v.description);
            }
            if v.trained_to_us > 0 {
                println!(
                    "  trained on {} rows, event time {} .. {} µs",
                    v.training_rows, v.trained_from_us, v.trained_to_us
                );
            }
            let mut metrics: Vec<_> = v.metrics.iter().collect();
            metrics.sort_by(|a, b| a.0.cmp(b.0));
            for (name, value) in metrics {
                println!("  {name} = {value:.4}");
            }
            for note in &v.notes {
                println!("  {note}");
            }
        }
        ModelsAction::Register { file, promote } => {
            let artifact =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let v = client
                .register_model(RegisterModelRequest {
                    artifact,
                    promote,
                    ..Default::default()
                })
                .await?
                .into_inner();
            print_version(&v);
        }
        ModelsAction::SnapshotOnline { version, promote } => {
            let v = client
                .register_model(RegisterModelRequest {
                    snapshot_online_as: version,
                    promote,
                    ..Default::default()
                })
                .await?
                .into_inner();
            print_version(&v);
        }
        ModelsAction::Promote { version } => {
            let roles = client
                .promote_model(PromoteModelRequest { model, version })
                .await?
                .into_inner();
            print_roles(&roles);
        }
        ModelsAction::Rollback => {
            let roles = client
                .rollback_model(RollbackModelRequest { model })
                .await?
                .into_inner();
            print_roles(&roles);
        }
        ModelsAction::Shadow { version } => {
            let roles = client
                .set_shadow(SetShadowRequest { model, version })
                .await?
                .into_inner();
            print_roles(&roles);
        }
        ModelsAction::Unshadow => {
            let roles = client
                .set_shadow(SetShadowRequest {
                    model,
                    version: String::new(),
                })
                .await?
                .into_inner();
            print_roles(&roles);
        }
    }
    Ok(())
}

fn print_version(v: &ModelVersion) {
    let holdout = v
        .metrics
        .get("holdout_roc_auc")
        .map_or(String::new(), |auc| format!("  holdout AUC {auc:.4}"));
    let progressive = if v.progressive_examples > 0 {
        format!(
            "  progressive AUC {:.4} log loss {:.4} on {} labels",
            v.progressive_roc_auc, v.progressive_log_loss, v.progressive_examples
        )
    } else {
        String::new()
    };
    println!(
        "{} v{:<12} {:<16} {:<7}{holdout}{progressive}",
        v.model,
        v.version,
        v.kind,
        if v.role.is_empty() { "-" } else { &v.role }
    );
}

fn print_roles(r: &ModelRoles) {
    println!(
        "{}: active {}  shadow {}  history [{}]",
        r.model,
        r.active,
        if r.shadow.is_empty() { "-" } else { &r.shadow },
        r.history.join(", ")
    );
}
