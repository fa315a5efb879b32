//! Checking a proposal's rings against this processor's own daemon.
//!
//! A follower rebuilds the leader's transaction from the proposal's inputs,
//! so a rebuild alone cannot tell a ring monerod will refuse: every ring
//! member must be, on this processor's own chain, the output at that global
//! index with that key and commitment, and unlocked. The leader selects its
//! decoys as of the window's first block (a finalized block every processor
//! holds), so every follower judges "unlocked" by the same block and an
//! honest leader's rings always pass.

use monero_wallet::OutputWithDecoys;
use monero_wallet::ed25519::Point;

use super::plan;
use crate::monero::{Daemon, DaemonError};

fn bytes(point: Point) -> [u8; 32] {
    point.compress().to_bytes()
}

/// `Ok(Err(reason))` if a ring of `inputs` is not one monerod would take
/// with decoys chosen as of block `as_of`; `Err` if the daemon did not
/// answer (retry: never the leader's fault).
pub async fn check(
    daemon: &Daemon,
    inputs: &[OutputWithDecoys],
    as_of: u64,
) -> Result<Result<(), String>, DaemonError> {
    let total = daemon.ringct_outputs_up_to(as_of).await?;
    for (i, input) in inputs.iter().enumerate() {
        let decoys = input.decoys();
        if decoys.len() != usize::from(plan::RING_LEN) {
            return Ok(Err(format!(
                "input {i} has a ring of {} members, not {}",
                decoys.len(),
                plan::RING_LEN
            )));
        }
        let ring = decoys.ring();
        let signer = usize::from(decoys.signer_index());
        // Positions strictly increase (monero-clsag's `Decoys` checks so).
        let positions = decoys.positions();
        let real = [bytes(input.key()), bytes(input.commitment().commit())];
        if ring
            .get(signer)
            .is_none_or(|m| [bytes(m[0]), bytes(m[1])] != real)
        {
            return Ok(Err(format!(
                "input {i}: the ring member it signs for is not the output it spends"
            )));
        }
        if let Some(&last) = positions.last()
            && last >= total
        {
            return Ok(Err(format!(
                "input {i}: ring member at global index {last} does not exist as of block \
                 {as_of} ({total} RingCT outputs)"
            )));
        }
        let decoy_at: Vec<usize> = (0..positions.len()).filter(|&j| j != signer).collect();
        let wanted: Vec<u64> = decoy_at.iter().map(|&j| positions[j]).collect();
        let found = daemon.unlocked_outputs(&wanted, as_of).await?;
        if found.len() != wanted.len() {
            return Ok(Err(format!(
                "input {i}: the daemon did not return every ring member"
            )));
        }
        for (&j, on_chain) in decoy_at.iter().zip(&found) {
            let position = positions[j];
            let Some(on_chain) = on_chain else {
                return Ok(Err(format!(
                    "input {i}: ring member {j} (global output {position}) is locked or not a \
                     valid output as of block {as_of}"
                )));
            };
            if [bytes(on_chain[0]), bytes(on_chain[1])] != [bytes(ring[j][0]), bytes(ring[j][1])] {
                return Ok(Err(format!(
                    "input {i}: ring member {j} is not global output {position} (its key or \
                     commitment differs on chain)"
                )));
            }
        }
        // The real member: the output we scanned must sit at its index.
        let at = positions[signer];
        let on_chain = daemon.outputs(&[at]).await?;
        if on_chain
            .first()
            .is_none_or(|(key, commitment)| [*key, bytes(*commitment)] != real)
        {
            return Ok(Err(format!(
                "input {i}: the output it spends is not global output {at}"
            )));
        }
    }
    Ok(Ok(()))
}
