//! Key rotation on real parts: a 2-of-3 key is replaced by a 3-of-4 key with
//! a fourth validator joining. The old key forwards everything it holds to
//! the new one and retires; a deposit to the old address after the new key
//! is active is credited once; burns before, during and after the rotation
//! are paid exactly; a processor killed in the middle of forwarding resumes
//! and nothing is forwarded twice; the books balance on every processor.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::deposits::*;
use common::monero::*;
use common::payouts::*;
use common::*;
use sqlx::PgPool;

const SCHEDULER: &[(&str, &str)] = &[("PROCESSOR_SCHEDULER__REPUBLISH_INTERVAL", "2s")];

/// Plans at the coordinator, oldest first: (id, session, status, burns).
async fn coordinator_plans(pool: &PgPool) -> Vec<(Vec<u8>, i64, String, Vec<String>)> {
    sqlx::query_as("SELECT plan_id, session, status, burn_ids FROM plans ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn submit_burn(setup: &Setup, id: &str, address: &str, amount: u64) {
    coordinator_mock::payouts::store_burn_unchecked(
        &setup.cluster.coordinator.pool,
        id,
        address,
        i64::try_from(amount).unwrap(),
    )
    .await
    .unwrap();
    setup
        .cluster
        .coordinator
        .emit_settlement_block()
        .await
        .unwrap();
}

/// A processor's books over every key it holds: (deposits credited, paid,
/// fees, forwarded in from keys it does not hold, unspent). Forwards between
/// two keys it holds cancel out (the old key's outputs are spent, the new
/// key's forwarded outputs are unspent); a forward from a key it does not
/// hold arrives as money it never credited, so it is counted apart.
async fn books(p: &PgPool) -> (i64, i64, i64, i64, i64) {
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
    let forwarded_in = scalar_i64(
        p,
        "SELECT COALESCE(sum(o.amount), 0)::bigint FROM outputs o
         WHERE o.account = 0 AND o.subaddress_minor = 2
           AND NOT EXISTS (SELECT 1 FROM plans p WHERE p.tx_hash = o.tx_hash)",
    )
    .await;
    let unspent = scalar_i64(
        p,
        "SELECT COALESCE(sum(amount), 0)::bigint FROM outputs
         WHERE status IN ('included', 'reserved')
           AND (account > 0 OR subaddress_minor IN (1, 2))",
    )
    .await;
    (deposits, paid, fees, forwarded_in, unspent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_of_three_key_rotates_to_three_of_four_and_nothing_is_stranded() {
    let mut setup = Setup::start_among(
        "rot",
        4,
        &["validator-1", "validator-2", "validator-3"],
        2,
        SCHEDULER,
        // validator-3 is dishonest: when it leads a window of the old key,
        // it forwards to a key of its own instead of the new one.
        |i| (i == 2).then_some("scheduler-forward-elsewhere=return"),
    )
    .await;
    let pool = setup.cluster.coordinator.pool.clone();
    let old_key = group_key(&setup.cluster).await;
    let (to_before, minor_before) = user_subaddress(&setup).await;
    let (to_during, minor_during) = user_subaddress(&setup).await;
    let (to_after, minor_after) = user_subaddress(&setup).await;
    let (burn_before, burn_during, burn_after) = (
        300_000_000_000_u64,
        500_000_000_000_u64,
        200_000_000_000_u64,
    );

    // Before: funds under the old key, and a burn it pays.
    setup.deposit(1_000_000_000_000, 700_000_000_000).await;
    setup.monerod.mine(&elsewhere(), 3).await;
    setup.wait_included(1).await;
    submit_burn(&setup, "before", &to_before, burn_before).await;
    mine_until(
        &setup,
        "the burn before",
        Duration::from_secs(240),
        || async {
            coordinator_plans(&pool)
                .await
                .iter()
                .any(|p| p.2 == "completed" && p.3 == ["before"])
                .then_some(())
        },
    )
    .await;

    // The rotation: 3-of-4, validator-4 joining.
    let session = setup
        .cluster
        .coordinator
        .start_keygen(3, &[])
        .await
        .unwrap();
    assert_eq!(session, 1);
    setup.cluster.wait_status(session, "confirmed").await;
    let status = coordinator_mock::keygen::status(&pool, Some(1))
        .await
        .unwrap()
        .pop()
        .unwrap();
    let new_key: [u8; 32] = hex::decode(&status.group_key).unwrap().try_into().unwrap();
    let activation = eventually(
        "the new key's activation",
        Duration::from_secs(30),
        || async {
            let h: Option<i64> = sqlx::query_scalar(
                "SELECT activation_height FROM keygen_sessions WHERE session = 1",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            h
        },
    )
    .await;
    let activation = u64::try_from(activation).unwrap();
    // The chain reaches the activation block before the deposit to the old
    // address is mined: it lands while the old key forwards.
    while setup.monerod.height().await <= activation {
        setup.monerod.mine(&elsewhere(), 1).await;
    }
    let old_late = 400_000_000_000_u64;
    setup
        .wallet
        .transfer(&[(&setup.one, old_late)], Default::default())
        .await
        .unwrap();
    setup.monerod.mine(&elsewhere(), 1).await;
    submit_burn(&setup, "during", &to_during, burn_during).await;

    // Kill validator-1 once the first forward is proposed; it resumes.
    mine_until(
        &setup,
        "a forward proposed",
        Duration::from_secs(240),
        || async {
            coordinator_plans(&pool)
                .await
                .iter()
                .any(|p| p.1 == 0 && p.3.is_empty())
                .then_some(())
        },
    )
    .await;
    setup.cluster.procs[0].as_mut().unwrap().kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    setup.respawn(0);

    // After: a deposit to the new address and a burn.
    let new_one = processor::accounts::deposit_address(&new_key, 1).unwrap();
    setup
        .wallet
        .transfer(&[(&new_one, 600_000_000_000)], Default::default())
        .await
        .unwrap();
    setup.monerod.mine(&elsewhere(), 1).await;
    submit_burn(&setup, "after", &to_after, burn_after).await;

    // Until the old key retires on each of its processors and every burn is
    // paid.
    let old_dbs: Vec<PgPool> = {
        let mut v = Vec::new();
        for db in &setup.cluster.dbs[..3] {
            v.push(db.pool().await);
        }
        v
    };
    mine_until(
        &setup,
        "the old key retired and every burn paid",
        Duration::from_secs(600),
        || async {
            for p in &old_dbs {
                let retired: Option<i64> =
                    sqlx::query_scalar("SELECT retired_height FROM keys WHERE session = 0")
                        .fetch_one(p)
                        .await
                        .unwrap();
                retired?;
            }
            let plans = coordinator_plans(&pool).await;
            ["before", "during", "after"]
                .iter()
                .all(|b| {
                    plans
                        .iter()
                        .any(|p| p.2 == "completed" && p.3.iter().any(|x| x == b))
                })
                .then_some(())
        },
    )
    .await;

    // Each burn was paid by the key the settlement chain named: the one
    // before the rotation by key 0, the later ones by key 1; validator-4,
    // which never held key 0, never took "before" on.
    let plans = coordinator_plans(&pool).await;
    for (burn, payer) in [("before", 0), ("during", 1), ("after", 1)] {
        let paying: Vec<i64> = plans
            .iter()
            .filter(|p| p.2 == "completed" && p.3.iter().any(|b| b == burn))
            .map(|p| p.1)
            .collect();
        assert_eq!(paying, vec![payer], "burn {burn}: {plans:?}");
    }
    let v4 = setup.cluster.dbs[3].pool().await;
    let before_on_v4: (String, Option<i64>) =
        sqlx::query_as("SELECT status, session FROM burns WHERE burn_id = 'before'")
            .fetch_one(&v4)
            .await
            .unwrap();
    assert_eq!(before_on_v4, ("queued".to_owned(), Some(0)));
    assert_eq!(
        scalar_i64(
            &v4,
            "SELECT count(*) FROM plans WHERE 'before' = ANY(burn_ids)"
        )
        .await,
        0
    );

    // The user received each burn exactly once.
    for (minor, amount) in [
        (minor_before, burn_before),
        (minor_during, burn_during),
        (minor_after, burn_after),
    ] {
        let got = received(&setup, minor).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].1, amount);
    }
    // The late deposit to the old address: one batch of the old key, once.
    let credited: Vec<(i64, i64)> =
        sqlx::query_as("SELECT session, amount FROM outputs WHERE account = 1 AND amount = $1")
            .bind(i64::try_from(old_late).unwrap())
            .fetch_all(&old_dbs[1])
            .await
            .unwrap();
    assert_eq!(credited, vec![(0, i64::try_from(old_late).unwrap())]);

    for (i, db) in setup.cluster.dbs.iter().enumerate() {
        let p = db.pool().await;
        if i < 3 {
            // Every output of the old key is spent; nothing is forwarded
            // twice: each old output is the input of exactly one final plan.
            let left = scalar_i64(
                &p,
                "SELECT count(*) FROM outputs WHERE session = 0
                 AND status IN ('locked', 'received', 'included', 'reserved')",
            )
            .await;
            assert_eq!(left, 0, "validator-{} still holds old outputs", i + 1);
            let spent_twice = scalar_i64(
                &p,
                "SELECT count(*) FROM outputs WHERE session = 0 AND status = 'spent'
                 AND plan_id IS NULL",
            )
            .await;
            assert_eq!(spent_twice, 0);
        }
        // Forwards arrived at the new key's forwarding subaddress, never as
        // deposits.
        let forwarded = scalar_i64(
            &p,
            "SELECT count(*) FROM outputs WHERE session = 1 AND account = 0 AND subaddress_minor = 2",
        )
        .await;
        assert!(forwarded > 0, "validator-{} saw no forward", i + 1);
        let forwarded_batched = scalar_i64(
            &p,
            "SELECT count(*) FROM outputs WHERE subaddress_minor = 2 AND batch_id IS NOT NULL",
        )
        .await;
        assert_eq!(forwarded_batched, 0, "a forward was reported as a deposit");
        let (deposits, paid, fees, forwarded_in, unspent) =
            eventually("the books balance", Duration::from_secs(30), || async {
                let b = books(&p).await;
                (b.0 + b.3 == b.1 + b.2 + b.4).then_some(b)
            })
            .await;
        assert!(paid > 0 && fees > 0 && unspent > 0);
        if i < 3 {
            assert_eq!(forwarded_in, 0, "validator-{} holds both keys", i + 1);
        } else {
            assert!(forwarded_in > 0, "validator-4 received the forwards");
        }
        let _ = deposits;
    }
    // validator-3's forwards elsewhere were refused by the others and it was
    // named; nothing of the old key reached a key that is not the group's
    // (the old key retired and the books balance with every forward in).
    let refused: Vec<(String, String)> = sqlx::query_as(
        "SELECT k.processor, f.detail FROM faults f
         JOIN keygen_participants k ON k.session = f.session AND k.idx = f.accused
         WHERE f.kind = 'plan-refused' AND f.session = 0",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    if scalar_i64(
        &pool,
        "SELECT count(*) FROM plans p JOIN keygen_participants k
           ON k.session = p.session AND k.processor = p.leader
         WHERE p.session = 0 AND p.leader = 'validator-3' AND cardinality(p.burn_ids) = 0",
    )
    .await
        > 0
    {
        assert!(
            !refused.is_empty()
                && refused
                    .iter()
                    .all(|(who, detail)| who == "validator-3" && detail.contains("forward")),
            "{refused:?}"
        );
    }
    assert_eq!(
        scalar_i64(
            &pool,
            "SELECT count(*) FROM plans WHERE session = 0 AND leader = 'validator-3'
             AND cardinality(burn_ids) = 0 AND status = 'completed'",
        )
        .await,
        0,
        "a forward elsewhere was never signed"
    );
    // Every invariant the checker knows holds across the rotation: links,
    // nonces, batches, plans, payouts against the chain, and per key the
    // books with forwards in and out, each forward arrived whole.
    let targets = coordinator_mock::invariants::Targets {
        processors: (0..4)
            .map(|i| (common::cluster::name(i), setup.cluster.dbs[i].url.clone()))
            .collect(),
        coordinator: setup.cluster.cdb.url.clone(),
        monerod: setup.monerod.url.clone(),
    };
    let violations = coordinator_mock::invariants::check(&targets).await.unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
    // The operator's views: each processor's ListKeys, and the
    // coordinator's rotation.
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://127.0.0.1:{}",
        setup.cluster.ports[1]
    ))
    .unwrap()
    .connect()
    .await
    .unwrap();
    let keys = proto::processor_v1::processor_admin_client::ProcessorAdminClient::new(channel)
        .list_keys(proto::processor_v1::ListKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    let (old, new) = (&keys[0], &keys[1]);
    assert_eq!(
        (
            old.session,
            old.stage.as_str(),
            old.balance,
            old.unspent_outputs
        ),
        (0, "retired", 0, 0)
    );
    assert_eq!(old.forwarding_height, Some(activation));
    assert!(old.retired_height.is_some() && old.finishing_height.is_some());
    assert_eq!((new.session, new.stage.as_str()), (1, "active"));
    assert_eq!(new.activation_height, Some(activation));
    assert!(new.balance > 0 && new.forwarding_height.is_none());
    let reports = vec![("validator-2".to_owned(), keys.clone())];
    let rotation = coordinator_mock::keygen::rotation(&pool, &reports)
        .await
        .unwrap();
    assert_eq!(rotation.len(), 2);
    assert_eq!(rotation[0].forwarding_height, Some(activation));
    assert_eq!(rotation[0].retired_on, vec!["validator-2".to_owned()]);
    assert_eq!(rotation[1].scheduled_stage, "active");
    assert_eq!(rotation[1].participants.len(), 4);
    // The old key's stage reads retired in the admin view of its holders.
    let chain = processor::lifecycle::db::chain(&old_dbs[0]).await.unwrap();
    let old = chain.iter().find(|k| k.session == 0).unwrap();
    assert!(old.heights.retired.is_some());
    assert_eq!(old.heights.forwarding, Some(activation));
    assert_eq!(old_key.len(), 32);
}
