//! The event log behind `vswitch events`: a bounded ring of the daemon's
//! lifecycle events and the anomalies it detects, in memory only (as
//! Docker keeps its events).
//!
//! The controller records an event at the end of a step it took (a
//! network made, an endpoint connected, a member declared dead), never
//! on the per-packet path. Recording takes the ring's mutex for a push
//! and, when full, a pop of the oldest: nothing else is done under it,
//! so a request is never held up by a reader. Readers (`events -f`
//! streams, the anomaly thread's look at member changes) keep a cursor,
//! the last sequence number they took, and copy what came after it
//! (`Arc`s, not events) in bounded pieces; a reader that falls more than
//! the ring's length behind finds the events it missed gone, and is told
//! how many ([`Batch::missed`]). New events are announced on a `watch`
//! channel holding the last sequence number, which never waits either.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::anomaly::AnomalyKind;
use crate::api::{Event, EventType};

/// Events kept (Docker keeps 256; ours are small, so a few more).
pub const CAPACITY: usize = 1024;

/// An event to record: everything but its sequence number and time,
/// which the log gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    kind: EventType,
    action: String,
    actor: String,
    network: Option<String>,
    container: Option<String>,
    host: Option<String>,
    port: Option<String>,
    attributes: BTreeMap<String, String>,
}

impl NewEvent {
    /// `kind` `action` about `actor` (its name).
    pub fn new(kind: EventType, action: impl Into<String>, actor: impl Into<String>) -> NewEvent {
        NewEvent {
            kind,
            action: action.into(),
            actor: actor.into(),
            network: None,
            container: None,
            host: None,
            port: None,
            attributes: BTreeMap::new(),
        }
    }

    pub fn network(mut self, name: impl Into<String>) -> NewEvent {
        self.network = Some(name.into());
        self
    }

    pub fn container(mut self, name: impl Into<String>) -> NewEvent {
        self.container = Some(name.into());
        self
    }

    pub fn host(mut self, name: impl Into<String>) -> NewEvent {
        self.host = Some(name.into());
        self
    }

    pub fn port(mut self, port: impl Into<String>) -> NewEvent {
        self.port = Some(port.into());
        self
    }

    pub fn attr(mut self, key: &str, value: impl ToString) -> NewEvent {
        self.attributes.insert(key.to_string(), value.to_string());
        self
    }

    /// `attr` when there is a value.
    pub fn attr_opt(self, key: &str, value: Option<impl ToString>) -> NewEvent {
        match value {
            Some(v) => self.attr(key, v),
            None => self,
        }
    }
}

/// What a reader took: the events after its cursor (at most the number
/// it asked for), and how many it missed because the ring had moved on.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<Arc<Event>>,
    pub missed: u64,
}

#[derive(Debug)]
struct Ring {
    events: VecDeque<Arc<Event>>,
    capacity: usize,
    /// The sequence number the next event gets.
    next_seq: u64,
}

#[derive(Debug)]
struct Shared {
    ring: Mutex<Ring>,
    /// The last sequence number recorded, for followers to wait on.
    latest: tokio::sync::watch::Sender<u64>,
    /// Events recorded since start, by type (`/metrics`).
    by_type: [AtomicU64; EventType::ALL.len()],
    /// Anomalies that started since start, by kind (`/metrics`).
    anomalies: [AtomicU64; AnomalyKind::ALL.len()],
}

/// The daemon's event log; clones share it.
#[derive(Debug, Clone)]
pub struct EventLog {
    shared: Arc<Shared>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new(CAPACITY)
    }
}

impl EventLog {
    /// A log keeping the last `capacity` events (at least one).
    pub fn new(capacity: usize) -> EventLog {
        let capacity = capacity.max(1);
        EventLog {
            shared: Arc::new(Shared {
                ring: Mutex::new(Ring {
                    events: VecDeque::with_capacity(capacity),
                    capacity,
                    next_seq: 1,
                }),
                latest: tokio::sync::watch::Sender::new(0),
                by_type: Default::default(),
                anomalies: Default::default(),
            }),
        }
    }

    /// Records an event now; returns its sequence number. Never waits
    /// for a reader.
    pub fn emit(&self, e: NewEvent) -> u64 {
        let seq = {
            let mut ring = self.ring();
            let seq = ring.next_seq;
            ring.next_seq += 1;
            // Taken under the lock, so times rise with sequence numbers
            // (unless the wall clock is set back).
            let now = SystemTime::now();
            let time_nano = now
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            let event = Arc::new(Event {
                seq,
                time: humantime::format_rfc3339_micros(now).to_string(),
                time_nano,
                kind: e.kind,
                action: e.action,
                actor: e.actor,
                network: e.network,
                container: e.container,
                host: e.host,
                port: e.port,
                attributes: e.attributes,
            });
            if ring.events.len() == ring.capacity {
                ring.events.pop_front();
            }
            ring.events.push_back(event);
            seq
        };
        self.shared.by_type[e.kind.index()].fetch_add(1, Ordering::Relaxed);
        self.shared.latest.send_replace(seq);
        seq
    }

    /// Up to `max` events after sequence number `cursor` (0: from the
    /// oldest kept), and how many events after `cursor` are gone.
    pub fn read(&self, cursor: u64, max: usize) -> Batch {
        let ring = self.ring();
        let Some(first) = ring.events.front().map(|e| e.seq) else {
            return Batch::default();
        };
        // Everything before `first` has gone; a cursor before it missed
        // those after it.
        let missed = first.saturating_sub(cursor.saturating_add(1));
        let skip =
            usize::try_from(cursor.saturating_add(1).saturating_sub(first)).unwrap_or(usize::MAX);
        Batch {
            events: ring.events.iter().skip(skip).take(max).cloned().collect(),
            missed,
        }
    }

    /// The cursor that reads every event kept, without a miss.
    pub fn oldest_cursor(&self) -> u64 {
        let ring = self.ring();
        ring.events.front().map_or(ring.next_seq - 1, |e| e.seq - 1)
    }

    /// The cursor that reads only events recorded from now on.
    pub fn newest_cursor(&self) -> u64 {
        self.ring().next_seq - 1
    }

    /// A receiver that changes whenever an event is recorded.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.latest.subscribe()
    }

    /// Events recorded since start, for each of [`EventType::ALL`].
    pub fn counts(&self) -> [u64; EventType::ALL.len()] {
        std::array::from_fn(|i| self.shared.by_type[i].load(Ordering::Relaxed))
    }

    /// Counts an anomaly of `kind` that started.
    pub fn count_anomaly(&self, kind: AnomalyKind) {
        self.shared.anomalies[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Anomalies that started since start, for each of [`AnomalyKind::ALL`].
    pub fn anomaly_counts(&self) -> [u64; AnomalyKind::ALL.len()] {
        std::array::from_fn(|i| self.shared.anomalies[i].load(Ordering::Relaxed))
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        // The ring is consistent after every statement: a panic elsewhere
        // while it was held leaves nothing half done.
        self.shared.ring.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str) -> NewEvent {
        NewEvent::new(EventType::Network, "create", name).network(name)
    }

    #[test]
    fn sequence_rises_and_the_ring_keeps_the_newest() {
        let log = EventLog::new(3);
        assert_eq!(log.oldest_cursor(), 0);
        for i in 1..=5 {
            assert_eq!(log.emit(net(&format!("n{i}"))), i);
        }
        let b = log.read(log.oldest_cursor(), 10);
        assert_eq!(b.missed, 0);
        let names: Vec<_> = b.events.iter().map(|e| e.actor.as_str()).collect();
        assert_eq!(names, ["n3", "n4", "n5"]);
        assert!(b
            .events
            .windows(2)
            .all(|w| w[0].seq + 1 == w[1].seq && w[0].time_nano <= w[1].time_nano));
        assert!(b.events[0].time.ends_with('Z') && b.events[0].time.len() == 27);
        // A reader that had taken only the first lost the second.
        let b = log.read(1, 10);
        assert_eq!((b.missed, b.events.len()), (1, 3));
        // One that is up to date gets nothing.
        let b = log.read(5, 10);
        assert_eq!((b.missed, b.events.len()), (0, 0));
        // Pieces of at most `max`.
        let b = log.read(3, 1);
        assert_eq!(b.events[0].seq, 4);
        assert_eq!(log.newest_cursor(), 5);
        assert_eq!(log.counts()[EventType::Network.index()], 5);
    }

    #[test]
    fn followers_are_told_and_never_wait_the_writer() {
        let log = EventLog::new(2);
        let mut rx = log.subscribe();
        assert!(!rx.has_changed().unwrap());
        // Nobody reads: the writer goes on regardless.
        for _ in 0..10_000 {
            log.emit(net("x"));
        }
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 10_000);
        let b = log.read(0, 10);
        assert_eq!((b.missed, b.events.len()), (9_998, 2));
    }

    #[test]
    fn attributes_and_names_are_kept() {
        let log = EventLog::default();
        log.emit(
            NewEvent::new(EventType::Port, "publish", "c1")
                .network("web")
                .container("c1")
                .port("80/tcp")
                .attr("host", "0.0.0.0:8080")
                .attr_opt("missing", None::<&str>),
        );
        let e = log.read(0, 1).events.remove(0);
        assert_eq!(e.network.as_deref(), Some("web"));
        assert_eq!(e.port.as_deref(), Some("80/tcp"));
        assert_eq!(e.attributes.len(), 1);
        assert_eq!(e.attributes["host"], "0.0.0.0:8080");
    }
}
