//! The processor's view of `monerod`: tip height and scannable blocks, over
//! monero-daemon-rpc with the simple-request transport. A daemon that is
//! down or answers garbage is an error the caller retries; the connection
//! is rebuilt after any failure.

use std::ops::RangeInclusive;

use monero_daemon_rpc::MoneroDaemon;
use monero_simple_request_rpc::SimpleRequestTransport;
use monero_wallet::ed25519::Point;
use monero_wallet::interface::{
    EvaluateUnlocked, FeePriority, FeeRate, ProvidesBlockchainMeta, ProvidesDecoys,
    ProvidesFeeRates, ProvidesOutputs, ProvidesScannableBlocks, PublishTransaction, ScannableBlock,
};
use monero_wallet::transaction::Transaction;

/// The highest fee per weight unit accepted from a daemon; a daemon asking
/// for more is treated as answering garbage (regtest asks for ~20k).
pub const MAX_FEE_PER_WEIGHT: u64 = 100_000_000;

/// The daemon could not answer.
#[derive(Debug, thiserror::Error)]
#[error("monerod at {url} did not answer {what}: {detail}")]
pub struct DaemonError {
    /// The daemon.
    pub url: String,
    /// The request.
    pub what: String,
    /// Why.
    pub detail: String,
}

/// Where a key image stands on a daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyImage {
    /// Neither in a block nor in the pool.
    Unspent,
    /// In a block (final or not).
    SpentInBlock,
    /// In a transaction in the daemon's pool.
    SpentInPool,
}

/// A connection to one `monerod`, made on first use and remade after errors.
pub struct Daemon {
    url: String,
    connection: tokio::sync::Mutex<Option<MoneroDaemon<SimpleRequestTransport>>>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

pub mod blocks_bin;

impl Daemon {
    /// A daemon at `url` (e.g. "http://127.0.0.1:18081"); nothing is
    /// contacted yet.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connection: tokio::sync::Mutex::new(None),
        }
    }

    fn error(&self, what: &str, detail: impl std::fmt::Display) -> DaemonError {
        // One series per call, not per block range.
        let call = if what.starts_with("blocks ") {
            "get_blocks.bin"
        } else {
            what
        };
        metrics::counter!(crate::metrics::RPC_ERRORS, "call" => call.to_owned()).increment(1);
        DaemonError {
            url: self.url.clone(),
            what: what.to_owned(),
            detail: detail.to_string(),
        }
    }

    async fn connection(&self) -> Result<MoneroDaemon<SimpleRequestTransport>, DaemonError> {
        let mut slot = self.connection.lock().await;
        if let Some(daemon) = slot.as_ref() {
            return Ok(daemon.clone());
        }
        let daemon = SimpleRequestTransport::new(self.url.clone())
            .await
            .map_err(|e| self.error("a connection", format!("{e:?}")))?;
        *slot = Some(daemon.clone());
        Ok(daemon)
    }

    /// The RPC client itself, for monero-wallet calls that take one (decoy
    /// selection).
    pub async fn rpc(&self) -> Result<MoneroDaemon<SimpleRequestTransport>, DaemonError> {
        self.connection().await
    }

    async fn forget(&self) {
        *self.connection.lock().await = None;
    }

    /// The number (height) of the latest block.
    pub async fn tip(&self) -> Result<u64, DaemonError> {
        let daemon = self.connection().await?;
        match daemon.latest_block_number().await {
            Ok(n) => Ok(n as u64),
            Err(e) => {
                self.forget().await;
                Err(self.error("get_height", format!("{e:?}")))
            }
        }
    }

    /// The blocks numbered `range`, checked for consistency, in order.
    pub async fn blocks(
        &self,
        range: RangeInclusive<u64>,
    ) -> Result<Vec<ScannableBlock>, DaemonError> {
        let what = format!("blocks {}..={}", range.start(), range.end());
        let range = usize::try_from(*range.start()).map_err(|e| self.error(&what, e))?
            ..=usize::try_from(*range.end()).map_err(|e| self.error(&what, e))?;
        let daemon = self.connection().await?;
        let (start, end) = (*range.start(), *range.end());
        let mut blocks = Vec::with_capacity(end.saturating_sub(start) + 1);
        let mut from = start;
        if start == 0 {
            // get_blocks.bin cannot start at the genesis block.
            match daemon.contiguous_scannable_blocks(0..=0).await {
                Ok(genesis) => blocks.extend(genesis),
                Err(e) => {
                    self.forget().await;
                    return Err(self.error(&what, format!("{e:?}")));
                }
            }
            from = 1;
        }
        if from > end {
            return Ok(blocks);
        }
        match blocks_bin::fetch(&daemon, from as u64..=end as u64).await {
            Ok(fetched) => blocks.extend(fetched),
            Err(reason) => {
                // The library's path is slower (JSON per block where this
                // monerod sends no prunable hashes) but reads any daemon.
                tracing::warn!(%what, "fast block fetch failed ({reason}); using the general path");
                match daemon.contiguous_scannable_blocks(from..=end).await {
                    Ok(fetched) => blocks.extend(fetched),
                    Err(e) => {
                        self.forget().await;
                        return Err(self.error(&what, format!("{e:?}")));
                    }
                }
            }
        }
        Ok(blocks)
    }

    /// The fee rate for `priority`, refusing absurd rates.
    pub async fn fee_rate(&self, priority: FeePriority) -> Result<FeeRate, DaemonError> {
        let daemon = self.connection().await?;
        match ProvidesFeeRates::fee_rate(&daemon, priority, MAX_FEE_PER_WEIGHT).await {
            Ok(rate) => Ok(rate),
            Err(e) => {
                self.forget().await;
                Err(self.error("get_fee_estimate", format!("{e:?}")))
            }
        }
    }

    /// How many RingCT outputs the blocks up to `block_number` hold: a ring
    /// member's global index must be below it.
    pub async fn ringct_outputs_up_to(&self, block_number: u64) -> Result<u64, DaemonError> {
        let what = "get_output_distribution.bin";
        let daemon = self.connection().await?;
        let block = usize::try_from(block_number).map_err(|e| self.error(what, e))?;
        match ProvidesDecoys::ringct_output_distribution(&daemon, ..=block).await {
            Ok(cumulative) => Ok(cumulative.last().copied().unwrap_or(0)),
            Err(e) => {
                self.forget().await;
                Err(self.error(what, format!("{e:?}")))
            }
        }
    }

    /// The RingCT outputs at these global indexes as (key, commitment), each
    /// `None` unless it is a valid point unlocked as of block `block_number`
    /// (judged from the chain up to that block alone, as the leader's decoy
    /// selection judged it). Every index must be below
    /// [`Self::ringct_outputs_up_to`].
    pub async fn unlocked_outputs(
        &self,
        indexes: &[u64],
        block_number: u64,
    ) -> Result<Vec<Option<[Point; 2]>>, DaemonError> {
        let what = "get_outs.bin";
        let daemon = self.connection().await?;
        let block_number = usize::try_from(block_number).map_err(|e| self.error(what, e))?;
        match ProvidesDecoys::unlocked_ringct_outputs(
            &daemon,
            indexes,
            EvaluateUnlocked::FingerprintableDeterministic { block_number },
        )
        .await
        {
            Ok(outputs) => Ok(outputs),
            Err(e) => {
                self.forget().await;
                Err(self.error(what, format!("{e:?}")))
            }
        }
    }

    /// The RingCT outputs at these global indexes as (key bytes, commitment),
    /// locked or not.
    pub async fn outputs(&self, indexes: &[u64]) -> Result<Vec<([u8; 32], Point)>, DaemonError> {
        let daemon = self.connection().await?;
        match ProvidesOutputs::ringct_outputs(&daemon, indexes).await {
            Ok(outputs) => Ok(outputs
                .into_iter()
                .map(|o| (o.key.to_bytes(), o.commitment))
                .collect()),
            Err(e) => {
                self.forget().await;
                Err(self.error("get_outs.bin", format!("{e:?}")))
            }
        }
    }

    /// Where each key image stands (`is_key_image_spent`): unspent, spent in
    /// a block, or spent by a transaction in the daemon's pool.
    pub async fn key_images(&self, images: &[[u8; 32]]) -> Result<Vec<KeyImage>, DaemonError> {
        let what = "is_key_image_spent";
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let daemon = self.connection().await?;
        let request = serde_json::json!({
            "key_images": images.iter().map(hex::encode).collect::<Vec<_>>(),
        })
        .to_string();
        // monero-daemon-rpc has no typed call for this route; its generic
        // call does the transport and the size bound.
        let answer = match daemon
            .rpc_call(what, Some(request), 256 + 16 * images.len())
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                self.forget().await;
                return Err(self.error(what, format!("{e:?}")));
            }
        };
        let parsed: serde_json::Value =
            serde_json::from_str(&answer).map_err(|e| self.error(what, e))?;
        if parsed["status"] != "OK" {
            return Err(self.error(what, format!("status {}", parsed["status"])));
        }
        let statuses = parsed["spent_status"]
            .as_array()
            .filter(|s| s.len() == images.len())
            .ok_or_else(|| self.error(what, "no spent_status for every key image"))?;
        statuses
            .iter()
            .map(|s| match s.as_u64() {
                Some(0) => Ok(KeyImage::Unspent),
                Some(1) => Ok(KeyImage::SpentInBlock),
                Some(2) => Ok(KeyImage::SpentInPool),
                _ => Err(self.error(what, format!("unknown spent status {s}"))),
            })
            .collect()
    }

    /// Publishes a transaction (a transaction the daemon already has counts
    /// as published).
    pub async fn publish(&self, transaction: &Transaction) -> Result<(), DaemonError> {
        let daemon = self.connection().await?;
        match daemon.publish_transaction(transaction).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.forget().await;
                Err(self.error("send_raw_transaction", format!("{e:?}")))
            }
        }
    }
}
