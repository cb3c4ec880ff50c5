//! The control API server: HTTP/1.1 on a Unix socket, one task per
//! connection, requests decoded by [`Request::decode`] and executed by the
//! [`ControlPlane`] on a blocking thread (it does netlink and namespace
//! work, with the controller's lock taken only for the steps that do not
//! wait). `vswitch logs` is answered with a body streamed from the
//! container's log as it is read ([`LogCursor`]), `-f` until the command
//! has exited; `vswitch events` with the event log's lines
//! ([`EventStream`]), `-f` until the client goes.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::watch;

use super::controller::ControlPlane;
use super::datapath::{CaptureTap, Captured};
use super::events::EventLog;
use super::metrics::ApiMetrics;
use super::pcapng::PcapNgEncoder;
use super::ApiError;
use crate::api::{
    ErrorBody, EventLine, EventsMissed, EventsQuery, Info, Request, INFO_PATH, MAX_BODY,
};
use crate::container_log::LogCursor;

/// How long a request waiting for another host is retried.
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(10);
/// How often `vswitch logs -f` looks for more output.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(200);
/// How long a capture lets frames queue between pieces it sends.
const CAPTURE_COALESCE: std::time::Duration = std::time::Duration::from_millis(2);
/// How long a capture goes without writing.
const CAPTURE_IDLE: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a quiet `vswitch events -f` goes without writing (an empty
/// line), so a client that went is noticed.
const EVENTS_IDLE: std::time::Duration = std::time::Duration::from_secs(5);
/// The most of a log sent in one piece.
const LOG_CHUNK: usize = 64 * 1024;
/// The endpoint label of a request refused before it was decoded.
const INVALID: &str = "invalid";

/// A response body: a whole JSON answer, or a log as it is read.
type Body = UnsyncBoxBody<Bytes, std::io::Error>;

fn json_response(status: u16, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("static response parts are valid")
}

fn error_response(e: &ApiError) -> Response<Body> {
    let body = serde_json::to_vec(&ErrorBody {
        message: e.message.clone(),
    })
    .unwrap_or_default();
    json_response(e.status, body)
}

/// Answers one request and counts it (endpoint, method, status class).
async fn handle(
    ctrl: Arc<ControlPlane>,
    info: Arc<Info>,
    metrics: ApiMetrics,
    req: hyper::Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let (endpoint, response) = answer(ctrl, info, req).await;
    metrics.count(endpoint, &method, response.status().as_u16());
    Ok(response)
}

/// The answer, and the endpoint it was for (`invalid` when the request was
/// refused before it was decoded).
async fn answer(
    ctrl: Arc<ControlPlane>,
    info: Arc<Info>,
    req: hyper::Request<Incoming>,
) -> (&'static str, Response<Body>) {
    let method = req.method().as_str().to_owned();
    // With the query: `logs?follow=1` reads it.
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    // How this process runs: the server's to answer, not the controller's.
    if method == "GET" && req.uri().path() == INFO_PATH {
        return (
            "info",
            json_response(200, serde_json::to_vec(&*info).unwrap_or_default()),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            count_bad(&ctrl);
            return (
                INVALID,
                error_response(&ApiError::new(
                    413,
                    format!("request body too large or cut short (at most {MAX_BODY} bytes)"),
                )),
            );
        }
    };
    let request = match Request::decode(&method, &path, &body) {
        Ok(r) => r,
        Err(e) => {
            count_bad(&ctrl);
            tracing::debug!(%method, %path, error = %e, "refused API request");
            return (
                INVALID,
                error_response(&ApiError::new(e.status(), e.to_string())),
            );
        }
    };
    let endpoint = request.endpoint();
    let logs = match &request {
        Request::ContainerLogs { name, follow } => Some((name.clone(), *follow)),
        _ => None,
    };
    if let Request::Events(q) = request {
        return (endpoint, events_response(&ctrl, q));
    }
    if let Request::Capture(c) = request {
        let response = capture_response(ctrl, c)
            .await
            .unwrap_or_else(|e| error_response(&e));
        return (endpoint, response);
    }
    let result = {
        let ctrl = ctrl.clone();
        run_retrying(move || ctrl.handle(request.clone())).await
    };
    let response = match result {
        Ok(_) if logs.is_some() => {
            let (name, follow) = logs.expect("checked");
            match log_response(ctrl, name, follow).await {
                Ok(r) => r,
                Err(e) => error_response(&e),
            }
        }
        Ok(value) => json_response(200, serde_json::to_vec(&value).unwrap_or_default()),
        Err(e) => {
            if e.status >= 500 {
                tracing::warn!(%method, %path, error = %e.message, "API request failed");
            }
            error_response(&e)
        }
    };
    (endpoint, response)
}

/// `vswitch logs [-f]`: the container's log from its oldest byte kept,
/// as it is read; with `follow`, more as it is written, until the
/// container's command has exited and everything it wrote was sent.
async fn log_response(
    ctrl: Arc<ControlPlane>,
    name: String,
    follow: bool,
) -> Result<Response<Body>, ApiError> {
    let (id, dir) = {
        let ctrl = ctrl.clone();
        let name = name.clone();
        tokio::task::spawn_blocking(move || ctrl.lock()?.log_of(&name))
            .await
            .map_err(|e| ApiError::internal(format!("request handler failed: {e}")))??
    };
    let cursor = LogCursor::open(&dir)
        .map_err(|e| ApiError::internal(format!("reading the log in {}: {e}", dir.display())))?;
    let tail = Tail {
        ctrl,
        name,
        id,
        cursor: Some(cursor),
        follow,
        finished: !follow,
    };
    let stream = futures::stream::unfold(tail, Tail::next);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/octet-stream")
        .body(StreamBody::new(stream).boxed_unsync())
        .expect("static response parts are valid"))
}

/// `vswitch events`: the events kept (at or after `since`), one JSON
/// object a line; with `follow`, every new one as it is recorded, until
/// `until` or until the client goes. The log is read without the
/// controller's lock, and never holds up whoever records an event: a
/// reader too slow for the ring gets an `{"Missed": N}` line instead.
fn events_response(ctrl: &ControlPlane, query: EventsQuery) -> Response<Body> {
    let stream = EventStream::new(ctrl.events().clone(), query);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-ndjson")
        .body(StreamBody::new(futures::stream::unfold(stream, EventStream::next)).boxed_unsync())
        .expect("static response parts are valid")
}

/// The state of one `vswitch events` answer.
struct EventStream {
    log: EventLog,
    rx: watch::Receiver<u64>,
    /// The sequence number of the last event taken.
    cursor: u64,
    query: EventsQuery,
    done: bool,
}

impl EventStream {
    /// Events read from the log at a time.
    const PIECE: usize = 256;

    fn new(log: EventLog, query: EventsQuery) -> EventStream {
        // Subscribed first: an event recorded from here on wakes the stream.
        let rx = log.subscribe();
        let cursor = if query.since.is_some() || !query.follow {
            log.oldest_cursor()
        } else {
            // `-f` alone, as `docker events`: only what happens from now.
            log.newest_cursor()
        };
        EventStream {
            log,
            rx,
            cursor,
            query,
            done: false,
        }
    }

    async fn next(mut self) -> Option<(Result<Frame<Bytes>, std::io::Error>, EventStream)> {
        loop {
            if self.done {
                return None;
            }
            let batch = self.log.read(self.cursor, Self::PIECE);
            let mut out = Vec::new();
            if batch.missed > 0 {
                let line = EventLine::Missed(EventsMissed {
                    missed: batch.missed,
                });
                line_into(&mut out, &line);
            }
            for e in &batch.events {
                self.cursor = e.seq;
                if self.query.since.is_some_and(|s| e.time_nano < s) {
                    continue;
                }
                if self.query.until.is_some_and(|u| e.time_nano > u) {
                    self.done = true;
                    break;
                }
                line_into(&mut out, &**e);
            }
            if !out.is_empty() {
                return Some((Ok(Frame::data(Bytes::from(out))), self));
            }
            if self.done || (!self.query.follow && batch.events.len() < Self::PIECE) {
                return None;
            }
            if batch.events.len() == Self::PIECE {
                continue;
            }
            let mut wait = EVENTS_IDLE;
            if let Some(until) = self.query.until {
                let now = unix_nanos();
                if now > until {
                    return None;
                }
                wait = wait.min(std::time::Duration::from_nanos(until - now));
            }
            match tokio::time::timeout(wait, self.rx.changed()).await {
                Ok(Ok(())) => {}
                // The log went: the daemon stops.
                Ok(Err(_)) => return None,
                Err(_) if self.query.until.is_some_and(|u| unix_nanos() > u) => return None,
                // Quiet: an empty line, to find out whether the client is there.
                Err(_) => return Some((Ok(Frame::data(Bytes::from_static(b"\n"))), self)),
            }
        }
    }
}

/// `value` as a JSON line at the end of `out`.
fn line_into(out: &mut Vec<u8>, value: &impl serde::Serialize) {
    if serde_json::to_writer(&mut *out, value).is_ok() {
        out.push(b'\n');
    }
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `vswitch capture`: a pcapng stream of the frames the capture sees,
/// until `Count` frames have gone or the client goes away (which ends the
/// capture on the datapath).
async fn capture_response(
    ctrl: Arc<ControlPlane>,
    req: crate::api::CaptureRequest,
) -> Result<Response<Body>, ApiError> {
    let session = {
        let ctrl = ctrl.clone();
        let req = req.clone();
        tokio::task::spawn_blocking(move || ctrl.lock()?.start_capture(&req))
            .await
            .map_err(|e| ApiError::internal(format!("request handler failed: {e}")))??
    };
    let mut encoder = PcapNgEncoder::new(&session.interfaces, req.snaplen)
        .map_err(|e| ApiError::internal(format!("encoding the capture: {e}")))?;
    let head = encoder.take(CaptureStream::PIECE_CAPACITY);
    let stream = CaptureStream {
        guard: CaptureGuard {
            ctrl,
            id: session.id,
        },
        tap: session.tap,
        rx: session.rx,
        encoder,
        head: Some(head),
        left: req.count,
        done: false,
        coalesce: false,
        stats_at: std::time::Instant::now(),
        pending: std::collections::VecDeque::new(),
    };
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-pcapng")
        .body(StreamBody::new(futures::stream::unfold(stream, CaptureStream::next)).boxed_unsync())
        .expect("static response parts are valid"))
}

/// Ends its capture on the datapath when the answer is dropped (sent
/// whole, or the client gone).
struct CaptureGuard {
    ctrl: Arc<ControlPlane>,
    id: u64,
}

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        let (ctrl, id) = (self.ctrl.clone(), self.id);
        // The controller's lock may be held by a request doing netlink
        // work: not waited for on the server's thread.
        std::thread::spawn(move || {
            if let Ok(mut c) = ctrl.lock() {
                c.stop_capture(id);
            }
        });
    }
}

/// The state of one `vswitch capture` answer.
struct CaptureStream {
    guard: CaptureGuard,
    tap: Arc<CaptureTap>,
    rx: tokio::sync::mpsc::Receiver<Captured>,
    encoder: PcapNgEncoder,
    /// The section and interface blocks, sent first.
    head: Option<Vec<u8>>,
    /// Frames still to send (`Count`).
    left: Option<u64>,
    done: bool,
    /// Wait [`CAPTURE_COALESCE`] before reading the queue again.
    coalesce: bool,
    /// When statistics were last written.
    stats_at: std::time::Instant,
    /// Pieces of the last batch not sent yet: buffered blocks and large
    /// frames' own buffers, in order.
    pending: std::collections::VecDeque<Bytes>,
}

impl CaptureStream {
    /// Frames sent in one piece at most.
    const BATCH: usize = 1024;
    /// Bytes a piece is closed at (with the frame that crossed it): a
    /// buffer that size is reused by the allocator from piece to piece,
    /// where one of up to the queue's 16 MiB would be fresh pages each time.
    const PIECE: usize = 256 << 10;
    /// What a piece's buffer is made with: the bytes it is closed at and
    /// the largest frame that may cross them.
    const PIECE_CAPACITY: usize = Self::PIECE + (64 << 10) + 256;

    async fn next(mut self) -> Option<(Result<Frame<Bytes>, std::io::Error>, CaptureStream)> {
        if let Some(head) = self.head.take() {
            return Some((Ok(Frame::data(Bytes::from(head))), self));
        }
        if let Some(piece) = self.pending.pop_front() {
            return Some((Ok(Frame::data(piece)), self));
        }
        if self.done {
            return None;
        }
        let mut sent = 0;
        // The batch's pieces so far, and their bytes.
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut in_pieces = 0;
        if self.coalesce {
            // The last piece was not a full batch: a moment for more to
            // queue, so a busy port wakes this task some hundreds of times
            // a second, not once a frame (each wake-up is a syscall on the
            // worker that queued the frame).
            tokio::time::sleep(CAPTURE_COALESCE).await;
        }
        if self.left != Some(0) {
            // A quiet capture still writes, now and then (statistics so
            // far): a client that has gone is found, and the capture ended.
            let first = match tokio::time::timeout(CAPTURE_IDLE, self.rx.recv()).await {
                Ok(first) => first?,
                Err(_) => {
                    let (matched, dropped) = self.tap.counts();
                    if let Err(e) = self.encoder.statistics(matched, dropped) {
                        return Some((Err(e), self));
                    }
                    return Some((
                        Ok(Frame::data(Bytes::from(
                            self.encoder.take(Self::PIECE_CAPACITY),
                        ))),
                        self,
                    ));
                }
            };
            let mut c = Some(first);
            while let Some(frame) = c.take() {
                self.tap.taken(&frame);
                let before = pieces.len();
                if let Err(e) = self
                    .encoder
                    .packet_pieces(frame, &mut pieces, Self::PIECE_CAPACITY)
                {
                    return Some((Err(e), self));
                }
                in_pieces += pieces[before..].iter().map(Bytes::len).sum::<usize>();
                sent += 1;
                if let Some(left) = self.left.as_mut() {
                    *left -= 1;
                    if *left == 0 {
                        break;
                    }
                }
                if sent < Self::BATCH && self.encoder.buffered() + in_pieces < Self::PIECE {
                    c = self.rx.try_recv().ok();
                }
            }
        }
        self.coalesce = sent < Self::BATCH && self.encoder.buffered() + in_pieces < Self::PIECE;
        // Statistics once a second on a busy capture too, so a client
        // stopped at any moment knows what was dropped.
        if self.left != Some(0) && self.stats_at.elapsed() >= CAPTURE_IDLE {
            self.stats_at = std::time::Instant::now();
            let (matched, dropped) = self.tap.counts();
            if let Err(e) = self.encoder.statistics(matched, dropped) {
                return Some((Err(e), self));
            }
        }
        if self.left == Some(0) {
            let (matched, dropped) = self.tap.counts();
            if let Err(e) = self.encoder.statistics(matched, dropped) {
                return Some((Err(e), self));
            }
            self.done = true;
            tracing::debug!(id = self.guard.id, matched, dropped, "capture complete");
        }
        self.pending.extend(pieces);
        self.pending
            .push_back(Bytes::from(self.encoder.take(Self::PIECE_CAPACITY)));
        let first = self.pending.pop_front().unwrap_or_default();
        Some((Ok(Frame::data(first)), self))
    }
}

/// The state of one `vswitch logs` answer.
struct Tail {
    ctrl: Arc<ControlPlane>,
    name: String,
    id: String,
    /// Taken while a blocking thread reads with it.
    cursor: Option<LogCursor>,
    follow: bool,
    /// Nothing more will be written: the rest is read and the answer ends.
    finished: bool,
}

impl Tail {
    /// The next piece of the log, or the end.
    async fn next(mut self) -> Option<(Result<Frame<Bytes>, std::io::Error>, Tail)> {
        loop {
            let mut cursor = self.cursor.take()?;
            let (ctrl, name, id) = (self.ctrl.clone(), self.name.clone(), self.id.clone());
            let check = !self.finished;
            let (cursor, read, goes_on) = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; LOG_CHUNK];
                let read = cursor.read(&mut buf).map(|n| {
                    buf.truncate(n);
                    buf
                });
                // Asked only at the end of what is written: once the
                // command has exited, one more read finds the rest.
                let goes_on = match &read {
                    Ok(b) if b.is_empty() && check => {
                        ctrl.with(|c| c.log_continues(&name, &id)).unwrap_or(false)
                    }
                    _ => true,
                };
                (cursor, read, goes_on)
            })
            .await
            .ok()?;
            self.cursor = Some(cursor);
            match read {
                Err(e) => {
                    tracing::warn!(container = %self.name, error = %e, "reading a container's log");
                    self.cursor = None;
                    return Some((Err(e), self));
                }
                Ok(b) if !b.is_empty() => return Some((Ok(Frame::data(Bytes::from(b))), self)),
                Ok(_) if self.finished => return None,
                Ok(_) if !goes_on => self.finished = true,
                Ok(_) => tokio::time::sleep(FOLLOW_EVERY).await,
            }
            debug_assert!(self.follow);
        }
    }
}

fn count_bad(ctrl: &Arc<ControlPlane>) {
    ctrl.count_bad_request();
}

/// Serves until `shutdown` turns true; `GET /v1/info` answers `info`;
/// every answer is counted in `metrics`.
pub async fn serve(
    listener: UnixListener,
    ctrl: Arc<ControlPlane>,
    info: Info,
    metrics: ApiMetrics,
    shutdown: watch::Receiver<bool>,
) {
    let info = Arc::new(info);
    serve_unix(listener, "control", shutdown, move |req| {
        handle(ctrl.clone(), info.clone(), metrics.clone(), req)
    })
    .await
}

/// Runs a request on a blocking thread; a 503 ("waiting for another
/// host": address space for an overlay) is retried for a while, with the
/// controller unlocked in between so the answer can arrive.
pub(super) async fn run_retrying<F>(f: F) -> Result<serde_json::Value, ApiError>
where
    F: Fn() -> Result<serde_json::Value, ApiError> + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    loop {
        let f = f.clone();
        let result = tokio::task::spawn_blocking(move || f())
            .await
            .unwrap_or_else(|e| Err(ApiError::internal(format!("request handler failed: {e}"))));
        match result {
            Err(e) if e.status == 503 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Accepts HTTP/1.1 connections on `listener` (the `what` socket), one task
/// each, answered by `handler`, until `shutdown` turns true.
pub(super) async fn serve_unix<H, Fut, B>(
    listener: UnixListener,
    what: &'static str,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, socket = what, "accept");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let conn = http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(std::time::Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), service_fn(handler));
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, socket = what, "connection");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::EventType;
    use crate::daemon::events::NewEvent;

    fn net(name: &str) -> NewEvent {
        NewEvent::new(EventType::Network, "create", name)
    }

    /// The lines of the stream's next piece.
    async fn piece(s: EventStream) -> (Vec<EventLine>, Option<EventStream>) {
        match EventStream::next(s).await {
            None => (Vec::new(), None),
            Some((frame, s)) => {
                let data = frame.unwrap().into_data().unwrap();
                let lines = std::str::from_utf8(&data)
                    .unwrap()
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
                (lines, Some(s))
            }
        }
    }

    fn actors(lines: &[EventLine]) -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| match l {
                EventLine::Event(e) => Some(e.actor.clone()),
                EventLine::Missed(_) => None,
            })
            .collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_follower_that_falls_behind_is_told_what_it_missed() {
        let log = EventLog::new(4);
        log.emit(net("old"));
        let s = EventStream::new(
            log.clone(),
            EventsQuery {
                follow: true,
                ..Default::default()
            },
        );
        // Only what comes after it started; ten while it does not read.
        for i in 0..10 {
            log.emit(net(&format!("n{i}")));
        }
        let (lines, s) = piece(s).await;
        assert_eq!(lines[0], EventLine::Missed(EventsMissed { missed: 6 }));
        assert_eq!(actors(&lines), ["n6", "n7", "n8", "n9"]);
        // Caught up: it waits for the next one, then sends it alone.
        let writer = {
            let log = log.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                log.emit(net("later"));
            })
        };
        let (lines, _) = piece(s.unwrap()).await;
        writer.await.unwrap();
        assert_eq!(actors(&lines), ["later"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn without_follow_it_sends_what_is_kept_in_time_and_ends() {
        let log = EventLog::new(16);
        for i in 0..5 {
            log.emit(net(&format!("n{i}")));
        }
        let kept = log.read(0, 16).events;
        let (t1, t3) = (kept[1].time_nano, kept[3].time_nano);
        let s = EventStream::new(
            log.clone(),
            EventsQuery {
                since: Some(t1),
                until: Some(t3),
                follow: false,
            },
        );
        let (lines, s) = piece(s).await;
        // Times may repeat at a coarse clock; the window holds n1..n3.
        let got = actors(&lines);
        assert!(
            got.contains(&"n1".to_string()) && got.contains(&"n3".to_string()),
            "{got:?}"
        );
        assert!(!got.contains(&"n4".to_string()), "{got:?}");
        assert!(piece(s.unwrap()).await.1.is_none());
        let all = EventStream::new(log, EventsQuery::default());
        let (lines, _) = piece(all).await;
        assert_eq!(actors(&lines).len(), 5);
    }
}
