//! The router: an HTTP/1.1 reverse proxy that sends each request to the upstream its `Host`
//! names in the [`RouteTable`].
//!
//! Built for a short hot path: one route lookup (a read lock and an `Arc` clone), the
//! request's own head reused for the upstream request, bodies streamed frame by frame in both
//! directions (nothing is buffered), and keep-alive upstream connections owned and driven by
//! the client connection's own task (see `serve_connection`). Upgrades (websockets) are passed
//! through as raw byte pipes once both sides have switched.
//! `X-Forwarded-For/-Host/-Proto` are set and hop-by-hop headers removed both ways.
//! The same proxy serves plain HTTP ([`run_router`], which also answers ACME HTTP-01
//! challenges before routing) and HTTPS ([`run_tls_router`]).

use crate::lock;
use crate::routes::{RouteTable, Upstream, normalize_host};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self as client_http1, SendRequest};
use hyper::header::{
    CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HOST, HeaderName, HeaderValue, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use hyper::server::conn::http1 as server_http1;
use hyper::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

/// How long a client gets to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long open connections get to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long connecting to an upstream (or waiting for an idle connection to it) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle upstream connections one client connection keeps.
const MAX_IDLE_PER_LINK: usize = 4;
/// Where an ACME CA fetches an HTTP-01 challenge's answer (RFC 8555 §8.3).
const ACME_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";
/// The longest host echoed back in an error page.
const MAX_HOST_SHOWN: usize = 253;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const NOSNIFF: HeaderName = HeaderName::from_static("x-content-type-options");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the legacy
/// ones proxies still see.
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Serves the router on `listener` until `shutdown` turns true (or its sender is dropped),
/// then stops accepting and gives open connections a few seconds to finish. Plain HTTP: it
/// also answers ACME HTTP-01 challenges set in the route table.
pub async fn run_router(
    listener: TcpListener,
    routes: RouteTable,
    shutdown: watch::Receiver<bool>,
) {
    accept_loop(listener, routes, None, shutdown).await;
}

/// The router over TLS: the same proxy behind a handshake with `tls` (its certificate
/// resolver picks the certificate by SNI; swapping what it resolves to changes the
/// certificate for new connections while open ones keep theirs).
pub async fn run_tls_router(
    listener: TcpListener,
    routes: RouteTable,
    tls: TlsAcceptor,
    shutdown: watch::Receiver<bool>,
) {
    accept_loop(listener, routes, Some(tls), shutdown).await;
}

async fn accept_loop(
    listener: TcpListener,
    routes: RouteTable,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut http = server_http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    // Every connection task holds a sender; `recv` returning `None` means all have ended.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE under load; back off briefly rather than spin.
                    tracing::warn!(error = %e, "router accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let (http, routes, shutdown, open, tls) = (
            http.clone(),
            routes.clone(),
            shutdown.clone(),
            open_tx.clone(),
            tls.clone(),
        );
        tokio::spawn(async move {
            let _open = open;
            match tls {
                None => serve_connection(stream, peer, routes, http, shutdown, false).await,
                // The handshake runs on the connection's own task, bounded like a request
                // head, so a slow client never holds up the accept loop.
                Some(tls) => {
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, routes, http, shutdown, true).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    drop(open_tx);
    if tokio::time::timeout(SHUTDOWN_GRACE, open_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("router connections still open after the shutdown grace period");
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // A dropped sender counts as shutdown. The guard `wait_for` returns is not `Send`.
    let _ = shutdown.wait_for(|s| *s).await.map(|_| ());
}

/// A client connection's upstream connection, driven by the client connection's task.
type Driven = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves one client connection. The upstream connections its requests open are polled by
/// this same task (handed over through `drive`), so a proxied exchange (read the request,
/// write it upstream, read the answer, write it back) wakes one task on one thread instead of
/// hopping between a server task, a pool and a client connection task. They stay open for the
/// client's next request and close with the client connection.
async fn serve_connection<IO>(
    stream: IO,
    peer: SocketAddr,
    routes: RouteTable,
    http: server_http1::Builder,
    mut shutdown: watch::Receiver<bool>,
    https: bool,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (drive, mut driven) = mpsc::unbounded_channel::<Driven>();
    let link = Arc::new(Link {
        routes,
        https,
        peer_ip: HeaderValue::from_str(&peer.ip().to_string()).ok(),
        idle: Mutex::new(Vec::new()),
        drive,
    });
    let service = hyper::service::service_fn(move |req| {
        let link = link.clone();
        async move { Ok::<_, Infallible>(link.handle(req).await) }
    });
    let mut conn = Box::pin(
        http.serve_connection(TokioIo::new(stream), service)
            .with_upgrades(),
    );
    let mut upstreams = FuturesUnordered::new();
    let mut stop = Box::pin(stopped(&mut shutdown));
    let mut stopping = false;
    let result = std::future::poll_fn(|cx| {
        drive_upstreams(cx, &mut driven, &mut upstreams);
        if !stopping && stop.as_mut().poll(cx).is_ready() {
            stopping = true;
            conn.as_mut().graceful_shutdown();
        }
        conn.as_mut().poll(cx)
    })
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "router connection ended with an error");
    }
    // Dropping the connection drops the link and its idle upstream senders, which lets the
    // upstream connections end; an upgraded one first hands its socket to the upgrade task.
    drop(conn);
    let finished = std::future::poll_fn(|cx| {
        if drive_upstreams(cx, &mut driven, &mut upstreams) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, finished).await;
}

/// Takes new upstream connections from `driven` and polls them all; true once no more can
/// come and all have ended.
fn drive_upstreams(
    cx: &mut Context<'_>,
    driven: &mut mpsc::UnboundedReceiver<Driven>,
    upstreams: &mut FuturesUnordered<Driven>,
) -> bool {
    let mut closed = false;
    loop {
        match driven.poll_recv(cx) {
            Poll::Ready(Some(f)) => upstreams.push(f),
            Poll::Ready(None) => {
                closed = true;
                break;
            }
            Poll::Pending => break,
        }
    }
    while let Poll::Ready(Some(())) = upstreams.poll_next_unpin(cx) {}
    closed && upstreams.is_empty()
}

/// What a client connection's requests share: the routes, the client's IP, and the
/// upstream connections opened for it, idle between requests (a handful at most: one per
/// upstream it has talked to; HTTP/1 sends one request at a time).
struct Link {
    routes: RouteTable,
    /// Served over TLS: `X-Forwarded-Proto: https`, and no ACME challenges (HTTP-01 is
    /// plain HTTP by definition).
    https: bool,
    /// The client's IP as a header value, made once per connection rather than per request.
    peer_ip: Option<HeaderValue>,
    /// Only this connection's task touches it, so the lock is never contended.
    idle: Mutex<Vec<(SocketAddr, SendRequest<Incoming>)>>,
    drive: mpsc::UnboundedSender<Driven>,
}

impl Link {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        if !self.https
            && let Some(token) = req.uri().path().strip_prefix(ACME_CHALLENGE_PATH)
            && let Some(answer) = self.routes.challenge(token)
        {
            return page(StatusCode::OK, answer);
        }
        let routed = {
            let raw = req
                .headers()
                .get(HOST)
                .and_then(|v| v.to_str().ok())
                .or_else(|| req.uri().host());
            match raw.and_then(normalize_host) {
                Some(host) => self.routes.upstream(&host).ok_or_else(|| host.into_owned()),
                None => Err(String::new()),
            }
        };
        let upstream = match routed {
            Ok(u) => u,
            Err(host) => return not_found(&host),
        };

        let upgrade = wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let original_host = parts.headers.get(HOST).cloned();
        let upgrade_to = if upgrade {
            parts.headers.get(UPGRADE).cloned()
        } else {
            None
        };
        strip_hop_by_hop(&mut parts.headers);
        if let Some(protocol) = upgrade_to {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, protocol);
        }
        set_forwarded(
            &mut parts.headers,
            self.peer_ip.as_ref(),
            original_host.as_ref(),
            self.https,
        );
        if original_host.is_none()
            && let Some(value) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(HOST, value);
        }
        // Origin form: the upstream connection is already to the right address.
        parts.uri = match parts.uri.path_and_query() {
            Some(pq) => Uri::from(pq.clone()),
            None => Uri::from_static("/"),
        };
        parts.version = Version::HTTP_11;

        let mut response = match self
            .send(upstream.addr, Request::from_parts(parts, body))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, upstream = %upstream.addr, "upstream request failed");
                let host = original_host
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .and_then(normalize_host)
                    .map(|h| h.into_owned())
                    .unwrap_or_default();
                return bad_gateway(&host);
            }
        };

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                let held = upstream.clone();
                tokio::spawn(async move {
                    // Held so a redeploy waits for (a while for) this connection too.
                    let _held = held;
                    match tokio::try_join!(client_upgrade, upstream_upgrade) {
                        Ok((client, upstream)) => {
                            let mut client = TokioIo::new(client);
                            let mut upstream = TokioIo::new(upstream);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        }
                        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                    }
                });
            }
            // `Connection` and `Upgrade` are the point of a 101; pass the head as it is.
            let (parts, _) = response.into_parts();
            return Response::from_parts(parts, ProxyBody::Full(None));
        }

        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.version = Version::HTTP_11;
        Response::from_parts(
            parts,
            ProxyBody::Upstream {
                body,
                _held: upstream,
            },
        )
    }

    /// Sends `req` to `addr` over an idle connection of this link, or a new one. A request
    /// that an idle connection could not even start sending (the upstream had closed it) is
    /// sent again on a fresh connection; nothing is ever sent twice.
    async fn send(
        &self,
        addr: SocketAddr,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, String> {
        loop {
            let (mut sender, reused) = match self.take_idle(addr) {
                Some(s) => (s, true),
                None => (self.connect(addr).await?, false),
            };
            // Normally ready at once: the previous response on it has been read to the end.
            match tokio::time::timeout(CONNECT_TIMEOUT, sender.ready()).await {
                Ok(Ok(())) => {}
                _ if reused => continue,
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("the upstream connection never became ready".into()),
            }
            match sender.try_send_request(req).await {
                Ok(response) => {
                    self.put_idle(addr, sender);
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(e.into_error().to_string()),
                },
            }
        }
    }

    fn take_idle(&self, addr: SocketAddr) -> Option<SendRequest<Incoming>> {
        let mut idle = lock(&self.idle);
        idle.retain(|(_, s)| !s.is_closed());
        let i = idle.iter().rposition(|(a, _)| *a == addr)?;
        Some(idle.swap_remove(i).1)
    }

    fn put_idle(&self, addr: SocketAddr, sender: SendRequest<Incoming>) {
        let mut idle = lock(&self.idle);
        if idle.len() >= MAX_IDLE_PER_LINK {
            idle.remove(0);
        }
        idle.push((addr, sender));
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<Incoming>, String> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| "connecting timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = client_http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        let driven: Driven = Box::pin(async move {
            let _ = conn.with_upgrades().await;
        });
        if let Err(mpsc::error::SendError(driven)) = self.drive.send(driven) {
            // The connection's task is going away; let the runtime drive it instead.
            tokio::spawn(driven);
        }
        Ok(sender)
    }
}

/// Whether the client asks to switch protocols (`Connection: upgrade` plus `Upgrade`).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Appends the client's address to `X-Forwarded-For` and sets `X-Forwarded-Host` (the host it
/// asked for) and `X-Forwarded-Proto`.
fn set_forwarded(
    headers: &mut HeaderMap,
    peer_ip: Option<&HeaderValue>,
    host: Option<&HeaderValue>,
    https: bool,
) {
    if let Some(ip) = peer_ip {
        let previous: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let chain = if previous.is_empty() {
            Some(ip.clone())
        } else {
            let ip = ip.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{}, {ip}", previous.join(", "))).ok()
        };
        if let Some(chain) = chain {
            headers.insert(X_FORWARDED_FOR, chain);
        }
    }
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, h.clone());
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
    let proto = if https { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
}

fn not_found(host: &str) -> Response<ProxyBody> {
    let text = if host.is_empty() {
        "No service answers here: the request names no host.\n".to_owned()
    } else {
        format!("No service answers at {}.\n", shown_host(host))
    };
    page(StatusCode::NOT_FOUND, text)
}

fn bad_gateway(host: &str) -> Response<ProxyBody> {
    page(
        StatusCode::BAD_GATEWAY,
        format!(
            "The service at {} is not answering (bad gateway). It may be starting, stopping or down.\n",
            shown_host(host)
        ),
    )
}

/// A client-supplied host, cut to a sane length for an error page (it is only ever sent as
/// `text/plain` with `nosniff`, so it cannot become markup).
fn shown_host(host: &str) -> &str {
    match host.char_indices().nth(MAX_HOST_SHOWN) {
        Some((i, _)) => &host[..i],
        None => host,
    }
}

fn page(status: StatusCode, text: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::Full(Some(text.into())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(NOSNIFF, HeaderValue::from_static("nosniff"));
    response
}

/// A response body: the upstream's, streamed through while holding its route entry (so a
/// redeploy can wait for it), or a small page of our own.
pub(crate) enum ProxyBody {
    Upstream {
        body: Incoming,
        _held: Arc<Upstream>,
    },
    Full(Option<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream { body, .. } => Pin::new(body).poll_frame(cx),
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_go_including_those_connection_names() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("content-type", "text/plain"),
            ("x-app", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, vec!["content-type", "x-app"]);
    }

    #[test]
    fn upgrades_are_recognised() {
        assert!(wants_upgrade(&headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!wants_upgrade(&headers(&[("connection", "upgrade")])));
    }

    #[test]
    fn forwarded_headers_append_and_set() {
        let peer = HeaderValue::from_static("10.0.0.7");
        let peer = Some(&peer);
        let host = HeaderValue::from_static("web-stk.localhost:8080");
        let mut h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(&mut h, peer, Some(&host), false);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.7");
        assert_eq!(h["x-forwarded-host"], "web-stk.localhost:8080");
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, peer, None, false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert!(!h.contains_key("x-forwarded-host"));
    }

    #[test]
    fn error_pages_are_plain_text_and_bounded() {
        let long = "a".repeat(1000);
        let r = not_found(&long);
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
        let ProxyBody::Full(Some(body)) = r.body() else {
            panic!("a page has a body")
        };
        assert!(body.len() < 400);
        assert_eq!(bad_gateway("x").status(), StatusCode::BAD_GATEWAY);
    }
}
