//! Hostile input: each gets a 4xx with the envelope, nothing panics, and the server keeps
//! answering `/healthz`.

use crate::support::*;
use reqwest::multipart::{Form, Part};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn healthy(app: &TestApp) {
    let res = app
        .get("/healthz", None)
        .send()
        .await
        .expect("server still answers");
    assert_eq!(res.status(), 200);
}

fn form_with(manifest: &str, tar: Vec<u8>) -> Form {
    Form::new()
        .text("manifest", manifest.to_owned())
        .text("name", "h")
        .part("api", Part::bytes(tar))
}

async fn hostile_inputs_get_a_4xx_envelope_and_the_server_survives(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let t = Some(app.admin_token.as_str());
    let ok_tar = || tarball(&[("Procfile", "web: ./run\n")]);
    let one = "services:\n  api: {}\n";

    // Malformed multipart: a boundary that never closes, and garbage.
    for body in [
        "--xyz\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\nservices",
        "garbage",
    ] {
        let (code, b) = call(
            app.post("/stacks/new", t)
                .header("content-type", "multipart/form-data; boundary=xyz")
                .body(body),
        )
        .await;
        assert_eq!(
            (code, assert_envelope(code, &b).as_str()),
            (400, "invalid_form"),
            "{body}"
        );
    }
    healthy(&app).await;

    // 10,000 nested levels and an alias bomb.
    let deep = format!(
        "services:\n  api:\n    env:\n      A: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let bomb = {
        let mut y = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for i in 1..10 {
            let prev = (b'a' + i - 1) as char;
            let cur = (b'a' + i) as char;
            y.push_str(&format!("{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
        }
        y.push_str("services:\n  api:\n    env:\n      X: *j\n");
        y
    };
    for manifest in [deep.as_str(), bomb.as_str()] {
        let (code, b) = app.create_stack(t, form_with(manifest, ok_tar())).await;
        assert_error(code, &b, 400, "invalid_manifest");
    }
    healthy(&app).await;

    // Tarballs with `..`, an absolute path, a symlink out, a hard link out, a non-UTF-8 name.
    let evil: Vec<Vec<u8>> = vec![
        raw_tarball(&[
            (b"Procfile", tar::EntryType::Regular, None, b"web: x\n"),
            (b"../escape", tar::EntryType::Regular, None, b"x"),
        ]),
        raw_tarball(&[
            (b"Procfile", tar::EntryType::Regular, None, b"web: x\n"),
            (b"/etc/cron.d/x", tar::EntryType::Regular, None, b"x"),
        ]),
        raw_tarball(&[
            (b"Procfile", tar::EntryType::Regular, None, b"web: x\n"),
            (
                b"link",
                tar::EntryType::Symlink,
                Some(b"../../etc/passwd"),
                b"",
            ),
        ]),
        raw_tarball(&[
            (b"Procfile", tar::EntryType::Regular, None, b"web: x\n"),
            (b"hl", tar::EntryType::Link, Some(b"/etc/shadow"), b""),
        ]),
        raw_tarball(&[
            (b"Procfile", tar::EntryType::Regular, None, b"web: x\n"),
            (b"bad\xff\xfe", tar::EntryType::Regular, None, b"x"),
        ]),
    ];
    for tar in evil {
        let (code, b) = app.create_stack(t, form_with(one, tar)).await;
        assert_eq!(
            (code, assert_envelope(code, &b).as_str()),
            (400, "invalid_tarball"),
            "{b}"
        );
    }
    healthy(&app).await;

    // A 1 MB header.
    let (code, b) = call(
        app.get("/healthz", None)
            .header("x-junk", "a".repeat(1_000_000)),
    )
    .await;
    assert_error(code, &b, 431, "headers_too_large");
    healthy(&app).await;

    // A 60 MiB body: answered from the declared length, before the body is read.
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /stacks/new HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: {}\r\n\r\n",
        60 * 1024 * 1024
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![b'x'; 64 * 1024]).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("answer before the body")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"payload_too_large\""), "{text}");
    healthy(&app).await;

    // A streamed (chunked, no length) body over the limit.
    let chunk = bytes_of(1024 * 1024);
    let stream = futures_stream(chunk, 60);
    let res = app
        .post("/stacks/new", t)
        .header("content-type", "multipart/form-data; boundary=x")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    if let Ok(res) = res {
        let (code, b) = json_of(res).await;
        let err = assert_envelope(code, &b);
        assert!(
            matches!(
                (code, err.as_str()),
                (413, "payload_too_large") | (400, "invalid_form")
            ),
            "{code} {b}"
        );
    }
    healthy(&app).await;
    assert_eq!(app.count("stacks", "").await, 0);
}

fn bytes_of(n: usize) -> bytes::Bytes {
    bytes::Bytes::from(vec![b'-'; n])
}

fn futures_stream(
    chunk: bytes::Bytes,
    times: usize,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    futures_util::stream::iter((0..times).map(move |_| Ok(chunk.clone())))
}

both_backends!(hostile_inputs_get_a_4xx_envelope_and_the_server_survives);
