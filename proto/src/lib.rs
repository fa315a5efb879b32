//! The v1 contract between a processor and its coordinator, generated from
//! `proto/` with tonic/prost.
//!
//! These are wire types: the processor and the coordinator convert them to
//! their own domain types at the edge and never let them leak further.

#![allow(
    missing_docs,
    clippy::large_enum_variant,
    clippy::doc_lazy_continuation
)]

/// Package `processor`.
pub mod processor {
    /// `processor.v1`: the link frames, the messages and the processor's services.
    pub mod v1 {
        tonic::include_proto!("processor.v1");
    }
}

/// Package `coordinator`.
pub mod coordinator {
    /// `coordinator.v1`: the coordinator's admin service.
    pub mod v1 {
        tonic::include_proto!("coordinator.v1");
    }
}

pub use coordinator::v1 as coordinator_v1;
pub use processor::v1 as processor_v1;

/// Encoded `FileDescriptorSet` of every file above, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");

/// The contract version this crate speaks, as sent in `Hello`.
pub const CONTRACT_VERSION: u32 = 1;

/// The name of a coordinator message's kind, for logs and the journal.
pub fn coordinator_message_kind(message: &processor_v1::CoordinatorMessage) -> &'static str {
    use processor_v1::coordinator_message::Kind;
    match &message.kind {
        None => "unknown",
        Some(Kind::KeyGenStart(_)) => "key_gen_start",
        Some(Kind::KeyGenRound1(_)) => "key_gen_round1",
        Some(Kind::KeyGenRound2(_)) => "key_gen_round2",
        Some(Kind::KeyConfirmed(_)) => "key_confirmed",
        Some(Kind::RegisterAccount(_)) => "register_account",
        Some(Kind::SignPreprocesses(_)) => "sign_preprocesses",
        Some(Kind::SignShares(_)) => "sign_shares",
        Some(Kind::SignReattempt(_)) => "sign_reattempt",
        Some(Kind::PlanProposal(_)) => "plan_proposal",
        Some(Kind::SettlementBlock(_)) => "settlement_block",
        Some(Kind::LinkProbe(_)) => "link_probe",
    }
}

/// The name of a processor message's kind, for logs and the journal.
pub fn processor_message_kind(message: &processor_v1::ProcessorMessage) -> &'static str {
    use processor_v1::processor_message::Kind;
    match &message.kind {
        None => "unknown",
        Some(Kind::KeyGenRound1(_)) => "key_gen_round1",
        Some(Kind::KeyGenRound2(_)) => "key_gen_round2",
        Some(Kind::KeyGenerated(_)) => "key_generated",
        Some(Kind::KeyGenBlame(_)) => "key_gen_blame",
        Some(Kind::BatchProposal(_)) => "batch_proposal",
        Some(Kind::SignPreprocess(_)) => "sign_preprocess",
        Some(Kind::SignShare(_)) => "sign_share",
        Some(Kind::SignBlame(_)) => "sign_blame",
        Some(Kind::BatchSigned(_)) => "batch_signed",
        Some(Kind::PlanProposal(_)) => "plan_proposal",
        Some(Kind::PlanCompleted(_)) => "plan_completed",
        Some(Kind::BurnRejected(_)) => "burn_rejected",
        Some(Kind::Fault(_)) => "fault",
        Some(Kind::SettlementBlockAck(_)) => "settlement_block_ack",
        Some(Kind::LinkProbe(_)) => "link_probe",
        Some(Kind::Identity(_)) => "identity",
    }
}
