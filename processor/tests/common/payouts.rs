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
    let made = setup
        .wallet
        .call("create_address", serde_json::json!({"account_index": 0}))
        .await;
    (
        made["result"]["address"].as_str().unwrap().to_owned(),
        made["result"]["address_index"].as_u64().unwrap(),
    )
}

/// What the user's wallet received at subaddress (0, minor): (txid, amount).
pub async fn received(setup: &Setup, minor: u64) -> Vec<(String, u64)> {
    setup.wallet.call("refresh", serde_json::json!({})).await;
    let got = setup
        .wallet
        .call(
            "get_transfers",
            serde_json::json!({"in": true, "account_index": 0, "subaddr_indices": [minor]}),
        )
        .await;
    got["result"]["in"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    (
                        e["txid"].as_str().unwrap().to_owned(),
                        e["amount"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
