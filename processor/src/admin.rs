//! `ProcessorAdmin`: queries for operators, and resolving a quarantined
//! message.

use std::sync::Arc;
use std::time::SystemTime;

use proto::processor_v1::processor_admin_server::ProcessorAdmin;
use proto::processor_v1::{
    BatchEntry, BatchPage, DepositAddress, DepositAddressRequest, GetScanStatusRequest,
    GetStatusRequest, InboxEntry, InboxPage, KeyInfo, KeyList, ListKeysRequest, ListRequest,
    OutputEntry, OutputPage, ProcessorStatus, QuarantineEntry, QuarantinePage,
    ResolveQuarantineRequest, ResolveQuarantineResponse, ScanStatus, SendLogEntry, SendLogPage,
    SettlementBlockEntry, SettlementBlockPage,
};
use proto::processor_v1::{BurnEntry, GetScheduleRequest, PlanEntry, Schedule, WindowEntry};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::amount::Amount;
use crate::error::ServiceError;
use crate::inbound::CoordinatorHandler;
use crate::link::{Link, ProcessorSide, db as link_db};
use crate::scheduler::db::ScheduleError;
use crate::{accounts, batch, keygen, scanner, settlement};

/// The processor's link type.
pub type CoordinatorLink = Link<ProcessorSide, CoordinatorHandler>;

/// Serves `ProcessorAdmin`.
#[derive(Debug, Clone)]
pub struct Admin {
    pool: PgPool,
    scanning: bool,
    identity: [u8; 32],
    link: Arc<CoordinatorLink>,
    node_id: String,
    started: SystemTime,
}

impl Admin {
    /// A new admin service over the processor's state.
    pub fn new(
        pool: PgPool,
        link: Arc<CoordinatorLink>,
        node_id: String,
        identity: [u8; 32],
    ) -> Self {
        Self {
            pool,
            scanning: false,
            identity,
            link,
            node_id,
            started: SystemTime::now(),
        }
    }
}

impl Admin {
    /// Marks that this processor scans a monerod (for `GetScanStatus`).
    pub fn with_scanning(mut self, scanning: bool) -> Self {
        self.scanning = scanning;
        self
    }
}

/// Checks a page request: `limit` 0 means 100, more than 1000 is refused.
pub fn page_limit(request: &ListRequest) -> Result<u32, ServiceError> {
    match request.limit {
        0 => Ok(100),
        n @ 1..=1000 => Ok(n),
        n => Err(ServiceError::InvalidArgument(format!(
            "limit {n} is more than 1000; page with after_id instead"
        ))),
    }
}

#[tonic::async_trait]
impl ProcessorAdmin for Admin {
    async fn get_status(
        &self,
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<ProcessorStatus>, Status> {
        let link = self.link.status().await.map_err(ServiceError::from)?;
        Ok(Response::new(ProcessorStatus {
            node_id: self.node_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            link: Some(link),
            started_unix_ms: self
                .started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        }))
    }

    async fn list_send_log(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<SendLogPage>, Status> {
        let request = request.into_inner();
        let limit = page_limit(&request)?;
        let rows = link_db::list_send_log(&self.pool, self.link.link_id(), request.after_id, limit)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(SendLogPage {
            entries: rows
                .into_iter()
                .map(|r| SendLogEntry {
                    id: r.id,
                    uid: r.uid,
                    kind: r.kind,
                    size: r.size,
                    acked: r.acked,
                    created_unix_ms: r.created_unix_ms,
                })
                .collect(),
        }))
    }

    async fn list_inbox(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<InboxPage>, Status> {
        let request = request.into_inner();
        let limit = page_limit(&request)?;
        let rows = link_db::list_inbox(&self.pool, self.link.link_id(), request.after_id, limit)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(InboxPage {
            entries: rows
                .into_iter()
                .map(|r| InboxEntry {
                    id: r.id,
                    uid: r.uid,
                    kind: r.kind,
                    size: r.size,
                    handled_unix_ms: r.handled_unix_ms,
                })
                .collect(),
        }))
    }

    async fn list_quarantine(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<QuarantinePage>, Status> {
        let request = request.into_inner();
        let limit = page_limit(&request)?;
        let rows =
            link_db::list_quarantine(&self.pool, self.link.link_id(), request.after_id, limit)
                .await
                .map_err(ServiceError::from)?;
        Ok(Response::new(QuarantinePage {
            entries: rows.into_iter().map(quarantine_entry).collect(),
        }))
    }

    async fn resolve_quarantine(
        &self,
        request: Request<ResolveQuarantineRequest>,
    ) -> Result<Response<ResolveQuarantineResponse>, Status> {
        let request = request.into_inner();
        let note = request.note.trim();
        if note.is_empty() {
            return Err(Status::invalid_argument(
                "note is required: say what was done about the message (e.g. \"replayed by hand\", \"peer bug, harmless\")",
            ));
        }
        if note.len() > MAX_RESOLUTION_NOTE {
            return Err(Status::invalid_argument(format!(
                "note is {} bytes; at most {MAX_RESOLUTION_NOTE}",
                note.len()
            )));
        }
        let found = self
            .link
            .resolve_quarantine(request.id, note)
            .await
            .map_err(ServiceError::from)?;
        if !found {
            return Err(Status::not_found(format!(
                "no quarantined message {} on this link (ListQuarantine lists them; a resolved one may already be pruned)",
                request.id
            )));
        }
        let entry = link_db::list_quarantine(
            &self.pool,
            self.link.link_id(),
            request.id.saturating_sub(1),
            1,
        )
        .await
        .map_err(ServiceError::from)?
        .into_iter()
        .next()
        .filter(|r| r.id == request.id)
        .map(quarantine_entry);
        tracing::info!(
            id = request.id,
            note,
            "quarantined message resolved by an operator"
        );
        Ok(Response::new(ResolveQuarantineResponse { entry }))
    }

    async fn list_settlement_blocks(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<SettlementBlockPage>, Status> {
        let request = request.into_inner();
        let limit = page_limit(&request)?;
        let rows = settlement::db::list(&self.pool, request.after_id, limit)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(SettlementBlockPage {
            blocks: rows
                .into_iter()
                .map(|b| SettlementBlockEntry {
                    number: b.number,
                    included_batch_ids: b.included_batch_ids,
                    burns: b.burns,
                    received_unix_ms: b.received_unix_ms,
                })
                .collect(),
        }))
    }

    async fn list_keys(
        &self,
        _request: Request<ListKeysRequest>,
    ) -> Result<Response<KeyList>, Status> {
        let rows = keygen::db::list(&self.pool)
            .await
            .map_err(ServiceError::from)?;
        let chain = crate::lifecycle::db::chain(&self.pool)
            .await
            .map_err(ServiceError::from)?;
        let balances = crate::lifecycle::db::balances(&self.pool)
            .await
            .map_err(ServiceError::from)?;
        // Stages for the next block to scan (a key retired at the last
        // block scanned is retired from there).
        let scanned = scanner::db::cursor(&self.pool)
            .await
            .map_err(ServiceError::from)?
            .map(|(next, _)| next);
        Ok(Response::new(KeyList {
            keys: rows
                .into_iter()
                .map(|k| {
                    let link = chain.iter().find(|c| c.own && c.session == k.session);
                    let (balance, unspent_outputs) = balances
                        .iter()
                        .find(|b| b.0 == k.session)
                        .map_or((0, 0), |b| (b.1, b.2));
                    let stage = link.map_or(String::new(), |c| {
                        let at = scanned.unwrap_or(0);
                        c.heights.stage_at(at).as_str().to_owned()
                    });
                    (k, link.map(|c| c.heights), stage, balance, unspent_outputs)
                })
                .map(|(k, heights, stage, balance, unspent_outputs)| KeyInfo {
                    stage,
                    activation_height: heights.map(|h| h.activation),
                    forwarding_height: heights.and_then(|h| h.forwarding),
                    finishing_height: heights.and_then(|h| h.finishing),
                    retired_height: heights.and_then(|h| h.retired),
                    balance,
                    unspent_outputs,
                    session: k.session,
                    threshold: u32::from(k.threshold),
                    participants: u32::try_from(k.participant_keys.len()).unwrap_or(u32::MAX),
                    own_index: u32::from(k.own_index),
                    status: k.status.as_str().to_owned(),
                    group_key: k.group_key.map(hex::encode).unwrap_or_default(),
                    monero_address: k.monero_address.unwrap_or_default(),
                    failure: k.failure.unwrap_or_default(),
                    blamed: k.blamed.map(u32::from).unwrap_or(0),
                    updated_unix_ms: k.updated_unix_ms,
                })
                .collect(),
            identity_public_key: hex::encode(self.identity),
        }))
    }

    async fn get_deposit_address(
        &self,
        request: Request<DepositAddressRequest>,
    ) -> Result<Response<DepositAddress>, Status> {
        let account = request.into_inner().account;
        let stored = i32::try_from(account)
            .ok()
            .filter(|&a| a >= 1)
            .ok_or_else(|| {
                ServiceError::InvalidArgument(format!(
                    "account {account} is not a deposit account (they start at 1)"
                ))
            })?;
        if !accounts::db::exists(&self.pool, stored)
            .await
            .map_err(ServiceError::from)?
        {
            return Err(ServiceError::NotFound(format!(
                "account {account} is not registered; register it through the coordinator"
            ))
            .into());
        }
        let (session, group_key) = keygen::db::active(&self.pool)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| {
                ServiceError::FailedPrecondition(
                    "no key is active yet; run a key generation first".into(),
                )
            })?;
        let address = accounts::deposit_address(&group_key, account).ok_or_else(|| {
            ServiceError::FailedPrecondition(format!(
                "the active key of session {session} gives no address"
            ))
        })?;
        Ok(Response::new(DepositAddress {
            account,
            session,
            address,
        }))
    }

    async fn get_scan_status(
        &self,
        _request: Request<GetScanStatusRequest>,
    ) -> Result<Response<ScanStatus>, Status> {
        let cursor = scanner::db::cursor(&self.pool)
            .await
            .map_err(ServiceError::from)?;
        let finalized = scanner::db::finalized_count(&self.pool)
            .await
            .map_err(ServiceError::from)?;
        let (next_height, halted) = cursor.unwrap_or((0, None));
        Ok(Response::new(ScanStatus {
            enabled: self.scanning,
            next_height,
            finalized_blocks: finalized,
            halted: halted.unwrap_or_default(),
        }))
    }

    async fn list_outputs(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<OutputPage>, Status> {
        let request = request.into_inner();
        let limit = page_limit(&request)?;
        let rows = scanner::db::list_outputs(&self.pool, request.after_id, limit)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(OutputPage {
            outputs: rows
                .into_iter()
                .map(|o| OutputEntry {
                    tx_hash: hex::encode(o.tx_hash),
                    index_in_tx: o.index_in_tx,
                    block_height: o.block_height,
                    account: o.account,
                    amount: o.amount,
                    unlock_height: o.unlock_height,
                    status: o.status,
                    output_key: hex::encode(&o.output_key),
                    reason: o.reason.unwrap_or_default(),
                    batch_id: o.batch_id.unwrap_or_default(),
                    unlock_time: o.unlock_time,
                    subaddress_minor: o.subaddress_minor,
                })
                .collect(),
        }))
    }

    async fn list_batches(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<BatchPage>, Status> {
        let request = request.into_inner();
        let limit = page_limit(&request)?;
        let rows = batch::list(&self.pool, request.after_id, limit)
            .await
            .map_err(ServiceError::from)?;
        let mut batches = Vec::with_capacity(rows.len());
        for b in rows {
            let decoded =
                <proto::processor_v1::Batch as prost::Message>::decode(b.encoded.as_slice())
                    .map_err(|e| {
                        ServiceError::FailedPrecondition(format!(
                            "stored batch {} does not decode: {e}",
                            b.id
                        ))
                    })?;
            let total = Amount::sum(
                &format!("the total of batch {}", b.id),
                decoded.instructions.iter().map(|i| i.amount),
            )
            .map_err(|e| ServiceError::FailedPrecondition(e.to_string()))?;
            batches.push(BatchEntry {
                id: b.id,
                session: b.session,
                block_height: b.block_height,
                instructions: u32::try_from(decoded.instructions.len()).unwrap_or(u32::MAX),
                total: total.piconero(),
                status: b.status.as_str().to_owned(),
                signature: b.signature.map(hex::encode).unwrap_or_default(),
            });
        }
        Ok(Response::new(BatchPage { batches }))
    }

    async fn get_schedule(
        &self,
        request: Request<GetScheduleRequest>,
    ) -> Result<Response<Schedule>, Status> {
        let limit = match request.into_inner().limit {
            0 => 100,
            l => l.min(1000),
        };
        let view = crate::scheduler::db::schedule(&self.pool, limit)
            .await
            .map_err(|e| match e {
                ScheduleError::Storage(e) => ServiceError::Storage(e),
                ScheduleError::Amount(e) => ServiceError::FailedPrecondition(e.to_string()),
            })?;
        let hex_or_empty = |v: Option<Vec<u8>>| v.map(hex::encode).unwrap_or_default();
        Ok(Response::new(Schedule {
            burns: view
                .burns
                .into_iter()
                .map(
                    |(burn_id, monero_address, amount, status, plan_id, reason)| BurnEntry {
                        burn_id,
                        monero_address,
                        amount,
                        status,
                        plan_id: hex_or_empty(plan_id),
                        reason: reason.unwrap_or_default(),
                    },
                )
                .collect(),
            plans: view
                .plans
                .into_iter()
                .map(|p| PlanEntry {
                    plan_id: hex::encode(&p.plan_id),
                    window: p.window,
                    leader: u32::from(p.leader),
                    status: p.status.as_str().to_owned(),
                    burn_ids: p.burn_ids,
                    inputs: p.inputs,
                    tx_hash: hex_or_empty(p.tx_hash),
                    fee: p.fee,
                    reason: p.reason.unwrap_or_default(),
                    completed_height: p.completed_height,
                })
                .collect(),
            windows: view
                .windows
                .into_iter()
                .map(
                    |(window, start_height, leader, outcome, plan_id)| WindowEntry {
                        window,
                        start_height,
                        leader: u32::from(leader),
                        outcome,
                        plan_id: hex_or_empty(plan_id),
                    },
                )
                .collect(),
            spendable: view.spendable.piconero(),
            reserved: view.reserved.piconero(),
        }))
    }
}

/// The longest note `ResolveQuarantine` accepts.
const MAX_RESOLUTION_NOTE: usize = 1024;

fn quarantine_entry(r: link_db::QuarantineView) -> QuarantineEntry {
    QuarantineEntry {
        id: r.id,
        uid: r.uid,
        code: r.code,
        reason: r.reason,
        payload: r.payload,
        quarantined_unix_ms: r.quarantined_unix_ms,
        resolved_unix_ms: r.resolved_unix_ms,
        resolution: r.resolution,
    }
}
