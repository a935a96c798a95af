//! Service logs: the lines a service prints, split and time-stamped, kept three ways: a ring
//! of the last [`RING_LINES`] in memory (the backlog), a broadcast to followers, and an append
//! file `<data dir>/logs/<slug>/<service>.log` that outlives the process (and the server).
//!
//! One [`ServiceLogs`] exists per stack service, across releases, so a follower sees a new
//! release's lines arrive after the old one's. The file is written by one task per service
//! through a bounded queue: a service printing faster than the disk takes it is slowed down
//! through its own pipe, never the server. Followers never slow anything down: a lagging
//! follower skips ahead.

use crate::lock;
use stackyard_core::Millis;
use stackyard_core::runtime::{LogFollow, LogLine, LogStream, Logs};
use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

/// Lines kept in memory per service.
pub(crate) const RING_LINES: usize = 1000;
/// Lines a follower may fall behind before it skips ahead.
const FOLLOW_CAPACITY: usize = 1024;
/// Lines waiting for the file writer before the service's output reader waits.
const FILE_QUEUE: usize = 1024;
/// A longer line is cut here (and marked), so one endless line cannot eat memory.
pub(crate) const MAX_LINE_BYTES: usize = 8 * 1024;
/// The log file is moved to `<service>.log.1` (replacing the previous one) past this size.
const ROTATE_BYTES: u64 = 16 * 1024 * 1024;
/// How much of the end of a log file is read to find its last lines.
const TAIL_WINDOW_BYTES: u64 = 2 * 1024 * 1024;
const TRUNCATED_MARK: &str = " [line truncated]";

/// The logs of one stack service. See the module docs.
///
/// Invariant: the ring and the live senders change under one lock, so a reader that takes a
/// backlog and subscribes in the same critical section sees every line exactly once. The lock
/// is a `std` mutex held for a ring push and a broadcast send only, never across an `.await`.
pub(crate) struct ServiceLogs {
    inner: Mutex<Inner>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    ring: VecDeque<LogLine>,
    /// `None` once closed (teardown): followers' streams end and new lines are dropped.
    live: Option<Live>,
}

struct Live {
    followers: broadcast::Sender<LogLine>,
    file: mpsc::Sender<String>,
}

impl ServiceLogs {
    /// Starts the logs of a service whose file is `path` (its directory must exist), with the
    /// ring seeded from `seed` (the file's last lines, after a restart). Must run inside a
    /// tokio runtime: it spawns the file writer.
    pub(crate) fn open(path: PathBuf, seed: Vec<LogLine>) -> Arc<Self> {
        let (followers, _) = broadcast::channel(FOLLOW_CAPACITY);
        let (file, rx) = mpsc::channel(FILE_QUEUE);
        let mut ring: VecDeque<LogLine> = seed.into();
        while ring.len() > RING_LINES {
            ring.pop_front();
        }
        let writer = tokio::spawn(write_file(path, rx));
        Arc::new(Self {
            inner: Mutex::new(Inner {
                ring,
                live: Some(Live { followers, file }),
            }),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Records one line: ring, followers, then the file (waiting for queue room).
    pub(crate) async fn record(&self, line: LogLine) {
        let formatted = format_line(&line);
        let file = {
            let mut inner = lock(&self.inner);
            let Some(live) = &inner.live else {
                return;
            };
            // No followers is the common case and not an error.
            let _ = live.followers.send(line.clone());
            let file = live.file.clone();
            if inner.ring.len() == RING_LINES {
                inner.ring.pop_front();
            }
            inner.ring.push_back(line);
            file
        };
        // The writer only goes away after `close`; a line racing it is dropped.
        let _ = file.send(formatted).await;
    }

    /// The last `backlog` lines and, with `follow`, the lines after them.
    pub(crate) fn snapshot(&self, backlog: usize, follow: bool) -> Logs {
        let inner = lock(&self.inner);
        let skip = inner.ring.len().saturating_sub(backlog);
        Logs {
            backlog: inner.ring.iter().skip(skip).cloned().collect(),
            follow: follow.then(|| match &inner.live {
                Some(live) => follow_stream(live.followers.subscribe()),
                None => ended(),
            }),
        }
    }

    /// Ends followers' streams, stops taking lines, and hands back the file writer so the
    /// caller can wait for it before deleting the file's directory.
    pub(crate) fn close(&self) -> Option<JoinHandle<()>> {
        lock(&self.inner).live.take();
        lock(&self.writer).take()
    }
}

/// A stream that ends at once: for a service whose logs exist only on disk.
pub(crate) fn ended() -> LogFollow {
    Box::pin(futures_util::stream::empty())
}

fn follow_stream(rx: broadcast::Receiver<LogLine>) -> LogFollow {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(line) => return Some((line, rx)),
                // Skipping ahead is the point: a slow follower must not hold the service up.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }))
}

/// Appends queued lines to the file, flushing whenever the queue runs dry, and rotates it
/// past [`ROTATE_BYTES`]. A disk error is logged once and the lines dropped: logs must never
/// stop a service.
async fn write_file(path: PathBuf, mut rx: mpsc::Receiver<String>) {
    let mut failed = false;
    let mut report = |e: std::io::Error, path: &Path| {
        if !failed {
            tracing::warn!(error = %e, path = %path.display(), "cannot write a service log file");
            failed = true;
        }
    };
    let mut file = None;
    let mut size = 0u64;
    while let Some(first) = rx.recv().await {
        if file.is_none() {
            match open_append(&path).await {
                Ok((f, len)) => {
                    file = Some(tokio::io::BufWriter::new(f));
                    size = len;
                }
                Err(e) => {
                    report(e, &path);
                    continue;
                }
            }
        }
        let Some(out) = file.as_mut() else { continue };
        let mut next = Some(first);
        let mut result = Ok(());
        while let Some(line) = next.take() {
            size += line.len() as u64;
            result = out.write_all(line.as_bytes()).await;
            if result.is_err() {
                break;
            }
            next = rx.try_recv().ok();
        }
        if result.is_ok() {
            result = out.flush().await;
        }
        if let Err(e) = result {
            report(e, &path);
            file = None;
            continue;
        }
        if size > ROTATE_BYTES {
            file = None;
            let mut old = path.clone().into_os_string();
            old.push(".1");
            if let Err(e) = tokio::fs::rename(&path, &old).await {
                report(e, &path);
            }
        }
    }
}

async fn open_append(path: &Path) -> std::io::Result<(tokio::fs::File, u64)> {
    let f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    let len = f.metadata().await?.len();
    Ok((f, len))
}

/// `2026-01-02T03:04:05.678Z stdout text`, one line.
fn format_line(line: &LogLine) -> String {
    let stream = match line.stream {
        LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
    };
    format!("{} {stream} {}\n", line.at.to_rfc3339(), line.text)
}

/// The inverse of [`format_line`]; `None` for a line we did not write.
fn parse_line(s: &str) -> Option<LogLine> {
    let (at, rest) = s.split_once(' ')?;
    let (stream, text) = rest.split_once(' ').unwrap_or((rest, ""));
    let stream = match stream {
        "stdout" => LogStream::Stdout,
        "stderr" => LogStream::Stderr,
        _ => return None,
    };
    Some(LogLine {
        at: parse_rfc3339_millis(at)?,
        stream,
        text: text.to_owned(),
    })
}

/// Parses exactly the `YYYY-MM-DDTHH:MM:SS.mmmZ` form `Millis::to_rfc3339` writes.
fn parse_rfc3339_millis(s: &str) -> Option<Millis> {
    let b = s.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || b[19] != b'.' || b[23] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    Some(Millis(
        ((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms,
    ))
}

/// Howard Hinnant's civil-to-days algorithm, the inverse of core's days-to-civil.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The last `n` lines of a log file (reading at most its last [`TAIL_WINDOW_BYTES`]); an
/// empty list when there is no file. Lines we cannot parse are skipped.
pub(crate) fn read_tail(path: &Path, n: usize) -> std::io::Result<Vec<LogLine>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = len.saturating_sub(TAIL_WINDOW_BYTES);
    f.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    f.take(TAIL_WINDOW_BYTES).read_to_end(&mut bytes)?;
    let mut text = String::from_utf8_lossy(&bytes);
    if start > 0 {
        // The window most likely starts inside a line.
        let cut = text.find('\n').map_or(text.len(), |i| i + 1);
        text = std::borrow::Cow::Owned(text[cut..].to_owned());
    }
    let mut lines: Vec<LogLine> = text.lines().filter_map(parse_line).collect();
    let skip = lines.len().saturating_sub(n);
    lines.drain(..skip);
    Ok(lines)
}

/// Splits a byte stream into lines: `\n`-terminated, a trailing `\r` dropped, invalid UTF-8
/// replaced, lines longer than [`MAX_LINE_BYTES`] cut and marked.
#[derive(Default)]
pub(crate) struct LineSplitter {
    buf: Vec<u8>,
    truncated: bool,
}

impl LineSplitter {
    /// Feeds a chunk; complete lines go to `out`.
    pub(crate) fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<String>) {
        while !chunk.is_empty() {
            let (part, rest, complete) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &[][..], false),
            };
            let room = MAX_LINE_BYTES.saturating_sub(self.buf.len());
            if part.len() > room {
                self.truncated = true;
            }
            self.buf.extend_from_slice(&part[..part.len().min(room)]);
            if complete {
                out.push(self.take());
            }
            chunk = rest;
        }
    }

    /// The unterminated last line, if any (the stream ended).
    pub(crate) fn finish(&mut self) -> Option<String> {
        (!self.buf.is_empty() || self.truncated).then(|| self.take())
    }

    fn take(&mut self) -> String {
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        let mut s = String::from_utf8_lossy(&self.buf).into_owned();
        if std::mem::take(&mut self.truncated) {
            s.push_str(TRUNCATED_MARK);
        }
        self.buf.clear();
        s
    }
}

/// The current wall-clock time.
pub(crate) fn now() -> Millis {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn line(i: usize) -> LogLine {
        LogLine {
            at: Millis(1_700_000_000_000 + i as i64),
            stream: if i.is_multiple_of(2) {
                LogStream::Stdout
            } else {
                LogStream::Stderr
            },
            text: format!("line {i}"),
        }
    }

    #[test]
    fn lines_round_trip_through_the_file_format() {
        for at in [0, 1, 951_782_400_000, 1_700_000_000_123, 4_102_444_799_999] {
            let l = LogLine {
                at: Millis(at),
                stream: LogStream::Stderr,
                text: "a b  c ".into(),
            };
            let s = format_line(&l);
            assert_eq!(parse_line(s.trim_end_matches('\n')), Some(l), "{s}");
        }
        let empty = LogLine {
            at: Millis(5),
            stream: LogStream::Stdout,
            text: String::new(),
        };
        assert_eq!(parse_line(format_line(&empty).trim_end()), Some(empty));
        assert_eq!(parse_line("garbage"), None);
        assert_eq!(parse_line("2026-13-01T00:00:00.000Z stdout x"), None);
    }

    #[test]
    fn splitter_handles_partial_long_and_crlf_lines() {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        s.feed(b"one\r\ntw", &mut out);
        s.feed(b"o\n\nthr\xffee", &mut out);
        assert_eq!(out, vec!["one", "two", ""]);
        assert_eq!(s.finish().as_deref(), Some("thr\u{fffd}ee"));
        assert_eq!(s.finish(), None);

        let mut out = Vec::new();
        let long = vec![b'x'; MAX_LINE_BYTES * 3];
        s.feed(&long, &mut out);
        s.feed(b"\nnext\n", &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), MAX_LINE_BYTES + TRUNCATED_MARK.len());
        assert!(out[0].ends_with(TRUNCATED_MARK));
        assert_eq!(out[1], "next");
    }

    #[tokio::test]
    async fn ring_followers_file_and_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.log");
        let logs = ServiceLogs::open(path.clone(), vec![line(0)]);
        let Logs { backlog, follow } = logs.snapshot(10, true);
        assert_eq!(backlog, vec![line(0)]);
        let mut follow = follow.unwrap();
        for i in 1..=RING_LINES + 5 {
            logs.record(line(i)).await;
        }
        assert_eq!(follow.next().await, Some(line(1)));
        assert_eq!(
            logs.snapshot(3, false).backlog,
            vec![
                line(RING_LINES + 3),
                line(RING_LINES + 4),
                line(RING_LINES + 5)
            ]
        );
        assert_eq!(logs.snapshot(usize::MAX, false).backlog.len(), RING_LINES);

        let writer = logs.close().unwrap();
        writer.await.unwrap();
        // Everything followed so far is still delivered, then the stream ends.
        let rest: Vec<LogLine> = follow.collect().await;
        assert_eq!(rest.len(), RING_LINES + 4);
        logs.record(line(9999)).await;
        assert_eq!(logs.snapshot(1, false).backlog, vec![line(RING_LINES + 5)]);
        assert!(
            logs.snapshot(1, true)
                .follow
                .unwrap()
                .next()
                .await
                .is_none()
        );

        // The file has every recorded line (the seed came from it, so it is not rewritten).
        let tail = read_tail(&path, 2).unwrap();
        assert_eq!(tail, vec![line(RING_LINES + 4), line(RING_LINES + 5)]);
        assert_eq!(read_tail(&path, usize::MAX).unwrap().len(), RING_LINES + 5);
        assert!(
            read_tail(&dir.path().join("none.log"), 5)
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_lagging_follower_skips_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let logs = ServiceLogs::open(dir.path().join("a.log"), Vec::new());
        let mut follow = logs.snapshot(0, true).follow.unwrap();
        for i in 0..FOLLOW_CAPACITY * 2 {
            logs.record(line(i)).await;
        }
        let first = follow.next().await.unwrap();
        assert!(first.text != "line 0", "the oldest lines were skipped");
        logs.close();
    }

    #[test]
    fn the_tail_window_skips_a_partial_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.log");
        let mut text = String::new();
        let mut i = 0;
        while (text.len() as u64) < TAIL_WINDOW_BYTES + 4096 {
            text.push_str(&format_line(&line(i)));
            i += 1;
        }
        std::fs::write(&path, &text).unwrap();
        let tail = read_tail(&path, usize::MAX).unwrap();
        assert_eq!(tail.last(), Some(&line(i - 1)));
        assert!(tail.len() < i);
        // Every line read is a whole line.
        assert!(tail.iter().all(|l| l.text.starts_with("line ")));
    }
}
