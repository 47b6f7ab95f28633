//! What a client connection may hold of the public listener: a request head must arrive within
//! the header timeout (slowloris), an idle keep-alive connection closes after the idle timeout,
//! and at most `HTTP_MAX_CONNECTIONS` are open: beyond that, new connections wait in the
//! kernel's listen backlog. When accept fails for lack of descriptors (EMFILE), the listener
//! backs off instead of spinning.
//!
//! Done at the socket, below hyper: poem's server exposes no header timeout, and hyper's own
//! (when given a timer) also closes idle keep-alive connections after the header timeout, so
//! the two could not be set apart. The socket sees enough: the bytes of a request head up to
//! its blank line, and the first byte written back.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use observability::http::{CloseReason, record_accept_error, record_close};
use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::config::ConnectionLimits;

/// The first and the longest pause between accept attempts while descriptors are exhausted.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// How often running out of descriptors is logged at most (the metric counts every failure).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// HTTP/2 with prior knowledge starts with this; such a connection has no HTTP/1 heads to time.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Wraps the public listener's acceptor with the connection limits.
pub struct GuardedAcceptor<A> {
    inner: A,
    slots: Arc<Semaphore>,
    limits: ConnectionLimits,
    /// Accept is failing for lack of resources.
    starved: bool,
    /// When that was last logged: once per [`WARN_EVERY`] at most, however often it flaps.
    warned: Option<Instant>,
}

impl<A> GuardedAcceptor<A> {
    pub fn new(inner: A, limits: ConnectionLimits) -> Self {
        observability::http::record_max_connections(limits.max_connections);
        Self {
            inner,
            slots: Arc::new(Semaphore::new(limits.max_connections as usize)),
            limits,
            starved: false,
            warned: None,
        }
    }

    pub fn inner(&self) -> &A {
        &self.inner
    }
}

impl<A: Acceptor<Io = TcpStream>> Acceptor for GuardedAcceptor<A> {
    type Io = GuardedIo;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(GuardedIo, LocalAddr, RemoteAddr, Scheme)> {
        // No free slot: stop accepting, so new connections wait in the backlog.
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut backoff = BACKOFF.0;
        loop {
            match self.inner.accept().await {
                Ok((stream, local, remote, scheme)) => {
                    if std::mem::take(&mut self.starved) {
                        tracing::info!("accepting connections again");
                    }
                    let io = GuardedIo::new(stream, slot, self.limits);
                    return Ok((io, local, remote, scheme));
                }
                Err(error) if out_of_resources(&error) => {
                    record_accept_error();
                    self.starved = true;
                    if self.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                        self.warned = Some(Instant::now());
                        tracing::warn!(
                            %error,
                            "cannot accept connections: out of file descriptors or memory; \
                             backing off until some close"
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
                // A connection reset before it was accepted, and the like: the next one.
                Err(error) => tracing::debug!(%error, "accept failed"),
            }
        }
    }
}

fn out_of_resources(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Where a connection is in its request cycle, as the socket sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for, or reading, a request head: the header timeout runs.
    Head,
    /// The head is in: the body, the handler and the response (bounded by the request
    /// timeout, in the middleware).
    Request,
    /// The response has begun: the idle timeout runs until the next request's first byte.
    Idle,
    /// HTTP/2: no heads to time; any traffic keeps it alive for the idle timeout.
    H2,
    /// Timed out: reads end.
    Closed,
}

/// A public connection: holds its slot, and ends itself when a timeout passes.
pub struct GuardedIo {
    inner: TcpStream,
    _slot: OwnedSemaphorePermit,
    limits: ConnectionLimits,
    phase: Phase,
    deadline: Pin<Box<Sleep>>,
    /// Bytes of the HTTP/2 preface matched so far on the connection's first head; `None` once
    /// it cannot be HTTP/2.
    preface: Option<usize>,
    /// The last bytes read, to find the blank line that ends a head across reads.
    tail: [u8; 3],
}

impl GuardedIo {
    fn new(inner: TcpStream, slot: OwnedSemaphorePermit, limits: ConnectionLimits) -> Self {
        observability::http::record_connection_opened();
        Self {
            inner,
            _slot: slot,
            limits,
            phase: Phase::Head,
            deadline: Box::pin(tokio::time::sleep(limits.header_timeout)),
            preface: Some(0),
            tail: [0; 3],
        }
    }

    fn restart(&mut self, phase: Phase, timeout: Duration) {
        self.phase = phase;
        self.deadline.as_mut().reset(Instant::now() + timeout);
    }

    fn on_read(&mut self, bytes: &[u8]) {
        match self.phase {
            Phase::Idle => {
                self.restart(Phase::Head, self.limits.header_timeout);
                self.tail = [0; 3];
                self.scan_head(bytes);
            }
            Phase::Head => self.scan_head(bytes),
            Phase::H2 => self.restart(Phase::H2, self.limits.idle_timeout),
            Phase::Request | Phase::Closed => {}
        }
    }

    /// Moves to [`Phase::Request`] at the blank line (`\n\n` or `\n\r\n`) that ends a head.
    fn scan_head(&mut self, bytes: &[u8]) {
        if let Some(seen) = self.preface {
            let take = (H2_PREFACE.len() - seen).min(bytes.len());
            self.preface = (bytes[..take] == H2_PREFACE[seen..seen + take]).then_some(seen + take);
            if self.preface == Some(H2_PREFACE.len()) {
                self.preface = None;
                self.restart(Phase::H2, self.limits.idle_timeout);
                return;
            }
        }
        for &byte in bytes {
            let ends = byte == b'\n'
                && (self.tail[2] == b'\n' || (self.tail[2] == b'\r' && self.tail[1] == b'\n'));
            self.tail = [self.tail[1], self.tail[2], byte];
            if ends {
                self.phase = Phase::Request;
                return;
            }
        }
    }

    fn on_write(&mut self, cx: &mut Context<'_>) {
        match self.phase {
            Phase::Request => self.restart(Phase::Idle, self.limits.idle_timeout),
            Phase::H2 => self.restart(Phase::H2, self.limits.idle_timeout),
            Phase::Head | Phase::Idle | Phase::Closed => return,
        }
        // Arm the timer now: hyper may not poll the read side again before the client sends
        // something (its last read may already have returned pending), and only a wake-up
        // makes it read, meet the deadline and close.
        let _ = self.deadline.as_mut().poll(cx);
    }

    /// Whether the running timeout has passed; registers the waker for it otherwise.
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let reason = match self.phase {
            Phase::Head => CloseReason::HeaderTimeout,
            Phase::Idle | Phase::H2 => CloseReason::IdleTimeout,
            Phase::Request | Phase::Closed => return false,
        };
        if self.deadline.as_mut().poll(cx).is_ready() {
            record_close(reason);
            self.phase = Phase::Closed;
            true
        } else {
            false
        }
    }
}

impl Drop for GuardedIo {
    fn drop(&mut self) {
        observability::http::record_connection_closed();
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.phase == Phase::Closed {
            // End of stream: hyper closes the connection.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    this.on_read(read);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.timed_out(cx) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.on_write(cx);
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.on_write(cx);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
