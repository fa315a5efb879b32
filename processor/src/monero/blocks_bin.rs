//! Scannable blocks from `get_blocks.bin` with full (unpruned) transactions.
//!
//! monero-daemon-rpc asks for pruned blocks and needs each transaction's
//! prunable hash from the daemon; monerod before 0.18.4 sends it zeroed
//! (monero issue 10120), so for every chunk holding a RingCT transaction the
//! library falls back to JSON calls per block and transaction, which made
//! fetching ~50 times slower than the daemon's answer. Full transactions
//! need no prunable hash: each is hashed here and must match the block's
//! list, so nothing the daemon sends is taken on trust that the library
//! would have checked.

use std::ops::RangeInclusive;

use monero_daemon_rpc::MoneroDaemon;
use monero_epee::{Epee, EpeeEntry, Type};
use monero_simple_request_rpc::SimpleRequestTransport;
use monero_wallet::block::Block;
use monero_wallet::interface::ScannableBlock;
use monero_wallet::transaction::{NotPruned, Pruned, Transaction};

/// Most bytes one answer may have (monerod answers with at most ~1000
/// blocks, far below this).
const MAX_RESPONSE: usize = 100 << 20;

/// The blocks numbered `range` (`start` at least 1: monerod reads a start of
/// 0 as "not given"), in order, each checked: its number, its link to the
/// previous block, and every transaction's hash against the block's list.
pub async fn fetch(
    rpc: &MoneroDaemon<SimpleRequestTransport>,
    range: RangeInclusive<u64>,
) -> Result<Vec<ScannableBlock>, String> {
    let (mut next, end) = (*range.start(), *range.end());
    if next == 0 {
        return Err("get_blocks.bin cannot start at block 0".into());
    }
    let mut blocks: Vec<ScannableBlock> =
        Vec::with_capacity(usize::try_from(end.saturating_sub(next) + 1).unwrap_or(0));
    while next <= end {
        let answer = rpc
            .bin_call(
                "get_blocks.bin",
                request(next, end - next + 1),
                MAX_RESPONSE,
            )
            .await
            .map_err(|e| format!("get_blocks.bin from {next}: {e:?}"))?;
        let parsed = parse(&answer).map_err(|e| format!("get_blocks.bin from {next}: {e}"))?;
        if parsed.is_empty() {
            return Err(format!("get_blocks.bin from {next}: no blocks"));
        }
        for block in parsed {
            if next > end {
                break; // older monerod ignores max_block_count
            }
            let number = u64::try_from(block.block.number()).unwrap_or(u64::MAX);
            if number != next {
                return Err(format!("asked for block {next}, got block {number}"));
            }
            if let Some(previous) = blocks.last()
                && block.block.header.previous != previous.block.hash()
            {
                return Err(format!("block {next} does not follow block {}", next - 1));
            }
            blocks.push(block);
            next += 1;
        }
    }
    Ok(blocks)
}

/// `{prune: false, start_height, max_block_count}` in epee.
fn request(start_height: u64, count: u64) -> Vec<u8> {
    let mut r = monero_epee::HEADER.to_vec();
    r.push(monero_epee::VERSION);
    r.push(3 << 2); // three fields (a varint with size marker 0)
    for (name, kind, value) in [
        ("prune", Type::Bool, vec![0_u8]),
        (
            "start_height",
            Type::Uint64,
            start_height.to_le_bytes().to_vec(),
        ),
        (
            "max_block_count",
            Type::Uint64,
            count.to_le_bytes().to_vec(),
        ),
    ] {
        r.push(u8::try_from(name.len()).expect("field names are short"));
        r.extend(name.as_bytes());
        r.push(kind as u8);
        r.extend(value);
    }
    r
}

fn epee<T>(r: Result<T, monero_epee::EpeeError>) -> Result<T, String> {
    r.map_err(|e| format!("malformed answer: {e:?}"))
}

/// Blocks with their transactions (checked against the block's hashes) and
/// the index of each block's first RingCT output.
pub fn parse(answer: &[u8]) -> Result<Vec<ScannableBlock>, String> {
    let mut root = epee(Epee::new(answer))?;
    let mut fields = epee(epee(root.entry())?.fields())?;
    let mut entries: Vec<(Block, Vec<Transaction<Pruned>>, Vec<usize>)> = Vec::new();
    let mut indexes: Vec<u64> = Vec::new();
    let mut status_ok = None;
    while let Some(field) = fields.next() {
        let (key, value) = epee(field)?;
        match key.consume() {
            b"status" => status_ok = Some(epee(value.to_str())?.consume() == b"OK"),
            b"blocks" => {
                let mut list = epee(value.iterate())?;
                while let Some(entry) = list.next() {
                    entries.push(block_entry(epee(entry)?)?);
                }
            }
            b"output_indices" => {
                let mut per_block = epee(value.iterate())?;
                while let Some(block) = per_block.next() {
                    let mut fields = epee(epee(block)?.fields())?;
                    while let Some(field) = fields.next() {
                        let (key, value) = epee(field)?;
                        if key.consume() != b"indices" {
                            continue;
                        }
                        let mut per_tx = epee(value.iterate())?;
                        while let Some(tx) = per_tx.next() {
                            let mut fields = epee(epee(tx)?.fields())?;
                            while let Some(field) = fields.next() {
                                let (key, value) = epee(field)?;
                                if key.consume() != b"indices" {
                                    continue;
                                }
                                let mut list = epee(value.iterate())?;
                                while let Some(index) = list.next() {
                                    indexes.push(epee(epee(index)?.to_u64())?);
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if status_ok == Some(false) {
        return Err("the daemon answered with a status other than OK".into());
    }
    // Output indexes come flat: every output of every transaction (the
    // miner's first) of every block, in order.
    let mut indexes = indexes.as_slice();
    let mut blocks = Vec::with_capacity(entries.len());
    for (block, transactions, output_counts) in entries {
        let mut first_ringct = None;
        let kinds = std::iter::once(!matches!(block.miner_transaction(), Transaction::V1 { .. }))
            .chain(
                transactions
                    .iter()
                    .map(|t| !matches!(t, Transaction::V1 { .. })),
            );
        for (ringct, outputs) in kinds.zip(output_counts) {
            if indexes.len() < outputs {
                return Err("fewer output indexes than outputs".into());
            }
            if ringct && outputs > 0 {
                first_ringct = first_ringct.or(Some(indexes[0]));
            }
            indexes = &indexes[outputs..];
        }
        blocks.push(ScannableBlock {
            block,
            transactions,
            output_index_for_first_ringct_output: first_ringct,
        });
    }
    if !indexes.is_empty() {
        return Err("more output indexes than outputs".into());
    }
    Ok(blocks)
}

/// One `block_complete_entry`: the block, its transactions (each hashed and
/// matched against the block's list), and every transaction's output count
/// (the miner's first).
type Entry = (Block, Vec<Transaction<Pruned>>, Vec<usize>);

fn block_entry<'a>(entry: EpeeEntry<'a, '_, &'a [u8]>) -> Result<Entry, String> {
    let mut fields = epee(entry.fields())?;
    let mut block = None;
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    while let Some(field) = fields.next() {
        let (key, value) = epee(field)?;
        match key.consume() {
            b"block" => {
                let mut bytes = epee(value.to_str())?.consume();
                let read = Block::read(&mut bytes).map_err(|e| format!("invalid block: {e}"))?;
                if !bytes.is_empty() {
                    return Err("bytes after a block".into());
                }
                block = Some(read);
            }
            b"txs" => {
                let mut list = epee(value.iterate())?;
                while let Some(tx) = list.next() {
                    let tx = epee(tx)?;
                    // Unpruned: plain blobs; some versions wrap them.
                    if tx.kind() == Type::String {
                        blobs.push(epee(tx.to_str())?.consume().to_vec());
                    } else {
                        let mut fields = epee(tx.fields())?;
                        while let Some(field) = fields.next() {
                            let (key, value) = epee(field)?;
                            if key.consume() == b"blob" {
                                blobs.push(epee(value.to_str())?.consume().to_vec());
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let block = block.ok_or("a block entry without its block")?;
    if blobs.len() != block.transactions.len() {
        return Err(format!(
            "block {} lists {} transactions, the answer holds {}",
            block.number(),
            block.transactions.len(),
            blobs.len()
        ));
    }
    let mut outputs = vec![block.miner_transaction().prefix().outputs.len()];
    let mut transactions = Vec::with_capacity(blobs.len());
    for (blob, expected) in blobs.iter().zip(&block.transactions) {
        let mut bytes = blob.as_slice();
        let tx = Transaction::<NotPruned>::read(&mut bytes)
            .map_err(|e| format!("invalid transaction: {e}"))?;
        if !bytes.is_empty() {
            return Err("bytes after a transaction".into());
        }
        if tx.hash() != *expected {
            return Err(format!(
                "transaction {} is not the {} the block lists",
                hex::encode(tx.hash()),
                hex::encode(expected)
            ));
        }
        outputs.push(tx.prefix().outputs.len());
        transactions.push(Transaction::<Pruned>::from(tx));
    }
    Ok((block, transactions, outputs))
}
