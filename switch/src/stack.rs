//! Plumbing shared by the cores that run a smoltcp interface over an
//! in-memory device (the [`gateway`](crate::gateway) and the
//! [`nat`](crate::nat)): the transmit queue, the clock conversion and a
//! small seeded RNG.

use std::collections::VecDeque;
use std::time::Instant;

/// Frames waiting for `poll_transmit`, with a bounded free list of buffers
/// so the steady state allocates nothing.
#[derive(Debug)]
pub(crate) struct TxQueue {
    pub(crate) frames: VecDeque<Vec<u8>>,
    free: Vec<Vec<u8>>,
    capacity: usize,
    /// Buffers kept for reuse at most.
    free_limit: usize,
    pub(crate) dropped: u64,
}

impl TxQueue {
    pub(crate) fn new(capacity: usize, free_limit: usize) -> TxQueue {
        TxQueue {
            frames: VecDeque::new(),
            free: Vec::new(),
            capacity,
            free_limit,
            dropped: 0,
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.frames.len() >= self.capacity
    }

    /// An empty buffer for the next frame, or `None` (counted) when full.
    pub(crate) fn alloc(&mut self) -> Option<Vec<u8>> {
        if self.is_full() {
            self.dropped += 1;
            return None;
        }
        let mut buf = self.free.pop().unwrap_or_default();
        buf.clear();
        Some(buf)
    }

    pub(crate) fn commit(&mut self, buf: Vec<u8>) {
        self.frames.push_back(buf);
    }

    pub(crate) fn recycle(&mut self, buf: Vec<u8>) {
        if self.free.len() < self.free_limit {
            self.free.push(buf);
        }
    }
}

/// splitmix64: fast, and unguessable from outside when seeded with a random
/// value (transaction ids, port choice).
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// smoltcp's clock: microseconds since `epoch` (when the core was made).
pub(crate) fn smol_instant(epoch: Instant, now: Instant) -> smoltcp::time::Instant {
    let micros = now.saturating_duration_since(epoch).as_micros();
    smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
}

/// An in-memory Ethernet wire for smoltcp stacks in tests: a container's
/// stack talks to a gateway or NAT through it.
#[cfg(test)]
pub(crate) mod test_wire {
    use std::collections::VecDeque;

    use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};

    #[derive(Default)]
    pub(crate) struct Wire {
        /// Frames for the stack to receive.
        pub(crate) rx: VecDeque<Vec<u8>>,
        /// Frames the stack sent.
        pub(crate) tx: VecDeque<Vec<u8>>,
    }

    pub(crate) struct WireRx(Vec<u8>);
    impl phy::RxToken for WireRx {
        fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
            f(&self.0)
        }
    }
    pub(crate) struct WireTx<'a>(&'a mut VecDeque<Vec<u8>>);
    impl phy::TxToken for WireTx<'_> {
        fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
            let mut buf = vec![0; len];
            let r = f(&mut buf);
            self.0.push_back(buf);
            r
        }
    }
    impl Device for Wire {
        type RxToken<'a> = WireRx;
        type TxToken<'a> = WireTx<'a>;
        fn receive(
            &mut self,
            _: smoltcp::time::Instant,
        ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
            let f = self.rx.pop_front()?;
            Some((WireRx(f), WireTx(&mut self.tx)))
        }
        fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
            Some(WireTx(&mut self.tx))
        }
        fn capabilities(&self) -> DeviceCapabilities {
            let mut caps = DeviceCapabilities::default();
            caps.medium = Medium::Ethernet;
            caps.max_transmission_unit = 1514;
            caps
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_queue_bounds_and_recycles() {
        let mut q = TxQueue::new(2, 1);
        for _ in 0..2 {
            let b = q.alloc().unwrap();
            q.commit(b);
        }
        assert!(q.alloc().is_none());
        assert_eq!(q.dropped, 1);
        let a = q.frames.pop_front().unwrap();
        let b = q.frames.pop_front().unwrap();
        q.recycle(a);
        q.recycle(b);
        assert_eq!(q.free.len(), 1);
    }

    #[test]
    fn clock_never_goes_negative() {
        let t = Instant::now();
        assert_eq!(smol_instant(t, t).total_micros(), 0);
        assert_eq!(
            smol_instant(t + std::time::Duration::from_secs(1), t).total_micros(),
            0
        );
    }
}
