//! Payout liveness against one faulty participant (issue 13, items 2 and
//! 3): a proposal for a window far beyond the chain, a payout its signers
//! never publish, and a ring with a tampered decoy each get a clear outcome,
//! and a later burn is still paid, exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::deposits::*;
use common::monero::*;
use common::payouts::*;
use common::*;
use sqlx::PgPool;

const SCHEDULER: &[(&str, &str)] = &[
    ("PROCESSOR_SCHEDULER__WINDOW_BLOCKS", "4"),
    ("PROCESSOR_SCHEDULER__REPUBLISH_INTERVAL", "2s"),
];

/// A processor's plan: (id, signable, window, status, reason).
type PlanRow = (Vec<u8>, Vec<u8>, i64, String, String);

/// Deposits, waits for the batch to be included, then queues `burns` in the
/// next settlement block.
async fn fund(setup: &Setup, burns: &[(&str, &str, u64)]) {
    setup.deposit(1_000_000_000_000, 600_000_000_000).await;
    setup.monerod.mine(&elsewhere(), 3).await;
    setup.wait_included(1).await;
    for (id, address, amount) in burns {
        coordinator_mock::payouts::submit_burn(
            &setup.cluster.coordinator.pool,
            id,
            address,
            *amount,
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

/// The completed plan paying `burn` at the coordinator: (plan id, tx hash).
async fn completed_paying(pool: &PgPool, burn: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    sqlx::query_as(
        "SELECT plan_id, tx_hash FROM plans WHERE status = 'completed' AND $1 = ANY(burn_ids)",
    )
    .bind(burn)
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// `processor`'s index in the newest key at the coordinator.
async fn participant_index(pool: &PgPool, processor: &str) -> i32 {
    sqlx::query_scalar(
        "SELECT idx FROM keygen_participants WHERE processor = $1 ORDER BY session DESC LIMIT 1",
    )
    .bind(processor)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Faults at the coordinator: (reporter, accused processor, detail).
async fn faults(pool: &PgPool, kind: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT f.reporter, k.processor, f.detail FROM faults f
         JOIN keygen_participants k ON k.session = f.session AND k.idx = f.accused
         WHERE f.kind = $1 ORDER BY f.id",
    )
    .bind(kind)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// One participant (validator-2) sends a proposal for a window a million
/// windows ahead, and the first payout is never published by any signer.
/// Before: the proposal waited forever, every leader marked its window
/// busy, and the unpublished payout blocked every later one. Now the
/// proposal is refused at once with a fault naming validator-2, the
/// unpublished payout is abandoned after PLAN_LIFETIME_BLOCKS, and its burn
/// is paid by a successor that spends one of its inputs, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_proposal_and_a_payout_never_mined_do_not_stop_payouts() {
    let setup = Setup::start_with("byzlive", 2, SCHEDULER, |_| {
        Some("scheduler-withhold-first-payout=return")
    })
    .await;
    let pool = setup.cluster.coordinator.pool.clone();

    // validator-2's bogus proposal, relayed by the coordinator as any other.
    let (session, index): (i64, i32) = sqlx::query_as(
        "SELECT session, idx FROM keygen_participants WHERE processor = 'validator-2'
         ORDER BY session DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(session, 0);
    let bogus = [0xb0_u8; 32];
    let mut tx = pool.begin().await.unwrap();
    coordinator_mock::payouts::proposal(
        &mut tx,
        "validator-2",
        proto::processor_v1::PlanProposal {
            window: 1_000_000,
            leader_index: u32::try_from(index).unwrap(),
            plan_id: bogus.to_vec(),
            signable_transaction: vec![1, 2, 3],
            burn_ids: vec![],
            // The coordinator fills in the key from the leader's newest.
            session: None,
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let (to, minor) = user_subaddress(&setup).await;
    let amount = 300_000_000_000;
    fund(&setup, &[("burn-live", &to, amount)]).await;

    let (plan_id, tx_hash) = mine_until(
        &setup,
        "the burn paid despite the bogus proposal and the withheld payout",
        Duration::from_secs(480),
        || completed_paying(&pool, "burn-live"),
    )
    .await;

    // The far-future proposal: refused by every processor, naming validator-2.
    let refused = faults(&pool, "plan-refused").await;
    let about_bogus: Vec<_> = refused
        .iter()
        .filter(|f| f.2.contains(&hex::encode(bogus)))
        .collect();
    assert!(about_bogus.len() >= 2, "{refused:?}");
    for (_, accused, detail) in &about_bogus {
        assert_eq!(accused, "validator-2", "{detail}");
        assert!(detail.contains("no leader has finalized it"), "{detail}");
    }

    // Every processor abandoned the withheld payout, and the one that paid
    // the burn spends one of its inputs: at most one of them can be mined.
    for db in &setup.cluster.dbs {
        let p = db.pool().await;
        let (successor, successor_window): (Vec<u8>, i64) = eventually(
            "the successor is completed here too",
            Duration::from_secs(30),
            || async {
                sqlx::query_as(
                    "SELECT signable, \"window\" FROM plans WHERE plan_id = $1 AND status = 'completed'",
                )
                .bind(&plan_id)
                .fetch_optional(&p)
                .await
                .unwrap()
            },
        )
        .await;
        // The withheld payout: abandoned once its lifetime ended (the
        // successor was planned no earlier), then closed for good when the
        // successor, sharing an input, became final.
        let abandoned: Vec<PlanRow> = sqlx::query_as(
            "SELECT plan_id, signable, \"window\", status, reason FROM plans
             WHERE 'burn-live' = ANY(burn_ids) AND plan_id <> $1",
        )
        .bind(&plan_id)
        .fetch_all(&p)
        .await
        .unwrap();
        assert_eq!(abandoned.len(), 1, "one withheld payout: {abandoned:?}");
        assert_eq!(abandoned[0].3, "superseded", "{abandoned:?}");
        assert_eq!(abandoned[0].4, "a conflicting payout is final");
        let lifetime = i64::try_from(processor::scheduler::PLAN_LIFETIME_BLOCKS).unwrap();
        assert!(
            successor_window * 4 >= abandoned[0].2 * 4 + lifetime,
            "the successor (window {successor_window}) was planned only after the withheld \
             payout's lifetime (window {}) ended",
            abandoned[0].2
        );
        let old = processor::scheduler::plan::inputs_of(&abandoned[0].1).unwrap();
        let new = processor::scheduler::plan::inputs_of(&successor).unwrap();
        assert!(
            new.iter().any(|n| old.iter().any(|o| o.key() == n.key())),
            "the successor spends an input of the abandoned payout"
        );
        let bogus_status: String =
            sqlx::query_scalar("SELECT status FROM plans WHERE plan_id = $1")
                .bind(bogus.as_slice())
                .fetch_one(&p)
                .await
                .unwrap();
        assert_eq!(bogus_status, "refused");
    }

    // Paid exactly once.
    setup.monerod.mine(&elsewhere(), 2).await;
    assert_eq!(
        received(&setup, minor).await,
        vec![(hex::encode(tx_hash), amount)]
    );
}

/// Every processor, the first time it leads, swaps two decoys of its plan's
/// first ring: the transaction rebuilds identically, but monerod would
/// refuse it. Before: followers signed it and it was republished forever,
/// blocking every later payout. Now every follower checks each ring member
/// against its own daemon, refuses with a fault naming the leader, signs
/// nothing for it, and a later honest plan pays the burn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_proposing_a_tampered_decoy_is_refused_and_payouts_continue() {
    let setup = Setup::start_with("byzdecoy", 2, SCHEDULER, |_| {
        Some("scheduler-bad-decoy=1*return")
    })
    .await;
    let pool = setup.cluster.coordinator.pool.clone();
    let (to, minor) = user_subaddress(&setup).await;
    let amount = 200_000_000_000;
    fund(&setup, &[("burn-ring", &to, amount)]).await;

    let (plan_id, tx_hash) = mine_until(
        &setup,
        "the burn paid by an honest plan",
        Duration::from_secs(360),
        || completed_paying(&pool, "burn-ring"),
    )
    .await;

    // The first plan was tampered with: refused by its followers, naming
    // its leader, with the ring member that is wrong.
    let first: (Vec<u8>, String) =
        sqlx::query_as("SELECT plan_id, leader FROM plans ORDER BY seq LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_ne!(first.0, plan_id, "the first plan was not the one paid");
    let refused = faults(&pool, "plan-refused").await;
    let about_first: Vec<_> = refused
        .iter()
        .filter(|f| f.2.contains(&hex::encode(&first.0)))
        .collect();
    assert!(
        about_first.iter().filter(|f| f.0 != first.1).count() >= 2,
        "both followers refuse: {refused:?}"
    );
    for (_, accused, detail) in &about_first {
        assert_eq!(accused, &first.1, "the fault names the leader");
        assert!(
            detail.contains("a ring monerod would refuse") && detail.contains("ring member"),
            "{detail}"
        );
    }
    // Nothing was signed for a tampered plan.
    let shared_for_refused: i64 = scalar_i64(
        &pool,
        "SELECT count(*) FROM sign_shares s JOIN plans p ON s.kind = 'plan' AND s.id = p.seq
         WHERE p.status <> 'completed'",
    )
    .await;
    assert_eq!(shared_for_refused, 0);

    // Paid exactly once.
    setup.monerod.mine(&elsewhere(), 2).await;
    assert_eq!(
        received(&setup, minor).await,
        vec![(hex::encode(tx_hash), amount)]
    );
}

/// One participant (validator-1) answers every plan attempt with an invalid
/// CLSAG share and withholds the transaction, and its preprocess always
/// arrives first (the others' are slowed). The coordinator cannot check a
/// CLSAG share, so its blame is `unverified` and bans nobody. Before, the
/// first t to preprocess signed, so validator-1 was in every attempt and the
/// burn was never paid. Now an unverified blame makes accuser and accused a
/// pair never chosen together again: validator-1 is in at most one attempt
/// with each honest signer, the honest pair signs, the burn is paid once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_sending_invalid_clsag_shares_cannot_stall_payouts() {
    let setup = Setup::start_with("byzclsag", 2, SCHEDULER, |i| {
        Some(if i == 0 {
            "plan-signer-corrupt-share=return"
        } else {
            "plan-signer-slow-preprocess=return(1500)"
        })
    })
    .await;
    let pool = setup.cluster.coordinator.pool.clone();
    let index = participant_index(&pool, "validator-1").await;
    let (to, minor) = user_subaddress(&setup).await;
    let amount = 220_000_000_000;
    fund(&setup, &[("burn-clsag", &to, amount)]).await;
    let (_, tx_hash) = mine_until(
        &setup,
        "the burn paid by the honest signers",
        Duration::from_secs(480),
        || completed_paying(&pool, "burn-clsag"),
    )
    .await;
    setup.monerod.mine(&elsewhere(), 2).await;
    assert_eq!(
        received(&setup, minor).await,
        vec![(hex::encode(tx_hash), amount)]
    );

    // Its invalid shares were caught by the honest signers, as unverified
    // blame naming it; nobody was banned for them.
    let blames: Vec<(String, i32, String, Option<i32>)> = sqlx::query_as(
        "SELECT accuser, accused, verdict, culprit FROM sign_blames WHERE kind = 'plan'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        blames
            .iter()
            .any(|(_, accused, verdict, _)| *accused == index && verdict == "unverified"),
        "an honest signer blamed validator-1's CLSAG share: {blames:?}"
    );
    assert!(
        blames.iter().all(|(_, _, _, culprit)| culprit.is_none()),
        "an unverifiable blame bans nobody: {blames:?}"
    );
    // Each honest signer shared at most one attempt with it.
    let with_it: i64 = scalar_i64(
        &pool,
        &format!(
            "SELECT count(*) FROM sign_attempts WHERE kind = 'plan' AND {index} = ANY(signers)"
        ),
    )
    .await;
    assert!(
        (1..=2).contains(&with_it),
        "validator-1 signs in one attempt per honest partner at most, not {with_it}"
    );
}

/// A leader relays a second, conflicting proposal for the window it already
/// proposed (same burns, another plan id), as a Byzantine leader sending
/// different proposals to different peers would look after its coordinator
/// serialized them. Every processor decides both in relay order, the same
/// way: the first is signed and paid, the second is never signed, with the
/// same status and reason everywhere, and the burn is paid once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_conflicting_proposal_for_a_window_is_decided_alike_everywhere_and_never_signed() {
    let setup = Setup::start_with("byztwice", 2, SCHEDULER, |_| None).await;
    let pool = setup.cluster.coordinator.pool.clone();
    let (to, minor) = user_subaddress(&setup).await;
    let amount = 210_000_000_000;
    fund(&setup, &[("burn-twice", &to, amount)]).await;

    // The honest proposal, as the coordinator relayed it.
    let (first, window, leader, signable): (Vec<u8>, i64, String, Vec<u8>) = mine_until(
        &setup,
        "the leader's proposal",
        Duration::from_secs(240),
        || async {
            sqlx::query_as(
                "SELECT plan_id, \"window\", leader, signable FROM plans
                 WHERE 'burn-twice' = ANY(burn_ids) ORDER BY seq LIMIT 1",
            )
            .fetch_optional(&pool)
            .await
            .unwrap()
        },
    )
    .await;
    let index = participant_index(&pool, &leader).await;
    let second = [0x2b_u8; 32];
    let mut tx = pool.begin().await.unwrap();
    coordinator_mock::payouts::proposal(
        &mut tx,
        &leader,
        proto::processor_v1::PlanProposal {
            window: u64::try_from(window).unwrap(),
            leader_index: u32::try_from(index).unwrap(),
            plan_id: second.to_vec(),
            signable_transaction: signable,
            burn_ids: vec!["burn-twice".into()],
            // The coordinator fills in the key from the leader's newest.
            session: None,
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let (paid, tx_hash) = mine_until(&setup, "the burn paid", Duration::from_secs(360), || {
        completed_paying(&pool, "burn-twice")
    })
    .await;
    assert_eq!(paid, first, "the proposal relayed first is the one paid");

    // Decided alike everywhere, and never signed. Received but not yet
    // checked ('received', or 'waiting' for its window) is not a decision:
    // each processor checks in its own time.
    let mut outcomes = Vec::new();
    for db in &setup.cluster.dbs {
        let p = db.pool().await;
        let outcome: (String, Option<String>) = eventually(
            "the conflicting proposal decided here",
            Duration::from_secs(60),
            || async {
                let row: Option<(String, Option<String>)> =
                    sqlx::query_as("SELECT status, reason FROM plans WHERE plan_id = $1")
                        .bind(second.as_slice())
                        .fetch_optional(&p)
                        .await
                        .unwrap();
                row.filter(|(status, _)| !["received", "waiting"].contains(&status.as_str()))
            },
        )
        .await;
        outcomes.push(outcome);
    }
    assert!(
        outcomes.windows(2).all(|w| w[0] == w[1]),
        "every processor decides the second proposal the same way: {outcomes:?}"
    );
    assert!(
        !["signing", "completed", "published"].contains(&outcomes[0].0.as_str()),
        "the second proposal is never taken: {outcomes:?}"
    );
    let shared: i64 = scalar_i64(
        &pool,
        &format!(
            "SELECT count(*) FROM sign_shares s JOIN plans p ON s.kind = 'plan' AND s.id = p.seq
             WHERE p.plan_id = '\\x{}'",
            hex::encode(second)
        ),
    )
    .await;
    assert_eq!(shared, 0, "nothing was signed for it");

    setup.monerod.mine(&elsewhere(), 2).await;
    assert_eq!(
        received(&setup, minor).await,
        vec![(hex::encode(tx_hash), amount)]
    );
}

/// The lifetime rule on its own, on a real database: at the block that ends
/// a window's lifetime every plan of it that is not final ends, in the same
/// way whatever this processor's timing; one that was being signed here
/// gives back its burns; a proposal records the settlement horizon it was
/// relayed under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_end_at_their_lifetime_and_give_back_what_they_reserved() {
    use processor::scheduler::db;
    let test_db = TestDb::new("lifetime").await;
    let pool = processor::db::connect(&test_db.url, 2).await.unwrap();
    processor::db::migrate(&pool, &test_db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO settlement_blocks (number, included_batch_ids, monero_horizon) VALUES (1, '{}', 120)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO burns (burn_id, block_number, monero_address, amount, status)
         VALUES ('b-signing', 1, 'x', 5, 'queued'), ('b-waiting', 1, 'x', 5, 'queued')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let statuses = [
        ("proposed", 10),
        ("received", 10),
        ("waiting", 10),
        ("signing", 10),
        ("signed", 10),
        ("published", 10),
        ("completed", 10),
        ("refused", 10),
        ("signing", 11),
    ];
    let mut ids = Vec::new();
    for (i, (status, window)) in statuses.iter().enumerate() {
        let id = [u8::try_from(i).unwrap() + 1; 32];
        let burns = if i == 3 {
            vec!["b-signing".to_owned()]
        } else {
            vec![]
        };
        db::insert_plan(
            &mut conn,
            &id,
            0,
            *window,
            1,
            b"plan",
            &burns,
            db::PlanStatus::Received,
        )
        .await
        .unwrap();
        db::set_plan_status(&mut conn, &id, db::PlanStatus::parse(status).unwrap(), None)
            .await
            .unwrap();
        ids.push(id);
    }
    sqlx::query("UPDATE burns SET status = 'planned', plan_id = $1 WHERE burn_id = 'b-signing'")
        .bind(ids[3].as_slice())
        .execute(&mut *conn)
        .await
        .unwrap();
    let relayed = db::lock_plan(&mut conn, &ids[1]).await.unwrap().unwrap();
    assert_eq!(
        relayed.relay_horizon,
        Some(120),
        "the horizon it was relayed under"
    );

    // Windows of 4 blocks: window 10 starts at block 40, so its plans end at
    // finalized block 40 + PLAN_LIFETIME_BLOCKS; window 11's later.
    let end = 40 + processor::scheduler::PLAN_LIFETIME_BLOCKS;
    let ended = db::expire_plans(
        &mut conn,
        0,
        (end - 1 - processor::scheduler::PLAN_LIFETIME_BLOCKS) / 4,
        end - 1,
    )
    .await
    .unwrap();
    assert_eq!(ended.len(), 0, "not one block early");
    let ended = db::expire_plans(
        &mut conn,
        0,
        (end - processor::scheduler::PLAN_LIFETIME_BLOCKS) / 4,
        end,
    )
    .await
    .unwrap();
    assert_eq!(ended.len(), 6, "{ended:?}");
    let mut now = Vec::new();
    for id in &ids {
        now.push(
            db::lock_plan(&mut conn, id)
                .await
                .unwrap()
                .unwrap()
                .status
                .as_str(),
        );
    }
    assert_eq!(
        now,
        [
            "expired",
            "expired",
            "expired",
            "abandoned",
            "abandoned",
            "abandoned",
            "completed",
            "refused",
            "signing"
        ]
    );
    let burn: (String, Option<Vec<u8>>) =
        sqlx::query_as("SELECT status, plan_id FROM burns WHERE burn_id = 'b-signing'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        burn,
        ("queued".to_owned(), None),
        "the burn is queued again"
    );
    let naming = db::abandoned_plans_naming(&mut conn, 0, &["b-signing".to_owned()])
        .await
        .unwrap();
    assert_eq!(naming.len(), 1, "a successor must conflict with it");
    assert_eq!(naming[0].0, ids[3].to_vec());
}

/// A final payout closes only the conflicting plans this processor had
/// accepted. A refusal or an expiry already recorded stays, and a proposal
/// not yet checked is left to its check: otherwise a plan's final state
/// would depend on whether this processor happened to check it before or
/// after scanning the completing block, and two processors would disagree
/// (as the conflicting-proposal test once saw: 'refused' on one,
/// 'superseded' on another).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_payout_supersedes_only_what_this_processor_accepted() {
    use processor::scheduler::db;
    let test_db = TestDb::new("supersede").await;
    let pool = processor::db::connect(&test_db.url, 2).await.unwrap();
    processor::db::migrate(&pool, &test_db.url).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let statuses = [
        "received",
        "waiting",
        "refused",
        "expired",
        "signing",
        "signed",
        "published",
        "abandoned",
    ];
    let mut ids = Vec::new();
    for (i, status) in statuses.iter().enumerate() {
        let id = [u8::try_from(i).unwrap() + 1; 32];
        db::insert_plan(
            &mut conn,
            &id,
            0,
            10,
            1,
            b"plan",
            &[],
            db::PlanStatus::Received,
        )
        .await
        .unwrap();
        db::set_plan_status(
            &mut conn,
            &id,
            db::PlanStatus::parse(status).unwrap(),
            Some("as decided here"),
        )
        .await
        .unwrap();
        let _ = db::release(&mut conn, &id).await.unwrap();
        ids.push(id);
    }
    let mut now = Vec::new();
    for id in &ids {
        let plan = db::lock_plan(&mut conn, id).await.unwrap().unwrap();
        now.push((
            plan.status.as_str().to_owned(),
            plan.reason.unwrap_or_default(),
        ));
    }
    let kept = |s: &str| (s.to_owned(), "as decided here".to_owned());
    let closed = || {
        (
            "superseded".to_owned(),
            "a conflicting payout is final".to_owned(),
        )
    };
    assert_eq!(
        now,
        [
            kept("received"),
            kept("waiting"),
            kept("refused"),
            kept("expired"),
            closed(),
            closed(),
            closed(),
            closed(),
        ]
    );
}

/// Two relayed proposals with the same transaction, handled in one inbound
/// batch (one transaction, so one `created_at`): the one relayed first is
/// the one a final block completes, on every processor, even after the
/// other's row was updated (here: the first accepted for signing, which
/// moves its row). Ordered by `created_at`, the second came first, and one
/// processor completed the conflicting proposal while the others refused
/// it (the conflicting-proposal test's intermittent failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_are_matched_on_chain_in_relay_order() {
    use processor::scheduler::db;
    let test_db = TestDb::new("relayorder").await;
    let pool = processor::db::connect(&test_db.url, 2).await.unwrap();
    processor::db::migrate(&pool, &test_db.url).await.unwrap();
    let (first, second) = ([0xf0_u8; 32], [0x0f_u8; 32]);
    let mut tx = pool.begin().await.unwrap();
    for id in [first, second] {
        db::insert_plan(
            &mut tx,
            &id,
            0,
            10,
            1,
            b"same",
            &[],
            db::PlanStatus::Received,
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    db::set_plan_status(&mut conn, &first, db::PlanStatus::Signing, None)
        .await
        .unwrap();
    db::set_plan_status(&mut conn, &second, db::PlanStatus::Refused, Some("bad"))
        .await
        .unwrap();
    db::set_plan_status(&mut conn, &first, db::PlanStatus::Signed, None)
        .await
        .unwrap();
    let open: Vec<Vec<u8>> = db::open_plans(&mut conn, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert_eq!(open, [first.to_vec(), second.to_vec()]);
}

/// The Byzantine participant mode: validator-1 does every kind of
/// misbehaviour it has at once, for the whole run (failpoints
/// `signer-corrupt-share`, `signer-false-blame`, `scheduler-bad-decoy`, and
/// a far-future proposal relayed under its name). Each gets its named
/// outcome at the coordinator - a corrupt share is proven and bans it, its
/// false blames land on itself, its plans are refused naming it - and the
/// honest majority (2 of 3) still batches the deposits and pays the burn,
/// exactly once, with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byzantine_participant_doing_everything_at_once_cannot_stop_the_others() {
    let setup = Setup::start_with("byzall", 2, SCHEDULER, |i| {
        (i == 0).then_some(
            "signer-corrupt-share=return;signer-false-blame=return;scheduler-bad-decoy=return",
        )
    })
    .await;
    let pool = setup.cluster.coordinator.pool.clone();
    let index = participant_index(&pool, "validator-1").await;
    let bogus = [0xb3_u8; 32];
    let mut tx = pool.begin().await.unwrap();
    coordinator_mock::payouts::proposal(
        &mut tx,
        "validator-1",
        proto::processor_v1::PlanProposal {
            window: 5_000_000,
            leader_index: u32::try_from(index).unwrap(),
            plan_id: bogus.to_vec(),
            signable_transaction: vec![7; 64],
            burn_ids: vec!["burn-byz".into()],
            // The coordinator fills in the key from the leader's newest.
            session: None,
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let (to, minor) = user_subaddress(&setup).await;
    let amount = 250_000_000_000;
    fund(&setup, &[("burn-byz", &to, amount)]).await;
    let (_, tx_hash) = mine_until(
        &setup,
        "the burn paid by the honest majority",
        Duration::from_secs(480),
        || completed_paying(&pool, "burn-byz"),
    )
    .await;

    // Paid exactly once, to the right address and amount.
    setup.monerod.mine(&elsewhere(), 2).await;
    assert_eq!(
        received(&setup, minor).await,
        vec![(hex::encode(tx_hash), amount)]
    );

    // Blame: only validator-1 is ever found at fault; an honest signer is
    // never banned, whoever accused it.
    let culprits: Vec<(String, Option<i32>)> =
        sqlx::query_as("SELECT verdict, culprit FROM sign_blames ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        culprits
            .iter()
            .all(|(_, c)| c.is_none() || *c == Some(index)),
        "only the Byzantine participant is a culprit: {culprits:?}"
    );
    // Signers are the first t whose preprocesses arrive, so whether
    // validator-1 was chosen for a batch is up to timing; when it was, its
    // invalid share was proven.
    let chosen: i64 = scalar_i64(
        &pool,
        &format!(
            "SELECT count(*) FROM sign_attempts WHERE kind = 'batch' AND {index} = ANY(signers)"
        ),
    )
    .await;
    if chosen > 0 {
        assert!(
            culprits
                .iter()
                .any(|(v, c)| v == "proven" && *c == Some(index)),
            "chosen {chosen} times, its invalid share must be proven: {culprits:?}"
        );
    }
    // Plans it led (and the far-future one) are refused naming it; no
    // honest leader's plan is refused.
    let refused = faults(&pool, "plan-refused").await;
    assert!(
        refused
            .iter()
            .any(|f| f.1 == "validator-1" && f.2.contains(&hex::encode(bogus))),
        "the far-future proposal is refused naming validator-1: {refused:?}"
    );
    for (reporter, accused, detail) in &refused {
        if reporter != "validator-1" {
            assert_eq!(accused, "validator-1", "{detail}");
        }
    }

    // Nothing lost: every honest processor holds the same batch and
    // counts deposits = paid + fees + unspent exactly once the change is in.
    let mut batches = Vec::new();
    for db in &setup.cluster.dbs[1..] {
        let p = db.pool().await;
        batches.push(
            sqlx::query_scalar::<_, Vec<u8>>("SELECT encoded FROM batches ORDER BY id")
                .fetch_all(&p)
                .await
                .unwrap(),
        );
        eventually("the honest processor's books balance", Duration::from_secs(60), || async {
            let deposits = scalar_i64(&p, "SELECT COALESCE(sum(amount), 0)::bigint FROM outputs WHERE account > 0 AND status <> 'received'").await;
            let paid = scalar_i64(&p, "SELECT COALESCE(sum(amount), 0)::bigint FROM burns WHERE status = 'paid'").await;
            let fees = scalar_i64(&p, "SELECT COALESCE(sum(fee), 0)::bigint FROM plans WHERE status = 'completed'").await;
            let unspent = scalar_i64(&p, "SELECT COALESCE(sum(amount), 0)::bigint FROM outputs WHERE status IN ('included', 'reserved') AND (account > 0 OR subaddress_minor = 1)").await;
            (paid == i64::try_from(amount).unwrap() && deposits == paid + fees + unspent).then_some(())
        })
        .await;
    }
    assert_eq!(
        batches[0], batches[1],
        "the honest processors' batches are byte-identical"
    );
    assert_eq!(batches[0].len(), 1);
}
