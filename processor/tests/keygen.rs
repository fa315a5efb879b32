//! Threshold key generation end to end: real processors (child processes),
//! the coordinator-mock driving rounds, real Postgres, monero-wallet-rpc
//! checking the address, ed25519-dalek checking a threshold signature.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::cluster::*;
use common::monero::*;
use common::*;
use processor::keystore::{Kek, Keystore};
use sqlx::{PgPool, Row};

/// Opens processor `i`'s key package with its KEK, as the keystore would.
async fn key_package(
    pool: &PgPool,
    kek: &Path,
    session: i64,
) -> (
    frost_ed25519::keys::KeyPackage,
    frost_ed25519::keys::PublicKeyPackage,
) {
    let keystore = Keystore::open_with(pool, Kek::from_file(kek).unwrap())
        .await
        .unwrap();
    let r =
        sqlx::query("SELECT sealed_key_package, public_key_package FROM keys WHERE session = $1")
            .bind(session)
            .fetch_one(pool)
            .await
            .unwrap();
    let sealed: Vec<u8> = r.get(0);
    let public: Vec<u8> = r.get(1);
    (
        keystore
            .open_key_package(u64::try_from(session).unwrap(), &sealed)
            .unwrap(),
        frost_ed25519::keys::PublicKeyPackage::deserialize(&public).unwrap(),
    )
}

async fn check_dkg(t: u32, n: usize, wallet: &WalletRpc) {
    let cluster = Cluster::start(&format!("dkg{n}_"), n, |_| vec![]).await;
    let session = cluster.coordinator.start_keygen(t, &[]).await.unwrap();
    let status = cluster.wait_status(session, "confirmed").await;
    assert_eq!(status.participants.len(), n);

    // Every processor holds the same confirmed key and address.
    let mut seen = Vec::new();
    for db in &cluster.dbs {
        let pool = db.pool().await;
        eventually(
            "the processor took the confirmation in",
            Duration::from_secs(20),
            || async { (key_row(&pool, 0).await.0 == "confirmed").then_some(()) },
        )
        .await;
        seen.push(key_row(&pool, 0).await);
    }
    let (_, group_key, address) = seen[0].clone();
    assert!(
        seen.iter().all(|s| s.1 == group_key && s.2 == address),
        "{seen:?}"
    );
    assert_eq!(hex::encode(&group_key), status.group_key);
    assert_eq!(address, status.monero_address);

    // An operator sees the same with grpcurl.
    let out = std::process::Command::new(grpcurl())
        .args(["-plaintext", "-emit-defaults"])
        .arg(format!("127.0.0.1:{}", cluster.ports[0]))
        .arg("processor.v1.ProcessorAdmin/ListKeys")
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        listed.contains(&format!("\"groupKey\": \"{}\"", hex::encode(&group_key))),
        "{listed}"
    );
    assert!(
        listed.contains(&format!("\"moneroAddress\": \"{address}\"")),
        "{listed}"
    );
    assert!(listed.contains("\"status\": \"confirmed\""), "{listed}");
    assert!(listed.contains(&format!("\"threshold\": {t}")), "{listed}");

    // monero-wallet-rpc accepts the address as a mainnet standard address.
    let answer = wallet
        .call(
            "validate_address",
            serde_json::json!({"address": address, "any_net_type": true}),
        )
        .await;
    assert_eq!(answer["valid"], true, "{answer}");
    assert_eq!(answer["nettype"], "mainnet", "{answer}");
    assert_eq!(answer["subaddress"], false, "{answer}");
    let mut broken = address.clone();
    broken.replace_range(10..11, if &address[10..11] == "a" { "b" } else { "a" });
    let answer = wallet
        .call(
            "validate_address",
            serde_json::json!({"address": broken, "any_net_type": true}),
        )
        .await;
    assert_eq!(
        answer["valid"], false,
        "a corrupted address must be refused: {answer}"
    );

    // A deposit account, registered once through the coordinator, has the
    // same subaddress on every processor; the wallet accepts it.
    if n == 3 {
        assert!(cluster.coordinator.register_account(7).await.unwrap().0);
        assert!(
            !cluster.coordinator.register_account(7).await.unwrap().0,
            "idempotent"
        );
        let mut addresses = Vec::new();
        for port in &cluster.ports {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
            let mut admin =
                proto::processor_v1::processor_admin_client::ProcessorAdminClient::new(channel);
            let deposit = eventually(
                "the account reaches the processor",
                Duration::from_secs(20),
                || {
                    let mut admin = admin.clone();
                    async move {
                        admin
                            .get_deposit_address(proto::processor_v1::DepositAddressRequest {
                                account: 7,
                            })
                            .await
                            .ok()
                            .map(|r| r.into_inner())
                    }
                },
            )
            .await;
            assert_eq!((deposit.account, deposit.session), (7, 0));
            addresses.push(deposit.address);
            let missing = admin
                .get_deposit_address(proto::processor_v1::DepositAddressRequest { account: 8 })
                .await
                .expect_err("account 8 is not registered");
            assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
            let zero = admin
                .get_deposit_address(proto::processor_v1::DepositAddressRequest { account: 0 })
                .await
                .expect_err("account 0 is reserved");
            assert_eq!(zero.code(), tonic::Code::InvalidArgument, "{zero:?}");
        }
        assert!(
            addresses.iter().all(|a| *a == addresses[0]),
            "{addresses:?}"
        );
        assert_ne!(addresses[0], address);
        let answer = wallet
            .call(
                "validate_address",
                serde_json::json!({"address": addresses[0], "any_net_type": true}),
            )
            .await;
        assert_eq!(answer["valid"], true, "{answer}");
        assert_eq!(answer["subaddress"], true, "{answer}");
        for db in &cluster.dbs {
            assert_eq!(
                scalar_i64(&db.pool().await, "SELECT count(*) FROM accounts").await,
                1
            );
        }
    }

    // A later session's key is generated while session 0 stays active.
    if n == 3 {
        let next = cluster.coordinator.start_keygen(2, &[]).await.unwrap();
        assert_eq!(next, 1);
        let second = cluster.wait_status(next, "confirmed").await;
        assert_ne!(second.group_key, status.group_key);
        let pool = cluster.dbs[0].pool().await;
        eventually("session 1 confirmed", Duration::from_secs(20), || async {
            (key_row(&pool, 1).await.0 == "confirmed").then_some(())
        })
        .await;
        assert_eq!(key_row(&pool, 0).await.0, "confirmed");
    }

    // The last t processors sign with FROST; a standard Ed25519 verifier
    // accepts the signature under the group key.
    let mut packages = BTreeMap::new();
    let mut public = None;
    for i in (n - t as usize)..n {
        let pool = cluster.dbs[i].pool().await;
        let (kp, pkp) = key_package(&pool, &cluster.kek(i), 0).await;
        packages.insert(*kp.identifier(), kp);
        public = Some(pkp);
    }
    let public = public.unwrap();
    let message = b"batch 0 of session 0";
    let mut nonces = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for (id, kp) in &packages {
        let (nonce, commitment) =
            frost_ed25519::round1::commit(kp.signing_share(), &mut rand::thread_rng());
        nonces.insert(*id, nonce);
        commitments.insert(*id, commitment);
    }
    let signing = frost_ed25519::SigningPackage::new(commitments, message);
    let mut shares = BTreeMap::new();
    for (id, kp) in &packages {
        shares.insert(
            *id,
            frost_ed25519::round2::sign(&signing, &nonces[id], kp).unwrap(),
        );
    }
    let signature = frost_ed25519::aggregate(&signing, &shares, &public).unwrap();
    let bytes: [u8; 64] = signature.serialize().unwrap().try_into().unwrap();
    let key =
        ed25519_dalek::VerifyingKey::from_bytes(&group_key.clone().try_into().unwrap()).unwrap();
    let sig = ed25519_dalek::Signature::from_bytes(&bytes);
    key.verify_strict(message, &sig)
        .expect("the threshold signature verifies");
    assert!(key.verify_strict(b"another message", &sig).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkg_2_of_3_and_5_of_7_through_the_coordinator() {
    let wallet_dir = tempfile::tempdir().unwrap();
    let wallet = WalletRpc::start(wallet_dir.path()).await;
    check_dkg(2, 3, &wallet).await;
    check_dkg(5, 7, &wallet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_rounds_finishes_the_same_dkg() {
    // Processor 2 commits round 1 and stops before acknowledging it.
    let mut cluster = Cluster::start("dkgkill", 3, |i| {
        if i == 1 {
            vec![("FAILPOINTS", "link-after-commit=return")]
        } else {
            vec![]
        }
    })
    .await;
    let session = cluster.coordinator.start_keygen(2, &[]).await.unwrap();
    // Everyone's round 1 (processor 2's included, sent by its pump) is in.
    cluster.wait_status(session, "round2").await;
    let p2 = cluster.dbs[1].pool().await;
    assert_eq!(key_row(&p2, 0).await.0, "round1");
    cluster.procs[1].as_mut().unwrap().kill9();

    let dir = cluster.dir.path().to_path_buf();
    cluster.procs[1] = Some(spawn_processor(
        &name(1),
        &dir,
        cluster.ports[1],
        &cluster.dbs[1].url,
        &[],
    ));
    let status = cluster.wait_status(session, "confirmed").await;
    for db in &cluster.dbs {
        let pool = db.pool().await;
        eventually("confirmed everywhere", Duration::from_secs(20), || async {
            (key_row(&pool, 0).await.0 == "confirmed").then_some(())
        })
        .await;
        assert_eq!(hex::encode(key_row(&pool, 0).await.1), status.group_key);
    }
    // One round-1 package ever left processor 2, and it is the one used.
    let sent: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT payload FROM send_log WHERE uid = 'keygen-round1/0/0'")
            .fetch_all(&p2)
            .await
            .unwrap();
    assert_eq!(sent.len(), 1);
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT round1 FROM keygen_participants WHERE session = 0 AND idx = 2")
            .fetch_one(&cluster.coordinator.pool)
            .await
            .unwrap();
    let sent =
        <proto::processor_v1::ProcessorMessage as prost::Message>::decode(sent[0].as_slice())
            .unwrap();
    match sent.kind {
        Some(proto::processor_v1::processor_message::Kind::KeyGenRound1(r)) => {
            assert_eq!(r.package, stored)
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        scalar_i64(
            &p2,
            "SELECT count(*) FROM send_log WHERE kind = 'key_gen_round2'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_share_is_blamed_by_name() {
    let mut cluster = Cluster::start("dkgblame", 3, |i| {
        if i == 2 {
            vec![("FAILPOINTS", "keygen-corrupt-share=return")]
        } else {
            vec![]
        }
    })
    .await;
    let session = cluster.coordinator.start_keygen(2, &[]).await.unwrap();
    let pool = cluster.coordinator.pool.clone();
    let status = eventually("the blame arrives", Duration::from_secs(60), || async {
        let s = coordinator_mock::keygen::status(&pool, Some(session))
            .await
            .unwrap()
            .pop()?;
        (!s.blames.is_empty()).then_some(s)
    })
    .await;
    assert_eq!(status.status, "failed");
    assert!(
        status.blames.iter().all(|b| b.accused == "validator-3"),
        "{:?}",
        status.blames
    );
    assert!(
        status.failure.contains("blamed validator-3, proven"),
        "{}",
        status.failure
    );
    // The coordinator checked the evidence (the ciphertext opened with the
    // accuser's proven shared secrets): the accused is the culprit.
    let culprits: Vec<Option<i32>> =
        sqlx::query_scalar("SELECT culprit FROM keygen_blames WHERE session = $1")
            .bind(i64::try_from(session).unwrap())
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        !culprits.is_empty() && culprits.iter().all(|c| *c == Some(3)),
        "{culprits:?}"
    );
    // The victim recorded it too, and nobody crashed.
    let victim = cluster.dbs[0].pool().await;
    let r = sqlx::query("SELECT status, blamed FROM keys WHERE session = 0")
        .fetch_one(&victim)
        .await
        .unwrap();
    assert_eq!(r.get::<String, _>(0), "failed");
    assert_eq!(r.get::<Option<i32>, _>(1), Some(3));
    // The proven culprit is left out and the rest make the key 2-of-2.
    let status = session_when(&cluster, session, "the re-attempt starts", |s| {
        s.retried_by.is_some()
    })
    .await;
    let confirmed = cluster
        .wait_status(status.retried_by.unwrap(), "confirmed")
        .await;
    assert_eq!(confirmed.excluded, vec!["validator-3".to_string()]);
    for p in cluster.procs.iter_mut() {
        assert!(
            p.as_mut().unwrap().child.try_wait().unwrap().is_none(),
            "a processor exited"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_dkg_accusation_blames_the_accuser() {
    // validator-1 accuses validator-2 although its share is valid.
    let cluster = Cluster::start("dkgfalse", 3, |i| {
        if i == 0 {
            vec![("FAILPOINTS", "keygen-false-blame=return")]
        } else {
            vec![]
        }
    })
    .await;
    let session = cluster.coordinator.start_keygen(2, &[]).await.unwrap();
    let pool = cluster.coordinator.pool.clone();
    let status = eventually("the blame arrives", Duration::from_secs(60), || async {
        let s = coordinator_mock::keygen::status(&pool, Some(session))
            .await
            .unwrap()
            .pop()?;
        (!s.blames.is_empty()).then_some(s)
    })
    .await;
    assert_eq!(status.status, "failed");
    assert!(
        status
            .failure
            .contains("validator-1 blamed validator-2 falsely")
            && status.failure.contains("validator-1 is at fault"),
        "{}",
        status.failure
    );
    let culprit: Option<i32> =
        sqlx::query_scalar("SELECT culprit FROM keygen_blames WHERE session = $1 AND accuser = 1")
            .bind(i64::try_from(session).unwrap())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(culprit, Some(1), "the accuser is the culprit");
}

fn pg_dump(url: &str) -> Vec<u8> {
    let out = std::process::Command::new(common::tools::pg_dump())
        .args(["--data-only", "--inserts", url])
        .output()
        .expect("pg_dump (postgresql-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The dump's data, without the random `\restrict` token newer pg_dump adds.
fn data_of(url: &str) -> String {
    String::from_utf8_lossy(&pg_dump(url))
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_holds_no_plaintext_share() {
    let cluster = Cluster::start("dkgdump", 3, |_| vec![]).await;
    let session = cluster.coordinator.start_keygen(2, &[]).await.unwrap();
    cluster.wait_status(session, "confirmed").await;
    for i in 0..3 {
        let pool = cluster.dbs[i].pool().await;
        eventually("confirmed", Duration::from_secs(20), || async {
            (key_row(&pool, 0).await.0 == "confirmed").then_some(())
        })
        .await;
        let (kp, _) = key_package(&pool, &cluster.kek(i), 0).await;
        let share = kp.signing_share().serialize();
        let kek = std::fs::read_to_string(cluster.kek(i)).unwrap();
        let dump = pg_dump(&cluster.dbs[i].url);
        let text = String::from_utf8_lossy(&dump);
        assert!(
            text.contains("INSERT INTO public.keys"),
            "the dump has the keys table"
        );
        assert!(
            !text.contains(&hex::encode(&share)),
            "plaintext share (hex) in the dump of processor {i}"
        );
        assert!(
            !dump.windows(share.len()).any(|w| w == share.as_slice()),
            "plaintext share (raw) in the dump"
        );
        assert!(!text.contains(kek.trim()), "the KEK is in the database");
        // Round secrets are gone once the key exists.
        assert_eq!(
            scalar_i64(&pool, "SELECT count(*) FROM keys WHERE sealed_round1_secret IS NOT NULL OR sealed_round2_secret IS NOT NULL").await,
            0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_kek_is_refused_and_nothing_is_overwritten() {
    let db = TestDb::new("wrongkek").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut first = spawn_processor("validator-1", dir.path(), port, &db.url, &[]);
    wait_port(port).await;
    first.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(first.wait_exit(Duration::from_secs(15)).unwrap().success());
    let before = data_of(&db.url);

    let other = dir.path().join("other.kek");
    std::fs::write(&other, Kek::generate().to_hex().as_bytes()).unwrap();
    let config = processor_config("validator-1", port, &db.url, &other);
    let mut second = spawn(
        Path::new(env!("CARGO_BIN_EXE_processor")),
        "wrong",
        dir.path(),
        &config,
        &[],
    );
    let status = second.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(!status.success());
    let log = second.log_text();
    assert!(
        log.contains("does not open this database's sealed keys"),
        "{log}"
    );
    assert_eq!(data_of(&db.url), before, "the database changed");

    // A KEK file that is not a key names the field.
    let bad = dir.path().join("bad.kek");
    std::fs::write(&bad, "not hex").unwrap();
    let config = processor_config("validator-1", port, &db.url, &bad);
    let mut third = spawn(
        Path::new(env!("CARGO_BIN_EXE_processor")),
        "bad",
        dir.path(),
        &config,
        &[],
    );
    assert!(
        !third
            .wait_exit(Duration::from_secs(20))
            .expect("exits")
            .success()
    );
    let log = third.log_text();
    assert!(
        log.contains("keystore.kek_file") && log.contains("64 hex characters"),
        "{log}"
    );
    assert_eq!(data_of(&db.url), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_participant_is_reported_after_the_round_timeout() {
    let mut cluster = Cluster::start_with(
        "dkgsilent",
        3,
        |_| vec![],
        "[keygen]\nround_timeout = \"2s\"\n",
    )
    .await;
    // validator-3 announced its identity, then goes silent.
    cluster.procs[2]
        .as_mut()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGSTOP);
    let session = cluster.coordinator.start_keygen(2, &[]).await.unwrap();
    let pool = cluster.coordinator.pool.clone();
    let status = eventually("the round times out", Duration::from_secs(30), || async {
        let s = coordinator_mock::keygen::status(&pool, Some(session))
            .await
            .unwrap()
            .pop()?;
        (s.status == "failed").then_some(s)
    })
    .await;
    assert_eq!(status.silent, vec!["validator-3".to_string()], "{status:?}");
    assert!(
        status.failure.contains("timed out") && status.failure.contains("validator-3"),
        "{}",
        status.failure
    );
    // ... and the key generation goes on without it, 2-of-2.
    let retry = status.retried_by.expect("re-attempted without the silent");
    let confirmed = cluster.wait_status(retry, "confirmed").await;
    assert_eq!(confirmed.excluded, vec!["validator-3".to_string()]);
    assert_eq!(confirmed.participants.len(), 2);
    cluster.procs[2]
        .as_mut()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGCONT);
}

/// The status of `session` once `done` holds, polling the coordinator.
async fn session_when(
    cluster: &Cluster,
    session: u64,
    what: &str,
    done: impl Fn(&proto::coordinator_v1::KeyGenStatus) -> bool,
) -> proto::coordinator_v1::KeyGenStatus {
    let pool = cluster.coordinator.pool.clone();
    eventually(what, Duration::from_secs(60), || async {
        let s = coordinator_mock::keygen::status(&pool, Some(session))
            .await
            .unwrap()
            .pop()?;
        done(&s).then_some(s)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dkg_missing_a_validator_is_reattempted_without_it() {
    let mut cluster = Cluster::start_with(
        "dkgretry",
        4,
        |_| vec![],
        "[keygen]\nround_timeout = \"3s\"\n",
    )
    .await;
    let session = cluster.coordinator.start_keygen(3, &[]).await.unwrap();
    // validator-4 dies in round 1: the others wait for it until the timeout.
    cluster.procs[3].as_mut().unwrap().kill9();
    let failed = session_when(&cluster, session, "the first attempt fails", |s| {
        s.status == "failed" && s.retried_by.is_some()
    })
    .await;
    assert_eq!(failed.silent, vec!["validator-4".to_string()], "{failed:?}");
    assert!(
        failed.failure.contains("re-attempted without validator-4"),
        "{}",
        failed.failure
    );
    assert_eq!(failed.attempt, 1);
    let retry = failed.retried_by.unwrap();
    let confirmed = cluster.wait_status(retry, "confirmed").await;
    assert_eq!(confirmed.retry_of, Some(session));
    assert_eq!(confirmed.attempt, 2);
    assert_eq!(confirmed.threshold, 3, "the threshold asked for is kept");
    assert_eq!(confirmed.excluded, vec!["validator-4".to_string()]);
    let names: Vec<&str> = confirmed
        .participants
        .iter()
        .map(|p| p.processor.as_str())
        .collect();
    assert_eq!(names, ["validator-1", "validator-2", "validator-3"]);
    // Every remaining validator holds the confirmed key of the re-attempt.
    let retry_row = i64::try_from(retry).unwrap();
    for db in &cluster.dbs[..3] {
        let pool = db.pool().await;
        eventually(
            "confirmed on the processor",
            Duration::from_secs(20),
            || async { (key_row(&pool, retry_row).await.0 == "confirmed").then_some(()) },
        )
        .await;
        assert_eq!(
            hex::encode(key_row(&pool, retry_row).await.1),
            confirmed.group_key
        );
    }
    // Nothing is re-attempted twice: the failed session has one successor.
    let successors: i64 =
        sqlx::query_scalar("SELECT count(*) FROM keygen_sessions WHERE retry_of IS NOT NULL")
            .fetch_one(&cluster.coordinator.pool)
            .await
            .unwrap();
    assert_eq!(successors, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dkg_missing_too_many_validators_fails_naming_them() {
    let mut cluster = Cluster::start_with(
        "dkgtoofew",
        4,
        |_| vec![],
        "[keygen]\nround_timeout = \"3s\"\n",
    )
    .await;
    let session = cluster.coordinator.start_keygen(3, &[]).await.unwrap();
    cluster.procs[2].as_mut().unwrap().kill9();
    cluster.procs[3].as_mut().unwrap().kill9();
    let failed = session_when(&cluster, session, "the key generation fails", |s| {
        s.status == "failed"
    })
    .await;
    assert_eq!(
        failed.silent,
        vec!["validator-3".to_string(), "validator-4".to_string()]
    );
    assert!(
        failed.failure.contains("not re-attempted")
            && failed.failure.contains("without validator-3, validator-4")
            && failed.failure.contains("only 2 of the 3 needed"),
        "{}",
        failed.failure
    );
    assert_eq!(failed.retried_by, None);
    // It stays that way: no later tick starts one.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let sessions = coordinator_mock::keygen::status(&cluster.coordinator.pool, None)
        .await
        .unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
}
