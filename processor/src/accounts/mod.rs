//! Deposit accounts: registered by the coordinator (exactly once, through
//! the link), each with its own subaddress of the active key, so a deposit's
//! destination account is the subaddress it was paid to.

pub mod db;

use monero_wallet::ViewPair;
use monero_wallet::address::{Network, SubaddressIndex};
use sqlx::PgConnection;
use tracing::info;
use zeroize::Zeroizing;

use crate::keystore::dkg::view_key;
use crate::link::HandleError;

/// The subaddress change returns to: account 0, minor 1. The group's own
/// funds, never a deposit.
pub const CHANGE_SUBADDRESS: (u32, u32) = (0, 1);

/// The subaddress an earlier key forwards its outputs to: account 0, minor
/// 2. Taken, like change, as the group's own funds, never a deposit.
pub const FORWARD_SUBADDRESS: (u32, u32) = (0, 2);

/// A `RegisterAccount` of a settlement block: remember the account and the
/// Monero block it is credited from (registering twice is harmless: the
/// first registration stands).
pub async fn register(
    conn: &mut PgConnection,
    account: u32,
    active_from: u64,
    settlement_block: u64,
) -> Result<(), HandleError> {
    let account = i32::try_from(account)
        .ok()
        .filter(|&a| a >= 1)
        .ok_or_else(|| {
            HandleError::Rejected(format!(
                "account {account} cannot be registered: accounts are 1..={} (0 is the processor's own)",
                i32::MAX
            ))
        })?;
    if db::insert(conn, account, active_from, settlement_block).await? {
        info!(
            account,
            active_from, settlement_block, "deposit account registered"
        );
    }
    Ok(())
}

/// A `RegisterAccount` on its own, outside a settlement block: refused. It
/// would take effect at whatever Monero block this processor happened to be
/// scanning when it arrived, and two processors would credit differently.
pub fn refuse_loose(account: u32) -> HandleError {
    HandleError::Rejected(format!(
        "RegisterAccount for account {account} arrived outside a settlement block: accounts are \
         registered in settlement blocks, with the Monero block they are credited from (upgrade the coordinator)"
    ))
}

/// The view pair every processor of the key derives from the group key.
pub fn view_pair(group_key: &[u8; 32]) -> Option<ViewPair> {
    let spend = curve25519_dalek::edwards::CompressedEdwardsY(*group_key).decompress()?;
    let view = view_key(group_key);
    ViewPair::new(
        monero_ed25519::Point::from(spend),
        Zeroizing::new(monero_ed25519::Scalar::from(*view)),
    )
    .ok()
}

/// Account `account`'s deposit subaddress (major = account, minor 0).
pub fn deposit_address(group_key: &[u8; 32], account: u32) -> Option<String> {
    let index = SubaddressIndex::new(account, 0)?;
    Some(
        view_pair(group_key)?
            .subaddress(Network::Mainnet, index)
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::dkg::monero_address;

    #[test]
    fn addresses_are_derived_consistently() {
        let group_key = curve25519_dalek::EdwardsPoint::mul_base_clamped([7; 32])
            .compress()
            .to_bytes();
        let pair = view_pair(&group_key).expect("a valid point");
        assert_eq!(
            pair.legacy_address(Network::Mainnet).to_string(),
            monero_address(&group_key).expect("address"),
            "the key's address and its view pair agree"
        );
        let one = deposit_address(&group_key, 1).expect("subaddress");
        let two = deposit_address(&group_key, 2).expect("subaddress");
        assert_ne!(one, two);
        assert!(
            one.starts_with('8'),
            "mainnet subaddresses start with 8: {one}"
        );
        assert_eq!(
            deposit_address(&group_key, 0),
            None,
            "(0, 0) is the main address"
        );
    }
}
