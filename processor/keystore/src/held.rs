//! The in-memory store of per-attempt signing state (FROST nonces, CLSAG
//! machines): bounded, and pruned as attempts are superseded or their
//! procedure ends. What it drops is zeroized (frost's `SigningNonces` and
//! modular-frost's machines zeroize their nonces on drop).
//!
//! An evicted attempt can never complete on this node: its nonces are gone,
//! so the signer sends nothing for it and waits for the coordinator's
//! re-attempt, which brings fresh nonces. A nonce is never made twice for an
//! attempt, so eviction can never lead to a nonce being reused.

use std::collections::HashMap;

use tracing::warn;

use super::sign::AttemptKey;

/// Attempts held at once per store. Far above what a key signs
/// concurrently (one batch per final block with deposits, one plan per key
/// in flight, each with its current attempt only); reaching it means
/// procedures are being started and never finished.
pub const MAX_HELD_ATTEMPTS: usize = 1024;

/// Per-attempt state, at most `cap` entries; the oldest is evicted first.
pub(crate) struct Held<V> {
    entries: HashMap<AttemptKey, (u64, V)>,
    next: u64,
    cap: usize,
    what: &'static str,
}

fn same_procedure(a: &AttemptKey, b: &AttemptKey) -> bool {
    a.0 == b.0 && a.1 == b.1 && a.2 == b.2
}

impl<V> Held<V> {
    pub(crate) fn new(what: &'static str, cap: usize) -> Self {
        Self {
            entries: HashMap::new(),
            next: 0,
            cap: cap.max(1),
            what,
        }
    }

    /// How many attempts are held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Holds `value` for `attempt`. Earlier attempts of the same procedure
    /// are superseded and dropped; at the cap the oldest entry goes.
    pub(crate) fn insert(&mut self, attempt: AttemptKey, value: V) {
        self.supersede(&attempt, false);
        while self.entries.len() >= self.cap {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (seq, _))| *seq)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.entries.remove(&oldest);
            warn!(
                store = self.what,
                cap = self.cap,
                session = oldest.0,
                kind = %oldest.1,
                id = %hex::encode(&oldest.2),
                attempt = oldest.3,
                "signing state cap reached: dropped the oldest attempt's nonces; that attempt \
                 cannot complete on this node (the coordinator's re-attempt brings fresh nonces)"
            );
        }
        let seq = self.next;
        self.next += 1;
        self.entries.insert(attempt, (seq, value));
    }

    /// Takes the state of `attempt` out (it is used once).
    pub(crate) fn take(&mut self, attempt: &AttemptKey) -> Option<V> {
        self.entries.remove(attempt).map(|(_, v)| v)
    }

    /// Drops the attempts of `attempt`'s procedure below it (and `attempt`
    /// itself when `inclusive`). Returns how many were dropped.
    pub(crate) fn supersede(&mut self, attempt: &AttemptKey, inclusive: bool) -> usize {
        let before = self.entries.len();
        self.entries.retain(|k, _| {
            !(same_procedure(k, attempt) && (k.3 < attempt.3 || (inclusive && k.3 == attempt.3)))
        });
        before - self.entries.len()
    }

    /// Drops every attempt of the procedure (it completed or was abandoned).
    pub(crate) fn forget(&mut self, session: u64, kind: &str, id: &[u8]) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|k, _| !(k.0 == session && k.1 == kind && k.2 == id));
        before - self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u8, attempt: u32) -> AttemptKey {
        (7, "batch".to_owned(), vec![id], attempt)
    }

    #[test]
    fn a_later_attempt_drops_the_earlier_ones_of_its_procedure_only() {
        let mut held = Held::new("test", 16);
        held.insert(key(1, 0), "a0");
        held.insert(key(2, 0), "b0");
        held.insert(key(1, 1), "a1");
        held.insert(key(1, 2), "a2");
        assert_eq!(held.len(), 2, "only the current attempt of each procedure");
        assert_eq!(held.take(&key(1, 0)), None);
        assert_eq!(held.take(&key(1, 1)), None);
        assert_eq!(held.take(&key(2, 0)), Some("b0"));
        assert_eq!(held.supersede(&key(1, 2), true), 1);
        assert_eq!(held.len(), 0);
    }

    #[test]
    fn forgetting_a_procedure_drops_all_its_attempts() {
        let mut held = Held::new("test", 16);
        held.insert(key(1, 3), ());
        held.insert(key(2, 0), ());
        assert_eq!(held.forget(7, "batch", &[1]), 1);
        assert_eq!(
            held.forget(7, "plan", &[2]),
            0,
            "another kind is another procedure"
        );
        assert_eq!(held.len(), 1);
    }

    #[test]
    fn the_cap_evicts_the_oldest_first() {
        let mut held = Held::new("test", 3);
        for id in 0..5 {
            held.insert(key(id, 0), id);
        }
        assert_eq!(held.len(), 3);
        assert_eq!(held.take(&key(0, 0)), None, "oldest evicted");
        assert_eq!(held.take(&key(1, 0)), None);
        assert_eq!(held.take(&key(4, 0)), Some(4));
    }
}
