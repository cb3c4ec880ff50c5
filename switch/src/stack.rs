//! Plumbing shared by the cores that run a smoltcp interface over an
//! in-memory device (the [`gateway`](crate::gateway) and the
//! [`nat`](crate::nat)): the link checks, the device and its transmit
//! queue, the clock conversion and a small seeded RNG.
//!
//! The device ([`QueueDevice`]) lends smoltcp at most one received packet
//! (borrowed from the caller, never copied) and writes what smoltcp sends
//! into buffers of a bounded [`TxQueue`]. What differs between the two
//! users is the [`Framing`]: the gateway's Ethernet-medium interface
//! writes whole frames ([`Whole`]); the NAT's IP-medium one writes IP
//! packets behind room for an Ethernet header the NAT fills in itself.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, PacketMeta};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use crate::gateway::GatewayError;
use crate::MacAddr;

/// Checks the link settings a network's gateway side is built from (the
/// gateway's and the NAT's): a unicast MAC, an MTU smoltcp and IPv6 accept,
/// unicast addresses with prefixes that fit.
pub(crate) fn check_interface(
    mac: MacAddr,
    mtu: usize,
    ipv4: Option<(Ipv4Addr, u8)>,
    ipv6: Option<(Ipv6Addr, u8)>,
) -> Result<(), GatewayError> {
    if mac.is_multicast() || mac.is_zero() {
        return Err(GatewayError::MacNotUnicast(mac));
    }
    let min_mtu = if ipv6.is_some() { 1280 } else { 576 };
    if mtu < min_mtu || mtu > usize::from(u16::MAX) {
        return Err(GatewayError::Mtu(mtu));
    }
    if let Some((addr, prefix)) = ipv4 {
        if prefix > 32 {
            return Err(GatewayError::PrefixLen(prefix));
        }
        if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() || addr.is_loopback()
        {
            return Err(GatewayError::NotUnicast(addr.into()));
        }
    }
    if let Some((addr, prefix)) = ipv6 {
        if prefix > 128 {
            return Err(GatewayError::PrefixLen(prefix));
        }
        if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
            return Err(GatewayError::NotUnicast(addr.into()));
        }
    }
    Ok(())
}

/// Frames waiting for `poll_transmit`, bounded in count and in bytes, with
/// a bounded free list of buffers so the steady state allocates nothing.
#[derive(Debug)]
pub(crate) struct TxQueue {
    pub(crate) frames: VecDeque<Vec<u8>>,
    free: Vec<Vec<u8>>,
    capacity: usize,
    /// Bytes queued at most (a queue of 64 KiB super-frames is bounded by
    /// this rather than by the count).
    byte_capacity: usize,
    bytes: usize,
    /// Buffers kept for reuse at most.
    free_limit: usize,
    /// Frames dropped: the queue was full, or a frame was too large for the
    /// caller's buffer.
    pub(crate) dropped: u64,
}

impl TxQueue {
    pub(crate) fn new(capacity: usize, byte_capacity: usize, free_limit: usize) -> TxQueue {
        TxQueue {
            frames: VecDeque::new(),
            free: Vec::new(),
            capacity,
            byte_capacity,
            bytes: 0,
            free_limit,
            dropped: 0,
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.frames.len() >= self.capacity || self.bytes >= self.byte_capacity
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
        self.bytes += buf.len();
        self.frames.push_back(buf);
    }

    pub(crate) fn recycle(&mut self, buf: Vec<u8>) {
        if self.free.len() < self.free_limit {
            self.free.push(buf);
        }
    }

    /// The next frame, to hand back with [`TxQueue::recycle`].
    pub(crate) fn pop(&mut self) -> Option<Vec<u8>> {
        let frame = self.frames.pop_front()?;
        self.bytes -= frame.len();
        Some(frame)
    }

    /// Copies the next frame into `out` and returns its length. A frame
    /// longer than `out` is dropped (counted) and the next one tried.
    pub(crate) fn pop_into(&mut self, out: &mut [u8]) -> Option<usize> {
        loop {
            let frame = self.pop()?;
            let n = frame.len();
            let fits = n <= out.len();
            if fits {
                out[..n].copy_from_slice(&frame);
            }
            self.recycle(frame);
            if fits {
                return Some(n);
            }
            self.dropped += 1;
        }
    }
}

/// How a [`QueueDevice`] turns what smoltcp writes into a queued frame.
pub(crate) trait Framing {
    /// Bytes kept in front of smoltcp's packet in each frame.
    const HEADROOM: usize;

    /// Completes `frame` (the headroom, then smoltcp's packet), which
    /// smoltcp sent with `meta` (the segment size it asks the device to cut
    /// a TCP super-frame into, if any); false drops it.
    fn finish(&mut self, frame: &mut [u8], meta: PacketMeta) -> bool;
}

/// smoltcp writes whole frames (an Ethernet-medium interface).
pub(crate) struct Whole;

impl Framing for Whole {
    const HEADROOM: usize = 0;

    fn finish(&mut self, _frame: &mut [u8], _meta: PacketMeta) -> bool {
        true
    }
}

/// The smoltcp device: at most one received packet (borrowed from the
/// caller, never copied) and the transmit queue.
pub(crate) struct QueueDevice<'a, F> {
    pub(crate) rx: Option<&'a [u8]>,
    pub(crate) tx: &'a mut TxQueue,
    pub(crate) framing: F,
    pub(crate) caps: &'a DeviceCapabilities,
}

impl<F: Framing> Device for QueueDevice<'_, F> {
    type RxToken<'b>
        = QueueRx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = QueueTx<'b, F>
    where
        Self: 'b;

    fn receive(
        &mut self,
        _timestamp: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.rx.take()?;
        Some((
            QueueRx(packet),
            QueueTx {
                tx: self.tx,
                framing: &mut self.framing,
                meta: PacketMeta::default(),
            },
        ))
    }

    fn transmit(&mut self, _timestamp: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        if self.tx.is_full() {
            return None;
        }
        Some(QueueTx {
            tx: self.tx,
            framing: &mut self.framing,
            meta: PacketMeta::default(),
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

pub(crate) struct QueueRx<'a>(&'a [u8]);

impl phy::RxToken for QueueRx<'_> {
    fn consume<R, G>(self, f: G) -> R
    where
        G: FnOnce(&[u8]) -> R,
    {
        f(self.0)
    }
}

pub(crate) struct QueueTx<'a, F> {
    tx: &'a mut TxQueue,
    framing: &'a mut F,
    meta: PacketMeta,
}

impl<F: Framing> phy::TxToken for QueueTx<'_, F> {
    fn consume<R, G>(self, len: usize, f: G) -> R
    where
        G: FnOnce(&mut [u8]) -> R,
    {
        let Some(mut buf) = self.tx.alloc() else {
            // smoltcp needs its closure run; the packet is dropped (counted).
            return f(&mut vec![0; len]);
        };
        buf.resize(F::HEADROOM + len, 0);
        let r = f(&mut buf[F::HEADROOM..]);
        if self.framing.finish(&mut buf, self.meta) {
            self.tx.commit(buf);
        } else {
            self.tx.recycle(buf);
        }
        r
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        self.meta = meta;
    }
}

/// A smoltcp interface for a [`QueueDevice`] with `caps` (smoltcp reads only
/// the capabilities when it builds one).
pub(crate) fn new_interface(
    hardware: HardwareAddress,
    random_seed: u64,
    caps: &DeviceCapabilities,
    now: Instant,
) -> Interface {
    let mut tx = TxQueue::new(0, 0, 0);
    let mut device = QueueDevice {
        rx: None,
        tx: &mut tx,
        framing: Whole,
        caps,
    };
    let mut config = IfaceConfig::new(hardware);
    config.random_seed = random_seed;
    Interface::new(config, &mut device, smol_instant(now, now))
}

/// Gives `iface` the network's gateway addresses with their prefixes,
/// IPv4 first.
pub(crate) fn add_addrs(
    iface: &mut Interface,
    ipv4: Option<(Ipv4Addr, u8)>,
    ipv6: Option<(Ipv6Addr, u8)>,
) {
    iface.update_ip_addrs(|addrs| {
        if let Some((addr, prefix)) = ipv4 {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(addr), prefix));
        }
        if let Some((addr, prefix)) = ipv6 {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(addr), prefix));
        }
    });
}

/// When smoltcp next wants to be polled, on the caller's clock.
pub(crate) fn poll_at(
    iface: &mut Interface,
    sockets: &SocketSet<'_>,
    epoch: Instant,
    now: Instant,
) -> Option<Instant> {
    iface
        .poll_at(smol_instant(epoch, now), sockets)
        .and_then(|t| epoch.checked_add(Duration::from_micros(t.total_micros().max(0) as u64)))
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
        let mut q = TxQueue::new(2, usize::MAX, 1);
        for _ in 0..2 {
            let b = q.alloc().unwrap();
            q.commit(b);
        }
        assert!(q.alloc().is_none());
        assert_eq!(q.dropped, 1);
        let a = q.pop().unwrap();
        let b = q.pop().unwrap();
        q.recycle(a);
        q.recycle(b);
        assert_eq!(q.free.len(), 1);
    }

    #[test]
    fn tx_queue_is_bounded_in_bytes() {
        let mut q = TxQueue::new(100, 1000, 4);
        let mut b = q.alloc().unwrap();
        b.resize(999, 0);
        q.commit(b);
        let mut b = q.alloc().unwrap();
        b.resize(10, 0);
        q.commit(b);
        assert!(q.is_full());
        assert!(q.alloc().is_none());
        let a = q.pop().unwrap();
        q.recycle(a);
        assert!(!q.is_full());
    }

    #[test]
    fn pop_into_drops_frames_too_big_for_the_buffer() {
        let mut q = TxQueue::new(4, usize::MAX, 4);
        for len in [10, 3] {
            let mut b = q.alloc().unwrap();
            b.resize(len, 7);
            q.commit(b);
        }
        let mut out = [0u8; 4];
        assert_eq!(q.pop_into(&mut out), Some(3));
        assert_eq!(q.dropped, 1);
        assert_eq!(q.pop_into(&mut out), None);
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
