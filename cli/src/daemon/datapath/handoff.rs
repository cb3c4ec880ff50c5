//! Frames from the other workers to the first one, which owns the
//! gateways and NATs: a bounded queue per worker and a pool of buffers
//! allocated once, handed back after use.

use super::*;

/// A frame handed from a worker to the first one: `[virtio_net_hdr |
/// frame]` in a buffer of the sender's pool, bound for `port`.
pub(super) struct Handed {
    pub(super) port: PortId,
    pub(super) buf: Box<[u8]>,
    pub(super) len: usize,
}

/// A worker's way to the first worker, for frames bound for gateways:
/// a bounded queue, a pool of buffers allocated once (the first worker
/// sends them back), and the first worker's waker.
pub(super) struct Handoff {
    pub(super) tx: mpsc::SyncSender<Handed>,
    pub(super) free: mpsc::Receiver<Box<[u8]>>,
    pub(super) waker: Arc<Waker>,
    /// Frames were queued since the first worker was last woken: it is
    /// woken once per turn, not once per frame.
    pub(super) queued: std::cell::Cell<bool>,
}

/// The first worker's end of one other worker's [`Handoff`].
pub(super) struct HandoffRx {
    pub(super) rx: mpsc::Receiver<Handed>,
    pub(super) free: mpsc::SyncSender<Box<[u8]>>,
}

pub(super) fn handoff_pair(waker: Arc<Waker>) -> (Handoff, HandoffRx) {
    let (tx, rx) = mpsc::sync_channel(HANDOFF_BUFS);
    let (free_tx, free_rx) = mpsc::sync_channel(HANDOFF_BUFS);
    for _ in 0..HANDOFF_BUFS {
        let _ = free_tx.try_send(vec![0u8; FRAME_BUF].into_boxed_slice());
    }
    (
        Handoff {
            tx,
            free: free_rx,
            waker,
            queued: std::cell::Cell::new(false),
        },
        HandoffRx { rx, free: free_tx },
    )
}

impl Handoff {
    /// Copies `[hdr | frame]` into a free buffer and queues it for the
    /// first worker. False when no buffer is free (the first worker is
    /// behind): the frame is dropped.
    pub(super) fn hand(&self, port: PortId, hdr: &VnetHdr, frame: &[u8]) -> bool {
        let Ok(mut buf) = self.free.try_recv() else {
            return false;
        };
        let len = VnetHdr::LEN + frame.len();
        if len > buf.len() {
            return false;
        }
        hdr.write(&mut buf[..VnetHdr::LEN]);
        buf[VnetHdr::LEN..len].copy_from_slice(frame);
        // The queue holds as many entries as there are buffers: never full.
        if self.tx.try_send(Handed { port, buf, len }).is_err() {
            return false;
        }
        self.queued.set(true);
        true
    }

    /// Wakes the first worker if frames were queued since the last call.
    pub(super) fn flush(&self) {
        if self.queued.replace(false) {
            let _ = self.waker.wake();
        }
    }
}
