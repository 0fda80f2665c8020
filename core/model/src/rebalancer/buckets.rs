//! A bucket queue: items keyed by a small count (remaining demand), scanned highest key first.
//!
//! Within a bucket the order is a deterministic shuffle (a re-keyed item lands at a pseudo-random
//! position), so that equal demands are served in varied order: replicas of consecutive partitions
//! then land on varied combinations of instances instead of the same few groups, which spreads the
//! load of a failure over many survivors.

pub(crate) struct MaxBuckets {
    key: Vec<u64>,
    pos: Vec<usize>,
    buckets: Vec<Vec<u32>>,
    top: usize,
    rng: u64,
}

impl MaxBuckets {
    /// Items `0..keys.len()`; items with key 0 are absent until incremented.
    pub(crate) fn new(keys: &[u64], seed: u64) -> Self {
        let max = keys.iter().copied().max().unwrap_or(0) as usize;
        let mut queue = Self {
            key: vec![0; keys.len()],
            pos: vec![0; keys.len()],
            buckets: vec![Vec::new(); max + 1],
            top: 0,
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
        };
        for (item, &key) in keys.iter().enumerate() {
            queue.key[item] = key;
            queue.insert(item);
        }
        queue
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64: small, fast, and the same on every platform.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn insert(&mut self, item: usize) {
        let key = self.key[item] as usize;
        if key == 0 {
            return;
        }
        if key >= self.buckets.len() {
            self.buckets.resize(key + 1, Vec::new());
        }
        let len = self.buckets[key].len();
        let at = (self.next_random() % (len as u64 + 1)) as usize;
        self.buckets[key].push(item as u32);
        self.buckets[key].swap(at, len);
        let moved = self.buckets[key][len] as usize;
        self.pos[moved] = len;
        self.pos[item] = at;
        self.top = self.top.max(key);
    }

    fn remove(&mut self, item: usize) {
        let key = self.key[item] as usize;
        if key == 0 {
            return;
        }
        let at = self.pos[item];
        let bucket = &mut self.buckets[key];
        bucket.swap_remove(at);
        if let Some(&moved) = bucket.get(at) {
            self.pos[moved as usize] = at;
        }
    }

    /// Current key of an item.
    pub(crate) fn key(&self, item: usize) -> u64 {
        self.key[item]
    }

    /// Sets an item's key.
    pub(crate) fn set(&mut self, item: usize, key: u64) {
        self.remove(item);
        self.key[item] = key;
        self.insert(item);
    }

    /// The first item, highest key first, that satisfies `accept`.
    pub(crate) fn find(&mut self, mut accept: impl FnMut(usize) -> bool) -> Option<usize> {
        while self.top > 0 && self.buckets[self.top].is_empty() {
            self.top -= 1;
        }
        (1..=self.top)
            .rev()
            .flat_map(|key| self.buckets[key].iter())
            .map(|&item| item as usize)
            .find(|&item| accept(item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_highest_key_first_and_tracks_changes() {
        let mut q = MaxBuckets::new(&[1, 3, 0, 2], 7);
        assert_eq!(q.find(|_| true), Some(1));
        assert_eq!(q.find(|i| i != 1), Some(3));
        q.set(1, 1);
        assert_eq!(q.key(1), 1);
        assert_eq!(q.find(|_| true), Some(3));
        q.set(2, 5);
        assert_eq!(q.find(|_| true), Some(2));
        for item in 0..4 {
            q.set(item, 0);
        }
        assert_eq!(q.find(|_| true), None);
    }
}
