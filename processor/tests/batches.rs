//! Deposits to batches on real parts: a user's monero-wallet-rpc pays two
//! accounts' subaddresses on a regtest monerod; once the block is final the
//! processors build one Batch, sign it with FROST through the coordinator,
//! and the coordinator verifies it with ed25519-dalek and includes it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::deposits::*;
use common::monero::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_become_one_signed_batch_per_block() {
    let setup = Setup::start("batch", 2, |_| None).await;
    let cluster = &setup.cluster;
    let (a1, a2) = (1_500_000_000_000_u64, 700_000_000_000_u64);
    // The deposit's block plus two: below the finality depth, no batch.
    setup.deposit(a1, a2).await;
    setup.monerod.mine(&elsewhere(), 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        coordinator_batches(&cluster.coordinator.pool)
            .await
            .is_empty(),
        "a batch before finality"
    );

    // One more block makes the deposit final.
    setup.monerod.mine(&elsewhere(), 1).await;
    let batches = setup.wait_included(1).await;
    assert_eq!(
        instructions(&batches[0].2),
        vec![(1, a1), (2, a2)],
        "exact amounts and accounts"
    );
    // The coordinator verified it; verify again here with ed25519-dalek.
    let key: [u8; 32] = group_key(cluster).await;
    let signature: [u8; 64] = batches[0].3.clone().unwrap().try_into().unwrap();
    ed25519_dalek::VerifyingKey::from_bytes(&key)
        .unwrap()
        .verify_strict(
            &processor::batch::message(&batches[0].2),
            &ed25519_dalek::Signature::from_bytes(&signature),
        )
        .expect("the batch signature verifies");

    // The next settlement block includes it on every processor.
    cluster.coordinator.emit_settlement_block().await.unwrap();
    for db in &cluster.dbs {
        let p = db.pool().await;
        eventually(
            "the processor learns the batch is included",
            Duration::from_secs(20),
            || async {
                (scalar_i64(&p, "SELECT count(*) FROM batches WHERE status = 'included'").await
                    == 1)
                    .then_some(())
            },
        )
        .await;
        assert_eq!(
            scalar_i64(&p, "SELECT count(*) FROM batches").await,
            1,
            "one batch per notable block"
        );
    }
    // An operator sees it with grpcurl.
    let out = std::process::Command::new(grpcurl())
        .args(["-plaintext", "-d", "{}"])
        .arg(format!("127.0.0.1:{}", cluster.ports[0]))
        .arg("processor.v1.ProcessorAdmin/ListBatches")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"status\": \"included\""), "{text}");
    assert!(
        text.contains(&format!("\"total\": \"{}\"", a1 + a2)),
        "{text}"
    );
    let out = std::process::Command::new(grpcurl())
        .args(["-plaintext", "-d", "{}"])
        .arg(format!("127.0.0.1:{}", cluster.ports[0]))
        .arg("processor.v1.ProcessorAdmin/ListOutputs")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("\"amount\": \"{a1}\"")) && text.contains("\"account\": 2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_processor_offline_the_other_two_sign() {
    let mut setup = Setup::start("boff", 2, |_| None).await;
    setup.cluster.procs[2].as_mut().unwrap().kill9();
    setup.deposit(2_000_000_000_000, 300_000_000_000).await;
    setup.monerod.mine(&elsewhere(), 3).await;
    let batches = setup.wait_included(1).await;
    assert_eq!(
        instructions(&batches[0].2),
        vec![(1, 2_000_000_000_000), (2, 300_000_000_000)]
    );
    let signers: Vec<i32> =
        sqlx::query_scalar("SELECT unnest(signers) FROM sign_attempts WHERE status = 'done'")
            .fetch_all(&setup.cluster.coordinator.pool)
            .await
            .unwrap();
    assert!(
        !signers.contains(&3),
        "the offline processor was not a signer: {signers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_killed_after_its_preprocess_never_shares_that_attempt() {
    // 3-of-3: validator-2 must sign. It stops once chosen, before sharing.
    let mut setup = Setup::start("bkill", 3, |i| {
        (i == 1).then_some("signer-before-share=1*return")
    })
    .await;
    setup.deposit(900_000_000_000, 100_000_000_000).await;
    setup.monerod.mine(&elsewhere(), 3).await;
    let pool = setup.cluster.coordinator.pool.clone();
    eventually(
        "attempt 0's signers chosen",
        Duration::from_secs(60),
        || async {
            (scalar_i64(
                &pool,
                "SELECT count(*) FROM sign_attempts WHERE attempt = 0 AND status = 'sharing'",
            )
            .await
                == 1)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    setup.cluster.procs[1].as_mut().unwrap().kill9();
    setup.respawn(1);
    let batches = setup.wait_included(1).await;
    assert_eq!(
        instructions(&batches[0].2),
        vec![(1, 900_000_000_000), (2, 100_000_000_000)]
    );
    // validator-2 (index 2) never shared for attempt 0; a later attempt signed.
    assert_eq!(
        scalar_i64(
            &pool,
            "SELECT count(*) FROM sign_shares WHERE attempt = 0 AND idx = 2"
        )
        .await,
        0,
        "a share for an attempt begun before the restart"
    );
    assert!(
        scalar_i64(
            &pool,
            "SELECT max(attempt)::bigint FROM sign_attempts WHERE status = 'done'"
        )
        .await
            >= 1
    );
    // Every attempt of validator-2 had its own preprocess (fresh nonces).
    let p2 = setup.cluster.dbs[1].pool().await;
    assert_eq!(
        scalar_i64(
            &p2,
            "SELECT count(*) FROM send_log WHERE kind = 'sign_preprocess'"
        )
        .await,
        scalar_i64(&p2, "SELECT count(*) FROM sign_attempts").await
    );
    assert_eq!(
        scalar_i64(&p2, "SELECT count(*) FROM batches").await,
        1,
        "no batch twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_blamed_for_an_invalid_share_is_not_chosen_again() {
    let setup = Setup::start("bban", 2, |_| None).await;
    setup.deposit(800_000_000_000, 200_000_000_000).await;
    setup.monerod.mine(&elsewhere(), 3).await;
    let first = setup.wait_included(1).await;
    // validator-1 (index 1) was proven to have sent an invalid share of the
    // first batch.
    let pool = setup.cluster.coordinator.pool.clone();
    sqlx::query(
        "INSERT INTO sign_blames (kind, id, attempt, accuser, accused, reason, verdict, culprit)
         VALUES ('batch', $1, 0, 'validator-2', 1, 'its signature share is invalid', 'proven', 1)",
    )
    .bind(first[0].0)
    .execute(&pool)
    .await
    .unwrap();
    setup.deposit(600_000_000_000, 100_000_000_000).await;
    setup.monerod.mine(&elsewhere(), 3).await;
    let batches = setup.wait_included(2).await;
    assert_eq!(
        instructions(&batches[1].2),
        vec![(1, 600_000_000_000), (2, 100_000_000_000)]
    );
    let signers: Vec<i32> = sqlx::query_scalar(
        "SELECT unnest(signers) FROM sign_attempts WHERE kind = 'batch' AND id = $1 AND status = 'done'",
    )
    .bind(batches[1].0)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(signers.len(), 2, "{signers:?}");
    assert!(
        !signers.contains(&1),
        "a banned participant was chosen: {signers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_or_outsider_sign_blame_bans_the_accuser_not_the_accused() {
    // validator-3 offline: validator-1 and validator-2 sign the first batch;
    // validator-2 then blames validator-1, whose share was valid.
    let mut setup = Setup::start("bfalse", 2, |i| {
        (i == 1).then_some("signer-false-blame=return")
    })
    .await;
    setup.cluster.procs[2].as_mut().unwrap().kill9();
    setup.deposit(800_000_000_000, 200_000_000_000).await;
    setup.monerod.mine(&elsewhere(), 3).await;
    let first = setup.wait_included(1).await;
    let pool = setup.cluster.coordinator.pool.clone();
    let (verdict, culprit): (String, Option<i32>) = eventually(
        "the false blame is judged",
        Duration::from_secs(60),
        || async {
            sqlx::query_as(
                "SELECT verdict, culprit FROM sign_blames
                 WHERE kind = 'batch' AND id = $1 AND accuser = 'validator-2' AND accused = 1",
            )
            .bind(first[0].0)
            .fetch_optional(&pool)
            .await
            .unwrap()
        },
    )
    .await;
    assert_eq!(
        (verdict.as_str(), culprit),
        ("false", Some(2)),
        "the accused's share verifies: the accuser is at fault"
    );

    // The next batch: validator-2 is not chosen again, validator-1 is.
    setup.respawn(2);
    setup.deposit(600_000_000_000, 100_000_000_000).await;
    setup.monerod.mine(&elsewhere(), 3).await;
    let batches = setup.wait_included(2).await;
    let signers: Vec<i32> = sqlx::query_scalar(
        "SELECT unnest(signers) FROM sign_attempts WHERE kind = 'batch' AND id = $1 AND status = 'done'",
    )
    .bind(batches[1].0)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        {
            let mut s = signers.clone();
            s.sort_unstable();
            s
        },
        vec![1, 3],
        "the falsely accused signs again, the false accuser does not"
    );

    // A blame from a processor that was not a signer of that attempt is
    // refused and counts against it, not the accused.
    let attempt: i32 = sqlx::query_scalar(
        "SELECT attempt FROM sign_attempts WHERE kind = 'batch' AND id = $1 AND status = 'done'",
    )
    .bind(batches[1].0)
    .fetch_one(&pool)
    .await
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    coordinator_mock::signing::blame(
        &mut tx,
        "validator-2",
        proto::processor_v1::SignBlame {
            sign_id: Some(processor::batch::sign_id(
                0,
                u64::try_from(batches[1].0).unwrap(),
                u32::try_from(attempt).unwrap(),
            )),
            accused: 1,
            reason: "an outsider's accusation".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let (verdict, culprit): (String, Option<i32>) = sqlx::query_as(
        "SELECT verdict, culprit FROM sign_blames WHERE id = $1 AND accuser = 'validator-2'",
    )
    .bind(batches[1].0)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((verdict.as_str(), culprit), ("refused", Some(2)));
    assert_eq!(
        scalar_i64(&pool, "SELECT count(*) FROM sign_blames WHERE culprit = 1").await,
        0,
        "the accused is never banned by a false or outsider accusation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proven_invalid_share_bans_its_signer_and_the_others_sign() {
    // validator-3 offline: validator-1 and validator-2 are chosen; validator-2
    // sends an invalid share once. validator-1's blame is checked and holds.
    let mut setup = Setup::start("bbad", 2, |i| {
        (i == 1).then_some("signer-corrupt-share=1*return")
    })
    .await;
    setup.cluster.procs[2].as_mut().unwrap().kill9();
    setup.deposit(700_000_000_000, 300_000_000_000).await;
    setup.monerod.mine(&elsewhere(), 3).await;
    let pool = setup.cluster.coordinator.pool.clone();
    let (verdict, culprit): (String, Option<i32>) = eventually(
        "validator-1's blame is judged",
        Duration::from_secs(90),
        || async {
            sqlx::query_as(
                "SELECT verdict, culprit FROM sign_blames
                 WHERE kind = 'batch' AND accuser = 'validator-1' AND accused = 2",
            )
            .fetch_optional(&pool)
            .await
            .unwrap()
        },
    )
    .await;
    assert_eq!((verdict.as_str(), culprit), ("proven", Some(2)));
    // validator-3 comes back; the batch is signed without validator-2.
    setup.respawn(2);
    let batches = setup.wait_included(1).await;
    let mut signers: Vec<i32> = sqlx::query_scalar(
        "SELECT unnest(signers) FROM sign_attempts WHERE kind = 'batch' AND id = $1 AND status = 'done'",
    )
    .bind(batches[0].0)
    .fetch_all(&pool)
    .await
    .unwrap();
    signers.sort_unstable();
    assert_eq!(
        signers,
        vec![1, 3],
        "the proven culprit is not chosen again"
    );
}

/// Chaos seed 204: a processor whose scanner transaction made a batch was
/// still open when the settlement block including that batch (signed by the
/// other two) arrived; each transaction missed the other's row and the
/// batch stayed proposed on that processor, its deposits never credited.
/// Here processor 3's scanner reaches the batch 3 s late (the others sign
/// it and the coordinator includes it meanwhile), and its settlement
/// transaction for the block including the batch it does not have yet stays
/// open 3 s, across the moment its scanner makes the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_included_while_its_scanner_transaction_is_open_is_included() {
    let setup = Setup::start("brace", 2, |i| {
        (i == 2)
            .then_some("scanner-slow-batch=return(3000);settlement-slow-unknown-batch=return(3000)")
    })
    .await;
    let cluster = &setup.cluster;
    setup.deposit(900_000_000_000, 400_000_000_000).await;
    setup.monerod.mine(&elsewhere(), 3).await;
    let batches = setup.wait_included(1).await;
    let id = batches[0].0;
    let signers: Vec<i32> =
        sqlx::query_scalar("SELECT unnest(signers) FROM sign_attempts WHERE status = 'done'")
            .fetch_all(&cluster.coordinator.pool)
            .await
            .unwrap();
    assert!(
        !signers.contains(&3),
        "processor 3 signed, so its transaction was not open when the batch was included: \
         the test did not reach the race ({signers:?})"
    );
    for db in &cluster.dbs {
        let p = db.pool().await;
        eventually(
            "every processor holds the batch as included and its deposits credited",
            Duration::from_secs(30),
            || async {
                let batch = scalar_i64(
                    &p,
                    &format!(
                        "SELECT count(*) FROM batches WHERE id = {id} AND status = 'included'"
                    ),
                )
                .await;
                let credited = scalar_i64(
                    &p,
                    &format!(
                        "SELECT count(*) FROM outputs WHERE batch_id = {id} AND status = 'included'"
                    ),
                )
                .await;
                (batch == 1 && credited == 2).then_some(())
            },
        )
        .await;
    }
}
