//! The invariant checker finds each kind of violation planted in real
//! databases (the processor's and the coordinator's migrations applied to
//! fresh ones on the local Postgres), and a short chaos pass on real parts
//! finds none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use coordinator_mock::chaos::{self, Config, Outcome};
use coordinator_mock::invariants::{Violation, check_pools};
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

fn server() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn url(db: &str) -> String {
    let server = server();
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    format!("{base}/{db}")
}

/// Two processors and a coordinator, freshly migrated and empty.
struct World {
    coordinator: PgPool,
    processors: Vec<(String, PgPool)>,
}

impl World {
    async fn new(name: &str) -> Self {
        let mut admin = PgConnection::connect(&server()).await.unwrap();
        let names = [
            format!("inv_{name}_coordinator"),
            format!("inv_{name}_p1"),
            format!("inv_{name}_p2"),
        ];
        for db in &names {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await
            .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                .execute(&mut admin)
                .await
                .unwrap();
        }
        let coordinator = PgPool::connect(&url(&names[0])).await.unwrap();
        service::db::migrate(
            &coordinator,
            &url(&names[0]),
            &[&link::MIGRATOR, &sqlx::migrate!("./migrations")],
        )
        .await
        .unwrap();
        let mut processors = Vec::new();
        for (i, db) in names[1..].iter().enumerate() {
            let pool = PgPool::connect(&url(db)).await.unwrap();
            processor::db::migrate(&pool, &url(db)).await.unwrap();
            let name = format!("validator-{}", i + 1);
            sqlx::query("INSERT INTO link_state (link_id) VALUES ('coordinator')")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query("INSERT INTO link_state (link_id) VALUES ($1)")
                .bind(&name)
                .execute(&coordinator)
                .await
                .unwrap();
            processors.push((name, pool));
        }
        Self {
            coordinator,
            processors,
        }
    }

    fn p(&self, i: usize) -> &PgPool {
        &self.processors[i].1
    }

    async fn violations(&self) -> Vec<Violation> {
        check_pools(&self.coordinator, &self.processors, None)
            .await
            .expect("the databases answer")
    }
}

/// A message row: (link_id, id, uid, payload) into `table`.
async fn message(pool: &PgPool, table: &str, link: &str, id: i64, uid: &str, payload: &[u8]) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (link_id, id, uid, kind, payload) VALUES ($1, $2, $3, 'test', $4)"
    )))
    .bind(link)
    .bind(id)
    .bind(uid)
    .bind(payload)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn empty_databases_hold_every_invariant() {
    let w = World::new("empty").await;
    assert_eq!(w.violations().await, Vec::new());
}

#[tokio::test]
async fn a_message_acknowledged_but_never_handled_is_missing() {
    let w = World::new("missing").await;
    message(&w.coordinator, "send_log", "validator-1", 1, "m/1", b"one").await;
    sqlx::query(
        "UPDATE link_state SET last_enqueued_out = 1, acked_out = 1 WHERE link_id = 'validator-1'",
    )
    .execute(&w.coordinator)
    .await
    .unwrap();
    let v = w.violations().await;
    assert!(
        v.iter().any(
            |v| matches!(v, Violation::MessageMissing { id: 1, to, .. } if to == "validator-1")
        ),
        "{v:?}"
    );
    // Handled: the violation goes.
    message(w.p(0), "inbox", "coordinator", 1, "m/1", b"one").await;
    assert_eq!(w.violations().await, Vec::new());
}

#[tokio::test]
async fn a_message_handled_twice_or_altered_is_found() {
    let w = World::new("twice").await;
    message(w.p(1), "send_log", "coordinator", 1, "p/1", b"one").await;
    message(w.p(1), "send_log", "coordinator", 2, "p/2", b"two").await;
    // The coordinator handled 1 twice (once under id 3, never sent), and
    // 2 with other bytes.
    message(&w.coordinator, "inbox", "validator-2", 1, "p/1", b"one").await;
    message(&w.coordinator, "inbox", "validator-2", 3, "p/1", b"one").await;
    message(&w.coordinator, "inbox", "validator-2", 2, "p/2", b"TWO").await;
    let v = w.violations().await;
    assert!(
        v.iter().any(|v| matches!(v, Violation::MessageTwice { uid, ids, .. } if uid == "p/1" && ids == &[1, 3])),
        "{v:?}"
    );
    assert!(
        v.iter()
            .any(|v| matches!(v, Violation::MessageNeverSent { id: 3, .. })),
        "{v:?}"
    );
    assert!(
        v.iter().any(
            |v| matches!(v, Violation::MessageAltered { id: 2, from, .. } if from == "validator-2")
        ),
        "{v:?}"
    );
}

fn signing_message(kind: proto::processor_v1::processor_message::Kind) -> Vec<u8> {
    use prost::Message as _;
    proto::processor_v1::ProcessorMessage { kind: Some(kind) }.encode_to_vec()
}

fn sign_id(attempt: u32) -> proto::processor_v1::SignId {
    proto::processor_v1::SignId {
        session: 0,
        kind: proto::processor_v1::SignKind::Batch.into(),
        id: 7u64.to_be_bytes().to_vec(),
        attempt,
    }
}

#[tokio::test]
async fn two_shares_a_reused_nonce_and_an_unrecorded_attempt_are_found() {
    use proto::processor_v1::processor_message::Kind;
    use proto::processor_v1::{SignPreprocess, SignShare};
    let w = World::new("nonces").await;
    let p = w.p(0);
    // Attempt 0 recorded and preprocessed; attempt 1 preprocessed with the
    // same commitment and never recorded; two shares for attempt 0.
    sqlx::query(
        "INSERT INTO sign_attempts (session, kind, id, attempt) VALUES (0, 'batch', $1, 0)",
    )
    .bind(7u64.to_be_bytes().to_vec())
    .execute(p)
    .await
    .unwrap();
    let pre = |attempt| {
        signing_message(Kind::SignPreprocess(SignPreprocess {
            sign_id: Some(sign_id(attempt)),
            preprocess: vec![1; 64],
        }))
    };
    let share = |byte| {
        signing_message(Kind::SignShare(SignShare {
            sign_id: Some(sign_id(0)),
            share: vec![byte; 32],
        }))
    };
    message(p, "send_log", "coordinator", 1, "pre/0", &pre(0)).await;
    message(p, "send_log", "coordinator", 2, "share/0", &share(1)).await;
    message(p, "send_log", "coordinator", 3, "share/0-again", &share(2)).await;
    message(p, "send_log", "coordinator", 4, "pre/1", &pre(1)).await;
    let v = w.violations().await;
    let attempt0 = format!("0/batch/{}/0", hex::encode(7u64.to_be_bytes()));
    let attempt1 = format!("0/batch/{}/1", hex::encode(7u64.to_be_bytes()));
    assert!(
        v.contains(&Violation::TwoShares {
            processor: "validator-1".into(),
            sign_id: attempt0.clone(),
            count: 2
        }),
        "{v:?}"
    );
    assert!(
        v.contains(&Violation::NonceReused {
            processor: "validator-1".into(),
            sign_ids: vec![attempt0.clone(), attempt1.clone()]
        }),
        "{v:?}"
    );
    assert!(
        v.contains(&Violation::AttemptUnrecorded {
            processor: "validator-1".into(),
            sign_id: attempt1
        }),
        "{v:?}"
    );
    // A second preprocess for attempt 0.
    message(p, "send_log", "coordinator", 5, "pre/0-again", &pre(0)).await;
    assert!(
        w.violations()
            .await
            .contains(&Violation::PreprocessedTwice {
                processor: "validator-1".into(),
                sign_id: attempt0,
                count: 2
            })
    );
}

async fn block(p: &PgPool, height: i64) {
    sqlx::query("INSERT INTO finalized_blocks (height, hash, outputs) VALUES ($1, $2, 1)")
        .bind(height)
        .bind(vec![u8::try_from(height).unwrap(); 32])
        .execute(p)
        .await
        .unwrap();
}

async fn output(p: &PgPool, byte: u8, account: i64, minor: i64, amount: i64, status: &str) {
    sqlx::query(
        "INSERT INTO outputs (tx_hash, index_in_tx, session, block_height, account, subaddress_minor,
                              amount, wallet_output, status, output_key)
         VALUES ($1, 0, 0, 10, $2, $3, $4, '\\x00', $5, $1)",
    )
    .bind(vec![byte; 32])
    .bind(account)
    .bind(minor)
    .bind(amount)
    .bind(status)
    .execute(p)
    .await
    .unwrap();
}

#[tokio::test]
async fn unbalanced_books_and_an_output_spent_by_nothing_are_found() {
    let w = World::new("books").await;
    let p = w.p(0);
    block(p, 10).await;
    // 5 deposited; 2 spent by a plan that never completed, 3 unspent: the
    // 2 went nowhere.
    output(p, 1, 1, 0, 3, "included").await;
    output(p, 2, 2, 0, 2, "spent").await;
    let v = w.violations().await;
    assert!(
        v.contains(&Violation::BooksUnbalanced {
            processor: "validator-1".into(),
            session: 0,
            deposits: 5,
            paid: 0,
            fees: 0,
            unspent: 3,
            forwarded_in: 0,
            forwarded_out: 0,
        }),
        "{v:?}"
    );
    assert!(
        v.iter().any(|v| matches!(v, Violation::OutputSpentByNothing { processor, .. } if processor == "validator-1")),
        "{v:?}"
    );
}

#[tokio::test]
async fn books_balance_across_a_forward_and_a_lost_forward_is_found() {
    let w = World::new("forward").await;
    let p = w.p(0);
    block(p, 10).await;
    // Key 0 took in 9 and forwarded it all (fee 1) to key 1, which holds 8.
    output(p, 1, 1, 0, 9, "spent").await;
    let forward = [0xf0_u8; 32];
    sqlx::query(
        r#"INSERT INTO plans (plan_id, session, "window", leader, signable, burn_ids, status, tx_hash, fee)
           VALUES ($1, 0, 1, 1, '\x01', '{}', 'completed', $2, 1)"#,
    )
    .bind(forward.to_vec())
    .bind(vec![0xaa_u8; 32])
    .execute(p)
    .await
    .unwrap();
    sqlx::query("UPDATE outputs SET plan_id = $1")
        .bind(forward.to_vec())
        .execute(p)
        .await
        .unwrap();
    let forwarded = |amount: i64| async move {
        sqlx::query(
            "INSERT INTO outputs (tx_hash, index_in_tx, session, block_height, account, subaddress_minor,
                                  amount, wallet_output, status, output_key)
             VALUES ($1, 0, 1, 10, 0, 2, $2, '\\x00', 'included', $3)",
        )
        .bind(vec![0xaa_u8; 32])
        .bind(amount)
        .bind(vec![0xab_u8; 32])
        .execute(p)
        .await
        .unwrap();
    };
    forwarded(8).await;
    // Only the books matter here (the coordinator never saw this plan).
    let books = |v: Vec<Violation>| {
        v.into_iter()
            .filter(|v| {
                matches!(
                    v,
                    Violation::BooksUnbalanced { .. } | Violation::ForwardShort { .. }
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        books(w.violations().await),
        Vec::new(),
        "a forward between two keys balances"
    );
    // The forward arrived short by 3 at the new key: key 1's books show it.
    sqlx::query("UPDATE outputs SET amount = 5 WHERE session = 1")
        .execute(p)
        .await
        .unwrap();
    let v = w.violations().await;
    assert!(
        v.contains(&Violation::ForwardShort {
            processor: "validator-1".into(),
            plan_id: hex::encode(forward),
            sent: 8,
            arrived: 5,
        }),
        "{v:?}"
    );
}

#[tokio::test]
async fn processors_holding_different_batches_are_found() {
    let w = World::new("batches").await;
    for (i, bytes) in [(0, b"batch".as_slice()), (1, b"other".as_slice())] {
        block(w.p(i), 10).await;
        sqlx::query(
            "INSERT INTO batches (id, session, block_height, block_hash, encoded) VALUES (10, 0, 10, '\\x00', $1)",
        )
        .bind(bytes)
        .execute(w.p(i))
        .await
        .unwrap();
    }
    let v = w.violations().await;
    assert!(
        v.contains(&Violation::BatchDiffers {
            id: 10,
            holders: vec![("validator-1".into(), 0), ("validator-2".into(), 1)]
        }),
        "{v:?}"
    );
    // The coordinator included batch 11 of block 11, which validator-1
    // (a holder of key 0) scanned past without holding it; validator-2
    // scanned past it too but holds no share of key 0 (it joined with a
    // later key), so it never had to report it.
    for i in 0..2 {
        sqlx::query("INSERT INTO scan_cursor (next_height) VALUES (20)")
            .execute(w.p(i))
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO keys (session, threshold, own_index, participant_keys, status)
         VALUES (0, 2, 1, '{}', 'confirmed')",
    )
    .execute(w.p(0))
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO batches (id, session, block_height, encoded, status) VALUES (11, 0, 11, '\\x01', 'included')",
    )
    .execute(&w.coordinator)
    .await
    .unwrap();
    let v = w.violations().await;
    assert!(
        v.contains(&Violation::BatchMissing {
            processor: "validator-1".into(),
            id: 11
        }),
        "{v:?}"
    );
    assert!(
        !v.contains(&Violation::BatchMissing {
            processor: "validator-2".into(),
            id: 11
        }),
        "{v:?}"
    );
    // validator-2 took in a settlement block including its batch 10 but
    // left it proposed (the race chaos seed 204 found).
    sqlx::query("INSERT INTO settlement_blocks (number, included_batch_ids) VALUES (1, '{10}')")
        .execute(w.p(1))
        .await
        .unwrap();
    assert!(w.violations().await.contains(&Violation::BatchNotIncluded {
        processor: "validator-2".into(),
        id: 10,
        status: "proposed".into()
    }));
}

async fn plan(p: &PgPool, signable: &[u8], burns: &[&str], status: &str, tx: u8) {
    sqlx::query(
        r#"INSERT INTO plans (plan_id, session, "window", leader, signable, burn_ids, status, tx_hash, fee)
           VALUES ($1, 0, 1, 1, $2, $3, $4, $5, 0)"#,
    )
    .bind(processor::scheduler::plan::plan_id(signable).to_vec())
    .bind(signable)
    .bind(burns.iter().map(|b| (*b).to_owned()).collect::<Vec<_>>())
    .bind(status)
    .bind(vec![tx; 32])
    .execute(p)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_burn_paid_twice_unpaid_or_altered_and_differing_plans_are_found() {
    let w = World::new("burns").await;
    for b in ["b1", "b2"] {
        sqlx::query("INSERT INTO burns (burn_id, monero_address, amount) VALUES ($1, 'addr', 5)")
            .bind(b)
            .execute(&w.coordinator)
            .await
            .unwrap();
    }
    // Both processors hold burn b1, validator-2 with another amount.
    for (i, amount) in [(0, 5i64), (1, 6)] {
        sqlx::query("INSERT INTO settlement_blocks (number, included_batch_ids) VALUES (1, '{}')")
            .execute(w.p(i))
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO burns (burn_id, block_number, monero_address, amount, status) VALUES ('b1', 1, 'addr', $1, 'paid')",
        )
        .bind(amount)
        .execute(w.p(i))
        .await
        .unwrap();
    }
    // Two different plans, each completed on one processor, pay b1.
    plan(w.p(0), b"plan one", &["b1"], "completed", 1).await;
    plan(w.p(1), b"plan two", &["b1"], "completed", 2).await;
    let v = w.violations().await;
    assert!(
        v.contains(&Violation::BurnPaidTwice {
            burn_id: "b1".into(),
            txs: vec![hex::encode([1; 32]), hex::encode([2; 32])]
        }),
        "{v:?}"
    );
    assert!(
        v.contains(&Violation::BurnUnpaid {
            burn_id: "b2".into()
        }),
        "{v:?}"
    );
    assert!(
        v.iter().any(
            |v| matches!(v, Violation::BurnAltered { processor, burn_id, detail }
            if processor == "validator-2" && burn_id == "b1" && detail.starts_with("held as 6"))
        ),
        "{v:?}"
    );
    // One plan that validator-1 holds for other burns than validator-2.
    plan(w.p(0), b"plan three", &["b2"], "signing", 3).await;
    plan(w.p(1), b"plan three", &["b1", "b2"], "signing", 3).await;
    let id = hex::encode(processor::scheduler::plan::plan_id(b"plan three"));
    assert!(
        w.violations()
            .await
            .iter()
            .any(|v| matches!(v, Violation::PlanDiffers { plan_id, .. } if *plan_id == id))
    );
}

/// Two disturbed runs with fixed seeds: every cycle completes and every
/// invariant holds (the devnet's final checks run the checker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chaos_pass_finds_no_violation() {
    let root = tempfile::tempdir().unwrap();
    let config = Config {
        database_url: server(),
        exe: PathBuf::from(env!("CARGO_BIN_EXE_chaos")),
        work_root: root.path().to_path_buf(),
    };
    let mut faults = 0;
    for seed in [1, 2] {
        let report = chaos::run_once(&config, seed, CancellationToken::new()).await;
        println!("{report}");
        assert!(
            matches!(report.outcome, Outcome::Passed),
            "run with seed {seed} did not pass: {report}"
        );
        faults += report.faults.total();
    }
    assert!(faults > 0, "the schedule injected no fault at all");
}
