//! Key rotation: each key's stage, as a pure function of finalized Monero
//! heights fixed when keys are confirmed.
//!
//! | Stage        | From block                          | Scanned for deposits | Windows plan            |
//! |--------------|-------------------------------------|----------------------|-------------------------|
//! | `Pending`    | confirmed, below its activation     | no                   | nothing                 |
//! | `Active`     | its activation `A`                  | yes                  | payouts, consolidations |
//! | `Forwarding` | the next key's activation `F`       | yes (credited once)  | forwards to the new key |
//! | `Finishing`  | `F + DEPOSIT_GRACE_BLOCKS`          | no                   | forwards what is left   |
//! | `Retired`    | after the first finalized block in `Finishing` at which it holds no output and no plan is open | no | nothing |
//!
//! `A` and `F` are activation heights the coordinator fixes when it
//! confirms each key (above every horizon it sent before, so no processor
//! has scanned them); the grace is a protocol constant. Every processor so
//! derives the same stage for the same block, whatever its configuration
//! or when messages arrived.
//!
//! Deposits are credited **on arrival**, to whichever key's address they
//! reach (a batch of that key's session), and never again: a forward pays
//! the new key's forwarding subaddress, which the scanner takes as the
//! group's own funds (status `included`, no batch), exactly like change.
//! Crediting at forwarding time instead would delay a user's credit by a
//! forward's confirmations and make it depend on a plan being signed; it
//! would also need a second path that must never fire for the same output.

pub mod db;

/// How long (in finalized blocks) after the next key's activation a key is
/// still scanned for deposits, which are credited and forwarded: users who
/// were given the old address shortly before the rotation are not lost.
/// After it, what the old key still holds is forwarded but nothing new to
/// it is seen. A protocol constant: every processor stops at the same block.
pub const DEPOSIT_GRACE_BLOCKS: u64 = 40;

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Confirmed; its activation block is not reached.
    Pending,
    /// Receives deposits and pays burns.
    Active,
    /// A newer key is active: still credits deposits to its address, pays
    /// no burn, and forwards every spendable output to the newest key.
    Forwarding,
    /// No longer scanned for deposits; forwards what it still holds
    /// (outputs whose batch or timelock was pending) and watches its plans.
    Finishing,
    /// Holds nothing and has no plan in flight: neither scanned nor
    /// scheduled.
    Retired,
}

impl Stage {
    /// The name shown in the admin API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Forwarding => "forwarding",
            Self::Finishing => "finishing",
            Self::Retired => "retired",
        }
    }

    /// All stages, in order (for gauges).
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Active,
        Self::Forwarding,
        Self::Finishing,
        Self::Retired,
    ];

    /// Whether the scanner stores outputs to the key's address.
    pub fn scans_deposits(self) -> bool {
        matches!(self, Self::Active | Self::Forwarding)
    }

    /// Whether the key has handed over: its windows forward, never pay.
    pub fn forwards(self) -> bool {
        matches!(self, Self::Forwarding | Self::Finishing)
    }

    /// Whether blocks are still processed for the key (windows, plans,
    /// unlocks).
    pub fn live(self) -> bool {
        matches!(self, Self::Active | Self::Forwarding | Self::Finishing)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key's transition heights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heights {
    /// Its first block.
    pub activation: u64,
    /// The next key's activation: forwarding starts (none yet: no successor).
    pub forwarding: Option<u64>,
    /// No longer scanned for deposits from here.
    pub finishing: Option<u64>,
    /// The block after which it is retired (observed, stored).
    pub retired: Option<u64>,
}

impl Heights {
    /// Heights of a key activated at `activation` whose successor (if any)
    /// activates at `successor`.
    pub fn new(activation: u64, successor: Option<u64>, retired: Option<u64>) -> Self {
        Self {
            activation,
            forwarding: successor,
            finishing: successor.map(|f| f.saturating_add(DEPOSIT_GRACE_BLOCKS)),
            retired,
        }
    }

    /// The stage at finalized block `height`.
    pub fn stage_at(&self, height: u64) -> Stage {
        if height < self.activation {
            Stage::Pending
        } else if self.retired.is_some_and(|r| height > r) {
            Stage::Retired
        } else if self.forwarding.is_none_or(|f| height < f) {
            Stage::Active
        } else if self.finishing.is_none_or(|f| height < f) {
            Stage::Forwarding
        } else {
            Stage::Finishing
        }
    }

    /// The first height above `height` at which the stage changes by
    /// schedule (retirement is observed, not scheduled).
    pub fn next_boundary(&self, height: u64) -> Option<u64> {
        [Some(self.activation), self.forwarding, self.finishing]
            .into_iter()
            .flatten()
            .filter(|&h| h > height)
            .min()
    }
}

/// A key in the rotation chain: one this processor holds a share of, or a
/// successor it only knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainKey {
    /// Session.
    pub session: u64,
    /// Group key.
    pub group_key: [u8; 32],
    /// Its transition heights.
    pub heights: Heights,
    /// Whether this processor holds a share of it.
    pub own: bool,
}

/// A confirmed key as stored, before its successor is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownKey {
    /// Session.
    pub session: u64,
    /// Group key.
    pub group_key: [u8; 32],
    /// Its activation height.
    pub activation: u64,
    /// Where it retired, if it did.
    pub retired: Option<u64>,
    /// Whether this processor holds a share of it.
    pub own: bool,
}

/// Keys ordered by activation: each key's successor is the next one.
pub fn chain(mut keys: Vec<KnownKey>) -> Vec<ChainKey> {
    keys.sort_by_key(|k| (k.activation, k.session));
    let activations: Vec<u64> = keys.iter().map(|k| k.activation).collect();
    keys.into_iter()
        .enumerate()
        .map(|(i, k)| {
            let successor = activations[i + 1..]
                .iter()
                .copied()
                .find(|&a| a > k.activation);
            ChainKey {
                session: k.session,
                group_key: k.group_key,
                heights: Heights::new(k.activation, successor, k.retired),
                own: k.own,
            }
        })
        .collect()
}

/// Where a key that has handed over forwards at block `height`: the newest
/// key active there.
pub fn forward_target(chain: &[ChainKey], height: u64) -> Option<&ChainKey> {
    chain
        .iter()
        .filter(|k| k.heights.activation <= height)
        .max_by_key(|k| (k.heights.activation, k.session))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_follow_the_heights_fixed_at_confirmation() {
        let h = Heights::new(100, Some(200), None);
        assert_eq!(h.stage_at(99), Stage::Pending);
        assert_eq!(h.stage_at(100), Stage::Active);
        assert_eq!(h.stage_at(199), Stage::Active);
        assert_eq!(h.stage_at(200), Stage::Forwarding);
        assert_eq!(
            h.stage_at(200 + DEPOSIT_GRACE_BLOCKS - 1),
            Stage::Forwarding
        );
        assert_eq!(h.stage_at(200 + DEPOSIT_GRACE_BLOCKS), Stage::Finishing);
        let retired = Heights::new(100, Some(200), Some(300));
        assert_eq!(retired.stage_at(300), Stage::Finishing);
        assert_eq!(retired.stage_at(301), Stage::Retired);
        assert_eq!(
            Heights::new(100, None, None).stage_at(10_000),
            Stage::Active
        );
        assert_eq!(h.next_boundary(150), Some(200));
        assert_eq!(h.next_boundary(200), Some(200 + DEPOSIT_GRACE_BLOCKS));
        assert_eq!(h.next_boundary(500), None);
    }

    #[test]
    fn each_key_hands_over_to_the_next_activated_one() {
        let key = |session, activation, retired, own| KnownKey {
            session,
            group_key: [0; 32],
            activation,
            retired,
            own,
        };
        let chain = chain(vec![
            key(2, 300, None, true),
            key(0, 10, Some(350), true),
            key(1, 200, None, false),
        ]);
        let sessions: Vec<u64> = chain.iter().map(|k| k.session).collect();
        assert_eq!(sessions, [0, 1, 2]);
        assert_eq!(chain[0].heights.forwarding, Some(200));
        assert_eq!(chain[1].heights.forwarding, Some(300));
        assert_eq!(chain[2].heights.forwarding, None);
        assert_eq!(forward_target(&chain, 250).map(|k| k.session), Some(1));
        assert_eq!(forward_target(&chain, 300).map(|k| k.session), Some(2));
        assert_eq!(chain[0].heights.stage_at(351), Stage::Retired);
    }
}
