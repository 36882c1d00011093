//! `StateHub`: the caching workers of every function, and what each must hear of the others'
//! writes (`runner/PROTOCOL.md`, "State cache").
//!
//! Workers cache state values and send plain `store`s without waiting only where this gateway
//! is the one writer of the store and the store applies writes in the order they are queued
//! (the embedded SQLite, held by this server alone). A write-behind store's commit hook runs on
//! the store's writer in commit order: it counts the write for its worker and pushes the value
//! to the function's other workers, before the call that made it may answer. Writes that
//! return an answer (`incr`, a compare-and-set, `delete`) make the others forget the key,
//! which is right in any order.

use std::collections::HashMap;
use std::sync::Mutex;

use skython_runner::StatePeer;
use skython_store::{StateScope, WriteChain};

#[derive(Default)]
pub struct StateHub {
    workers: Mutex<HashMap<StateScope, Vec<Member>>>,
}

struct Member {
    peer: StatePeer,
    /// Its write-behind stores: they stop at the first one refused.
    chain: WriteChain,
}

impl StateHub {
    fn workers(&self) -> std::sync::MutexGuard<'_, HashMap<StateScope, Vec<Member>>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn attach(&self, scope: &StateScope, peer: StatePeer) {
        let mut all = self.workers();
        let members = all.entry(scope.clone()).or_default();
        members.retain(|m| !m.peer.is_gone());
        members.push(Member {
            peer,
            chain: WriteChain::default(),
        });
    }

    /// The chain of `peer`'s write-behind stores.
    pub fn chain(&self, scope: &StateScope, peer: &StatePeer) -> WriteChain {
        self.workers()
            .get(scope)
            .and_then(|ms| ms.iter().find(|m| m.peer.id() == peer.id()))
            .map(|m| m.chain.clone())
            // Not attached (it cannot happen: a worker attaches before its first call): a
            // chain of its own still stops its writes at the first failure.
            .unwrap_or_default()
    }

    /// A write-behind store of `from` committed: the others hear the value. Runs in commit order.
    pub fn stored(&self, scope: &StateScope, from: &StatePeer, key: &str, value: &str) {
        self.each_other(scope, Some(from), |p| p.push_value(key, value));
    }

    /// `key` changed through a write that answers: every worker forgets it.
    pub fn changed(&self, scope: &StateScope, key: &str) {
        self.each_other(scope, None, |p| p.forget(key));
    }

    fn each_other(&self, scope: &StateScope, from: Option<&StatePeer>, tell: impl Fn(&StatePeer)) {
        let mut all = self.workers();
        let Some(members) = all.get_mut(scope) else {
            return;
        };
        members.retain(|m| !m.peer.is_gone());
        for m in members.iter() {
            if from.is_none_or(|f| f.id() != m.peer.id()) {
                tell(&m.peer);
            }
        }
        if members.is_empty() {
            all.remove(scope);
        }
    }
}
