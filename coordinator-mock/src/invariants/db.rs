//! The invariant checker's SQL: read-only queries over a processor's and the
//! coordinator's databases (the tables of processor/migrations,
//! processor/link/migrations and coordinator-mock/migrations).

use sqlx::PgPool;

/// One side of a link: `link_state` as the sender sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LinkState {
    /// The peer's name on this side.
    pub link_id: String,
    /// Highest outbound id the peer acknowledged (handled durably).
    pub acked_out: i64,
    /// Rows the retention task deleted from `inbox` (then a missing inbox
    /// row proves nothing).
    pub pruned_inbox: i64,
}

/// A message as sent (`send_log`), handled (`inbox`) or set aside
/// (`quarantine`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Message {
    /// The sender's sequence number.
    pub id: i64,
    /// Derived from the message's meaning.
    pub uid: String,
    /// The encoded message.
    pub payload: Vec<u8>,
}

/// Every link this database keeps.
pub async fn links(pool: &PgPool) -> Result<Vec<LinkState>, sqlx::Error> {
    sqlx::query_as("SELECT link_id, acked_out, pruned_inbox FROM link_state ORDER BY link_id")
        .fetch_all(pool)
        .await
}

/// What this side sent on `link_id`, in id order.
pub async fn send_log(pool: &PgPool, link_id: &str) -> Result<Vec<Message>, sqlx::Error> {
    sqlx::query_as("SELECT id, uid, payload FROM send_log WHERE link_id = $1 ORDER BY id")
        .bind(link_id)
        .fetch_all(pool)
        .await
}

/// What this side handled from `link_id`, in id order.
pub async fn inbox(pool: &PgPool, link_id: &str) -> Result<Vec<Message>, sqlx::Error> {
    sqlx::query_as("SELECT id, uid, payload FROM inbox WHERE link_id = $1 ORDER BY id")
        .bind(link_id)
        .fetch_all(pool)
        .await
}

/// What this side set aside from `link_id` instead of handling it: each
/// counts as taken in once.
pub async fn quarantine(pool: &PgPool, link_id: &str) -> Result<Vec<Message>, sqlx::Error> {
    sqlx::query_as("SELECT id, uid, payload FROM quarantine WHERE link_id = $1 ORDER BY id")
        .bind(link_id)
        .fetch_all(pool)
        .await
}

/// A signing attempt a processor began (it preprocessed for it).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SignAttempt {
    /// The key.
    pub session: i64,
    /// `batch` or `plan`.
    pub kind: String,
    /// The batch id or plan id.
    pub id: Vec<u8>,
    /// The attempt.
    pub attempt: i32,
}

/// Every attempt a processor began.
pub async fn sign_attempts(pool: &PgPool) -> Result<Vec<SignAttempt>, sqlx::Error> {
    sqlx::query_as("SELECT session, kind, id, attempt FROM sign_attempts")
        .fetch_all(pool)
        .await
}

/// A batch as a processor or the coordinator holds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Batch {
    /// Derived from the key and the block.
    pub id: i64,
    /// The Monero block it reports.
    pub block_height: i64,
    /// The protobuf encoding: exactly the bytes signed.
    pub encoded: Vec<u8>,
    /// proposed | signed | included (the coordinator's: proposed |
    /// included).
    pub status: String,
}

/// A processor's batches.
pub async fn processor_batches(pool: &PgPool) -> Result<Vec<Batch>, sqlx::Error> {
    sqlx::query_as("SELECT id, block_height, encoded, status FROM batches ORDER BY id")
        .fetch_all(pool)
        .await
}

/// The batches the coordinator included.
pub async fn included_batches(pool: &PgPool) -> Result<Vec<Batch>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, block_height, encoded, status FROM batches WHERE status = 'included' ORDER BY id",
    )
    .fetch_all(pool)
    .await
}

/// The next Monero height a processor's scanner will look at (0 before
/// it has a key).
pub async fn scan_next_height(pool: &PgPool) -> Result<i64, sqlx::Error> {
    Ok(
        sqlx::query_scalar::<_, i64>("SELECT next_height FROM scan_cursor")
            .fetch_optional(pool)
            .await?
            .unwrap_or(0),
    )
}

/// The keys (sessions) a processor holds a confirmed share of.
pub async fn held_sessions(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT session FROM keys WHERE status = 'confirmed' ORDER BY session")
        .fetch_all(pool)
        .await
}

/// A plan (one Monero transaction paying burns), on either side.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Plan {
    /// Hash of `signable`.
    pub plan_id: Vec<u8>,
    /// The key paying.
    pub session: i64,
    /// The coordination window it was planned for.
    pub window: i64,
    /// The serialized `SignableTransaction`.
    pub signable: Vec<u8>,
    /// The burns it pays, in payment order.
    pub burn_ids: Vec<String>,
    /// The status as text (each side has its own enum of statuses; only
    /// `completed` matters here).
    pub status: String,
    /// The transaction's hash once completed.
    pub tx_hash: Option<Vec<u8>>,
}

/// A processor's plans.
pub async fn processor_plans(pool: &PgPool) -> Result<Vec<Plan>, sqlx::Error> {
    sqlx::query_as(
        r#"SELECT plan_id, session, "window", signable, burn_ids, status, tx_hash
           FROM plans ORDER BY plan_id"#,
    )
    .fetch_all(pool)
    .await
}

/// The coordinator's plans.
pub async fn coordinator_plans(pool: &PgPool) -> Result<Vec<Plan>, sqlx::Error> {
    sqlx::query_as(
        r#"SELECT plan_id, session, "window", signable, burn_ids, status, tx_hash
           FROM plans ORDER BY seq"#,
    )
    .fetch_all(pool)
    .await
}

/// A burn: pay `amount` to `monero_address`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Burn {
    /// Its id on the settlement chain.
    pub burn_id: String,
    /// Where to pay.
    pub monero_address: String,
    /// Atomic units.
    pub amount: i64,
}

/// Every burn submitted to the settlement chain.
pub async fn coordinator_burns(pool: &PgPool) -> Result<Vec<Burn>, sqlx::Error> {
    sqlx::query_as("SELECT burn_id, monero_address, amount FROM burns ORDER BY seq")
        .fetch_all(pool)
        .await
}

/// Every burn a processor took in, with its status.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProcessorBurn {
    /// Its id on the settlement chain.
    pub burn_id: String,
    /// Where to pay.
    pub monero_address: String,
    /// Atomic units.
    pub amount: i64,
    /// received | queued | rejected | planned | paid.
    pub status: String,
}

/// A processor's burns.
pub async fn processor_burns(pool: &PgPool) -> Result<Vec<ProcessorBurn>, sqlx::Error> {
    sqlx::query_as("SELECT burn_id, monero_address, amount, status FROM burns ORDER BY seq")
        .fetch_all(pool)
        .await
}

/// The group key of each confirmed session (the coordinator's).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GroupKey {
    /// The key generation session.
    pub session: i64,
    /// The group's Ed25519 key.
    pub group_key: Vec<u8>,
}

/// Every confirmed key.
pub async fn confirmed_keys(pool: &PgPool) -> Result<Vec<GroupKey>, sqlx::Error> {
    sqlx::query_as(
        "SELECT session, group_key FROM keygen_sessions
         WHERE status = 'confirmed' AND group_key IS NOT NULL",
    )
    .fetch_all(pool)
    .await
}

/// An output a processor marked spent, and the plan it names.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SpentOutput {
    /// The transaction that created it.
    pub tx_hash: Vec<u8>,
    /// Its index there.
    pub index_in_tx: i64,
    /// The plan whose transaction spent it.
    pub plan_id: Option<Vec<u8>>,
}

/// A processor's spent outputs.
pub async fn spent_outputs(pool: &PgPool) -> Result<Vec<SpentOutput>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tx_hash, index_in_tx, plan_id FROM outputs WHERE status = 'spent' ORDER BY tx_hash, index_in_tx",
    )
    .fetch_all(pool)
    .await
}

/// One key's books on one processor, in atomic units.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Books {
    /// The key.
    pub session: i64,
    /// Deposits credited (reported in a batch and included).
    pub deposits: i64,
    /// Burns paid by completed plans.
    pub paid: i64,
    /// Fees of completed plans.
    pub fees: i64,
    /// Outputs still the group's: deposits, change and forwards received,
    /// not yet spent.
    pub unspent: i64,
    /// What an earlier key forwarded to this one.
    pub forwarded_in: i64,
    /// What this key forwarded to a newer one: the inputs of its completed
    /// burn-less plans less their fee and what came back to it (a
    /// consolidation returns everything but the fee, a forward nothing).
    pub forwarded_out: i64,
}

/// Each key's books on a processor. Deposits are outputs to an account
/// (account > 0) that were credited (included, then maybe reserved or
/// spent); change (account 0, minor 1) and forwards (account 0, minor 2)
/// are never deposits but are unspent money. Sums are NUMERIC until
/// compared, so no overflow hides a difference.
pub async fn books(pool: &PgPool) -> Result<Vec<Books>, sqlx::Error> {
    sqlx::query_as(
        "WITH sessions AS (
             SELECT session FROM outputs UNION SELECT session FROM plans
         ), deposits AS (
             SELECT session, sum(amount) AS v FROM outputs
             WHERE account > 0 AND status IN ('included', 'reserved', 'spent') GROUP BY session
         ), paid AS (
             SELECT p.session, sum(b.amount) AS v
             FROM plans p CROSS JOIN LATERAL unnest(p.burn_ids) AS u(burn_id)
             JOIN burns b ON b.burn_id = u.burn_id
             WHERE p.status = 'completed' GROUP BY p.session
         ), fees AS (
             SELECT session, sum(fee) AS v FROM plans WHERE status = 'completed' GROUP BY session
         ), unspent AS (
             SELECT session, sum(amount) AS v FROM outputs
             WHERE status IN ('included', 'reserved')
               AND (account > 0 OR subaddress_minor IN (1, 2))
             GROUP BY session
         ), forwarded_in AS (
             SELECT session, sum(amount) AS v FROM outputs
             WHERE account = 0 AND subaddress_minor = 2
               AND status IN ('included', 'reserved', 'spent')
             GROUP BY session
         ), forwarded_out AS (
             SELECT p.session,
                    sum((SELECT COALESCE(sum(i.amount), 0) FROM outputs i WHERE i.plan_id = p.plan_id)
                        - p.fee
                        - (SELECT COALESCE(sum(o.amount), 0) FROM outputs o
                           WHERE o.tx_hash = p.tx_hash AND o.session = p.session)) AS v
             FROM plans p
             WHERE p.status = 'completed' AND cardinality(p.burn_ids) = 0
             GROUP BY p.session
         )
         SELECT s.session,
                COALESCE(d.v, 0)::bigint AS deposits,
                COALESCE(p.v, 0)::bigint AS paid,
                COALESCE(f.v, 0)::bigint AS fees,
                COALESCE(u.v, 0)::bigint AS unspent,
                COALESCE(fi.v, 0)::bigint AS forwarded_in,
                COALESCE(fo.v, 0)::bigint AS forwarded_out
         FROM sessions s
         LEFT JOIN deposits d ON d.session = s.session
         LEFT JOIN paid p ON p.session = s.session
         LEFT JOIN fees f ON f.session = s.session
         LEFT JOIN unspent u ON u.session = s.session
         LEFT JOIN forwarded_in fi ON fi.session = s.session
         LEFT JOIN forwarded_out fo ON fo.session = s.session
         ORDER BY s.session",
    )
    .fetch_all(pool)
    .await
}

/// A forward seen at both ends on one processor.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Forward {
    /// The plan.
    pub plan_id: Vec<u8>,
    /// The key that forwarded.
    pub session: i64,
    /// What left it: inputs less fee less what came back to it.
    pub sent: i64,
    /// What arrived at other keys held here.
    pub arrived: i64,
}

/// Completed burn-less plans whose transaction paid another key this
/// processor holds: what left and what arrived must be equal.
pub async fn forwards(pool: &PgPool) -> Result<Vec<Forward>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.plan_id, p.session,
                ((SELECT COALESCE(sum(i.amount), 0) FROM outputs i WHERE i.plan_id = p.plan_id)
                 - p.fee
                 - (SELECT COALESCE(sum(o.amount), 0) FROM outputs o
                    WHERE o.tx_hash = p.tx_hash AND o.session = p.session))::bigint AS sent,
                (SELECT COALESCE(sum(o.amount), 0) FROM outputs o
                 WHERE o.tx_hash = p.tx_hash AND o.session <> p.session)::bigint AS arrived
         FROM plans p
         WHERE p.status = 'completed' AND cardinality(p.burn_ids) = 0
           AND EXISTS (SELECT 1 FROM outputs o WHERE o.tx_hash = p.tx_hash AND o.session <> p.session)
         ORDER BY p.plan_id",
    )
    .fetch_all(pool)
    .await
}

/// Whether a settlement block this processor took in includes batch `id`.
pub async fn taken_in_as_included(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM settlement_blocks WHERE $1 = ANY(included_batch_ids))",
    )
    .bind(id)
    .fetch_one(pool)
    .await
}

/// A pool for reading another program's database: two sessions at most.
/// The checker and the devnet read one thing at a time, and the processors
/// under test need the server's connections (a stock Postgres has 100; a
/// default pool of 10 per database read left five processors short).
pub async fn reader_pool(url: &str) -> Result<sqlx::PgPool, sqlx::Error> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
}
