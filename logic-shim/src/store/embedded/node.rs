//! c2s stream nodes: the embedded store keeps a stream the way Redis does,
//! as runs of consecutive entries, one row per run (Redis: listpack nodes of
//! a radix tree). A batch of appends then costs one B-tree insert per node
//! instead of one per entry, and a trim drops whole nodes (`MAXLEN ~`).
//! Measured before nodes: the store writer thread spent ~70% of a core in
//! redb's B-tree insert/remove at 148,000 appends/s.
//!
//! A row is keyed by its first entry's id. Its value is a node,
//! `[2][count u32]` then per entry `[ms u64][seq u64][len u32][entry]`
//! (big-endian), or, written before nodes existed, a bare v1 entry whose id
//! is the key; both read back the same.

use crate::store::StreamId;

/// Layout version byte of a node.
const NODE_V2: u8 = 2;
/// Layout version byte of a single-entry row (an encoded entry itself).
const ENTRY_V1: u8 = super::ENTRY_V1;
/// Bytes before a node's first entry.
const NODE_HEADER: usize = 5;
/// Bytes before each entry's own bytes inside a node.
const ENTRY_HEADER: usize = 20;
/// Most entries in one node: bounds a node's size and a read's overshoot.
pub(super) const NODE_MAX: usize = 128;

/// Encodes `entries` (ids ascending, each with its encoded entry) as a node.
pub(super) fn encode(entries: &[(StreamId, &[u8])]) -> Vec<u8> {
    let body: usize = entries.iter().map(|(_, e)| ENTRY_HEADER + e.len()).sum();
    let mut out = Vec::with_capacity(NODE_HEADER + body);
    out.push(NODE_V2);
    // At most NODE_MAX entries, and an entry is a capped frame: no overflow.
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (id, entry) in entries {
        out.extend_from_slice(&id.ms.to_be_bytes());
        out.extend_from_slice(&id.seq.to_be_bytes());
        out.extend_from_slice(&(entry.len() as u32).to_be_bytes());
        out.extend_from_slice(entry);
    }
    out
}

/// How many entries the row holds, from its header alone.
pub(super) fn len(row: &[u8]) -> Result<u64, &'static str> {
    match row.first() {
        Some(&ENTRY_V1) => Ok(1),
        Some(&NODE_V2) => {
            let count = row.get(1..NODE_HEADER).ok_or("truncated node header")?;
            Ok(u64::from(u32::from_be_bytes(
                count.try_into().map_err(|_| "truncated node header")?,
            )))
        }
        _ => Err("unknown row version"),
    }
}

/// The entries of the row keyed `first`, in order, each with its id.
pub(super) fn decode(first: StreamId, row: &[u8]) -> Result<Vec<(StreamId, &[u8])>, &'static str> {
    if row.first() == Some(&ENTRY_V1) {
        return Ok(vec![(first, row)]);
    }
    let count = len(row)?;
    let mut rest = &row[NODE_HEADER..];
    // Never trust the count for an allocation: each entry needs its header.
    let mut out = Vec::with_capacity((count as usize).min(rest.len() / ENTRY_HEADER));
    for _ in 0..count {
        let (head, tail) = rest
            .split_at_checked(ENTRY_HEADER)
            .ok_or("truncated entry header")?;
        let word = |at: usize| u64::from_be_bytes(head[at..at + 8].try_into().expect("8 bytes"));
        let id = StreamId {
            ms: word(0),
            seq: word(8),
        };
        let n = u32::from_be_bytes(head[16..20].try_into().expect("4 bytes")) as usize;
        let (entry, tail) = tail.split_at_checked(n).ok_or("truncated entry")?;
        if out.last().is_some_and(|(last, _)| *last >= id) || (out.is_empty() && id != first) {
            return Err("entry ids out of order");
        }
        out.push((id, entry));
        rest = tail;
    }
    if !rest.is_empty() {
        return Err("bytes after the last entry");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64, seq: u64) -> StreamId {
        StreamId { ms, seq }
    }

    #[test]
    fn a_node_round_trips() {
        let entries: Vec<(StreamId, &[u8])> = vec![
            (id(5, 0), &[ENTRY_V1, 1, 2][..]),
            (id(5, 1), &[][..]),
            (id(6, 0), &[ENTRY_V1; 300][..]),
        ];
        let row = encode(&entries);
        assert_eq!(len(&row), Ok(3));
        assert_eq!(decode(id(5, 0), &row), Ok(entries));
    }

    #[test]
    fn a_row_from_before_nodes_is_one_entry_at_its_key() {
        let row = [ENTRY_V1, 9, 9, 9];
        assert_eq!(len(&row), Ok(1));
        assert_eq!(decode(id(7, 3), &row), Ok(vec![(id(7, 3), &row[..])]));
    }

    #[test]
    fn damaged_rows_are_errors_not_panics() {
        let good = encode(&[(id(1, 0), &[1, 2, 3][..]), (id(1, 1), &[4][..])]);
        for cut in 0..good.len() {
            assert!(decode(id(1, 0), &good[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(id(1, 0), &longer).is_err(), "trailing bytes");
        assert!(decode(id(2, 0), &good).is_err(), "key is not the first id");
        let swapped = encode(&[(id(1, 1), &[][..]), (id(1, 0), &[][..])]);
        assert!(decode(id(1, 1), &swapped).is_err(), "ids out of order");
        let mut huge = vec![NODE_V2];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(
            decode(id(0, 0), &huge).is_err(),
            "a lying count allocates nothing"
        );
        assert!(len(&[]).is_err() && len(&[7]).is_err() && len(&[NODE_V2, 0]).is_err());
        // Every short byte string: no panic.
        for a in 0..=255u8 {
            let _ = decode(id(0, 0), &[a]);
            let _ = decode(id(0, 0), &[NODE_V2, 0, 0, 0, a]);
        }
    }
}
