//! `ProcessorAdmin`: read-only queries for operators.

use std::sync::Arc;
use std::time::SystemTime;

use proto::processor_v1::processor_admin_server::ProcessorAdmin;
use proto::processor_v1::{
    GetStatusRequest, InboxEntry, InboxPage, ListRequest, ProcessorStatus, QuarantineEntry,
    QuarantinePage, SendLogEntry, SendLogPage, SettlementBlockEntry, SettlementBlockPage,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::error::ServiceError;
use crate::inbound::CoordinatorHandler;
use crate::link::{Link, ProcessorSide, db as link_db};
use crate::settlement;

/// The processor's link type.
pub type CoordinatorLink = Link<ProcessorSide, CoordinatorHandler>;

/// Serves `ProcessorAdmin`.
#[derive(Debug, Clone)]
pub struct Admin {
    pool: PgPool,
    link: Arc<CoordinatorLink>,
    node_id: String,
    started: SystemTime,
}

impl Admin {
    /// A new admin service over the processor's state.
    pub fn new(pool: PgPool, link: Arc<CoordinatorLink>, node_id: String) -> Self {
        Self {
            pool,
            link,
            node_id,
            started: SystemTime::now(),
        }
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
            entries: rows
                .into_iter()
                .map(|r| QuarantineEntry {
                    id: r.id,
                    uid: r.uid,
                    code: r.code,
                    reason: r.reason,
                    payload: r.payload,
                    quarantined_unix_ms: r.quarantined_unix_ms,
                })
                .collect(),
        }))
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
}
