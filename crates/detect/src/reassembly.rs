//! A bounded byte-range reassembly buffer shared by the TLS (TCP stream) and QUIC (CRYPTO
//! stream) assemblers.
//!
//! Data is written at absolute offsets from the start of the stream. Only bytes below
//! `max_len` are kept; where pieces overlap, the bytes that arrived first win (a retransmission
//! never rewrites data that was already consumed). The number of disjoint ranges (holes + 1) is
//! bounded so that a peer sending many tiny scattered pieces cannot make bookkeeping expensive.

/// Too many disjoint ranges: the caller gives up on the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooManyHoles;

#[derive(Debug, Clone)]
pub(crate) struct Reassembly {
    buf: Vec<u8>,
    /// Sorted, disjoint, non-adjacent `[start, end)` ranges of `buf` that hold received data.
    ranges: Vec<(usize, usize)>,
    max_len: usize,
    max_ranges: usize,
}

impl Reassembly {
    pub(crate) fn new(max_len: usize, max_ranges: usize) -> Self {
        Reassembly {
            buf: Vec::new(),
            ranges: Vec::new(),
            max_len,
            max_ranges: max_ranges.max(1),
        }
    }

    /// Stores `data` at `offset`. Bytes at or beyond `max_len` are dropped silently (the caller
    /// knows from the contiguous prefix whether it needed them).
    pub(crate) fn insert(&mut self, offset: u64, data: &[u8]) -> Result<(), TooManyHoles> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(());
        };
        if start >= self.max_len || data.is_empty() {
            return Ok(());
        }
        let end = start.saturating_add(data.len()).min(self.max_len);
        let data = &data[..end - start];
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        // Write only the gaps of [start, end) that no earlier piece covered.
        let mut cursor = start;
        for &(s, e) in &self.ranges {
            if e <= cursor {
                continue;
            }
            if s >= end {
                break;
            }
            if s > cursor {
                self.buf[cursor..s].copy_from_slice(&data[cursor - start..s - start]);
            }
            cursor = cursor.max(e);
            if cursor >= end {
                break;
            }
        }
        if cursor < end {
            self.buf[cursor..end].copy_from_slice(&data[cursor - start..]);
        }
        // Merge [start, end) into the range list.
        let mut merged = (start, end);
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        let mut placed = false;
        for &(s, e) in &self.ranges {
            if e < merged.0 {
                out.push((s, e));
            } else if s > merged.1 {
                if !placed {
                    out.push(merged);
                    placed = true;
                }
                out.push((s, e));
            } else {
                merged = (merged.0.min(s), merged.1.max(e));
            }
        }
        if !placed {
            out.push(merged);
        }
        if out.len() > self.max_ranges {
            return Err(TooManyHoles);
        }
        self.ranges = out;
        Ok(())
    }

    /// The bytes received contiguously from offset 0.
    pub(crate) fn contiguous(&self) -> &[u8] {
        match self.ranges.first() {
            Some(&(0, e)) => &self.buf[..e],
            _ => &[],
        }
    }

    /// True once the contiguous prefix reached `max_len`.
    pub(crate) fn is_full(&self) -> bool {
        self.contiguous().len() >= self.max_len
    }

    pub(crate) fn clear(&mut self) {
        self.buf = Vec::new();
        self.ranges = Vec::new();
    }

    #[cfg(test)]
    pub(crate) fn ranges(&self) -> &[(usize, usize)] {
        &self.ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_out_of_order_overlap() {
        let mut r = Reassembly::new(100, 4);
        r.insert(0, b"abc").unwrap();
        assert_eq!(r.contiguous(), b"abc");
        r.insert(6, b"ghi").unwrap();
        assert_eq!(r.contiguous(), b"abc");
        assert_eq!(r.ranges(), &[(0, 3), (6, 9)]);
        // overlapping on both sides; the first-arrived bytes win
        r.insert(2, b"XdefX").unwrap();
        assert_eq!(r.contiguous(), b"abcdefghi");
        assert_eq!(r.ranges(), &[(0, 9)]);
        // adjacent pieces merge
        r.insert(9, b"j").unwrap();
        assert_eq!(r.ranges(), &[(0, 10)]);
        // a duplicate changes nothing
        r.insert(0, b"ZZZZZZZZZZ").unwrap();
        assert_eq!(r.contiguous(), b"abcdefghij");
    }

    #[test]
    fn bounds() {
        let mut r = Reassembly::new(8, 2);
        r.insert(6, b"0123").unwrap();
        assert_eq!(r.ranges(), &[(6, 8)]);
        r.insert(100, b"x").unwrap();
        r.insert(u64::MAX, b"x").unwrap();
        assert_eq!(r.ranges(), &[(6, 8)]);
        r.insert(2, b"a").unwrap();
        assert_eq!(r.insert(4, b"b"), Err(TooManyHoles));
        assert_eq!(r.ranges(), &[(2, 3), (6, 8)]);
        r.insert(0, b"0123456789").unwrap();
        assert!(r.is_full());
        assert_eq!(r.contiguous(), b"01a34501");
    }
}
