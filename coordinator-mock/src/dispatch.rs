//! What the coordinator does with each message from a processor, inside the
//! link's transaction. The top of the procedures: it calls the role modules
//! (keygen, batches, signing, payouts, settlement) and passes what one
//! reports on to another (a batch included or a plan completed ends its
//! signing); none of them calls back up.

use proto::processor_v1::{ProcessorMessage, processor_message::Kind};
use sqlx::PgConnection;

use link::{HandleError, Handler, Inbound};

use crate::{batches, keygen, payouts, settlement, signing};

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
            Some(Kind::SignPreprocess(m)) => signing::preprocess(conn, inbound.link_id, m).await,
            Some(Kind::SignShare(m)) => signing::share(conn, inbound.link_id, m).await,
            Some(Kind::SignBlame(m)) => signing::blame(conn, inbound.link_id, m).await,
            Some(Kind::PlanProposal(m)) => payouts::proposal(conn, inbound.link_id, m).await,
            Some(Kind::PlanCompleted(m)) => {
                match payouts::completed(conn, inbound.link_id, m).await? {
                    payouts::Completed::Now(seq) => {
                        signing::finish(
                            conn,
                            signing::Procedure {
                                kind: signing::ProcedureKind::Plan,
                                key: seq,
                            },
                        )
                        .await?;
                    }
                    payouts::Completed::Before => {}
                }
                Ok(())
            }
            Some(Kind::Fault(m)) => payouts::fault(conn, inbound.link_id, m).await,
            Some(Kind::BurnRejected(m)) => payouts::burn_rejected(conn, inbound.link_id, m).await,
            Some(Kind::BatchSigned(m)) => {
                match batches::signed(conn, inbound.link_id, m).await? {
                    batches::Signed::Included(id) => {
                        signing::finish(
                            conn,
                            signing::Procedure {
                                kind: signing::ProcedureKind::Batch,
                                key: id,
                            },
                        )
                        .await?;
                    }
                    batches::Signed::AlreadyIncluded => {}
                }
                Ok(())
            }
            None => Err(HandleError::Rejected("message with no kind".into())),
        }
    }
}
