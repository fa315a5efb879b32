//! What the processor does with each message from the coordinator. Runs
//! inside the link's transaction (see [`crate::link::Handler`]).

use proto::processor_v1::{CoordinatorMessage, coordinator_message::Kind};
use sqlx::PgConnection;

use crate::keystore::Keystore;
use crate::link::{HandleError, Handler, Inbound};
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
                settlement::take_in(conn, inbound.link_id, block).await
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
