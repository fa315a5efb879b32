//! Helpers of the payout tests: mining until something holds, and the
//! user's wallet (fresh subaddresses, what arrived).

use std::future::Future;
use std::time::Duration;

use super::deposits::Setup;
use super::monero::elsewhere;

/// Mines a block every 300 ms until `check` yields.
pub async fn mine_until<T, F, Fut>(setup: &Setup, what: &str, timeout: Duration, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        setup.monerod.mine(&elsewhere(), 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A fresh subaddress of the user's wallet: (address, minor index).
pub async fn user_subaddress(setup: &Setup) -> (String, u64) {
    let (address, minor) = setup
        .wallet
        .client
        .create_address(0, None)
        .await
        .expect("create_address");
    (address.to_string(), u64::from(minor))
}

/// What the user's wallet received at subaddress (0, minor): (txid, amount).
pub async fn received(setup: &Setup, minor: u64) -> Vec<(String, u64)> {
    setup.wallet.refresh().await;
    let mut got = setup
        .wallet
        .client
        .get_transfers(monero_rpc::GetTransfersSelector {
            category_selector: [(monero_rpc::GetTransfersCategory::In, true)].into(),
            account_index: Some(0),
            subaddr_indices: Some(vec![u32::try_from(minor).expect("a subaddress index")]),
            block_height_filter: None,
        })
        .await
        .expect("get_transfers");
    got.remove(&monero_rpc::GetTransfersCategory::In)
        .unwrap_or_default()
        .into_iter()
        .map(|e| (hex::encode(e.txid.0), e.amount.as_pico()))
        .collect()
}
