//! Bandit learning across nodes: every bandit decision and outcome a node's shards hand its
//! learner also goes to `<prefix>.learn`, and every other node's learner takes it in, so each
//! slot's policy learns from the users of every node. Core NATS (at most once): a lost message
//! costs one online update, as a full learner queue does on a lone node; the decision log keeps
//! the records on the node that owns the user.

use std::sync::Arc;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

use trimtab_engine::bandits::def::RewardKind;
use trimtab_engine::bandits::learner::LearnMsg;
use trimtab_engine::bandits::record::LearnRecord;

use crate::Inner;

/// A learner message on the wire, with the process that sent it (which skips its own).
#[derive(Serialize, Deserialize)]
struct Shared {
    instance: String,
    msg: Msg,
}

#[derive(Serialize, Deserialize)]
enum Msg {
    Chosen {
        id: [u8; 16],
        rec: Box<LearnRecord>,
    },
    Outcome {
        id: [u8; 16],
        slot: String,
        kind: RewardKind,
    },
}

/// Hooks the engine's bandits to the subject and starts taking in the other nodes' messages.
pub(crate) fn start(rt: &Runtime, inner: &Arc<Inner>) -> Result<(), String> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bytes::Bytes>();
    let instance = inner.instance.clone();
    inner.engine.bandits.set_share(Box::new(move |m| {
        let msg = match m {
            LearnMsg::Chosen { id, rec } => Msg::Chosen {
                id: *id,
                rec: rec.clone(),
            },
            LearnMsg::Outcome { id, slot, kind } => Msg::Outcome {
                id: *id,
                slot: slot.clone(),
                kind: *kind,
            },
            LearnMsg::Reload(_) => return,
        };
        let body = serde_json::to_vec(&Shared {
            instance: instance.clone(),
            msg,
        })
        .expect("serialisable");
        let _ = tx.send(body.into());
    }));
    let out = inner.clone();
    rt.spawn(async move {
        let subject = out.names.learn();
        while let Some(b) = rx.recv().await {
            let _ = out.client.publish(subject.clone(), b).await;
        }
    });
    let sub = rt
        .block_on(inner.client.subscribe(inner.names.learn()))
        .map_err(|e| format!("cannot subscribe to the learners' subject: {e}"))?;
    rt.spawn(take_in(inner.clone(), sub));
    Ok(())
}

async fn take_in(inner: Arc<Inner>, mut sub: async_nats::Subscriber) {
    while let Some(m) = sub.next().await {
        let Ok(s) = serde_json::from_slice::<Shared>(&m.payload) else {
            continue;
        };
        if s.instance == inner.instance {
            continue;
        }
        let msg = match s.msg {
            Msg::Chosen { id, rec } => LearnMsg::Chosen { id, rec },
            Msg::Outcome { id, slot, kind } => LearnMsg::Outcome { id, slot, kind },
        };
        inner.engine.bandits.learn_from_peer(msg);
    }
}
