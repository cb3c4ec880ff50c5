//! The gossip side of the daemon: one thread owns the gossip UDP socket and
//! drives the sans-IO [`Gossip`] core (receive, timers, transmit); events go
//! to the controller through a channel. The controller changes the cluster
//! state through [`GossipThread::with`], which flushes what the change produced.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use overlay::{Gossip, GossipEvent};

/// Largest gossip datagram read.
const RECV_BUF: usize = 65_536;
/// Longest sleep of the gossip thread, so shutdown is prompt.
const MAX_WAIT: Duration = Duration::from_millis(200);

/// The running gossip endpoint.
#[derive(Debug)]
pub struct GossipThread {
    gossip: Arc<Mutex<Gossip>>,
    socket: Arc<UdpSocket>,
    events: mpsc::Sender<GossipEvent>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock(g: &Mutex<Gossip>) -> MutexGuard<'_, Gossip> {
    g.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends what gossip has to send and hands its events on.
fn flush(g: &mut Gossip, socket: &UdpSocket, events: &mpsc::Sender<GossipEvent>, buf: &mut [u8]) {
    while let Some((to, n)) = g.poll_transmit(buf) {
        if let Err(e) = socket.send_to(&buf[..n], to) {
            tracing::debug!(%to, error = %e, "gossip send");
        }
    }
    while let Some(ev) = g.poll_event() {
        let _ = events.send(ev);
    }
}

impl GossipThread {
    /// Starts the gossip thread on `socket` (already bound).
    pub fn start(
        gossip: Gossip,
        socket: UdpSocket,
        events: mpsc::Sender<GossipEvent>,
    ) -> io::Result<GossipThread> {
        let gossip = Arc::new(Mutex::new(gossip));
        let socket = Arc::new(socket);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (gossip, socket, stop, events) =
                (gossip.clone(), socket.clone(), stop.clone(), events.clone());
            std::thread::Builder::new()
                .name("vswitch-gossip".into())
                .spawn(move || run(gossip, socket, stop, events))?
        };
        Ok(GossipThread {
            gossip,
            socket,
            events,
            stop,
            thread: Some(thread),
        })
    }

    /// Runs `f` on the gossip core, then sends what it produced.
    pub fn with<R>(&self, f: impl FnOnce(&mut Gossip, Instant) -> R) -> R {
        let mut g = lock(&self.gossip);
        let r = f(&mut g, Instant::now());
        let mut buf = vec![0u8; RECV_BUF];
        flush(&mut g, &self.socket, &self.events, &mut buf);
        r
    }

    /// The gossip socket's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Stops the thread (after a leave, if the caller made one).
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for GossipThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(
    gossip: Arc<Mutex<Gossip>>,
    socket: Arc<UdpSocket>,
    stop: Arc<AtomicBool>,
    events: mpsc::Sender<GossipEvent>,
) {
    let mut rx = vec![0u8; RECV_BUF];
    let mut tx = vec![0u8; RECV_BUF];
    while !stop.load(Ordering::Relaxed) {
        let wait = {
            let g = lock(&gossip);
            let now = Instant::now();
            g.poll_timeout()
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(MAX_WAIT)
                .clamp(Duration::from_millis(1), MAX_WAIT)
        };
        let _ = socket.set_read_timeout(Some(wait));
        let received = socket.recv_from(&mut rx);
        let mut g = lock(&gossip);
        let now = Instant::now();
        match received {
            Ok((n, from)) => {
                g.handle_datagram(from, &rx[..n], now);
                // Drain what else is queued without blocking.
                let _ = socket.set_nonblocking(true);
                for _ in 0..64 {
                    match socket.recv_from(&mut rx) {
                        Ok((n, from)) => g.handle_datagram(from, &rx[..n], now),
                        Err(_) => break,
                    }
                }
                let _ = socket.set_nonblocking(false);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                tracing::debug!(error = %e, "gossip receive");
            }
        }
        if g.poll_timeout().is_some_and(|t| t <= now) {
            g.handle_timeout(now);
        }
        flush(&mut g, &socket, &events, &mut tx);
    }
}
