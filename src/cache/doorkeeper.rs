//! Admission to a full cache: a key gets in on its second miss within a window
//! (the "doorkeeper" of TinyLFU). Reads spread over many more keys than fit, such
//! as a job going through every user once, then cost few evictions and push out
//! few entries that are read again; a key read again soon gets in on its next
//! miss.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Bits per key of the window: with two bits set per key, about 1.4 % of keys
/// not seen before pass for seen at the end of a window (0.5 % on average).
const BITS_PER_KEY: usize = 16;

/// A Bloom filter of the keys that missed since the window began, emptied every
/// `window` misses. Lock-free: a miss does not wait for the cache's lock unless
/// it is let in.
pub(super) struct Doorkeeper {
    bits: Box<[AtomicU64]>,
    seen: AtomicUsize,
    window: usize,
}

impl Doorkeeper {
    pub fn new(window: usize) -> Self {
        let words = (window.max(1) * BITS_PER_KEY).div_ceil(64);
        Self {
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            seen: AtomicUsize::new(0),
            window: window.max(1),
        }
    }

    /// Whether the key with this hash missed before in this window; notes that it did.
    pub fn admits(&self, hash: u64) -> bool {
        if self.seen.fetch_add(1, Ordering::Relaxed) >= self.window {
            // This miss is the new window's first. Misses racing with the
            // emptying may lose or keep their bits: one refused or let in
            // wrongly, never a stale token served.
            self.seen.store(1, Ordering::Relaxed);
            for word in &self.bits {
                word.store(0, Ordering::Relaxed);
            }
        }
        // Two bit positions from the two halves of the hash; both are set.
        let low = self.set(hash & 0xffff_ffff);
        let high = self.set(hash >> 32);
        low && high
    }

    /// Sets bit `n` (modulo the filter's size); whether it was set already.
    fn set(&self, n: u64) -> bool {
        let n = (n % (self.bits.len() as u64 * 64)) as usize;
        let mask = 1u64 << (n % 64);
        self.bits[n / 64].fetch_or(mask, Ordering::Relaxed) & mask != 0
    }
}
