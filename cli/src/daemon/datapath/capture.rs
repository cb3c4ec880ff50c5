//! `vswitch capture`: frames as the switch sees them at a TAP port, copied
//! out of the workers into a bounded queue for the API to stream.
//!
//! A port with no capture costs one `Option` test per frame read or
//! written. A port being captured hands each frame its filter takes to
//! [`CaptureTap::offer`], which copies at most `snaplen` bytes and queues
//! them without ever waiting: when the reader falls behind (its queue holds
//! [`MAX_QUEUED`] bytes), frames are dropped and counted, and the datapath
//! goes on at its own pace.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switch::capture::Filter;
use switch::PortId;
use tokio::sync::mpsc;

/// The most captured bytes waiting for the reader, per capture.
pub const MAX_QUEUED: usize = 16 << 20;
/// Captured frames waiting for the reader, at most.
const MAX_FRAMES: usize = 16 * 1024;

/// Which way a frame crossed the port, from the port's side: `In` was read
/// from the container's TAP (the container sent it), `Out` written to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

/// One captured frame.
#[derive(Debug)]
pub struct Captured {
    /// Since the Unix epoch.
    pub time: Duration,
    pub port: PortId,
    pub dir: Direction,
    /// The frame's length; `data` is at most the snap length of it.
    pub len: u32,
    pub data: Vec<u8>,
}

/// One running capture, shared by the workers whose ports it watches.
#[derive(Debug)]
pub struct CaptureTap {
    filter: Filter,
    snaplen: usize,
    tx: mpsc::Sender<Captured>,
    /// Bytes queued and not yet taken by the reader.
    queued: AtomicUsize,
    /// Frames the filter took.
    matched: AtomicU64,
    /// Of those, dropped because the reader was behind.
    dropped: AtomicU64,
}

impl CaptureTap {
    /// A capture and the receiving end its reader drains (calling
    /// [`CaptureTap::taken`] for each frame).
    pub fn new(filter: Filter, snaplen: usize) -> (CaptureTap, mpsc::Receiver<Captured>) {
        let (tx, rx) = mpsc::channel(MAX_FRAMES);
        let tap = CaptureTap {
            filter,
            snaplen: snaplen.max(1),
            tx,
            queued: AtomicUsize::new(0),
            matched: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        };
        (tap, rx)
    }

    /// Offers a frame that crossed `port`: copied and queued if the filter
    /// takes it and the reader keeps up, else dropped (and counted).
    pub(super) fn offer(&self, port: PortId, dir: Direction, frame: &[u8]) {
        if !self.filter.matches(frame) {
            return;
        }
        self.matched.fetch_add(1, Ordering::Relaxed);
        let n = frame.len().min(self.snaplen);
        if self.queued.load(Ordering::Relaxed) + n > MAX_QUEUED {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let c = Captured {
            time,
            port,
            dir,
            len: frame.len() as u32,
            data: frame[..n].to_vec(),
        };
        self.queued.fetch_add(n, Ordering::Relaxed);
        if self.tx.try_send(c).is_err() {
            // Full, or the reader has gone (the capture is being removed).
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The reader took `c` off the queue.
    pub fn taken(&self, c: &Captured) {
        self.queued.fetch_sub(c.data.len(), Ordering::Relaxed);
    }

    /// Frames the filter took so far, and how many of them were dropped.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.matched.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_reader_loses_frames_not_time_and_memory_stays_bounded() {
        let (tap, mut rx) = CaptureTap::new(Filter::parse("").unwrap(), 65_535);
        let frame = vec![0u8; 60_000];
        let start = std::time::Instant::now();
        for _ in 0..2_000 {
            tap.offer(PortId(1), Direction::In, &frame);
        }
        // Never waited for the reader.
        assert!(start.elapsed() < Duration::from_secs(5));
        let (matched, dropped) = tap.counts();
        assert_eq!(matched, 2_000);
        let kept = MAX_QUEUED / 60_000;
        assert_eq!(dropped, 2_000 - kept as u64);
        assert!(tap.queued.load(Ordering::Relaxed) <= MAX_QUEUED);
        // Once the reader takes what is queued, frames flow again.
        while let Ok(c) = rx.try_recv() {
            tap.taken(&c);
        }
        assert_eq!(tap.queued.load(Ordering::Relaxed), 0);
        tap.offer(PortId(1), Direction::Out, &frame[..100]);
        let c = rx.try_recv().unwrap();
        assert_eq!(
            (c.port, c.dir, c.len, c.data.len()),
            (PortId(1), Direction::Out, 100, 100)
        );
    }

    #[test]
    fn the_filter_and_snap_length_apply() {
        let (tap, mut rx) = CaptureTap::new(Filter::parse("arp").unwrap(), 20);
        let mut arp = vec![0xffu8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let mut ip = arp.clone();
        ip[12..14].copy_from_slice(&[0x08, 0x00]);
        tap.offer(PortId(2), Direction::In, &ip);
        tap.offer(PortId(2), Direction::In, &arp);
        let c = rx.try_recv().unwrap();
        assert_eq!((c.len, c.data.len()), (42, 20));
        assert!(rx.try_recv().is_err());
        assert_eq!(tap.counts(), (1, 0));
    }
}
