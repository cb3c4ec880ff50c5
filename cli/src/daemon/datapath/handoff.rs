//! What one worker hands another: frames for the first worker's gateways,
//! frames of a TCP connection for the NAT shard that owns it, and
//! published-port connections accepted for another shard. Each pair of
//! workers has a bounded frame queue with a pool of buffers allocated
//! once and handed back after use, and a bounded queue of connections.

use super::nat_io::Accepted;
use super::*;

/// Accepted connections that may wait for one worker at once; beyond,
/// the client is refused.
const HANDOFF_CONNS: usize = 1024;

/// A frame handed from one worker to another: `[virtio_net_hdr | frame]`
/// in a buffer of the sender's pool, bound for `port`.
pub(super) struct Handed {
    /// Where it goes, or with `ingress`, where it came from.
    pub(super) port: PortId,
    /// Read from `port` by another worker whose flow table did not admit
    /// it, to be switched here (`Some(workers that missed it)`), rather
    /// than delivered to `port`.
    pub(super) ingress: Option<u8>,
    pub(super) buf: Box<[u8]>,
    pub(super) len: usize,
}

/// A worker's way to another worker: a bounded frame queue, a pool of
/// buffers allocated once (the receiver sends them back), a bounded queue
/// of accepted connections, and the receiver's waker.
pub(super) struct Handoff {
    pub(super) tx: mpsc::SyncSender<Handed>,
    pub(super) free: mpsc::Receiver<Box<[u8]>>,
    pub(super) conns: mpsc::SyncSender<Accepted>,
    pub(super) waker: Arc<Waker>,
    /// Something was queued since the receiver was last woken: it is
    /// woken once per turn, not once per frame.
    pub(super) queued: std::cell::Cell<bool>,
}

/// The receiving end of one other worker's [`Handoff`].
pub(super) struct HandoffRx {
    pub(super) rx: mpsc::Receiver<Handed>,
    pub(super) free: mpsc::SyncSender<Box<[u8]>>,
    pub(super) conns: mpsc::Receiver<Accepted>,
}

/// A way to the worker whose waker is `waker`.
pub(super) fn handoff_pair(waker: Arc<Waker>) -> (Handoff, HandoffRx) {
    let (tx, rx) = mpsc::sync_channel(HANDOFF_BUFS);
    let (free_tx, free_rx) = mpsc::sync_channel(HANDOFF_BUFS);
    let (conns_tx, conns_rx) = mpsc::sync_channel(HANDOFF_CONNS);
    for _ in 0..HANDOFF_BUFS {
        let _ = free_tx.try_send(vec![0u8; FRAME_BUF].into_boxed_slice());
    }
    (
        Handoff {
            tx,
            free: free_rx,
            conns: conns_tx,
            waker,
            queued: std::cell::Cell::new(false),
        },
        HandoffRx {
            rx,
            free: free_tx,
            conns: conns_rx,
        },
    )
}

impl Handoff {
    /// Copies `[hdr | frame]` into a free buffer and queues it for the
    /// other worker. False when no buffer is free (it is behind): the
    /// frame is dropped.
    pub(super) fn hand(&self, port: PortId, hdr: &VnetHdr, frame: &[u8]) -> bool {
        self.hand_as(port, None, hdr, frame)
    }

    /// Copies `[hdr | frame]`, read from `port` and missed by `tries`
    /// workers' flow tables, for the other worker to switch (see
    /// [`Handed::ingress`]). False when no buffer is free.
    pub(super) fn hand_ingress(
        &self,
        port: PortId,
        tries: u8,
        hdr: &VnetHdr,
        frame: &[u8],
    ) -> bool {
        self.hand_as(port, Some(tries), hdr, frame)
    }

    fn hand_as(&self, port: PortId, ingress: Option<u8>, hdr: &VnetHdr, frame: &[u8]) -> bool {
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
        if self
            .tx
            .try_send(Handed {
                port,
                ingress,
                buf,
                len,
            })
            .is_err()
        {
            return false;
        }
        self.queued.set(true);
        true
    }

    /// Queues a connection accepted for the other worker's NAT shard; gives
    /// it back when the queue is full.
    pub(super) fn hand_conn(&self, conn: Accepted) -> Result<(), Accepted> {
        match self.conns.try_send(conn) {
            Ok(()) => {
                self.queued.set(true);
                Ok(())
            }
            Err(mpsc::TrySendError::Full(c) | mpsc::TrySendError::Disconnected(c)) => Err(c),
        }
    }

    /// Wakes the other worker if something was queued since the last call.
    pub(super) fn flush(&self) {
        if self.queued.replace(false) {
            let _ = self.waker.wake();
        }
    }
}

/// The handoffs between `count` workers whose wakers are `wakers`: for
/// each worker, its way to every other (none at its own index), and the
/// receiving ends of the others' ways to it.
pub(super) fn handoff_mesh(wakers: &[Arc<Waker>]) -> Vec<(Vec<Option<Handoff>>, Vec<HandoffRx>)> {
    let count = wakers.len();
    let mut mesh: Vec<(Vec<Option<Handoff>>, Vec<HandoffRx>)> = (0..count)
        .map(|_| ((0..count).map(|_| None).collect(), Vec::new()))
        .collect();
    for from in 0..count {
        for to in 0..count {
            if from != to {
                let (tx, rx) = handoff_pair(wakers[to].clone());
                mesh[from].0[to] = Some(tx);
                mesh[to].1.push(rx);
            }
        }
    }
    mesh
}
