//! Entry points for fuzzing: each takes arbitrary bytes, as a faulty peer or
//! a broken daemon could send them, and drives the code that decodes and
//! acts on them. The cargo-fuzz targets under `processor/fuzz/` call these,
//! and `tests/fuzz_corpus.rs` replays the saved corpus through them in every
//! test run. Returning (with or without an error) is success; a panic, or an
//! input that makes a handler fail with a database error (the link would
//! retry it forever), is the failure a fuzzer reports.

use std::collections::BTreeMap;

use prost::Message as _;
use proto::processor_v1::{
    CoordinatorFrame, CoordinatorMessage, KeyConfirmed, KeyGenRound1Packages, KeyGenRound2Packages,
    KeyGenStart, Participant, ProcessorFrame, ProcessorMessage, coordinator_message::Kind as In,
    processor_message::Kind as Out,
};
use sqlx::PgPool;

use crate::inbound::CoordinatorHandler;
use crate::keystore::dkg::{DkgParams, Round1Output};
use crate::keystore::{Kek, Keystore};
use crate::link::{CoordinatorSide, HandleError, Handler, Inbound, LinkFrame, ProcessorSide, Side};

/// Both directions' link frames, and the message a data frame carries: what
/// the link engine decodes from the stream before any handler runs.
pub fn link_frame(data: &[u8]) {
    if let Ok(frame) = CoordinatorFrame::decode(data)
        && let Some(LinkFrame::Data(d)) = ProcessorSide::open(frame)
        && let Ok(message) = CoordinatorMessage::decode(d.payload.as_slice())
    {
        let _ = CoordinatorHandler::kind(&message);
    }
    if let Ok(frame) = ProcessorFrame::decode(data)
        && let Some(LinkFrame::Data(d)) = CoordinatorSide::open(frame)
        && let Ok(message) = ProcessorMessage::decode(d.payload.as_slice())
        && message.kind.is_some()
    {
        let _ = proto::processor_message_kind(&message);
    }
}

/// A `get_blocks.bin` answer, as monerod sends it.
pub fn blocks_bin(data: &[u8]) {
    let _ = crate::monero::blocks_bin::parse(data);
}

/// A proposed plan's serialized transaction, as a leader sends it: what a
/// follower parses before it compares anything with its own state.
pub fn plan_proposal(data: &[u8]) {
    let _ = crate::scheduler::plan::plan_id(data);
    if let Ok(signable) = monero_wallet::send::SignableTransaction::read(&mut &data[..]) {
        let _ = signable.necessary_fee();
        let _ = signable.serialize();
    }
    if let Ok(inputs) = crate::scheduler::plan::inputs_of(data) {
        let _ = crate::scheduler::plan::outgoing_view_key(&[0; 32], &inputs);
    }
}

/// The session the dispatch database's key was generated in.
const SESSION: u64 = 1;
/// The link the fuzzed messages arrive on.
const LINK: &str = "coordinator";
/// Not a secret: the fuzz database's keys protect nothing, and a fixed KEK
/// lets a later run open the identity an earlier one stored.
const FUZZ_KEK: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A processor database with a confirmed 2-of-3 key (this processor is
/// participant 1), on which arbitrary coordinator messages are handled, each
/// in a transaction that is rolled back: the state every input meets is the
/// same.
#[derive(Debug)]
pub struct Dispatch {
    runtime: tokio::runtime::Runtime,
    pool: PgPool,
    handler: CoordinatorHandler,
}

impl Dispatch {
    /// Opens (creating and migrating on first use) the database `name` on
    /// the server of `server_url` (any database URL of that server), and
    /// generates its key through the handlers if it has none yet.
    pub fn open(server_url: &str, name: &str) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let (pool, handler) = runtime.block_on(async {
            let url = create_database(server_url, name).await?;
            let pool = crate::db::connect(&url, 2)
                .await
                .map_err(|e| e.to_string())?;
            crate::db::migrate(&pool, &url)
                .await
                .map_err(|e| e.to_string())?;
            let kek = Kek::from_hex(FUZZ_KEK)?;
            let keystore = Keystore::open_with(&pool, kek)
                .await
                .map_err(|e| e.to_string())?;
            let handler = CoordinatorHandler::new(keystore.clone());
            seed(&pool, &handler, &keystore).await?;
            Ok::<_, String>((pool, handler))
        })?;
        Ok(Self {
            runtime,
            pool,
            handler,
        })
    }

    /// Decodes `data` as a coordinator message and handles it. Panics if the
    /// handler fails with a database error: an input the handler should have
    /// refused (`Rejected`) reached Postgres, and the link would retry it
    /// forever.
    pub fn run(&self, data: &[u8]) {
        let Ok(message) = CoordinatorMessage::decode(data) else {
            return;
        };
        self.runtime.block_on(async {
            let mut tx = self
                .pool
                .begin()
                .await
                .expect("the fuzz database is reachable (checked when it was opened)");
            let inbound = Inbound {
                link_id: LINK,
                id: 1,
                uid: "fuzz",
            };
            let outcome = self.handler.handle(&mut tx, inbound, message).await;
            let _ = tx.rollback().await;
            if let Err(HandleError::Storage(e @ sqlx::Error::Database(_))) = outcome {
                panic!("a message reached Postgres and failed there instead of being refused: {e}");
            }
        });
    }
}

async fn create_database(server_url: &str, name: &str) -> Result<String, String> {
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("database name {name:?}: use letters, digits and _"));
    }
    let admin = PgPool::connect(server_url)
        .await
        .map_err(|e| format!("Postgres at {server_url}: {e}"))?;
    service::db::create_database_if_missing(&admin, name)
        .await
        .map_err(|e| e.to_string())?;
    admin.close().await;
    let base = server_url
        .rsplit_once('/')
        .map(|(base, _)| base)
        .ok_or_else(|| format!("{server_url} is not a database URL"))?;
    Ok(format!("{base}/{name}"))
}

/// Runs a 2-of-3 DKG through the processor's own handlers, the other two
/// participants played by in-memory keystores, and confirms the key.
async fn seed(pool: &PgPool, handler: &CoordinatorHandler, own: &Keystore) -> Result<(), String> {
    let confirmed = crate::keygen::db::is_confirmed(pool, SESSION)
        .await
        .map_err(|e| e.to_string())?;
    if confirmed {
        return Ok(());
    }
    crate::link::db::ensure_link(pool, LINK, 1 << 20)
        .await
        .map_err(|e| e.to_string())?;
    let others: Vec<Keystore> = (0..2)
        .map(|_| Keystore::in_memory(Kek::generate()))
        .collect();
    let mut identities = BTreeMap::from([(1u16, own.identity_public())]);
    for (i, k) in (2u16..).zip(&others) {
        identities.insert(i, k.identity_public());
    }
    let params = |own_index| DkgParams {
        session: SESSION,
        attempt: 0,
        threshold: 2,
        own_index,
        participants: identities.clone(),
    };
    let fail = |e: &dyn std::fmt::Display| e.to_string();

    handle(
        pool,
        handler,
        In::KeyGenStart(KeyGenStart {
            session: SESSION,
            threshold: 2,
            own_index: 1,
            participants: identities
                .iter()
                .map(|(&index, key)| Participant {
                    index: u32::from(index),
                    encryption_public_key: key.to_vec(),
                })
                .collect(),
            confirmations: 3,
            window_blocks: 4,
        }),
    )
    .await?;
    let mut round1: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
    round1.insert(
        1,
        match sent(pool, "key_gen_round1").await? {
            Out::KeyGenRound1(m) => m.package,
            _ => return Err("no round-1 package was sent".into()),
        },
    );
    let mut secrets: Vec<Round1Output> = Vec::new();
    for (i, k) in (2u16..).zip(&others) {
        let out = k.dkg_round1(&params(i)).map_err(|e| fail(&e))?;
        round1.insert(i, out.package.clone());
        secrets.push(out);
    }
    let mut to_us: std::collections::HashMap<u32, Vec<u8>> = std::collections::HashMap::new();
    for ((i, k), secret) in (2u16..).zip(&others).zip(&secrets) {
        let out = k
            .dkg_round2(&params(i), &secret.sealed_secret, &round1)
            .map_err(|e| fail(&e))?;
        let ours = out
            .packages
            .get(&1)
            .ok_or("a round-2 output has no package for participant 1")?;
        to_us.insert(u32::from(i), ours.clone());
    }
    handle(
        pool,
        handler,
        In::KeyGenRound1(KeyGenRound1Packages {
            session: SESSION,
            attempt: 0,
            packages: round1
                .iter()
                .map(|(&i, p)| (u32::from(i), p.clone()))
                .collect(),
        }),
    )
    .await?;
    handle(
        pool,
        handler,
        In::KeyGenRound2(KeyGenRound2Packages {
            session: SESSION,
            attempt: 0,
            packages: to_us,
        }),
    )
    .await?;
    let group_key = match sent(pool, "key_generated").await? {
        Out::KeyGenerated(m) => m.group_key,
        _ => return Err("no key was generated".into()),
    };
    handle(
        pool,
        handler,
        In::KeyConfirmed(KeyConfirmed {
            session: SESSION,
            group_key,
            activation_height: 1,
        }),
    )
    .await
}

async fn handle(pool: &PgPool, handler: &CoordinatorHandler, kind: In) -> Result<(), String> {
    let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
    let inbound = Inbound {
        link_id: LINK,
        id: 1,
        uid: "seed",
    };
    handler
        .handle(&mut tx, inbound, CoordinatorMessage { kind: Some(kind) })
        .await
        .map_err(|e| format!("seeding the fuzz database: {e}"))?;
    tx.commit().await.map_err(|e| e.to_string())
}

/// The last message of `kind` the processor enqueued.
async fn sent(pool: &PgPool, kind: &str) -> Result<Out, String> {
    let payload = crate::link::db::last_sent(pool, LINK, kind)
        .await
        .map_err(|e| format!("reading the send log: {e}"))?
        .ok_or_else(|| format!("no {kind} in the send log"))?;
    ProcessorMessage::decode(payload.as_slice())
        .map_err(|e| e.to_string())?
        .kind
        .ok_or_else(|| format!("{kind} without a kind"))
}

/// Round-1 packages, round-2 ciphertexts and signing shares from the other
/// participants, arbitrary: a DKG round and a FROST aggregation must refuse
/// them with blame, never panic. The first byte picks what is fuzzed.
pub fn packages(data: &[u8]) {
    use std::sync::OnceLock;
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    let fixture = FIXTURE.get_or_init(Fixture::new);
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        // Participant 2's round-1 package replaced.
        0 => {
            let mut round1 = fixture.round1.clone();
            round1.insert(2, rest.to_vec());
            let _ = fixture.keystores[0].dkg_round2(
                &fixture.params(1),
                &fixture.secrets1[0].sealed_secret,
                &round1,
            );
        }
        // Participant 2's round-2 ciphertext to participant 1 replaced.
        1 => {
            let mut round2 = fixture.round2_to_1.clone();
            round2.insert(2, rest.to_vec());
            let _ = fixture.keystores[0].dkg_round3(
                &fixture.params(1),
                &fixture.secrets2_of_1,
                &fixture.round1,
                &round2,
            );
        }
        // Signer 2's commitments (first half) and share (second half).
        _ => {
            let (commitments, share) = rest.split_at(rest.len() / 2);
            let mut c = fixture.commitments.clone();
            c.insert(2, commitments.to_vec());
            let mut s = fixture.shares.clone();
            s.insert(2, share.to_vec());
            let _ = crate::keystore::sign::aggregate(&fixture.public, &c, &fixture.shares, b"fuzz");
            let _ = crate::keystore::sign::aggregate(
                &fixture.public,
                &fixture.commitments,
                &s,
                b"fuzz",
            );
        }
    }
}

/// An honest 2-of-3 DKG and one honest signing, made once per process.
struct Fixture {
    keystores: Vec<Keystore>,
    identities: BTreeMap<u16, [u8; 32]>,
    secrets1: Vec<Round1Output>,
    round1: BTreeMap<u16, Vec<u8>>,
    secrets2_of_1: Vec<u8>,
    round2_to_1: BTreeMap<u16, Vec<u8>>,
    public: Vec<u8>,
    commitments: BTreeMap<u16, Vec<u8>>,
    shares: BTreeMap<u16, Vec<u8>>,
}

impl Fixture {
    fn params(&self, own_index: u16) -> DkgParams {
        DkgParams {
            session: SESSION,
            attempt: 0,
            threshold: 2,
            own_index,
            participants: self.identities.clone(),
        }
    }

    fn new() -> Self {
        let keystores: Vec<Keystore> = (0..3)
            .map(|_| Keystore::in_memory(Kek::generate()))
            .collect();
        let identities: BTreeMap<u16, [u8; 32]> = (1u16..)
            .zip(&keystores)
            .map(|(i, k)| (i, k.identity_public()))
            .collect();
        let mut fixture = Self {
            keystores,
            identities,
            secrets1: Vec::new(),
            round1: BTreeMap::new(),
            secrets2_of_1: Vec::new(),
            round2_to_1: BTreeMap::new(),
            public: Vec::new(),
            commitments: BTreeMap::new(),
            shares: BTreeMap::new(),
        };
        // An honest DKG among in-memory keystores cannot fail.
        for (i, k) in (1u16..).zip(&fixture.keystores) {
            let out = k.dkg_round1(&fixture.params(i)).expect("honest round 1");
            fixture.round1.insert(i, out.package.clone());
            fixture.secrets1.push(out);
        }
        let mut round2 = Vec::new();
        for (i, k) in (1u16..).zip(&fixture.keystores) {
            let out = k
                .dkg_round2(
                    &fixture.params(i),
                    &fixture.secrets1[usize::from(i - 1)].sealed_secret,
                    &fixture.round1,
                )
                .expect("honest round 2");
            round2.push(out);
        }
        fixture.secrets2_of_1 = round2[0].sealed_secret.clone();
        for (i, out) in (2u16..).zip(&round2[1..]) {
            fixture
                .round2_to_1
                .insert(i, out.packages.get(&1).expect("addressed to 1").clone());
        }
        let mut generated = Vec::new();
        for (i, k) in (1u16..=2).zip(&fixture.keystores) {
            let to_i: BTreeMap<u16, Vec<u8>> = (1u16..)
                .zip(&round2)
                .filter(|(j, _)| *j != i)
                .map(|(j, out)| (j, out.packages.get(&i).expect("addressed").clone()))
                .collect();
            generated.push(
                k.dkg_round3(
                    &fixture.params(i),
                    &round2[usize::from(i - 1)].sealed_secret,
                    &fixture.round1,
                    &to_i,
                )
                .expect("honest round 3"),
            );
        }
        fixture.public = generated[0].public_key_package.clone();
        for (i, (k, g)) in (1u16..).zip(fixture.keystores.iter().zip(&generated)) {
            let attempt = (SESSION, "batch".to_string(), vec![i as u8], 0);
            let c = k
                .preprocess(attempt, SESSION, &g.sealed_key_package)
                .expect("honest preprocess");
            fixture.commitments.insert(i, c);
        }
        for (i, (k, g)) in (1u16..).zip(fixture.keystores.iter().zip(&generated)) {
            let attempt = (SESSION, "batch".to_string(), vec![i as u8], 0);
            let share = k
                .sign(
                    &attempt,
                    SESSION,
                    &g.sealed_key_package,
                    &fixture.commitments,
                    b"fuzz",
                )
                .expect("honest share")
                .expect("nonces were just made");
            fixture.shares.insert(i, share);
        }
        fixture
    }
}
