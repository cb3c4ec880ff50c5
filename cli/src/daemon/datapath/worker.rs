//! A worker's loop: one `mio` poll, a turn per wake-up (events, commands,
//! handed frames, NAT sockets, ready TAPs, gateways, timers), and the
//! upkeep of its copy of the tables.

use super::egress::Egress;
use super::gateways::{bind_upstream, nat_of};
use super::*;

impl Datapath {
    pub(super) fn new(
        poll: Poll,
        rx: mpsc::Receiver<Command>,
        config: BridgeConfig,
        tunnel: Option<Tunnel>,
    ) -> Datapath {
        Datapath {
            poll,
            rx,
            bridge: Bridge::new(config),
            ports: FastMap::default(),
            gateways: FastMap::default(),
            ready: VecDeque::new(),
            dirty: Vec::new(),
            buf: vec![0u8; FRAME_BUF].into_boxed_slice(),
            out: vec![0u8; FRAME_BUF].into_boxed_slice(),
            reply: vec![0u8; NEIGHBOR_REPLY_BUF].into_boxed_slice(),
            seg: vec![0u8; SEG_BUF].into_boxed_slice(),
            route_buf: vec![0u8; FRAME_BUF].into_boxed_slice(),
            policy: PolicyState::default(),
            gro: GroRun {
                gro: Gro::new(false),
                port: None,
            },
            tunnel,
            quic: None,
            quic_rx: None,
            arena: DatagramArena::default(),
            rules: TunnelRules::new(),
            neighbors: Neighbors::new(),
            tunnel_counters: TunnelCounters::default(),
            suppressed: 0,
            nat_io: NatIo::new(),
            nat_ready: Vec::new(),
            index: 0,
            peers: Vec::new(),
            handed: Vec::new(),
            tap_rx: 0,
            tunnel_more: false,
            busy_poll: DEFAULT_BUSY_POLL,
            running: true,
        }
    }

    pub(super) fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        // Until then the thread polls without sleeping: the answer to a
        // frame just forwarded usually comes within tens of microseconds,
        // and waking a sleeping thread costs about as much again.
        let mut spin_until = Instant::now();
        while self.running {
            self.turn(&mut events, &mut spin_until)?;
        }
        Ok(())
    }

    /// One wake-up: waits for events (or not, while busy or spinning),
    /// then services every source that has work.
    pub(super) fn turn(&mut self, events: &mut Events, spin_until: &mut Instant) -> io::Result<()> {
        let now = Instant::now();
        let busy = !self.ready.is_empty()
            || !self.dirty.is_empty()
            || self.nat_io.has_retry()
            || self.tunnel_more;
        let timeout = if busy || now < *spin_until {
            Duration::ZERO
        } else {
            self.next_deadline(now)
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1))
        };
        match self.poll.poll(events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        if !events.is_empty() {
            *spin_until = now + self.busy_poll;
        } else if !busy && timeout.is_zero() {
            // Spinning with nothing to do: let a runnable thread have this
            // core first. On a machine with few cores that thread is often
            // the one the event waited for comes from (a container's
            // server, the client); spinning past it cost a third of the
            // connection rate with two workers on two cores.
            std::thread::yield_now();
        }
        // The tunnel is read once per turn: on its event, or because the
        // last turn's batch ended before its queue did (edge-triggered: no
        // new event comes for datagrams already queued).
        let mut tunnel_ready = std::mem::take(&mut self.tunnel_more);
        for ev in events.iter() {
            match Source::of(ev.token()) {
                Source::Waker => {}
                Source::Tunnel => tunnel_ready = true,
                Source::Quic => self.read_quic(now),
                Source::Nat(idx) => self.nat_ready.push(idx),
                Source::Upstream(network, v6) => self.read_upstream(network, v6, now),
                Source::Port(port) => self.mark_ready(port),
            }
        }
        if tunnel_ready {
            self.read_tunnel(now);
        }
        self.drain_commands();
        self.drain_handed(now);
        self.service_nat_sockets(now);
        self.service_ready(now);
        self.service_gateways(now);
        self.bridge.handle_timeout(now);
        self.policy.flows.handle_timeout(now);
        for h in self.peers.iter().flatten() {
            h.flush();
        }
        Ok(())
    }

    pub(super) fn next_deadline(&mut self, now: Instant) -> Option<Instant> {
        let mut next = self.bridge.poll_timeout();
        if let Some(t) = self.policy.flows.poll_timeout() {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        for slot in self.ports.values_mut() {
            if let Slot::Gateway(g) = slot {
                if let Some(t) = g.gateway.as_mut().and_then(|gw| gw.poll_timeout(now)) {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
                if let Some(t) = g.nat.as_mut().and_then(|n| n.poll_timeout(now)) {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
        }
        next
    }

    /// Delivers the frames other workers handed over (at most one pool's
    /// worth each, which is all they can have in flight) and gives their
    /// buffers back; takes the connections they accepted for this
    /// worker's NAT shards.
    pub(super) fn drain_handed(&mut self, now: Instant) {
        for i in 0..self.handed.len() {
            for _ in 0..HANDOFF_BUFS {
                let Ok(h) = self.handed[i].rx.try_recv() else {
                    break;
                };
                if let Ok(hdr) = VnetHdr::parse(&h.buf[..h.len]) {
                    if let Some(tries) = h.ingress {
                        // Read by another worker, whose flow table did
                        // not admit it: switched here, against this
                        // worker's table, as if read here.
                        let src = Src::Slice {
                            frame: &h.buf[..h.len],
                            coalesce: false,
                            tries,
                        };
                        self.switch_frame(
                            h.port,
                            src,
                            VnetHdr::LEN,
                            h.len - VnetHdr::LEN,
                            &hdr,
                            now,
                        );
                    } else {
                        self.deliver_handed(h.port, &hdr, &h.buf[VnetHdr::LEN..h.len], now);
                    }
                }
                let _ = self.handed[i].free.try_send(h.buf);
            }
            while let Ok(conn) = self.handed[i].conns.try_recv() {
                let Some((port, nat)) = nat_of(&self.gateways, &mut self.ports, conn.network)
                else {
                    continue;
                };
                self.nat_io.adopt(self.poll.registry(), nat, conn, now);
                if !self.dirty.contains(&port) {
                    self.dirty.push(port);
                }
            }
        }
    }

    /// Delivers a frame another worker switched to `to` (a gateway here).
    pub(super) fn deliver_handed(&mut self, to: PortId, hdr: &VnetHdr, frame: &[u8], now: Instant) {
        let Datapath {
            ports,
            dirty,
            seg,
            gro,
            tunnel,
            quic,
            arena,
            tunnel_counters,
            rules,
            peers,
            index,
            ..
        } = self;
        Egress {
            ports,
            dirty,
            seg,
            gro,
            tunnel: tunnel.as_ref(),
            quic: quic.as_ref(),
            arena,
            tunnel_counters,
            rules,
            peers,
            index: *index,
            from: Origin::Local,
            coalesce: false,
            now,
        }
        .deliver(to, hdr, frame);
    }

    pub(super) fn drain_commands(&mut self) {
        while let Ok(cmd) = self.rx.try_recv() {
            self.handle_command(cmd);
        }
    }

    pub(super) fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::AddNetwork {
                network,
                gateway,
                nat,
                reply,
            } => {
                let r = self.add_network(network, gateway, nat);
                let _ = reply.send(r);
            }
            Command::Publish {
                network,
                owner,
                published,
                reply,
            } => {
                let r = if self.nat_mut(network).is_some() {
                    self.nat_io
                        .add_published(self.poll.registry(), network, owner, published)
                        .map_err(DatapathError::Publish)
                } else {
                    Err(DatapathError::NoNat)
                };
                let _ = reply.send(r);
            }
            Command::Unpublish {
                network,
                owner,
                reply,
            } => {
                let registry = self.poll.registry();
                let nat = nat_of(&self.gateways, &mut self.ports, network).map(|(_, nat)| nat);
                self.nat_io.remove_published(registry, owner, nat);
                let _ = reply.send(());
            }
            Command::RemoveNetwork { network, reply } => {
                self.nat_io.remove_network(self.poll.registry(), network);
                for port in self.bridge.remove_network(network) {
                    self.remove_port(port);
                }
                self.neighbors.remove_network(network);
                self.rules.remove_network(network);
                if let Some(gw) = self.gateways.remove(&network) {
                    self.remove_port(gw);
                }
                let _ = reply.send(());
            }
            Command::AddPort {
                port,
                network,
                tap,
                read,
                security,
                reply,
            } => {
                let r = self.add_port(port, network, tap, read, security);
                let _ = reply.send(r);
            }
            Command::AddHandoff {
                port,
                network,
                mac,
                nat,
                reply,
            } => {
                let r = self.add_handoff(port, network, mac, nat);
                let _ = reply.send(r);
            }
            Command::RemovePort { port, reply } => {
                self.bridge.remove_port(port);
                let tap = match self.remove_port(port) {
                    Some(Slot::Tap(t)) => Some(t.tap),
                    _ => None,
                };
                let _ = reply.send(tap);
            }
            Command::SetCapture { ports, capture } => {
                for port in ports {
                    if let Some(Slot::Tap(t)) = self.ports.get_mut(&port) {
                        t.capture.clone_from(&capture);
                    }
                }
            }
            Command::SetVni { network, vni } => {
                self.rules.set_vni(network, vni);
            }
            Command::AddVtep { port, vtep, reply } => {
                let _ = reply.send(self.add_vtep(port, vtep));
            }
            Command::AddRemote {
                network,
                port,
                mac,
                ips,
            } => {
                if let Err(e) = self.bridge.set_static_mac(network, mac, port) {
                    tracing::debug!(%mac, error = %e, "remote MAC not pinned");
                }
                for ip in ips {
                    self.neighbors.insert(network, ip, mac);
                }
            }
            Command::RemoveRemote { network, mac, ips } => {
                self.bridge.remove_mac(network, mac);
                for ip in ips {
                    if self.neighbors.get(network, ip) == Some(mac) {
                        self.neighbors.remove(network, ip);
                    }
                }
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Command::SetPolicy { table } => self.set_policy(table),
            Command::Trace { probe, reply } => {
                let _ = reply.send(self.trace(&probe, Instant::now()));
            }
            Command::Shutdown => self.running = false,
        }
    }

    pub(super) fn add_network(
        &mut self,
        network: NetworkId,
        gateway: Option<(PortId, GatewayConfig)>,
        nat: Option<NatConfig>,
    ) -> Result<(), DatapathError> {
        self.bridge
            .add_network(network)
            .map_err(DatapathError::from)?;
        if let Some((port, config)) = gateway {
            let needs_v4 = config.upstreams.iter().any(|u| u.is_ipv4());
            let needs_v6 = config.upstreams.iter().any(|u| u.is_ipv6());
            let mac = config.mac;
            let registry = self.poll.registry();
            let upstream4 = if needs_v4 {
                Some(bind_upstream(registry, network, false).map_err(DatapathError::Upstream)?)
            } else {
                None
            };
            let upstream6 = if needs_v6 {
                match bind_upstream(registry, network, true) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!(error = %e, "no IPv6 socket for upstream DNS");
                        None
                    }
                }
            } else {
                None
            };
            let gateway = Gateway::new(config, Instant::now()).map_err(DatapathError::from)?;
            let nat = match nat {
                Some(c) => Some(self.new_nat(network, c)?),
                None => None,
            };
            self.bridge
                .add_port(port, network, None)
                .map_err(DatapathError::from)?;
            self.bridge
                .set_static_mac(network, mac, port)
                .map_err(DatapathError::from)?;
            self.ports.insert(
                port,
                Slot::Gateway(Box::new(GatewayPort {
                    gateway: Some(gateway),
                    nat,
                    upstream4,
                    upstream6,
                    counters: PortCounters::default(),
                })),
            );
            self.gateways.insert(network, port);
        }
        Ok(())
    }

    /// The gateway port of `network` on a worker other than the first: no
    /// gateway (frames for it go to the first worker), this worker's shard
    /// of the NAT.
    pub(super) fn add_handoff(
        &mut self,
        port: PortId,
        network: NetworkId,
        mac: MacAddr,
        nat: Option<NatConfig>,
    ) -> Result<(), DatapathError> {
        let nat = match nat {
            Some(c) => Some(self.new_nat(network, c)?),
            None => None,
        };
        self.bridge
            .add_port(port, network, None)
            .and_then(|()| self.bridge.set_static_mac(network, mac, port))
            .map_err(DatapathError::from)?;
        self.ports.insert(
            port,
            Slot::Gateway(Box::new(GatewayPort {
                gateway: None,
                nat,
                upstream4: None,
                upstream6: None,
                counters: PortCounters::default(),
            })),
        );
        self.gateways.insert(network, port);
        Ok(())
    }

    /// A tunnel port: admitted by the tunnel rules first, then a port of
    /// the bridge.
    pub(super) fn add_vtep(
        &mut self,
        port: PortId,
        vtep: Vtep<NetworkId>,
    ) -> Result<(), DatapathError> {
        self.rules.add_vtep(port, vtep)?;
        if let Err(e) = self.bridge.add_port(port, vtep.network, None) {
            self.rules.remove_vtep(port);
            return Err(e.into());
        }
        self.ports.insert(
            port,
            Slot::Vtep(VtepPort {
                remote_sockaddr: SockaddrStorage::from(vtep.remote),
                counters: PortCounters::default(),
            }),
        );
        Ok(())
    }

    pub(super) fn add_port(
        &mut self,
        port: PortId,
        network: NetworkId,
        tap: Tap,
        read: bool,
        security: PortSecurity,
    ) -> Result<(), DatapathError> {
        if !tap.vnet_hdr() {
            return Err(DatapathError::NoVnetHdr(tap.name().to_string()));
        }
        let mac = security.mac;
        self.bridge
            .add_port(port, network, Some(security))
            .map_err(DatapathError::from)?;
        if let Err(e) = self.bridge.set_static_mac(network, mac, port) {
            self.bridge.remove_port(port);
            return Err(e.into());
        }
        let fd = tap.as_raw_fd();
        if read {
            if let Err(e) = self.poll.registry().register(
                &mut SourceFd(&fd),
                port_token(port),
                Interest::READABLE,
            ) {
                self.bridge.remove_port(port);
                return Err(DatapathError::Register {
                    tap: tap.name().to_string(),
                    source: e,
                });
            }
        }
        self.ports.insert(
            port,
            Slot::Tap(TapPort {
                tap,
                read,
                counters: PortCounters::default(),
                queued: false,
                capture: None,
            }),
        );
        // Frames may have queued before registration.
        self.mark_ready(port);
        Ok(())
    }

    pub(super) fn remove_port(&mut self, port: PortId) -> Option<Slot> {
        let mut slot = self.ports.remove(&port)?;
        match &mut slot {
            Slot::Tap(t) => {
                if t.read {
                    let fd = t.tap.as_raw_fd();
                    let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                }
            }
            Slot::Gateway(g) => {
                for s in [&mut g.upstream4, &mut g.upstream6].into_iter().flatten() {
                    let _ = self.poll.registry().deregister(s);
                }
            }
            Slot::Vtep(_) => {
                self.rules.remove_vtep(port);
            }
        }
        self.ready.retain(|p| *p != port);
        self.dirty.retain(|p| *p != port);
        Some(slot)
    }

    /// A NAT for `network`, judging egress by the policies in force.
    fn new_nat(&self, network: NetworkId, config: NatConfig) -> Result<Nat, DatapathError> {
        let mut nat = Nat::new(config, Instant::now()).map_err(DatapathError::from)?;
        nat.set_policy(network, self.policy.table.clone());
        Ok(nat)
    }

    /// Puts a new policy table in force: flows admitted under the old one
    /// are judged again at their next packet, new egress flows by it.
    fn set_policy(&mut self, table: Arc<switch::policy::PolicyTable>) {
        for (network, port) in &self.gateways {
            if let Some(Slot::Gateway(g)) = self.ports.get_mut(port) {
                if let Some(nat) = g.nat.as_mut() {
                    nat.set_policy(*network, table.clone());
                }
            }
        }
        self.policy.table = table;
    }

    pub(super) fn stats(&self) -> DatapathStats {
        let mut ports = HashMap::new();
        let mut port_drops = HashMap::new();
        for (id, slot) in &self.ports {
            port_drops.insert(*id, self.bridge.port_drop_reasons(*id));
            let mut c = match slot {
                Slot::Tap(t) => t.counters,
                Slot::Gateway(g) => g.counters,
                Slot::Vtep(v) => v.counters,
            };
            c.drops = self.bridge.port_drops(*id);
            ports.insert(*id, c);
        }
        DatapathStats {
            ports,
            drops: *self.bridge.drops(),
            port_drops,
            fdb: *self.bridge.fdb_stats(),
            mac_entries: vec![self
                .bridge
                .networks()
                .map(|n| (n, self.bridge.fdb_learned_in_network(n)))
                .collect()],
            tunnel: self.tunnel_counters,
            tunnel_rx: self.rules.stats(),
            suppressed: self.suppressed,
            nat: self
                .gateways
                .iter()
                .filter_map(|(n, p)| match self.ports.get(p) {
                    Some(Slot::Gateway(g)) => Some((*n, g.nat.as_ref()?.stats())),
                    _ => None,
                })
                .collect(),
            policy: {
                let mut p = self.policy.counters();
                for slot in self.ports.values() {
                    if let Slot::Gateway(g) = slot {
                        if let Some(nat) = &g.nat {
                            nat.denials().add_to(&mut p.denied);
                        }
                    }
                }
                p
            },
            worker_rx_packets: vec![self.tap_rx],
            worker_nat_connections: vec![self
                .ports
                .values()
                .filter_map(|s| match s {
                    Slot::Gateway(g) => g.nat.as_ref().map(|n| n.stats()),
                    _ => None,
                })
                .map(|s| s.tcp_inbound + s.tcp_egress)
                .sum()],
        }
    }
}
