//! Burns to Monero payouts on real parts: deposits become an included batch,
//! burns arrive in a settlement block, a window's leader plans a transaction,
//! the followers check it, t processors sign it with FROST-CLSAG, it is
//! published and finalized, and the user's monero-wallet-rpc receives it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::deposits::*;
use common::monero::*;
use common::payouts::*;
use common::*;
use sqlx::PgPool;

const SCHEDULER: &[(&str, &str)] = &[
    // Windows far enough apart (blocks come every 300 ms here) that one
    // leader's proposal reaches the others before the next window opens.
    ("PROCESSOR_SCHEDULER__WINDOW_BLOCKS", "4"),
    ("PROCESSOR_SCHEDULER__REPUBLISH_INTERVAL", "2s"),
];

/// Deposits `a1 + a2`, waits for the batch to be included, and tells every
/// processor so (with `burns` submitted before, in the same block).
async fn fund(setup: &Setup, a1: u64, a2: u64, batches_before: usize, burns: &[(&str, &str, u64)]) {
    setup.deposit(a1, a2).await;
    setup.monerod.mine(&elsewhere(), 3).await;
    setup.wait_included(batches_before + 1).await;
    // Unchecked: some burns here are ones SubmitBurn refuses, to see the
    // processors reject them too.
    for (id, address, amount) in burns {
        coordinator_mock::payouts::store_burn_unchecked(
            &setup.cluster.coordinator.pool,
            id,
            address,
            i64::try_from(*amount).unwrap(),
        )
        .await
        .unwrap();
    }
    setup
        .cluster
        .coordinator
        .emit_settlement_block()
        .await
        .unwrap();
}

/// Plans at the coordinator, oldest first: (id, status, tx hash, burns).
async fn coordinator_plans(pool: &PgPool) -> Vec<(Vec<u8>, String, Option<Vec<u8>>, Vec<String>)> {
    sqlx::query_as("SELECT plan_id, status, tx_hash, burn_ids FROM plans ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Completed plans only (a conflicting proposal may have been superseded).
async fn completed_plans(pool: &PgPool) -> Vec<(Vec<u8>, String, Option<Vec<u8>>, Vec<String>)> {
    coordinator_plans(pool)
        .await
        .into_iter()
        .filter(|p| p.1 == "completed")
        .collect()
}

/// deposits included = payouts + fees + unspent, exactly, on one processor.
async fn accounting(p: &PgPool) -> (i64, i64, i64, i64) {
    let deposits = scalar_i64(
        p,
        "SELECT COALESCE(sum(amount), 0)::bigint FROM outputs WHERE account > 0 AND status <> 'received'",
    )
    .await;
    let paid = scalar_i64(
        p,
        "SELECT COALESCE(sum(amount), 0)::bigint FROM burns WHERE status = 'paid'",
    )
    .await;
    let fees = scalar_i64(
        p,
        "SELECT COALESCE(sum(fee), 0)::bigint FROM plans WHERE status = 'completed'",
    )
    .await;
    let unspent = scalar_i64(
        p,
        "SELECT COALESCE(sum(amount), 0)::bigint FROM outputs
         WHERE status IN ('included', 'reserved') AND (account > 0 OR subaddress_minor = 1)",
    )
    .await;
    (deposits, paid, fees, unspent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burns_are_paid_to_the_users_wallet_and_every_processor_agrees() {
    let setup = Setup::start_with("pay", 2, SCHEDULER, |_| None).await;
    let (to_a, minor_a) = user_subaddress(&setup).await;
    let (to_b, minor_b) = user_subaddress(&setup).await;
    let (burn_a, burn_b) = (400_000_000_000_u64, 250_000_000_000_u64);
    fund(
        &setup,
        1_000_000_000_000,
        600_000_000_000,
        0,
        &[("burn-a", &to_a, burn_a), ("burn-b", &to_b, burn_b)],
    )
    .await;
    let pool = setup.cluster.coordinator.pool.clone();
    let plans = mine_until(
        &setup,
        "the payout to complete",
        Duration::from_secs(240),
        || async {
            let plans = coordinator_plans(&pool).await;
            let done: i64 = scalar_i64(&pool, "SELECT count(*) FROM plan_completions").await;
            (plans.len() == 1 && plans[0].1 == "completed" && done == 3).then_some(plans)
        },
    )
    .await;
    let tx_hash = hex::encode(plans[0].2.clone().unwrap());
    assert_eq!(plans[0].3, vec!["burn-a".to_owned(), "burn-b".to_owned()]);

    // Every processor reports the same transaction.
    let reported: Vec<Vec<u8>> = sqlx::query_scalar("SELECT tx_hash FROM plan_completions")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(
        reported.iter().all(|h| hex::encode(h) == tx_hash),
        "{reported:?} vs {tx_hash}"
    );

    // The user's wallet received exactly the burned amounts, in that tx.
    assert_eq!(
        received(&setup, minor_a).await,
        vec![(tx_hash.clone(), burn_a)]
    );
    assert_eq!(
        received(&setup, minor_b).await,
        vec![(tx_hash.clone(), burn_b)]
    );

    // Accounting, exact in atomic units, on every processor; the change came
    // back as the group's own output and is not a deposit.
    for db in &setup.cluster.dbs {
        let p = db.pool().await;
        let (deposits, paid, fees, unspent) = eventually(
            "the change output is scanned",
            Duration::from_secs(30),
            || async {
                let a = accounting(&p).await;
                (a.0 == a.1 + a.2 + a.3).then_some(a)
            },
        )
        .await;
        assert_eq!(deposits, 1_600_000_000_000);
        assert_eq!(paid, i64::try_from(burn_a + burn_b).unwrap());
        assert!(fees > 0, "a fee was paid");
        assert_eq!(deposits, paid + fees + unspent);
        assert_eq!(
            scalar_i64(
                &p,
                "SELECT count(*) FROM outputs WHERE account = 0 AND subaddress_minor = 1"
            )
            .await,
            1,
            "the change output is the group's own"
        );
        assert_eq!(
            scalar_i64(&p, "SELECT count(*) FROM batches").await,
            1,
            "change is never reported as a deposit"
        );
        assert_eq!(
            scalar_i64(&p, "SELECT count(*) FROM plans WHERE status = 'completed'").await,
            1
        );
        assert!(
            scalar_i64(&p, "SELECT count(*) FROM windows").await >= 2,
            "windows are recorded"
        );
    }

    // An operator sees the schedule with grpcurl.
    let out = std::process::Command::new(grpcurl())
        .args(["-plaintext", "-d", "{}"])
        .arg(format!("127.0.0.1:{}", setup.cluster.ports[0]))
        .arg("processor.v1.ProcessorAdmin/GetSchedule")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"status\": \"completed\""), "{text}");
    assert!(text.contains(&tx_hash), "{text}");
    assert!(text.contains("\"status\": \"paid\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_burns_span_windows_and_unaffordable_ones_wait_for_funds() {
    let setup = Setup::start_with("paymany", 2, SCHEDULER, |_| None).await;
    let (to, minor) = user_subaddress(&setup).await;
    // 17 small burns: at most 15 payments fit one transaction (16 outputs
    // with change), so they need two. One large burn exceeds the balance.
    let ids: Vec<String> = (0..17).map(|i| format!("small-{i:02}")).collect();
    let mut burns: Vec<(&str, &str, u64)> = ids
        .iter()
        .map(|id| (id.as_str(), to.as_str(), 10_000_000_000))
        .collect();
    burns.push(("large", to.as_str(), 5_000_000_000_000));
    // An invalid address and a zero amount are rejected with a reason.
    burns.push(("bad-address", "not-a-monero-address", 1));
    burns.push(("zero", to.as_str(), 0));
    fund(&setup, 1_000_000_000_000, 500_000_000_000, 0, &burns).await;
    let pool = setup.cluster.coordinator.pool.clone();
    let plans = mine_until(&setup, "two payouts", Duration::from_secs(300), || async {
        let plans = completed_plans(&pool).await;
        (plans.len() == 2).then_some(plans)
    })
    .await;
    assert_ne!(plans[0].2, plans[1].2, "two transactions");
    let mut paid: Vec<String> = plans.iter().flat_map(|p| p.3.clone()).collect();
    assert!(
        plans[0].3.len() <= 15 && plans[1].3.len() <= 15,
        "{plans:?}"
    );
    paid.sort();
    assert_eq!(paid, ids, "every small burn paid, none twice");
    let rejected: Vec<(String, String)> =
        sqlx::query_as("SELECT DISTINCT burn_id, reason FROM rejected_burns ORDER BY burn_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(rejected[0].0 == "bad-address" && rejected[0].1.contains("invalid address"));
    assert!(rejected[1].0 == "zero" && rejected[1].1.contains("zero amount"));

    // The large burn waits: queued on every processor, in no plan.
    let p0 = setup.cluster.dbs[0].pool().await;
    assert_eq!(
        sqlx::query_scalar::<_, String>("SELECT status FROM burns WHERE burn_id = 'large'")
            .fetch_one(&p0)
            .await
            .unwrap(),
        "queued"
    );
    // A new deposit covers it; it is then paid.
    fund(&setup, 3_000_000_000_000, 2_500_000_000_000, 1, &[]).await;
    let plans = mine_until(
        &setup,
        "the large burn paid",
        Duration::from_secs(300),
        || async {
            let plans = coordinator_plans(&pool).await;
            plans
                .iter()
                .any(|p| p.3 == vec!["large".to_owned()] && p.1 == "completed")
                .then_some(plans)
        },
    )
    .await;
    let total: u64 = received(&setup, minor).await.iter().map(|r| r.1).sum();
    assert_eq!(total, 17 * 10_000_000_000 + 5_000_000_000_000, "{plans:?}");
    for db in &setup.cluster.dbs {
        let p = db.pool().await;
        let (deposits, paid, fees, unspent) =
            eventually("accounting settles", Duration::from_secs(30), || async {
                let a = accounting(&p).await;
                (a.0 == a.1 + a.2 + a.3 && a.1 == i64::try_from(total).unwrap()).then_some(a)
            })
            .await;
        assert_eq!(deposits, 7_000_000_000_000);
        assert_eq!(deposits, paid + fees + unspent);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paying_an_extra_address_is_refused_and_blamed() {
    // Every processor, when it leads, adds a payment to this address.
    let stranger = curve25519_dalek::EdwardsPoint::mul_base_clamped([7; 32])
        .compress()
        .to_bytes();
    let address = processor::accounts::deposit_address(&stranger, 1).unwrap();
    let thief: &'static str =
        Box::leak(format!("scheduler-extra-payment=return({address})").into_boxed_str());
    let setup = Setup::start_with("payrefuse", 2, SCHEDULER, |_| Some(thief)).await;
    let (to, _) = user_subaddress(&setup).await;
    fund(
        &setup,
        1_000_000_000_000,
        600_000_000_000,
        0,
        &[("burn-x", &to, 100_000_000_000)],
    )
    .await;
    let pool = setup.cluster.coordinator.pool.clone();
    let (leader, accused) = mine_until(
        &setup,
        "a refused plan",
        Duration::from_secs(240),
        || async {
            let row: Option<(String, String)> = sqlx::query_as(
                "SELECT p.leader, k.processor FROM faults f
             JOIN plans p ON f.detail LIKE '%' || encode(p.plan_id, 'hex') || '%'
             JOIN keygen_participants k ON k.session = f.session AND k.idx = f.accused
             WHERE f.kind = 'plan-refused' LIMIT 1",
            )
            .fetch_optional(&pool)
            .await
            .unwrap();
            row
        },
    )
    .await;
    assert_eq!(leader, accused, "the fault names the leader");
    let detail: String = sqlx::query_scalar("SELECT detail FROM faults LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(detail.contains("differs"), "{detail}");
    // Nothing was signed or paid.
    setup.monerod.mine(&elsewhere(), 6).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        scalar_i64(
            &pool,
            "SELECT count(*) FROM sign_shares WHERE kind = 'plan'"
        )
        .await,
        0
    );
    for db in &setup.cluster.dbs {
        let p = db.pool().await;
        assert_eq!(
            scalar_i64(&p, "SELECT count(*) FROM burns WHERE status = 'paid'").await,
            0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_killed_after_its_preprocess_never_shares_and_the_payout_completes_once() {
    // 3-of-3: validator-2 must sign every plan; it stops once chosen.
    let mut setup = Setup::start_with("paykill", 3, SCHEDULER, |i| {
        (i == 1).then_some("plan-signer-before-share=1*return")
    })
    .await;
    let (to, minor) = user_subaddress(&setup).await;
    fund(
        &setup,
        1_000_000_000_000,
        600_000_000_000,
        0,
        &[("burn-k", &to, 300_000_000_000)],
    )
    .await;
    let pool = setup.cluster.coordinator.pool.clone();
    mine_until(&setup, "plan attempt 0's signers chosen", Duration::from_secs(240), || async {
        (scalar_i64(
            &pool,
            "SELECT count(*) FROM sign_attempts WHERE kind = 'plan' AND attempt = 0 AND status = 'sharing'",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    setup.cluster.procs[1].as_mut().unwrap().kill9();
    setup.respawn(1);
    let plans = mine_until(
        &setup,
        "the payout to complete",
        Duration::from_secs(300),
        || async {
            let plans = coordinator_plans(&pool).await;
            (plans.len() == 1 && plans[0].1 == "completed").then_some(plans)
        },
    )
    .await;
    assert_eq!(
        scalar_i64(
            &pool,
            "SELECT count(*) FROM sign_shares WHERE kind = 'plan' AND attempt = 0 AND idx = 2"
        )
        .await,
        0,
        "a share for an attempt begun before the restart"
    );
    assert!(
        scalar_i64(
            &pool,
            "SELECT max(attempt)::bigint FROM sign_attempts WHERE kind = 'plan' AND status = 'done'"
        )
        .await
            >= 1
    );
    let tx_hash = hex::encode(plans[0].2.clone().unwrap());
    setup.monerod.mine(&elsewhere(), 4).await;
    assert_eq!(
        received(&setup, minor).await,
        vec![(tx_hash, 300_000_000_000)],
        "paid once"
    );
    let p2 = setup.cluster.dbs[1].pool().await;
    assert_eq!(
        scalar_i64(
            &p2,
            "SELECT count(*) FROM send_log WHERE kind = 'sign_preprocess'"
        )
        .await,
        scalar_i64(&p2, "SELECT count(*) FROM sign_attempts").await,
        "every attempt had its own preprocess"
    );
}

/// The race behind a livelock seen in CI: a leader stores its own plan
/// before a rival's proposal arrives, but the coordinator relays the rival's
/// first. Both must be checked in relay order, on the leader too, or the
/// leader signs its own plan while everyone else signs the rival's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_are_checked_in_relay_order_even_the_leaders_own() {
    use processor::scheduler::db;
    let test_db = TestDb::new("relayorder").await;
    let pool = processor::db::connect(&test_db.url, 2).await.unwrap();
    processor::db::migrate(&pool, &test_db.url).await.unwrap();
    let (own, rival, third) = ([1_u8; 32], [2_u8; 32], [3_u8; 32]);
    let mut conn = pool.acquire().await.unwrap();
    // Our plan is stored (unrelayed) first; in the coordinator's relay the
    // rival comes first, then ours, then a third, two of them in one
    // transaction (one now()).
    db::insert_plan(
        &mut conn,
        &own,
        0,
        10,
        1,
        b"own",
        &[],
        db::PlanStatus::Proposed,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut tx = pool.begin().await.unwrap();
    db::insert_plan(
        &mut tx,
        &rival,
        0,
        11,
        2,
        b"rival",
        &[],
        db::PlanStatus::Received,
    )
    .await
    .unwrap();
    assert!(db::mark_relayed(&mut tx, &own).await.unwrap());
    tx.commit().await.unwrap();
    db::insert_plan(
        &mut conn,
        &third,
        0,
        12,
        3,
        b"third",
        &[],
        db::PlanStatus::Received,
    )
    .await
    .unwrap();
    let order = db::plans_to_check(&pool, 0).await.unwrap();
    assert_eq!(order, vec![rival.to_vec(), own.to_vec(), third.to_vec()]);
}

/// More small deposits than one transaction may spend ([`MAX_INPUTS`] + 20)
/// and a burn larger than any [`MAX_INPUTS`] of them: the leader first
/// consolidates (the largest MAX_INPUTS outputs into the group's change
/// subaddress, no burn paid), waits for that to be final, then pays the
/// burn exactly; the books balance and no output is credited twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_deposits_are_consolidated_and_a_large_burn_is_paid() {
    use processor::scheduler::plan::MAX_INPUTS;
    const DEPOSITS: usize = 200;
    const EACH: u64 = 1_000_000_000_000;
    // More than the MAX_INPUTS largest outputs hold even after one
    // consolidation (two halves of 64 plus 62 ones: 126), less than after
    // two (two halves of 126 plus 62: 188): two consolidations, then the
    // payout.
    let burn = 150 * EACH;
    let setup = Setup::start_with("payconsol", 2, SCHEDULER, |_| None).await;
    let (to, minor) = user_subaddress(&setup).await;

    // The deposits, 14 outputs a transaction (15 with the wallet's change),
    // alternating accounts 1 and 2, all mined into one block.
    let mut left = DEPOSITS;
    while left > 0 {
        let n = left.min(14);
        let destinations: Vec<serde_json::Value> = (0..n)
            .map(|i| {
                let address = if i % 2 == 0 { &setup.one } else { &setup.two };
                serde_json::json!({ "address": address, "amount": EACH })
            })
            .collect();
        setup
            .wallet
            .call(
                "transfer",
                serde_json::json!({ "destinations": destinations, "priority": 0 }),
            )
            .await;
        left -= n;
    }
    setup.monerod.mine(&elsewhere(), 1).await;
    setup.monerod.mine(&elsewhere(), 3).await;
    let pool = setup.cluster.coordinator.pool.clone();
    let credited = eventually(
        "every deposit in an included batch",
        Duration::from_secs(180),
        || async {
            let batches = coordinator_batches(&pool).await;
            let credited: Vec<(u32, u64)> = batches
                .iter()
                .filter(|b| b.1 == "included")
                .flat_map(|b| instructions(&b.2))
                .collect();
            (credited.len() >= DEPOSITS).then_some(credited)
        },
    )
    .await;
    assert_eq!(credited.len(), DEPOSITS, "each deposit credited once");
    assert!(credited.iter().all(|&(_, amount)| amount == EACH));
    coordinator_mock::payouts::store_burn_unchecked(
        &pool,
        "large",
        &to,
        i64::try_from(burn).unwrap(),
    )
    .await
    .unwrap();
    setup
        .cluster
        .coordinator
        .emit_settlement_block()
        .await
        .unwrap();

    let plans = mine_until(
        &setup,
        "a consolidation, then the large burn paid",
        Duration::from_secs(600),
        || async {
            let plans = completed_plans(&pool).await;
            plans
                .iter()
                .any(|p| p.3 == vec!["large".to_owned()])
                .then_some(plans)
        },
    )
    .await;
    // Two consolidations (no burns) came first; then the payout.
    assert_eq!(plans.len(), 3, "{plans:?}");
    assert!(
        plans[0].3.is_empty() && plans[1].3.is_empty(),
        "the first two plans pay no burn: {plans:?}"
    );
    let consolidation_txs = [
        hex::encode(plans[0].2.clone().unwrap()),
        hex::encode(plans[1].2.clone().unwrap()),
    ];
    let payout_tx = hex::encode(plans[2].2.clone().unwrap());
    // Every processor reports the same transaction for each plan.
    let reported: Vec<(Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT plan_id, tx_hash FROM plan_completions")
            .fetch_all(&pool)
            .await
            .unwrap();
    for (plan_id, tx) in &reported {
        let expected = plans.iter().find(|p| &p.0 == plan_id).map(|p| p.2.clone());
        assert_eq!(expected, Some(Some(tx.clone())), "{reported:?}");
    }
    assert_eq!(
        received(&setup, minor).await,
        vec![(payout_tx, burn)],
        "the user received exactly the burn"
    );

    for db in &setup.cluster.dbs {
        let p = db.pool().await;
        let (deposits, paid, fees, unspent) =
            eventually("the books balance", Duration::from_secs(30), || async {
                let a = accounting(&p).await;
                (a.0 == a.1 + a.2 + a.3 && a.1 > 0).then_some(a)
            })
            .await;
        assert_eq!(deposits, i64::try_from(DEPOSITS as u64 * EACH).unwrap());
        assert_eq!(paid, i64::try_from(burn).unwrap());
        assert_eq!(deposits, paid + fees + unspent);
        // Each consolidation spent exactly MAX_INPUTS outputs, paid a fee,
        // and its two outputs came back to the change subaddress.
        for consolidation_tx in &consolidation_txs {
            let consolidation: (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM outputs o WHERE o.plan_id = p.plan_id AND o.status = 'spent'),
                    fee
             FROM plans p WHERE tx_hash = $1",
        )
        .bind(hex::decode(consolidation_tx).unwrap())
        .fetch_one(&p)
        .await
        .unwrap();
            assert_eq!(consolidation.0, i64::try_from(MAX_INPUTS).unwrap());
            assert!(consolidation.1 > 0, "the consolidation paid a fee");
            assert_eq!(
                scalar_i64(
                    &p,
                    &format!(
                        "SELECT count(*) FROM outputs WHERE account = 0 AND subaddress_minor = 1
                     AND tx_hash = decode('{consolidation_tx}', 'hex')"
                    )
                )
                .await,
                2,
                "both consolidated outputs are the group's own change"
            );
        }
        // No output is credited twice: the deposits are the only outputs of
        // an account, and every batch holds only them.
        assert_eq!(
            scalar_i64(&p, "SELECT count(*) FROM outputs WHERE account > 0").await,
            i64::try_from(DEPOSITS).unwrap()
        );
        assert_eq!(
            scalar_i64(
                &p,
                "SELECT count(*) FROM outputs WHERE account = 0 AND status <> 'received' \
                 AND tx_hash NOT IN (SELECT tx_hash FROM plans WHERE tx_hash IS NOT NULL)"
            )
            .await,
            0,
            "every group-owned output is a plan's change"
        );
    }
    let credited_after: usize = coordinator_batches(&pool)
        .await
        .iter()
        .map(|b| instructions(&b.2).len())
        .sum();
    assert_eq!(
        credited_after, DEPOSITS,
        "neither the consolidation nor the payout's change was credited"
    );
}
