//! What the processor does with each message from the coordinator. Runs
//! inside the link's transaction (see [`crate::link::Handler`]).

use prost::Message as _;
use proto::processor_v1::{
    CoordinatorMessage, ProcessorMessage, SettlementBlock, SettlementBlockAck,
    coordinator_message::Kind, processor_message,
};
use sqlx::PgConnection;

use crate::keystore::Keystore;
use crate::link::{self, HandleError, Handler, Inbound, OutMessage};
use crate::{accounts, keygen, scheduler, settlement, signer};

/// Dispatches coordinator messages to the processor's modules.
#[derive(Debug, Clone)]
pub struct CoordinatorHandler {
    keystore: Keystore,
}

impl CoordinatorHandler {
    /// A handler using `keystore` for everything secret.
    pub fn new(keystore: Keystore) -> Self {
        Self { keystore }
    }
}

impl Handler for CoordinatorHandler {
    type Message = CoordinatorMessage;

    fn kind(message: &CoordinatorMessage) -> Option<&'static str> {
        message
            .kind
            .as_ref()
            .map(|_| proto::coordinator_message_kind(message))
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        inbound: Inbound<'_>,
        message: CoordinatorMessage,
    ) -> Result<(), HandleError> {
        match message.kind {
            Some(Kind::SettlementBlock(block)) => {
                take_in_settlement_block(conn, inbound.link_id, block).await
            }
            Some(Kind::KeyGenStart(m)) => {
                keygen::start(conn, inbound.link_id, &self.keystore, m).await
            }
            Some(Kind::KeyGenRound1(m)) => {
                keygen::round1_packages(conn, inbound.link_id, &self.keystore, m).await
            }
            Some(Kind::KeyGenRound2(m)) => {
                keygen::round2_packages(conn, inbound.link_id, &self.keystore, m).await
            }
            Some(Kind::KeyConfirmed(m)) => keygen::confirmed(conn, m).await,
            Some(Kind::RegisterAccount(m)) => Err(accounts::refuse_loose(m.account)),
            Some(Kind::SignPreprocesses(m)) => {
                signer::preprocesses(conn, &self.keystore, inbound.link_id, m).await
            }
            Some(Kind::SignShares(m)) => {
                signer::shares(conn, &self.keystore, inbound.link_id, m).await
            }
            Some(Kind::PlanProposal(m)) => scheduler::receive(conn, m).await,
            Some(Kind::SignReattempt(m)) => {
                signer::reattempt(conn, &self.keystore, inbound.link_id, m).await
            }
            // Journaled by the link; a probe has no other effect.
            Some(Kind::LinkProbe(_)) => Ok(()),
            None => Err(HandleError::Rejected("message with no kind".into())),
        }
    }
}

/// Stores `block` and enqueues its acknowledgement, in the caller's
/// transaction. A block number seen before is refused: the coordinator would
/// be rewriting history.
pub async fn take_in_settlement_block(
    conn: &mut PgConnection,
    link_id: &str,
    block: SettlementBlock,
) -> Result<(), HandleError> {
    // In one order with the scanner's block transactions: see
    // `lock_chain_order` (the batch-inclusion race).
    crate::scanner::db::lock_chain_order(&mut *conn).await?;
    if settlement::db::exists(conn, block.number).await? {
        return Err(HandleError::Rejected(format!(
            "settlement block {} was already taken in",
            block.number
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for burn in &block.burns {
        settlement::check_text("burn id", &burn.burn_id, settlement::MAX_BURN_ID_BYTES)?;
        settlement::check_text(
            &format!("burn {:?} address", burn.burn_id),
            &burn.monero_address,
            settlement::MAX_ADDRESS_BYTES,
        )?;
        if !seen.insert(burn.burn_id.as_str()) {
            return Err(HandleError::Rejected(format!(
                "settlement block {} lists burn {:?} twice",
                block.number, burn.burn_id
            )));
        }
        if i64::try_from(burn.amount).is_err() {
            return Err(HandleError::Rejected(format!(
                "burn {:?} amount {} exceeds the Monero supply",
                burn.burn_id, burn.amount
            )));
        }
    }
    if settlement::db::any_burn_exists(conn, &block.burns).await? {
        return Err(HandleError::Rejected(format!(
            "settlement block {} repeats a burn id already taken in",
            block.number
        )));
    }
    // The horizon and the accounts' activation heights are what make every
    // processor's reports a function of the chain: refuse a block that
    // would let one processor have scanned what another interprets anew.
    let previous = settlement::db::horizon(&mut *conn).await?;
    if let Some(previous) = previous
        && block.monero_horizon < previous
    {
        return Err(HandleError::Rejected(format!(
            "settlement block {} lowers the Monero horizon from {previous} to {}: the horizon never decreases",
            block.number, block.monero_horizon
        )));
    }
    for account in &block.accounts {
        if previous.is_some_and(|p| account.active_from <= p) {
            return Err(HandleError::Rejected(format!(
                "settlement block {} registers account {} from Monero block {}, at or below the horizon {} \
                 already given: processors may have scanned that block",
                block.number,
                account.account,
                account.active_from,
                previous.unwrap_or_default()
            )));
        }
    }
    for account in &block.accounts {
        crate::accounts::register(conn, account.account, account.active_from, block.number).await?;
    }
    let included =
        crate::batch::include(conn, link_id, block.number, &block.included_batch_ids).await?;
    settlement::db::insert(conn, &block, &included).await?;
    crate::scheduler::take_in_burns(conn, link_id, block.number).await?;
    let ack = ProcessorMessage {
        kind: Some(processor_message::Kind::SettlementBlockAck(
            SettlementBlockAck {
                number: block.number,
            },
        )),
    };
    link::enqueue(
        conn,
        link_id,
        &[OutMessage {
            uid: settlement::ack_uid(block.number),
            kind: "settlement_block_ack",
            payload: ack.encode_to_vec(),
        }],
    )
    .await?;
    Ok(())
}
