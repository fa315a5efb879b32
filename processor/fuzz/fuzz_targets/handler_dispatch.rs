#![no_main]
//! Arbitrary coordinator messages handled by a processor with a confirmed
//! key, on a real Postgres (DATABASE_URL, default the local server's
//! `postgres` database; the target keeps its state in `custody_fuzz`).

use std::sync::OnceLock;

use processor::fuzzing::Dispatch;

static DISPATCH: OnceLock<Dispatch> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    DISPATCH
        .get_or_init(|| {
            let url = std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
            Dispatch::open(&url, "custody_fuzz").unwrap_or_else(|e| panic!("fuzz database: {e}"))
        })
        .run(data)
});
