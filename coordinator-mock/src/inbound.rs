//! What the coordinator does with each message from a processor, inside the
//! link's transaction.

use proto::processor_v1::{ProcessorMessage, processor_message::Kind};
use sqlx::PgConnection;

use processor::link::{HandleError, Handler, Inbound};

use crate::{batches, keygen, settlement};

/// Dispatches processor messages.
#[derive(Debug, Clone, Default)]
pub struct ProcessorHandler;

impl Handler for ProcessorHandler {
    type Message = ProcessorMessage;

    fn kind(message: &ProcessorMessage) -> Option<&'static str> {
        message
            .kind
            .as_ref()
            .map(|_| proto::processor_message_kind(message))
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        inbound: Inbound<'_>,
        message: ProcessorMessage,
    ) -> Result<(), HandleError> {
        match message.kind {
            Some(Kind::SettlementBlockAck(ack)) => {
                settlement::record_ack(conn, inbound.link_id, ack.number).await
            }
            Some(Kind::LinkProbe(_)) => Ok(()),
            Some(Kind::Identity(m)) => keygen::record_identity(conn, inbound.link_id, m).await,
            Some(Kind::KeyGenRound1(m)) => keygen::round1(conn, inbound.link_id, m).await,
            Some(Kind::KeyGenRound2(m)) => keygen::round2(conn, inbound.link_id, m).await,
            Some(Kind::KeyGenerated(m)) => keygen::generated(conn, inbound.link_id, m).await,
            Some(Kind::KeyGenBlame(m)) => keygen::blame(conn, inbound.link_id, m).await,
            Some(Kind::BatchProposal(m)) => batches::proposal(conn, inbound.link_id, m).await,
            Some(Kind::SignPreprocess(m)) => batches::preprocess(conn, inbound.link_id, m).await,
            Some(Kind::SignShare(m)) => batches::share(conn, inbound.link_id, m).await,
            Some(Kind::SignBlame(m)) => batches::blame(conn, inbound.link_id, m).await,
            Some(Kind::BatchSigned(m)) => batches::signed(conn, inbound.link_id, m).await,
            Some(other) => Err(HandleError::Rejected(format!(
                "{} is not acted on by coordinator-mock {}; it is kept in the quarantine",
                proto::processor_message_kind(&ProcessorMessage { kind: Some(other) }),
                env!("CARGO_PKG_VERSION"),
            ))),
            None => Err(HandleError::Rejected("message with no kind".into())),
        }
    }
}
