//! The per-worker flow table: the policy is asked once per flow, its
//! answer kept (bounded, aged); replies of an admitted flow pass, and ICMP
//! errors about it. The key is the same both ways round ([`FlowKey::of`]),
//! so both directions of a flow meet the same entry.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::packet::{tcp, FlowPacket, Kind};
use super::table::{NameId, PolicyTable, Verdict, Who};
use crate::fdb::FastMap;

/// Flows one worker holds at most.
pub const MAX_FLOWS: usize = 65_536;
/// A TCP connection with both sides heard, idle.
pub const TCP_ESTABLISHED: Duration = Duration::from_secs(2 * 3600);
/// A TCP connection one side has not answered yet, or one closing.
pub const TCP_OPENING: Duration = Duration::from_secs(120);
/// A TCP connection after a RST, or after FIN both ways.
pub const TCP_CLOSED: Duration = Duration::from_secs(10);
/// A UDP or other flow both sides spoke in, idle.
pub const REPLIED: Duration = Duration::from_secs(180);
/// A UDP or other flow only its opener spoke in.
pub const UNREPLIED: Duration = Duration::from_secs(30);
/// How often expired flows are swept out.
const SWEEP: Duration = Duration::from_secs(5);

/// A flow's tuple, the same for both directions: the lower endpoint
/// first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    proto: u8,
    lo: (IpAddr, u16),
    hi: (IpAddr, u16),
}

impl FlowKey {
    /// The key of `pkt`'s flow, and whether `pkt` goes from the lower end.
    pub fn of(pkt: &FlowPacket) -> (FlowKey, bool) {
        let a = (pkt.src, pkt.sport);
        let b = (pkt.dst, pkt.dport);
        if a <= b {
            (
                FlowKey {
                    proto: pkt.proto,
                    lo: a,
                    hi: b,
                },
                true,
            )
        } else {
            (
                FlowKey {
                    proto: pkt.proto,
                    lo: b,
                    hi: a,
                },
                false,
            )
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Flow {
    /// The opener is the key's lower end.
    opened_by_lo: bool,
    /// The table generation the flow was last judged under.
    generation: u64,
    expires: Instant,
    /// Heard from the answering side.
    replied: bool,
    /// FIN seen from the lower end, from the upper end.
    fin: (bool, bool),
    rst: bool,
}

/// What the flow table says of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowVerdict {
    /// It passes; `true` when it opened a flow.
    Pass(bool),
    /// Dropped by a policy (counted under its name).
    Deny(NameId),
    /// The table is full: no new flow until some expire.
    Full,
}

/// Counters of a [`Flows`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Flows admitted.
    pub opened: u64,
    /// Flows that aged out or closed.
    pub expired: u64,
    /// Flows a newer table no longer admits, cut.
    pub revoked: u64,
    /// New flows refused for a full table.
    pub full: u64,
}

/// One worker's flows (see the module's documentation).
#[derive(Debug)]
pub struct Flows {
    map: FastMap<FlowKey, Flow>,
    max: usize,
    next_sweep: Option<Instant>,
    stats: FlowStats,
}

impl Default for Flows {
    fn default() -> Self {
        Flows::new(MAX_FLOWS)
    }
}

impl Flows {
    /// A table of at most `max` flows.
    pub fn new(max: usize) -> Flows {
        Flows {
            map: FastMap::default(),
            max,
            next_sweep: None,
            stats: FlowStats::default(),
        }
    }

    /// Judges `pkt` (from `src` to `dst`, as `table` identifies them): a
    /// packet of an admitted flow passes (in either direction) and keeps it
    /// alive; an ICMP error passes when it quotes an admitted flow; the
    /// first packet of a flow is the table's to judge. A flow admitted
    /// under an older table is judged again, as its opener, and cut when
    /// it no longer passes.
    pub fn check(
        &mut self,
        table: &PolicyTable,
        pkt: &FlowPacket,
        src: Who,
        dst: Who,
        now: Instant,
    ) -> FlowVerdict {
        if pkt.kind == Kind::Link {
            return FlowVerdict::Pass(false);
        }
        let (key, from_lo) = FlowKey::of(pkt);
        if let Some(flow) = self.map.get_mut(&key) {
            if flow.expires > now {
                if flow.generation != table.generation() {
                    // Judged again as its opener would be.
                    let (s, d, dport) = if from_lo == flow.opened_by_lo {
                        (src, dst, pkt.dport)
                    } else {
                        (dst, src, pkt.sport)
                    };
                    if let Verdict::Deny(name) = table.check(s, d, pkt.proto, dport) {
                        self.map.remove(&key);
                        self.stats.revoked += 1;
                        return FlowVerdict::Deny(name);
                    }
                    flow.generation = table.generation();
                }
                if pkt.kind == Kind::Related {
                    return FlowVerdict::Pass(false);
                }
                let opener = from_lo == flow.opened_by_lo;
                flow.replied |= !opener;
                if pkt.proto == 6 {
                    if pkt.tcp_flags & tcp::RST != 0 {
                        flow.rst = true;
                    }
                    if pkt.tcp_flags & tcp::FIN != 0 {
                        if from_lo {
                            flow.fin.0 = true;
                        } else {
                            flow.fin.1 = true;
                        }
                    }
                }
                flow.expires = now + flow.timeout(pkt.proto);
                return FlowVerdict::Pass(false);
            }
            self.map.remove(&key);
            self.stats.expired += 1;
        }
        if pkt.kind == Kind::Related {
            // About nothing admitted: judged as a flow of its own (ICMP).
            return match table.check(dst, src, 1, 0) {
                Verdict::Allow => FlowVerdict::Pass(false),
                Verdict::Deny(name) => FlowVerdict::Deny(name),
            };
        }
        let dport = if pkt.kind == Kind::Fragment {
            0
        } else {
            pkt.dport
        };
        if let Verdict::Deny(name) = table.check(src, dst, pkt.proto, dport) {
            return FlowVerdict::Deny(name);
        }
        if pkt.kind == Kind::Fragment {
            // No ports to key a flow by: passes on its own merit.
            return FlowVerdict::Pass(false);
        }
        if self.map.len() >= self.max {
            self.sweep(now);
            if self.map.len() >= self.max {
                self.stats.full += 1;
                return FlowVerdict::Full;
            }
        }
        let mut flow = Flow {
            opened_by_lo: from_lo,
            generation: table.generation(),
            expires: now,
            replied: false,
            fin: (false, false),
            rst: pkt.proto == 6 && pkt.tcp_flags & tcp::RST != 0,
        };
        flow.expires = now + flow.timeout(pkt.proto);
        self.map.insert(key, flow);
        self.stats.opened += 1;
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP);
        }
        FlowVerdict::Pass(true)
    }

    /// Sweeps expired flows out when it is time.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|t| t <= now) {
            self.sweep(now);
        }
    }

    /// When [`Flows::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    fn sweep(&mut self, now: Instant) {
        let before = self.map.len();
        self.map.retain(|_, f| f.expires > now);
        self.stats.expired += (before - self.map.len()) as u64;
        self.next_sweep = (!self.map.is_empty()).then(|| now + SWEEP);
    }

    /// Flows held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No flow held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The counters.
    pub fn stats(&self) -> FlowStats {
        self.stats
    }
}

impl Flow {
    fn timeout(&self, proto: u8) -> Duration {
        if proto == 6 {
            if self.rst || (self.fin.0 && self.fin.1) {
                TCP_CLOSED
            } else if self.replied && !self.fin.0 && !self.fin.1 {
                TCP_ESTABLISHED
            } else {
                TCP_OPENING
            }
        } else if self.replied {
            REPLIED
        } else {
            UNREPLIED
        }
    }
}
