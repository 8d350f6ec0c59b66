//! Request identifiers, managed as the reference client does: never one that is outstanding;
//! answered ones first, last answered first (after RFC 5508: a NAT in front of the client
//! keeps state per identifier, so reusing few keeps its table small); an identifier whose
//! request timed out is not reused before the others have been (its response may still come
//! and must not be taken for a newer request's).

use std::collections::HashMap;

/// A block of identifiers `first ..= first + count - 1`, each outstanding one mapped to what
/// its request was for.
#[derive(Debug, Clone)]
pub(crate) struct IdentPool<T> {
    first: u16,
    count: u16,
    /// The next identifier never (or least recently) used.
    next: u16,
    outstanding: HashMap<u16, T>,
    /// Answered identifiers, reused last answered first.
    reusable: Vec<u16>,
}

impl<T: Copy> IdentPool<T> {
    /// The block from `first` (at least 1) of `count` identifiers (clamped to the 16-bit
    /// space), starting at offset `seed % count`.
    pub(crate) fn new(first: u16, count: u16, seed: u64) -> Self {
        let first = first.max(1);
        let count = count.clamp(1, u16::MAX - first + 1);
        Self {
            first,
            count,
            next: first + (seed % u64::from(count)) as u16,
            outstanding: HashMap::new(),
            reusable: Vec::new(),
        }
    }

    /// A free identifier for a request about `what`, now outstanding; `None` when every one
    /// of the block is.
    pub(crate) fn take(&mut self, what: T) -> Option<u16> {
        let id = self.free()?;
        self.outstanding.insert(id, what);
        Some(id)
    }

    fn free(&mut self) -> Option<u16> {
        while let Some(id) = self.reusable.pop() {
            if !self.outstanding.contains_key(&id) {
                return Some(id);
            }
        }
        for _ in 0..self.count {
            let id = self.next;
            self.next = self.first + (id - self.first + 1) % self.count;
            if !self.outstanding.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// What the outstanding request `id` was for.
    pub(crate) fn get(&self, id: u16) -> Option<T> {
        self.outstanding.get(&id).copied()
    }

    /// `id` was answered (or never left): free, and the first to be reused.
    pub(crate) fn answered(&mut self, id: u16) -> Option<T> {
        let what = self.outstanding.remove(&id)?;
        self.reusable.push(id);
        Some(what)
    }

    /// `id`'s request timed out: free, but reused only when its turn in the block comes.
    pub(crate) fn expired(&mut self, id: u16) -> Option<T> {
        self.outstanding.remove(&id)
    }

    /// The outstanding requests.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u16, &T)> {
        self.outstanding.iter().map(|(id, t)| (*id, t))
    }

    /// Forgets every outstanding request (their responses will be ignored).
    pub(crate) fn clear(&mut self) -> Vec<u16> {
        self.outstanding.drain().map(|(id, _)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::IdentPool;

    #[test]
    fn answered_first_never_outstanding_expired_last() {
        let mut p = IdentPool::new(100, 4, 1);
        assert_eq!(p.take('a'), Some(101));
        assert_eq!(p.take('b'), Some(102));
        assert_eq!(p.take('c'), Some(103));
        assert_eq!(p.take('d'), Some(100));
        assert_eq!(p.take('e'), None, "all four outstanding");
        assert_eq!(p.answered(102), Some('b'));
        assert_eq!(p.answered(102), None, "a duplicate answer");
        assert_eq!(p.expired(101), Some('a'));
        assert_eq!(p.take('f'), Some(102), "the answered one first");
        assert_eq!(p.take('g'), Some(101), "then the block's turn");
        assert_eq!(p.get(101), Some('g'));
        let mut left = p.clear();
        left.sort_unstable();
        assert_eq!(left, vec![100, 101, 102, 103]);
    }

    #[test]
    fn the_block_is_clamped_to_the_identifier_space() {
        let mut p = IdentPool::new(65_535, 10, 7);
        assert_eq!(p.take(()), Some(65_535));
        assert_eq!(p.take(()), None);
        let mut p = IdentPool::new(0, 0, 0);
        assert_eq!(p.take(()), Some(1), "identifier 0 is never used");
    }
}
