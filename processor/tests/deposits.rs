//! Deposits that cannot be faked, locked away or seen differently by two
//! processors, on real parts (regtest monerod, the user's monero-wallet-rpc,
//! three processors with their own Postgres, the coordinator-mock):
//! - an output key received twice (the burning bug) is credited once;
//! - a timelocked deposit is reported only in the batch of the block that
//!   unlocks it, by every processor alike;
//! - batches are byte-identical whatever order link messages arrive in;
//! - a batch included twice changes nothing and is answered with a fault;
//! - a sign id naming another key than the batch's own is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::deposits::*;
use common::monero::*;
use common::*;
use sqlx::PgPool;

/// Every batch a processor holds: (id, encoded).
async fn batches(pool: &PgPool) -> Vec<(i64, Vec<u8>)> {
    sqlx::query_as("SELECT id, encoded FROM batches ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn pools(setup: &Setup) -> Vec<PgPool> {
    futures::future::join_all(setup.cluster.dbs.iter().map(|d| d.pool())).await
}

/// Waits until every processor in `pools` holds `count` batches, then
/// asserts they hold the very same bytes; returns them.
async fn identical_batches(pools: &[PgPool], count: usize) -> Vec<(i64, Vec<u8>)> {
    let mut all = Vec::new();
    for pool in pools {
        all.push(
            eventually(
                &format!("{count} batches on a processor"),
                Duration::from_secs(120),
                || async {
                    let b = batches(pool).await;
                    (b.len() >= count).then_some(b)
                },
            )
            .await,
        );
    }
    for other in &all[1..] {
        assert_eq!(
            other, &all[0],
            "two processors hold different batches for the same chain"
        );
    }
    all.swap_remove(0)
}

async fn next_height(pool: &PgPool) -> u64 {
    let next: Option<i64> = sqlx::query_scalar("SELECT next_height FROM scan_cursor")
        .fetch_optional(pool)
        .await
        .unwrap();
    u64::try_from(next.unwrap_or(0)).unwrap()
}

/// What a processor does between two blocks is driven by the settlement
/// chain and the Monero chain alone. Each case delays one processor's link
/// messages differently relative to its scanning; every case must end with
/// byte-identical batches on every processor, all signed and included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_identical_whatever_order_link_messages_arrive_in() {
    #[derive(Debug, Clone, Copy)]
    enum Delay {
        /// The processor is killed; the account is registered, paid and
        /// buried; it restarts (its link delivers the registration only
        /// after its scanner could have run far ahead).
        KilledWhileRegistering,
        /// The processor is frozen (SIGSTOP) longer than the link's peer
        /// timeout while the account is registered and paid.
        FrozenWhileRegistering,
        /// The processor is killed after the registration reached it but
        /// before the deposit: it catches up on blocks and settlement
        /// blocks together.
        KilledBeforeDeposit,
    }
    let cases = [
        (Delay::KilledWhileRegistering, 2_usize, 3_u32),
        (Delay::FrozenWhileRegistering, 0, 4),
        (Delay::KilledBeforeDeposit, 1, 5),
    ];
    let mut setup = Setup::start("order", 2, |_| None).await;
    let key = group_key(&setup.cluster).await;
    let all = pools(&setup).await;
    let mut expected_batches = 0;
    for (delay, late, account) in cases {
        let address = processor::accounts::deposit_address(&key, account).unwrap();
        match delay {
            Delay::KilledWhileRegistering => {
                setup.cluster.procs[late].as_mut().unwrap().kill9();
            }
            Delay::FrozenWhileRegistering => {
                setup.cluster.procs[late]
                    .as_ref()
                    .unwrap()
                    .signal(nix::sys::signal::Signal::SIGSTOP);
            }
            Delay::KilledBeforeDeposit => {}
        }
        let (new, active_from) = setup
            .cluster
            .coordinator
            .register_account(account)
            .await
            .unwrap();
        assert!(new, "{delay:?}: account {account} is new");
        if matches!(delay, Delay::KilledBeforeDeposit) {
            let pool = all[late].clone();
            eventually(
                "the registration reaches the processor",
                Duration::from_secs(20),
                || async {
                    (scalar_i64(
                        &pool,
                        &format!("SELECT count(*) FROM accounts WHERE account = {account}"),
                    )
                    .await
                        == 1)
                        .then_some(())
                },
            )
            .await;
            setup.cluster.procs[late].as_mut().unwrap().kill9();
        }
        setup
            .wallet
            .transfer(
                &[(&address, 1_000_000_000_000_u64 + u64::from(account))],
                Default::default(),
            )
            .await
            .unwrap();
        // Many blocks: a processor that ran ahead of its link would have
        // scanned the deposit's block without the account.
        setup.monerod.mine(&elsewhere(), 12).await;
        expected_batches += 1;
        let on_time: Vec<PgPool> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != late)
            .map(|(_, p)| p.clone())
            .collect();
        let batches_now = identical_batches(&on_time, expected_batches).await;
        let newest =
            processor::batch::batch_parts(u64::try_from(batches_now.last().unwrap().0).unwrap());
        assert!(
            newest.1 >= active_from,
            "{delay:?}: the deposit's block {} is at or after the account's activation {active_from}",
            newest.1
        );
        match delay {
            Delay::FrozenWhileRegistering => setup.cluster.procs[late]
                .as_ref()
                .unwrap()
                .signal(nix::sys::signal::Signal::SIGCONT),
            _ => setup.respawn(late),
        }
        let every = identical_batches(&all, expected_batches).await;
        assert_eq!(
            every.len(),
            expected_batches,
            "{delay:?}: one batch per deposit block"
        );
        let decoded =
            proto::processor_v1::Batch::decode(every.last().unwrap().1.as_slice()).unwrap();
        assert_eq!(
            decoded
                .instructions
                .iter()
                .map(|i| (i.account, i.amount))
                .collect::<Vec<_>>(),
            vec![(account, 1_000_000_000_000 + u64::from(account))],
            "{delay:?}: the late processor credits exactly what the others do"
        );
        setup.wait_included(expected_batches).await;
        println!(
            "{delay:?}: {} batches identical on every processor",
            every.len()
        );
    }
}

use prost::Message as _;

/// A deposit whose transaction carries an additional timelock (monero-wallet-
/// rpc's `unlock_time`) is stored as locked and reported only in the batch
/// of the block that unlocks it, on every processor alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timelocked_deposit_waits_for_its_unlock_on_every_processor() {
    let setup = Setup::start("lock", 2, |_| None).await;
    let all = pools(&setup).await;
    let tip = setup.monerod.height().await;
    let unlock_at = tip + 20;
    setup
        .wallet
        .transfer(
            &[(&setup.one, 2_000_000_000_000_u64)],
            monero_rpc::TransferOptions {
                unlock_time: Some(unlock_at),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    setup.monerod.mine(&elsewhere(), 6).await;
    for pool in &all {
        let locked: (i64, String, Option<i64>) = eventually(
            "the locked deposit is stored",
            Duration::from_secs(60),
            || async {
                sqlx::query_as(
                    "SELECT unlock_height, status, batch_id FROM outputs WHERE account = 1",
                )
                .fetch_optional(pool)
                .await
                .unwrap()
            },
        )
        .await;
        assert_eq!(
            locked,
            (i64::try_from(unlock_at).unwrap(), "locked".to_owned(), None),
            "a locked deposit waits, unreported"
        );
        assert!(
            batches(pool).await.is_empty(),
            "no batch credits a deposit that cannot be spent yet"
        );
    }
    // Up to the block before the unlock: still nothing.
    let before = unlock_at - 1;
    let mined = setup.monerod.height().await;
    setup
        .monerod
        .mine(&elsewhere(), usize::try_from(before + 3 - mined).unwrap())
        .await;
    for pool in &all {
        eventually(
            "the block before the unlock is final",
            Duration::from_secs(60),
            || async { (next_height(pool).await > before).then_some(()) },
        )
        .await;
        assert!(
            batches(pool).await.is_empty(),
            "reported before its unlock block"
        );
    }
    // The unlock block is final: its batch carries the deposit.
    setup.monerod.mine(&elsewhere(), 1).await;
    let every = identical_batches(&all, 1).await;
    assert_eq!(
        processor::batch::batch_parts(u64::try_from(every[0].0).unwrap()),
        (0, unlock_at),
        "reported in the batch of the unlock block"
    );
    assert_eq!(instructions(&every[0].1), vec![(1, 2_000_000_000_000)]);
    let included = setup.wait_included(1).await;
    assert_eq!(included[0].0, every[0].0);
    for pool in &all {
        eventually(
            "the deposit is spendable",
            Duration::from_secs(30),
            || async {
                (scalar_i64(
                    pool,
                    "SELECT count(*) FROM outputs WHERE account = 1 AND status = 'included'",
                )
                .await
                    == 1)
                    .then_some(())
            },
        )
        .await;
    }
}

/// Two transactions carrying one one-time output key (the burning bug),
/// given to the scanner as monerod would: the first is credited, the second
/// recorded as a duplicate with the reason, never batched; the batch still
/// sums to exactly what can be spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_key_received_twice_is_credited_once() {
    let mut setup = Setup::start("dupkey", 2, |_| None).await;
    // Processor 1 stops; the test feeds its scanner by hand.
    setup.cluster.procs[0].as_mut().unwrap().kill9();
    let pool = setup.cluster.dbs[0].pool().await;
    let next = next_height(&pool).await;
    let (a1, a2) = (700_000_000_000_u64, 300_000_000_000_u64);
    setup.deposit(a1, a2).await;
    let daemon = processor::monero::Daemon::new(setup.monerod.url.clone());
    let tip = daemon.tip().await.unwrap();
    let mut blocks = processor::scanner::fetch(&daemon, next..=tip)
        .await
        .unwrap();
    // The deposit's block, with its transaction carried a second time under
    // another hash: same transaction key, same output index, same output keys.
    let block = blocks.last_mut().unwrap();
    assert_eq!(
        block.transactions.len(),
        1,
        "the deposit's block holds the deposit"
    );
    let copy = block.transactions[0].clone();
    let mut fake_hash = block.block.transactions[0];
    fake_hash[0] ^= 0xff;
    block.block.transactions.push(fake_hash);
    block.transactions.push(copy);

    let keystore = processor::keystore::Keystore::open(&pool, &setup.cluster.kek(0))
        .await
        .unwrap();
    let (health, _) = tonic_health::server::health_reporter();
    let context = processor::scanner::ScanContext {
        keystore,
        link_id: "coordinator".into(),
        outbox: processor::link::Outbox::default(),
        health,
        blocks: std::sync::Arc::new(processor::scheduler::SchedulerConfig::default()),
        finalized: std::sync::Arc::default(),
    };
    let (keys, _) = processor::scanner::keys_at(&pool, next).await.unwrap();
    assert_eq!(keys.len(), 1, "one key is scanned");
    let stored = processor::scanner::ingest(&pool, &context, &keys, next, blocks)
        .await
        .unwrap();
    assert_eq!(stored, tip - next + 1);

    type Row = (Vec<u8>, i64, i64, String, Option<String>, Option<i64>);
    let outputs: Vec<Row> = sqlx::query_as(
        "SELECT tx_hash, account, amount, status, reason, batch_id FROM outputs
         WHERE account > 0 ORDER BY status, account",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(outputs.len(), 4, "{outputs:?}");
    let credited: Vec<_> = outputs.iter().filter(|o| o.3 != "duplicate").collect();
    let duplicates: Vec<_> = outputs.iter().filter(|o| o.3 == "duplicate").collect();
    assert_eq!(credited.len(), 2, "{outputs:?}");
    assert_eq!(duplicates.len(), 2, "{outputs:?}");
    for d in &duplicates {
        assert_eq!(
            d.0,
            fake_hash.to_vec(),
            "the second transaction is the duplicate"
        );
        assert!(
            d.4.as_deref().unwrap_or("").contains("burning bug"),
            "the reason is recorded: {d:?}"
        );
        assert_eq!(d.5, None, "a duplicate is in no batch");
    }
    let all_batches = batches(&pool).await;
    assert_eq!(all_batches.len(), 1);
    assert_eq!(
        instructions(&all_batches[0].1),
        vec![(1, a1), (2, a2)],
        "the batch credits each output key once: exactly what can be spent"
    );
    // The admin API lists the duplicates with their reason; a restarted
    // processor would report them the same way.
    let rows = processor::scanner::db::list_outputs(&pool, 0, 100)
        .await
        .unwrap();
    assert_eq!(
        rows.iter()
            .filter(|o| o.status == "duplicate" && o.reason.is_some())
            .count(),
        2
    );
}

/// A settlement block including a batch already included changes nothing
/// (its outputs, even spent ones, keep their status) and is answered with a
/// fault naming the batch; an unknown batch of a scanned block likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn including_a_batch_again_changes_nothing_and_is_answered() {
    let mut setup = Setup::start("reinc", 2, |_| None).await;
    setup.deposit(500_000_000_000, 400_000_000_000).await;
    setup.monerod.mine(&elsewhere(), 3).await;
    let included = setup.wait_included(1).await;
    let id = u64::try_from(included[0].0).unwrap();
    let pool = setup.cluster.dbs[0].pool().await;
    eventually(
        "included on processor 1",
        Duration::from_secs(30),
        || async {
            (scalar_i64(
                &pool,
                "SELECT count(*) FROM outputs WHERE status = 'included' AND account > 0",
            )
            .await
                == 2)
                .then_some(())
        },
    )
    .await;
    setup.cluster.procs[0].as_mut().unwrap().kill9();
    // As if a payout had spent one of them.
    sqlx::query("UPDATE outputs SET status = 'spent' WHERE account = 1")
        .execute(&pool)
        .await
        .unwrap();
    let before: Vec<(String,)> =
        sqlx::query_as("SELECT status FROM outputs ORDER BY tx_hash, index_in_tx")
            .fetch_all(&pool)
            .await
            .unwrap();
    let (session, height) = processor::batch::batch_parts(id);
    let unknown = processor::batch::batch_id(session, height - 1);
    let mut tx = pool.begin().await.unwrap();
    let accepted = processor::batch::include(&mut tx, "coordinator", 1_000_000, &[id, unknown])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(accepted.is_empty(), "nothing accepted: {accepted:?}");
    let after: Vec<(String,)> =
        sqlx::query_as("SELECT status FROM outputs ORDER BY tx_hash, index_in_tx")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(before, after, "a second inclusion moves no output");
    let faults: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT uid, payload FROM send_log WHERE uid LIKE 'inclusion-refused/%' ORDER BY uid",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(faults.len(), 2, "{faults:?}");
    let details: Vec<String> = faults
        .iter()
        .map(|(_, p)| {
            match proto::processor_v1::ProcessorMessage::decode(p.as_slice())
                .unwrap()
                .kind
            {
                Some(proto::processor_v1::processor_message::Kind::Fault(f)) => {
                    assert_eq!(f.kind, "inclusion-refused");
                    f.detail
                }
                other => panic!("not a fault: {other:?}"),
            }
        })
        .collect();
    assert!(
        details.iter().any(|d| d.contains("already included")),
        "{details:?}"
    );
    assert!(details.iter().any(|d| d.contains("unknown")), "{details:?}");
    setup.respawn(0);
    // The coordinator hears of it.
    let cpool = setup.cluster.coordinator.pool.clone();
    eventually(
        "the coordinator records the refusal",
        Duration::from_secs(30),
        || async {
            (scalar_i64(
                &cpool,
                "SELECT count(*) FROM faults WHERE kind = 'inclusion-refused'",
            )
            .await
                == 2)
                .then_some(())
        },
    )
    .await;
}

/// A `SignId` that names another key session than the batch's own is
/// refused with a fault: no preprocess, no share under the wrong key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_id_naming_another_session_is_refused() {
    let mut setup = Setup::start("wrongsess", 2, |_| None).await;
    setup.deposit(500_000_000_000, 400_000_000_000).await;
    setup.monerod.mine(&elsewhere(), 3).await;
    let included = setup.wait_included(1).await;
    let id = u64::try_from(included[0].0).unwrap();
    let pool = setup.cluster.dbs[1].pool().await;
    setup.cluster.procs[1].as_mut().unwrap().kill9();
    // Back to proposed, as if it were still being signed.
    sqlx::query("UPDATE batches SET status = 'proposed' WHERE id = $1")
        .bind(i64::try_from(id).unwrap())
        .execute(&pool)
        .await
        .unwrap();
    let attempts_before = scalar_i64(&pool, "SELECT count(*) FROM sign_attempts").await;
    let keystore = processor::keystore::Keystore::open(&pool, &setup.cluster.kek(1))
        .await
        .unwrap();
    let wrong = proto::processor_v1::SignId {
        session: 1,
        ..processor::batch::sign_id(0, id, 7)
    };
    let mut tx = pool.begin().await.unwrap();
    processor::signer::reattempt(
        &mut tx,
        &keystore,
        "coordinator",
        proto::processor_v1::SignReattempt {
            sign_id: Some(wrong.clone()),
        },
    )
    .await
    .unwrap();
    processor::signer::preprocesses(
        &mut tx,
        &keystore,
        "coordinator",
        proto::processor_v1::SignPreprocesses {
            sign_id: Some(wrong.clone()),
            preprocesses: [(1, vec![1; 64]), (2, vec![2; 64])].into_iter().collect(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        scalar_i64(&pool, "SELECT count(*) FROM sign_attempts").await,
        attempts_before,
        "no attempt begun under another key"
    );
    assert_eq!(
        scalar_i64(
            &pool,
            "SELECT count(*) FROM send_log WHERE kind IN ('sign_preprocess', 'sign_share') AND uid LIKE '%/1/batch/%'"
        )
        .await,
        0,
        "nothing signed under another key"
    );
    assert_eq!(
        scalar_i64(
            &pool,
            "SELECT count(*) FROM send_log WHERE uid LIKE 'sign-refused/%'"
        )
        .await,
        1,
        "the refusal goes back once (one uid per sign id)"
    );
}

/// Money paid to the key's main address belongs to no account: it is
/// reported as an unattributed deposit (account 0), included, and spendable
/// like any deposit; never stranded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_to_the_main_address_is_reported_unattributed() {
    let setup = Setup::start("mainaddr", 2, |_| None).await;
    let key = group_key(&setup.cluster).await;
    let main = processor::keystore::dkg::monero_address(&key).unwrap();
    let amount = 1_234_000_000_000_u64;
    setup
        .wallet
        .transfer(&[(&main, amount)], Default::default())
        .await
        .unwrap();
    setup.monerod.mine(&elsewhere(), 4).await;
    let included = setup.wait_included(1).await;
    assert_eq!(
        instructions(&included[0].2),
        vec![(0, amount)],
        "reported as unattributed (account 0)"
    );
    for pool in &pools(&setup).await {
        eventually(
            "the main-address output is spendable",
            Duration::from_secs(30),
            || async {
                (scalar_i64(
                    pool,
                    "SELECT count(*) FROM outputs WHERE account = 0 AND subaddress_minor = 0 AND status = 'included'",
                )
                .await
                    == 1)
                    .then_some(())
            },
        )
        .await;
    }
}
