//! The router against an in-test hyper upstream: routing by host, error pages, headers,
//! streaming in both directions, and upgrades.

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use stackyard_runtime_local::{RouteTable, run_router};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};

type Body = UnsyncBoxBody<Bytes, std::io::Error>;
const CHUNK: usize = 64 * 1024;
const FIVE_MB: usize = 5 * 1024 * 1024;

struct Upstream {
    addr: SocketAddr,
    /// Lets `/slow` send its second half.
    go: Arc<Notify>,
    /// A message per `/upload` whose first body bytes have arrived.
    first_chunk: mpsc::UnboundedReceiver<()>,
}

async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let go = Arc::new(Notify::new());
    let (tx, first_chunk) = mpsc::unbounded_channel();
    let notify = go.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (go, tx) = (notify.clone(), tx.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req| answer(req, go.clone(), tx.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream {
        addr,
        go,
        first_chunk,
    }
}

fn full(text: String) -> Body {
    Full::new(Bytes::from(text))
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// A body fed by a task through a channel.
fn channel_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    (tx, StreamBody::new(stream).boxed_unsync())
}

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

async fn answer(
    mut req: Request<Incoming>,
    go: Arc<Notify>,
    first: mpsc::UnboundedSender<()>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let response = match path.as_str() {
        "/headers" => {
            let mut lines: Vec<String> = req
                .headers()
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
                .collect();
            lines.sort();
            Response::new(full(lines.join("\n")))
        }
        "/download" => {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let mut sent = 0;
                while sent < FIVE_MB {
                    let chunk: Vec<u8> = (sent..sent + CHUNK).map(pattern).collect();
                    sent += CHUNK;
                    if tx.send(Bytes::from(chunk)).await.is_err() {
                        return;
                    }
                }
            });
            Response::new(body)
        }
        "/slow" => {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first;")).await;
                go.notified().await;
                let _ = tx.send(Bytes::from_static(b"second")).await;
            });
            Response::new(body)
        }
        "/upload" => {
            let mut body = req.into_body();
            let (mut n, mut sum, mut seen) = (0usize, 0u64, false);
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame.unwrap().into_data() else {
                    continue;
                };
                if !seen && !data.is_empty() {
                    seen = true;
                    let _ = first.send(());
                }
                for (i, b) in data.iter().enumerate() {
                    assert_eq!(*b, pattern(n + i), "byte {} intact", n + i);
                }
                n += data.len();
                sum += data.iter().map(|&b| b as u64).sum::<u64>();
            }
            Response::new(full(format!("bytes={n} sum={sum}")))
        }
        "/ws" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "echo")
                .body(full(String::new()))
                .unwrap()
        }
        _ => Response::builder()
            .status(404)
            .body(full("no".into()))
            .unwrap(),
    };
    Ok(response)
}

struct Router {
    addr: SocketAddr,
    routes: RouteTable,
    _shutdown: watch::Sender<bool>,
    http: reqwest::Client,
}

async fn router() -> Router {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = RouteTable::new();
    let (tx, rx) = watch::channel(false);
    tokio::spawn(run_router(listener, routes.clone(), rx));
    let http = stackyard_testkit::http_client_builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    Router {
        addr,
        routes,
        _shutdown: tx,
        http,
    }
}

impl Router {
    fn get(&self, host: &str, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("http://{}{path}", self.addr))
            .header("host", host)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_hosts_get_404_and_dead_upstreams_502() {
    let r = router().await;
    let resp = r.get("nobody.test:8080", "/").send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    let body = resp.text().await.unwrap();
    assert!(body.contains("No service answers at nobody.test"), "{body}");

    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    r.routes.insert("down.test", dead);
    let resp = r.get("down.test", "/").send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert!(resp.text().await.unwrap().contains("down.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_challenges_are_answered_for_any_host_until_removed() {
    let r = router().await;
    r.routes.set_challenge("tok3n", "tok3n.thumbprint");
    let resp = r
        .get("shop.example.com", "/.well-known/acme-challenge/tok3n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "tok3n.thumbprint");
    // Another token is not ours: routed like any request (here: no such host).
    let resp = r
        .get("shop.example.com", "/.well-known/acme-challenge/other")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    r.routes.remove_challenge("tok3n");
    let resp = r
        .get("shop.example.com", "/.well-known/acme-challenge/tok3n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_match_case_insensitively_and_headers_are_forwarded() {
    let up = upstream().await;
    let r = router().await;
    r.routes.insert("app.test", up.addr);
    let resp = r
        .get("App.TEST:1234", "/headers?x=1")
        .header("x-forwarded-for", "9.9.9.9")
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .header("proxy-authorization", "Basic abc")
        .header("x-app", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let lines: Vec<&str> = body.lines().collect();
    for want in [
        "host: App.TEST:1234",
        "x-forwarded-for: 9.9.9.9, 127.0.0.1",
        "x-forwarded-host: App.TEST:1234",
        "x-forwarded-proto: http",
        "x-app: kept",
    ] {
        assert!(lines.contains(&want), "{want} in {body}");
    }
    for gone in ["x-hop", "proxy-authorization", "connection: x-hop"] {
        assert!(!body.contains(gone), "{gone} not in {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_stream_through() {
    let up = upstream().await;
    let r = router().await;
    r.routes.insert("app.test", up.addr);
    // The first half arrives while the upstream still holds the second back.
    let resp = r.get("app.test", "/slow").send().await.unwrap();
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("the first chunk is not held back")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"first;");
    up.go.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"second");

    // 5 MB down, intact.
    let resp = r.get("app.test", "/download").send().await.unwrap();
    let mut body = resp.bytes_stream();
    let mut n = 0;
    while let Some(chunk) = body.next().await {
        for b in chunk.unwrap().iter() {
            assert_eq!(*b, pattern(n));
            n += 1;
        }
    }
    assert_eq!(n, FIVE_MB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_stream_through() {
    let mut up = upstream().await;
    let r = router().await;
    r.routes.insert("app.test", up.addr);
    let (tx, rx) = mpsc::channel::<Bytes>(2);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    let request = r
        .http
        .post(format!("http://{}/upload", r.addr))
        .header("host", "app.test")
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let response = tokio::spawn(request);
    let chunk = |i: usize| {
        Bytes::from(
            (i * CHUNK..(i + 1) * CHUNK)
                .map(pattern)
                .collect::<Vec<u8>>(),
        )
    };
    tx.send(chunk(0)).await.unwrap();
    // The upstream sees the first bytes before the client has sent the rest.
    let first = tokio::time::timeout(Duration::from_secs(10), up.first_chunk.recv()).await;
    assert!(
        matches!(first, Ok(Some(()))),
        "the request body is not buffered"
    );
    for i in 1..FIVE_MB / CHUNK {
        tx.send(chunk(i)).await.unwrap();
    }
    drop(tx);
    let resp = response.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let sum: u64 = (0..FIVE_MB).map(|i| pattern(i) as u64).sum();
    assert_eq!(
        resp.text().await.unwrap(),
        format!("bytes={FIVE_MB} sum={sum}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_pass_through() {
    let up = upstream().await;
    let r = router().await;
    r.routes.insert("app.test", up.addr);
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "the head is complete");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for msg in [&b"ping"[..], b"and more bytes"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_its_idle_connection_costs_no_request() {
    // Answers one request per connection (keep-alive, as far as the client can tell), then
    // closes it shortly after: what a keep-alive timeout looks like.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
        }
    });
    let r = router().await;
    r.routes.insert("app.test", addr);
    for _ in 0..3 {
        let resp = r.get("app.test", "/").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "ok");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
}
