//! `CoordinatorAdmin`: drive and inspect the processors (grpcurl).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use proto::coordinator_v1::coordinator_admin_server::CoordinatorAdmin;
use proto::coordinator_v1::{BatchList, BatchView, ListBatchesRequest};
use proto::coordinator_v1::{
    CoordinatorStatus, EmitSettlementBlockRequest, EmitSettlementBlockResponse, GetKeyGenRequest,
    GetStatusRequest, KeyGenList, KeyGenStatus, ListKeyGensRequest, ProcessorView,
    RegisterAccountRequest, RegisterAccountResponse, SendProbeRequest, SendProbeResponse,
    StartKeyGenRequest, StartKeyGenResponse,
};
use proto::coordinator_v1::{
    FaultList, FaultView, ListFaultsRequest, ListPlansRequest, PlanList, PlanView,
    SubmitBurnRequest, SubmitBurnResponse,
};
use proto::processor_v1::{DepositAddress, DepositAddressRequest};
use tonic::{Request, Response, Status};

use primitives::amount::Amount;

use crate::common::{to_i32, to_u64};
use crate::coordinator::Coordinator;
use crate::error::CoordinatorError;
use crate::payouts::BurnError;
use crate::settlement;

/// Serves `CoordinatorAdmin`.
#[derive(Debug, Clone)]
pub struct Admin {
    coordinator: Arc<Coordinator>,
}

impl Admin {
    /// An admin service over a running coordinator.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

#[tonic::async_trait]
impl CoordinatorAdmin for Admin {
    async fn get_status(
        &self,
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<CoordinatorStatus>, Status> {
        let c = &self.coordinator;
        let mut processors = Vec::with_capacity(c.peers.len());
        let mut reports = Vec::with_capacity(c.peers.len());
        for peer in &c.peers {
            let link = peer.link.status().await.map_err(CoordinatorError::from)?;
            let acked = settlement::db::acked_by(&c.pool, &peer.endpoint.name)
                .await
                .map_err(CoordinatorError::from)?;
            let scan = scan_status(peer).await;
            let keys = processor_keys(peer).await;
            reports.push((peer.endpoint.name.clone(), keys.clone()));
            let faults = crate::payouts::db::faults_against(&c.pool, &peer.endpoint.name)
                .await
                .map_err(CoordinatorError::from)?;
            processors.push(ProcessorView {
                scan,
                keys,
                faults: u32::try_from(faults).unwrap_or(u32::MAX),
                name: peer.endpoint.name.clone(),
                endpoint: peer.endpoint.endpoint.clone(),
                link: Some(link),
                acked_settlement_block: acked,
                failed_connects: peer.dial.failed_connects.load(Ordering::Relaxed),
                last_error: peer
                    .dial
                    .last_error
                    .lock()
                    .map(|e| e.clone())
                    .unwrap_or_default(),
            });
        }
        let settlement_height = settlement::db::height(&c.pool)
            .await
            .map_err(CoordinatorError::from)?;
        let keys = crate::keygen::rotation(&c.pool, &reports)
            .await
            .map_err(CoordinatorError::from)?;
        Ok(Response::new(CoordinatorStatus {
            node_id: c.node_id.clone(),
            processors,
            settlement_height,
            keys,
        }))
    }

    async fn emit_settlement_block(
        &self,
        _request: Request<EmitSettlementBlockRequest>,
    ) -> Result<Response<EmitSettlementBlockResponse>, Status> {
        let number = self.coordinator.emit_settlement_block().await?;
        Ok(Response::new(EmitSettlementBlockResponse { number }))
    }

    async fn send_probe(
        &self,
        request: Request<SendProbeRequest>,
    ) -> Result<Response<SendProbeResponse>, Status> {
        let request = request.into_inner();
        let id = self
            .coordinator
            .send_probe(&request.processor, request.payload)
            .await?;
        Ok(Response::new(SendProbeResponse { id }))
    }

    async fn start_key_gen(
        &self,
        request: Request<StartKeyGenRequest>,
    ) -> Result<Response<StartKeyGenResponse>, Status> {
        let request = request.into_inner();
        let session = self
            .coordinator
            .start_keygen(request.threshold, &request.processors)
            .await?;
        Ok(Response::new(StartKeyGenResponse { session }))
    }

    async fn get_key_gen(
        &self,
        request: Request<GetKeyGenRequest>,
    ) -> Result<Response<KeyGenStatus>, Status> {
        let session = request.into_inner().session;
        let mut found = crate::keygen::status(&self.coordinator.pool, Some(session))
            .await
            .map_err(CoordinatorError::from)?;
        let status = found
            .pop()
            .ok_or(CoordinatorError::UnknownSession(session))?;
        Ok(Response::new(status))
    }

    async fn list_key_gens(
        &self,
        _request: Request<ListKeyGensRequest>,
    ) -> Result<Response<KeyGenList>, Status> {
        let sessions = crate::keygen::status(&self.coordinator.pool, None)
            .await
            .map_err(CoordinatorError::from)?;
        Ok(Response::new(KeyGenList { sessions }))
    }

    async fn register_account(
        &self,
        request: Request<RegisterAccountRequest>,
    ) -> Result<Response<RegisterAccountResponse>, Status> {
        let account = request.into_inner().account;
        let (newly_registered, active_from) = self.coordinator.register_account(account).await?;
        Ok(Response::new(RegisterAccountResponse {
            account,
            newly_registered,
            active_from,
        }))
    }

    async fn submit_burn(
        &self,
        request: Request<SubmitBurnRequest>,
    ) -> Result<Response<SubmitBurnResponse>, Status> {
        let r = request.into_inner();
        // Checked before anything is stored: a bad address or amount is the
        // caller's to fix now, not a rejection processors report later.
        let burn_id = crate::payouts::submit_burn(
            &self.coordinator.pool,
            &r.burn_id,
            &r.monero_address,
            r.amount,
        )
        .await
        .map_err(|e| match e {
            BurnError::Invalid(why) => Status::invalid_argument(why),
            BurnError::Duplicate(_) => Status::already_exists(e.to_string()),
            BurnError::Storage(e) => Status::from(CoordinatorError::from(e)),
        })?;
        Ok(Response::new(SubmitBurnResponse { burn_id }))
    }

    async fn list_plans(
        &self,
        _request: Request<ListPlansRequest>,
    ) -> Result<Response<PlanList>, Status> {
        let pool = &self.coordinator.pool;
        let rows = crate::payouts::list_plans(pool)
            .await
            .map_err(CoordinatorError::from)?;
        let mut plans = Vec::with_capacity(rows.len());
        for p in rows {
            let attempts = crate::signing::db::attempt_count(
                pool,
                crate::signing::Procedure {
                    kind: crate::signing::ProcedureKind::Plan,
                    key: p.seq,
                },
            )
            .await
            .map_err(CoordinatorError::from)?;
            plans.push(PlanView {
                plan_id: hex::encode(&p.plan_id),
                session: p.session,
                window: p.window,
                leader: p.leader,
                burn_ids: p.burn_ids,
                status: p.status.as_str().to_owned(),
                tx_hash: p.tx_hash.map(hex::encode).unwrap_or_default(),
                completions: p
                    .completions
                    .into_iter()
                    .map(|(k, v)| (k, hex::encode(v)))
                    .collect(),
                attempts: u32::try_from(attempts).unwrap_or(0),
            });
        }
        Ok(Response::new(PlanList { plans }))
    }

    async fn list_faults(
        &self,
        _request: Request<ListFaultsRequest>,
    ) -> Result<Response<FaultList>, Status> {
        let (faults, rejected_burns) = crate::payouts::list_faults(&self.coordinator.pool)
            .await
            .map_err(CoordinatorError::from)?;
        Ok(Response::new(FaultList {
            faults: faults
                .into_iter()
                .map(|f| FaultView {
                    reporter: f.reporter,
                    session: to_u64(f.session),
                    accused: f.accused,
                    kind: f.kind.as_str().to_owned(),
                    detail: f.detail,
                })
                .collect(),
            rejected_burns,
        }))
    }

    async fn get_deposit_address(
        &self,
        request: Request<DepositAddressRequest>,
    ) -> Result<Response<DepositAddress>, Status> {
        let account = request.into_inner().account;
        if account == 0 {
            return Err(Status::invalid_argument(
                "account 0 is the processors' own; deposit accounts start at 1",
            ));
        }
        let row = crate::keygen::db::newest_confirmed(&self.coordinator.pool)
            .await
            .map_err(CoordinatorError::from)?;
        let (session, key) =
            row.ok_or_else(|| Status::failed_precondition("no key is confirmed yet"))?;
        let key: [u8; 32] = key
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| Status::failed_precondition("the confirmed key has no group key"))?;
        let registered =
            settlement::db::account_registered(&self.coordinator.pool, to_i32(account))
                .await
                .map_err(CoordinatorError::from)?;
        if !registered {
            return Err(Status::failed_precondition(format!(
                "account {account} is not registered (RegisterAccount first): deposits to it would not be scanned"
            )));
        }
        let address = processor::accounts::deposit_address(&key, account)
            .ok_or_else(|| Status::internal("the group key is not a valid point"))?;
        Ok(Response::new(DepositAddress {
            account,
            session: to_u64(session),
            address,
        }))
    }

    async fn list_batches(
        &self,
        _request: Request<ListBatchesRequest>,
    ) -> Result<Response<BatchList>, Status> {
        let rows = crate::batches::db::list(&self.coordinator.pool)
            .await
            .map_err(CoordinatorError::from)?;
        let batches = rows
            .into_iter()
            .map(|b| {
                let decoded =
                    <proto::processor_v1::Batch as prost::Message>::decode(b.encoded.as_slice())
                        .unwrap_or_default();
                let total = Amount::sum(
                    &format!("the total of batch {}", b.id),
                    decoded.instructions.iter().map(|i| i.amount),
                )
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
                Ok(BatchView {
                    id: to_u64(b.id),
                    session: to_u64(b.session),
                    block_height: to_u64(b.block_height),
                    deposits: u32::try_from(decoded.instructions.len()).unwrap_or(u32::MAX),
                    total: total.piconero(),
                    status: b.status.as_str().to_owned(),
                    settlement_block: b.settlement_block.unwrap_or(-1),
                })
            })
            .collect::<Result<_, Status>>()?;
        Ok(Response::new(BatchList { batches }))
    }
}

/// A processor's scan status from its admin API, if it answers quickly.
/// Plaintext runs only: with mutual TLS the processor's admin API is the
/// operators' alone (`tls.operator_names`), and the coordinator's
/// certificate may open the link and nothing else, so it does not ask.
/// A processor's keys as its admin API lists them now (empty: unreachable,
/// or its admin API needs TLS).
async fn processor_keys(peer: &crate::coordinator::Peer) -> Vec<proto::processor_v1::KeyInfo> {
    use proto::processor_v1::processor_admin_client::ProcessorAdminClient;
    if peer.tls.is_some() {
        return Vec::new();
    }
    let Some(channel) = (match peer.endpoint() {
        Ok(e) => e
            .connect_timeout(std::time::Duration::from_millis(500))
            .timeout(std::time::Duration::from_secs(1))
            .connect()
            .await
            .ok(),
        Err(_) => None,
    }) else {
        return Vec::new();
    };
    ProcessorAdminClient::new(channel)
        .list_keys({
            let mut request = tonic::Request::new(proto::processor_v1::ListKeysRequest {});
            service::telemetry::inject(request.metadata_mut());
            request
        })
        .await
        .map(|r| r.into_inner().keys)
        .unwrap_or_default()
}

async fn scan_status(peer: &crate::coordinator::Peer) -> Option<proto::processor_v1::ScanStatus> {
    use proto::processor_v1::processor_admin_client::ProcessorAdminClient;
    if peer.tls.is_some() {
        return None;
    }
    let channel = peer
        .endpoint()
        .ok()?
        .connect_timeout(std::time::Duration::from_millis(500))
        .timeout(std::time::Duration::from_secs(1))
        .connect()
        .await
        .ok()?;
    ProcessorAdminClient::new(channel)
        .get_scan_status({
            let mut request = tonic::Request::new(proto::processor_v1::GetScanStatusRequest {});
            service::telemetry::inject(request.metadata_mut());
            request
        })
        .await
        .ok()
        .map(tonic::Response::into_inner)
}
