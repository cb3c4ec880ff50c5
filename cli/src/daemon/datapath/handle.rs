//! [`DatapathHandle`]: the control plane's end of the workers. It starts
//! them, and turns each call into a [`Command`] per worker and a bounded
//! wait for the answers.

use super::handoff::handoff_mesh;
use super::*;

/// One worker thread's command queue and waker.
#[derive(Debug)]
struct Worker {
    tx: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn send(&self, cmd: Command) -> Result<(), DatapathError> {
        self.tx.send(cmd).map_err(|_| DatapathError::Stopped)?;
        self.waker.wake().map_err(DatapathError::Wake)
    }

    fn ask<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Command) -> Result<T, DatapathError> {
        let (reply, rx) = mpsc::channel();
        self.send(make(reply))?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| DatapathError::NoAnswer)
    }
}

/// The control plane's end of the datapath workers.
///
/// Every worker is a thread with its own poller, its own copy of the
/// switching tables (kept equal by sending each the same commands), and
/// its own queue of every TAP (`IFF_MULTI_QUEUE`): the kernel spreads a
/// container's flows over the queues, so each worker switches the flows of
/// its queue, TAP to TAP and TAP to tunnel, without sharing anything on
/// the way. Each worker also holds its shard of every network's NAT: a TCP
/// connection through a published port or egress belongs to the worker its
/// tuple hashes to ([`switch::nat::tcp_shard`]), and a frame of it that
/// another worker's queue carried is handed over, through a bounded queue
/// of preallocated buffers per pair of workers. The first worker owns the
/// rest of what has state of its own: the gateways, the NATs' UDP and ICMP
/// flows and published listeners, and the QUIC receive queue. Each worker
/// reads its own tunnel socket, to which the kernel steers datagrams by
/// their inner flow ([`bind_tunnel`](super::bind_tunnel)).
#[derive(Debug)]
pub struct DatapathHandle {
    workers: Vec<Worker>,
}

impl DatapathHandle {
    /// Starts `workers` datapath threads (at least one, at most
    /// [`MAX_WORKERS`]).
    /// `tunnel`: the bound UDP sockets of the VXLAN tunnel, for overlays,
    /// one per worker from [`bind_tunnel`](super::bind_tunnel) (workers
    /// past the last send on a descriptor of the first and read none);
    /// `quic`: the QUIC endpoint of encrypted overlays.
    pub fn start(
        config: BridgeConfig,
        tunnel: Vec<std::net::UdpSocket>,
        quic: Option<QuicHandle>,
        workers: usize,
        busy_poll: Duration,
    ) -> io::Result<DatapathHandle> {
        let count = workers.clamp(1, MAX_WORKERS);
        let polls = (0..count)
            .map(|_| Poll::new())
            .collect::<io::Result<Vec<_>>>()?;
        let wakers = polls
            .iter()
            .map(|p| Waker::new(p.registry(), WAKER).map(Arc::new))
            .collect::<io::Result<Vec<_>>>()?;
        for sock in &tunnel {
            sock.set_nonblocking(true)?;
            // Bursts of a TCP window arrive faster than one wake-up
            // drains them: the default 208 KiB overflowed (17 % of
            // datagrams lost in netbench). The kernel caps these at
            // net.core.{r,w}mem_max.
            use nix::sys::socket::{setsockopt, sockopt};
            let _ = setsockopt(sock, sockopt::RcvBuf, &TUNNEL_SOCKET_BUF);
            let _ = setsockopt(sock, sockopt::SndBuf, &TUNNEL_SOCKET_BUF);
        }
        // Every worker's way to every other: to the first one's gateways,
        // to the NAT shard that owns a connection.
        let mut mesh = handoff_mesh(&wakers).into_iter();
        let mut list = Vec::with_capacity(count);
        for (k, (poll, waker)) in polls.into_iter().zip(wakers).enumerate() {
            // Each worker reads and sends on a socket of its own.
            let tunnel = match (tunnel.get(k), tunnel.first()) {
                (Some(sock), _) => {
                    let mut sock = UdpSocket::from_std(sock.try_clone()?);
                    poll.registry()
                        .register(&mut sock, TUNNEL, Interest::READABLE)?;
                    Some(Tunnel::new(sock)?)
                }
                (None, Some(sock)) => Some(Tunnel::new(UdpSocket::from_std(sock.try_clone()?))?),
                (None, None) => None,
            };
            let quic_rx = match &quic {
                Some(q) if k == 0 => Some(q.register(poll.registry(), QUIC)?),
                _ => None,
            };
            let (tx, rx) = mpsc::channel();
            let mut dp = Datapath::new(poll, rx, config, tunnel);
            dp.quic = quic.clone();
            dp.quic_rx = quic_rx;
            dp.busy_poll = busy_poll;
            let (peers, handed) = mesh.next().expect("one per worker");
            dp.index = k;
            dp.peers = peers;
            dp.handed = handed;
            let thread = std::thread::Builder::new()
                .name(format!("vswitch-dp{k}"))
                .spawn(move || {
                    if let Err(e) = dp.run() {
                        tracing::error!(error = %e, "datapath stopped");
                    }
                })?;
            list.push(Worker {
                tx,
                waker,
                thread: Some(thread),
            });
        }
        Ok(DatapathHandle { workers: list })
    }

    /// How many workers, and so how many queues each TAP should have.
    pub fn queues(&self) -> usize {
        self.workers.len()
    }

    fn first(&self) -> &Worker {
        &self.workers[0]
    }

    /// Sends every worker its command and waits for all the answers.
    fn ask_all<T>(
        &self,
        mut make: impl FnMut(usize, mpsc::Sender<T>) -> Command,
    ) -> Result<Vec<T>, DatapathError> {
        let mut answers = Vec::with_capacity(self.workers.len());
        for (k, w) in self.workers.iter().enumerate() {
            let (reply, rx) = mpsc::channel();
            w.send(make(k, reply))?;
            answers.push(rx);
        }
        answers
            .into_iter()
            .map(|rx| {
                rx.recv_timeout(Duration::from_secs(10))
                    .map_err(|_| DatapathError::NoAnswer)
            })
            .collect()
    }

    /// The first error of answers that are results.
    fn all_ok(answers: Vec<Result<(), DatapathError>>) -> Result<(), DatapathError> {
        answers.into_iter().collect()
    }

    fn send_all(&self, mut make: impl FnMut() -> Command) -> Result<(), DatapathError> {
        for w in &self.workers {
            w.send(make())?;
        }
        Ok(())
    }

    pub fn add_network(
        &self,
        network: NetworkId,
        gateway: Option<(PortId, GatewayConfig)>,
        nat: Option<NatConfig>,
    ) -> Result<(), DatapathError> {
        let handoff = gateway.as_ref().map(|(port, c)| (*port, c.mac));
        let count = self.workers.len();
        // Each worker's shard of the NAT.
        let shard = |k: usize| {
            nat.clone().map(|mut c| {
                c.shard = Shard { index: k, count };
                c
            })
        };
        let mut gateway = gateway;
        Self::all_ok(self.ask_all(|k, reply| Command::AddNetwork {
            network,
            gateway: if k == 0 { gateway.take() } else { None },
            nat: if k == 0 { shard(0) } else { None },
            reply,
        })?)?;
        if let Some((port, mac)) = handoff {
            for (k, w) in self.workers.iter().enumerate().skip(1) {
                w.ask(|reply| Command::AddHandoff {
                    port,
                    network,
                    mac,
                    nat: shard(k),
                    reply,
                })??;
            }
        }
        Ok(())
    }

    pub fn publish(
        &self,
        network: NetworkId,
        owner: PortId,
        published: Vec<Published>,
    ) -> Result<(), DatapathError> {
        self.first().ask(|reply| Command::Publish {
            network,
            owner,
            published,
            reply,
        })?
    }

    pub fn unpublish(&self, network: NetworkId, owner: PortId) -> Result<(), DatapathError> {
        self.first().ask(|reply| Command::Unpublish {
            network,
            owner,
            reply,
        })
    }

    pub fn remove_network(&self, network: NetworkId) -> Result<(), DatapathError> {
        self.ask_all(|_, reply| Command::RemoveNetwork { network, reply })
            .map(|_| ())
    }

    /// Attaches a TAP given as its queues (the first is kept when the port
    /// is removed). Each worker takes one queue; with fewer queues than
    /// workers (a TAP made single-queue by an older version), the others
    /// share the first queue's descriptor to write only.
    pub fn add_port(
        &self,
        port: PortId,
        network: NetworkId,
        queues: Vec<Tap>,
        security: PortSecurity,
    ) -> Result<(), DatapathError> {
        let workers = self.workers.len();
        let mut queues = queues.into_iter();
        let first = queues.next().ok_or(DatapathError::NoQueue)?;
        // Workers without a queue of their own (a TAP left single-queue by
        // an older version) write through a copy of the first descriptor
        // and leave the reading to the first worker.
        let mut shared = Vec::new();
        for _ in 1 + queues.len()..workers {
            let t = first.try_clone().map_err(DatapathError::ShareQueue)?;
            shared.push((t, false));
        }
        let taps: Vec<(Tap, bool)> = std::iter::once((first, true))
            .chain(queues.map(|t| (t, true)))
            .take(workers)
            .chain(shared)
            .collect();
        let mut taps = taps.into_iter();
        let answers = self.ask_all(|_, reply| {
            let (tap, read) = taps.next().expect("one per worker");
            Command::AddPort {
                port,
                network,
                tap,
                read,
                security: security.clone(),
                reply,
            }
        })?;
        if let Err(e) = Self::all_ok(answers) {
            let _ = self.remove_port(port);
            return Err(e);
        }
        Ok(())
    }

    /// Detaches a port from every worker; returns the first queue (the
    /// others are closed).
    pub fn remove_port(&self, port: PortId) -> Result<Option<Tap>, DatapathError> {
        let mut taps = self.ask_all(|_, reply| Command::RemovePort { port, reply })?;
        Ok(taps.swap_remove(0))
    }

    /// Points TAP ports `ports` at `capture` on every worker (`None`: the
    /// capture ends); every worker has switched when this returns.
    pub fn set_capture(
        &self,
        ports: &[PortId],
        capture: Option<Arc<CaptureTap>>,
    ) -> Result<(), DatapathError> {
        self.send_all(|| Command::SetCapture {
            ports: ports.to_vec(),
            capture: capture.clone(),
        })
    }

    pub fn set_vni(&self, network: NetworkId, vni: Option<Vni>) -> Result<(), DatapathError> {
        self.send_all(|| Command::SetVni { network, vni })
    }

    /// A tunnel port toward `vtep.remote`: another vswitch host of the
    /// cluster ([`VtepKind::Member`]; over QUIC for an encrypted network,
    /// `remote` then being the member's tunnel address, by which the QUIC
    /// endpoint knows it), or a static VTEP (`vswitch network vtep add`,
    /// typically a kernel vxlan device, whose frames are delivered one by
    /// one as sent since its UDP checksums may be zero).
    pub fn add_vtep(&self, port: PortId, vtep: Vtep<NetworkId>) -> Result<(), DatapathError> {
        Self::all_ok(self.ask_all(|_, reply| Command::AddVtep { port, vtep, reply })?)
    }

    pub fn add_remote(
        &self,
        network: NetworkId,
        port: PortId,
        mac: MacAddr,
        ips: Vec<IpAddr>,
    ) -> Result<(), DatapathError> {
        self.send_all(|| Command::AddRemote {
            network,
            port,
            mac,
            ips: ips.clone(),
        })
    }

    pub fn remove_remote(
        &self,
        network: NetworkId,
        mac: MacAddr,
        ips: Vec<IpAddr>,
    ) -> Result<(), DatapathError> {
        self.send_all(|| Command::RemoveRemote {
            network,
            mac,
            ips: ips.clone(),
        })
    }

    /// Puts a compiled policy table in force on every worker.
    pub fn set_policy(&self, table: Arc<switch::policy::PolicyTable>) -> Result<(), DatapathError> {
        self.send_all(|| Command::SetPolicy {
            table: table.clone(),
        })
    }

    /// Traces a synthetic frame through the first worker's tables (see
    /// `datapath/trace.rs`): nothing is learned, counted or sent.
    pub fn trace(&self, probe: TraceProbe) -> Result<TraceResult, DatapathError> {
        self.first().ask(|reply| Command::Trace { probe, reply })?
    }

    /// Every worker's counters, added up.
    pub fn stats(&self) -> Result<DatapathStats, DatapathError> {
        let all = self.ask_all(|_, reply| Command::Stats { reply })?;
        let mut all = all.into_iter();
        let mut total = all.next().unwrap_or_default();
        for s in all {
            total.worker_rx_packets.extend(s.worker_rx_packets);
            total
                .worker_nat_connections
                .extend(s.worker_nat_connections);
            total.mac_entries.extend(s.mac_entries);
            for (port, c) in s.ports {
                total.ports.entry(port).or_default().add(&c);
            }
            for (port, d) in s.port_drops {
                total.port_drops.entry(port).or_default().add(&d);
            }
            total.fdb.add(&s.fdb);
            total.drops.add(&s.drops);
            total.tunnel.add(&s.tunnel);
            total.tunnel_rx.add(&s.tunnel_rx);
            total.suppressed += s.suppressed;
            total.policy.add(&s.policy);
            for (network, n) in s.nat {
                total.nat.entry(network).or_default().add(&n);
            }
        }
        Ok(total)
    }

    /// Stops the threads and waits for them.
    pub fn shutdown(&mut self) {
        for w in &self.workers {
            let _ = w.send(Command::Shutdown);
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for DatapathHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
