//! Shared definitions: rules, experiments and bandit slots put through any node's admin API
//! reach every node, and so do click models made on any node (trained there, or put into
//! its `models/` by an operator or `trimtab train --save`). The node that took the request validates and installs the definition
//! as a lone node does, then records it in the `<prefix>_defs` bucket (key `<kind>.<name>`,
//! the request's body as the value; a deletion deletes the key). Every node follows the
//! bucket — its current values at start, then each change — and installs what it reads
//! through the same validation and keep-last-good path as an upload; a definition that does
//! not install is logged and the last good one keeps running.

use std::sync::Arc;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use trimtab_engine::experiments::def::Definition;
use trimtab_engine::Engine;

use crate::{ClusterError, Inner};

/// The kinds of definitions that are shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefKind {
    /// A Rhai rule: the body is its source.
    Rule,
    /// An experiment: the body is its JSON definition.
    Experiment,
    /// A bandit slot: the body is its JSON definition.
    Bandit,
    /// A click model: the body is [`SharedModel`] as JSON. Each node imports it into its own
    /// registry as its next version (with `origin` on the card, so it is not shared back),
    /// verified as any model is before it becomes `CURRENT`; the trainer then serves it.
    Model,
}

/// A click model as shared: its card and its weights (base64 of the safetensors file).
#[derive(Serialize, Deserialize)]
pub(crate) struct SharedModel {
    pub node: String,
    pub card: trimtab_learn::model::ModelCard,
    pub weights: String,
}

impl DefKind {
    fn as_str(self) -> &'static str {
        match self {
            DefKind::Rule => "rule",
            DefKind::Experiment => "experiment",
            DefKind::Bandit => "bandit",
            DefKind::Model => "model",
        }
    }

    fn parse(s: &str) -> Option<DefKind> {
        Some(match s {
            "rule" => DefKind::Rule,
            "experiment" => DefKind::Experiment,
            "bandit" => DefKind::Bandit,
            "model" => DefKind::Model,
            _ => return None,
        })
    }
}

/// A definition in the bucket: its body and the process that put it (which installed it
/// already and skips it).
#[derive(Serialize, Deserialize)]
struct Shared {
    instance: String,
    body: String,
}

/// Records an installed definition (or its deletion, `body` None) for every node.
pub(crate) async fn share(
    inner: &Inner,
    kind: DefKind,
    name: &str,
    body: Option<&str>,
) -> Result<(), ClusterError> {
    let key = format!("{}.{name}", kind.as_str());
    let r = match body {
        Some(b) => {
            let v = serde_json::to_vec(&Shared {
                instance: inner.instance.clone(),
                body: b.to_string(),
            })
            .expect("serialisable");
            inner
                .defs
                .put(&key, v.into())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        None => inner.defs.delete(&key).await.map_err(|e| e.to_string()),
    };
    r.map_err(|e| {
        ClusterError::Unavailable(format!(
            "installed on this node, but sharing it with the other nodes failed ({e}); put it again"
        ))
    })
}

/// Follows the bucket until the node stops: current values first, then every change.
pub(crate) async fn follow(inner: Arc<Inner>) {
    loop {
        let mut watch = match inner.defs.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: cannot follow the shared definitions; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(entry) = watch.next().await {
            let Ok(entry) = entry else { break };
            let Some((kind, name)) = entry
                .key
                .split_once('.')
                .and_then(|(k, n)| Some((DefKind::parse(k)?, n.to_string())))
            else {
                continue;
            };
            let body = match entry.operation {
                async_nats::jetstream::kv::Operation::Put => {
                    match serde_json::from_slice::<Shared>(&entry.value) {
                        Ok(s) if s.instance == inner.instance => continue,
                        Ok(s) => Some(s.body),
                        Err(e) => {
                            tracing::warn!(key = %entry.key, error = %e, "cluster: a shared definition does not decode; skipped");
                            continue;
                        }
                    }
                }
                _ => None,
            };
            let engine = inner.engine.clone();
            let n = name.clone();
            let r =
                tokio::task::spawn_blocking(move || install(&engine, kind, &n, body.as_deref()))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
            match r {
                Ok(()) => {
                    tracing::info!(kind = kind.as_str(), %name, "cluster: shared definition installed")
                }
                Err(e) => {
                    tracing::warn!(kind = kind.as_str(), %name, error = %e, "cluster: a shared definition did not install; the last good one keeps running")
                }
            }
        }
    }
}

/// Installs (or deletes) a definition on this node, as its admin API would.
fn install(engine: &Engine, kind: DefKind, name: &str, body: Option<&str>) -> Result<(), String> {
    use trimtab_engine::bandits::def::BanditDef;
    use trimtab_engine::experiments::def::ExperimentDef;
    let json = |b: &str| serde_json::from_str::<serde_json::Value>(b).map_err(|e| e.to_string());
    match (kind, body) {
        (DefKind::Rule, Some(src)) => engine
            .rules
            .put(name, src)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        (DefKind::Rule, None) => engine
            .rules
            .delete(name)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        (DefKind::Experiment, Some(b)) => {
            let def = ExperimentDef::from_json(name, json(b)?).map_err(|e| e.to_string())?;
            engine.experiments.put(def).map_err(|e| e.to_string())
        }
        (DefKind::Experiment, None) => match engine.experiments.delete(name) {
            Ok(()) | Err(trimtab_engine::experiments::ExperimentsError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.to_string()),
        },
        (DefKind::Bandit, Some(b)) => {
            let def = BanditDef::from_json(name, json(b)?).map_err(|e| e.to_string())?;
            engine.bandits.put(def).map_err(|e| e.to_string())
        }
        (DefKind::Bandit, None) => match engine.bandits.delete(name) {
            Ok(()) | Err(trimtab_engine::bandits::BanditsError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.to_string()),
        },
        (DefKind::Model, Some(b)) => import_model(engine, name, b),
        // Models are not deleted through the API: nothing to follow.
        (DefKind::Model, None) => Ok(()),
    }
}

/// Imports a model another node made, unless this node serves the same weights already.
fn import_model(engine: &Engine, name: &str, body: &str) -> Result<(), String> {
    use base64::Engine as _;
    let m: SharedModel =
        serde_json::from_str(body).map_err(|e| format!("the shared model: {e}"))?;
    let weights = base64::engine::general_purpose::STANDARD
        .decode(&m.weights)
        .map_err(|e| format!("the shared model's weights: {e}"))?;
    let registry = engine.models.registry();
    if let Ok((_, current)) = registry.load_current(name) {
        if current.sha256.eq_ignore_ascii_case(&m.card.sha256) {
            return Ok(());
        }
    }
    let origin = format!("{} v{}", m.node, m.card.version);
    let v = registry
        .import(name, &weights, m.card, &origin)
        .map_err(|e| format!("{} ({})", e, e.code()))?;
    tracing::info!(model = %name, version = v, %origin, "cluster: a model made on another node is this node's current version");
    Ok(())
}

/// Shares each model made on this node once it serves (the trainer's hook feeds `rx`).
pub(crate) async fn share_models(
    inner: Arc<Inner>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(String, u32)>,
) {
    use base64::Engine as _;
    while let Some((name, version)) = rx.recv().await {
        let engine = inner.engine.clone();
        let n = name.clone();
        let read = tokio::task::spawn_blocking(move || {
            let reg = engine.models.registry();
            let (_, card) = reg.load(&n, version).map_err(|e| e.to_string())?;
            let path = reg.weights_path(&n, version).map_err(|e| e.to_string())?;
            let weights = std::fs::read(&path).map_err(|e| e.to_string())?;
            Ok::<_, String>((card, weights))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let body = read.map(|(card, weights)| {
            serde_json::to_string(&SharedModel {
                node: inner.node.to_string(),
                card,
                weights: base64::engine::general_purpose::STANDARD.encode(weights),
            })
            .expect("serialisable")
        });
        let r = match body {
            Ok(b) => share(&inner, DefKind::Model, &name, Some(&b))
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => {
                tracing::info!(model = %name, version, "cluster: model shared with the other nodes")
            }
            Err(e) => {
                tracing::warn!(model = %name, version, error = %e, "cluster: a model could not be shared")
            }
        }
    }
}
