//! Following a stack's event stream (`GET /stacks/:slug/events`) until a goal is reached: a
//! release live or failed (deploy, redeploy), a restart's services healthy or failed
//! (`restart --wait`), or the stack gone (`rm --wait`). Shows per-service
//! progress: lines redrawn in place on a terminal, one plain line per change otherwise, the
//! events themselves as JSON lines with `--json`, nothing with `--quiet`.
//!
//! The stream is replayed from the stack's first event and read until the `release.created` of
//! the release we wait for: events before it belong to earlier releases. A dropped connection is
//! resumed with `Last-Event-ID`, so no event is missed or seen twice.

use crate::api::{Api, Request, SseStream};
use crate::error::{CliError, Exit, Result};
use crate::output::{Out, Style, clean, one_line, status_style};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use stackyard_api::{Service, StackDetail};
use stackyard_core::model::{ReleaseStatus, ServiceStatus, StackStatus};
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};

/// Connections in a row that may fail (each after the client's own retries) before we give up.
const MAX_RECONNECTS: u32 = 5;
const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

/// What to wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Goal {
    /// Release N goes `live` (every service healthy) or fails.
    Release(i64),
    /// The restart requested with this request id (its `restart.requested` event carries it)
    /// ends: each of its services `healthy` (`Live`) or `failed` (`Failed`).
    Restart(String),
    /// The stack is gone: `stack.deleted`, or the stream answers 404.
    Deleted,
}

/// One service as the stream last described it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceState {
    pub status: String,
    pub url: Option<String>,
    pub error: Option<String>,
}

/// How a follow ended (errors — timeouts, a vanished stack — are `Err`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Live,
    Failed { error: Option<String> },
    Deleted,
}

/// The state a follow ends with.
#[derive(Debug, Clone)]
pub struct Followed {
    pub outcome: Outcome,
    /// In the order they were first named (the manifest's, for a deploy).
    pub services: Vec<(String, ServiceState)>,
}

/// Reads the stream of `slug` until `goal`, for at most `timeout`. `services` are the names to
/// show from the start (others appear as events name them).
pub async fn follow(
    api: &Api,
    out: &Out,
    slug: &str,
    goal: Goal,
    services: &[String],
    timeout: Duration,
) -> Result<Followed> {
    let deadline = Instant::now() + timeout;
    let deleting_is_the_goal = goal == Goal::Deleted;
    let mut state = State {
        goal: goal.clone(),
        started: false,
        services: services
            .iter()
            .map(|s| {
                (
                    s.clone(),
                    ServiceState {
                        status: "waiting".into(),
                        ..Default::default()
                    },
                )
            })
            .collect(),
        stack_status: None,
    };
    let mut view = View::new(out, slug, &goal);
    view.draw(&state);
    let mut last_id: Option<String> = None;
    let mut failures = 0u32;
    let timed_out = || {
        CliError::new(
            Exit::Server,
            format!(
                "gave up waiting after {}; the operation goes on on the server",
                humantime::format_duration(timeout)
            ),
        )
        .with_code("timeout")
        .with_hint(format!("`stackyard status {slug}` shows how it is going"))
    };
    loop {
        let mut req = Request::get(format!("/stacks/{slug}/events"));
        if let Some(id) = &last_id {
            req = req.header("last-event-id", id.clone());
        }
        let res = match tokio::time::timeout_at(deadline, api.send(&req)).await {
            Err(_) => {
                view.finish(&state);
                return Err(timed_out());
            }
            Ok(Ok(res)) => res,
            Ok(Err(e)) if e.exit == Exit::NotFound && deleting_is_the_goal => {
                view.finish(&state);
                return Ok(state.done(Outcome::Deleted));
            }
            Ok(Err(e)) if e.exit == Exit::NotFound => {
                view.finish(&state);
                return Err(CliError {
                    message: "the stack no longer exists (it was deleted meanwhile)".into(),
                    ..e
                });
            }
            Ok(Err(e)) if e.exit == Exit::Server && failures < MAX_RECONNECTS => {
                failures += 1;
                view.note(&format!(
                    "lost the event stream ({}); reconnecting ({failures}/{MAX_RECONNECTS})",
                    e.message
                ));
                tokio::time::sleep(Duration::from_millis(500 * u64::from(failures))).await;
                continue;
            }
            Ok(Err(e)) => {
                view.finish(&state);
                return Err(e);
            }
        };
        let mut stream = SseStream::new(res);
        let mut ticker = tokio::time::interval(Duration::from_millis(120));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    view.finish(&state);
                    return Err(timed_out());
                }
                _ = ticker.tick(), if view.live => view.draw(&state),
                next = stream.next() => match next {
                    Ok(Some(ev)) => {
                        failures = 0;
                        if ev.id.is_some() {
                            last_id = ev.id.clone();
                        }
                        // Kept as sent: `--json` reports the server's events verbatim; `apply`
                        // reads the typed `Event` out of it.
                        let Ok(event) = serde_json::from_str::<Value>(&ev.data) else {
                            continue;
                        };
                        let step = state.apply(&event);
                        if state.started && out.json {
                            out.json_line(&event);
                        }
                        if let Some(change) = &step.change {
                            view.changed(&state, change);
                        }
                        match step.end {
                            None => {}
                            Some(Ok(outcome)) => {
                                view.finish(&state);
                                return Ok(state.done(outcome));
                            }
                            Some(Err(e)) => {
                                view.finish(&state);
                                return Err(e);
                            }
                        }
                    }
                    // The server ended the stream (a restart, say): resume where we were,
                    // after a pause so a server that keeps closing at once is not hammered.
                    Ok(None) => {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        break;
                    }
                    Err(broke) => {
                        failures += 1;
                        if failures > MAX_RECONNECTS {
                            view.finish(&state);
                            return Err(CliError::new(Exit::Server, format!("the event stream keeps breaking: {}", broke.0)));
                        }
                        view.note(&format!("the event stream broke ({}); reconnecting", broke.0));
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        break;
                    }
                }
            }
        }
    }
}

/// The follower's picture of the stack.
struct State {
    goal: Goal,
    /// Whether the events now are about our release (deploy) — always, for `Deleted`.
    started: bool,
    /// In the order first named, so the display keeps the manifest's order.
    services: Vec<(String, ServiceState)>,
    stack_status: Option<StackStatus>,
}

/// What one event did.
#[derive(Default)]
struct Step {
    /// A line for the plain display.
    change: Option<String>,
    end: Option<Result<Outcome>>,
}

impl State {
    fn done(self, outcome: Outcome) -> Followed {
        Followed {
            outcome,
            services: self.services,
        }
    }

    fn apply(&mut self, event: &Value) -> Step {
        let mut step = Step::default();
        // An event this client cannot read (a kind it does not know, a `data` of another
        // shape) changes nothing.
        let Ok(event) = Event::deserialize(event) else {
            return step;
        };
        if let Event::StackDeleted {} = event {
            step.end = Some(match self.goal {
                Goal::Deleted => Ok(Outcome::Deleted),
                Goal::Release(_) => Err(CliError::new(
                    Exit::Conflict,
                    "the stack was deleted before the release went live",
                )
                .with_code("stack_deleted")),
                Goal::Restart(_) => Err(CliError::new(
                    Exit::Conflict,
                    "the stack was deleted before the restart finished",
                )
                .with_code("stack_deleted")),
            });
            return step;
        }
        if !self.started {
            // A stack is `deleting` once and never leaves it, so for `rm --wait` the first
            // `deleting` is where our part of the history starts.
            let start = match (&self.goal, &event) {
                (Goal::Release(n), Event::ReleaseCreated { release }) => release == n,
                (Goal::Deleted, Event::StackStatus { status }) => *status == StackStatus::Deleting,
                (Goal::Restart(ours), Event::RestartRequested { request_id, .. }) => {
                    request_id.as_ref() == Some(ours)
                }
                _ => false,
            };
            if !start {
                return step;
            }
            self.started = true;
        }
        if let Goal::Restart(_) = self.goal {
            return self.apply_restart(event);
        }
        match event {
            Event::ServiceStatus {
                service: name,
                status,
                url,
                error,
            } => {
                let new = ServiceState {
                    status: status.as_str().to_owned(),
                    url,
                    error,
                };
                let mut line = format!("{name}: {}", new.status);
                if let Some(e) = &new.error {
                    line.push_str(&format!(" — {}", one_line(e)));
                } else if let Some(u) = &new.url {
                    line.push_str(&format!(" {u}"));
                }
                match self.services.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, s)) => *s = new,
                    None => self.services.push((name, new)),
                }
                step.change = Some(line);
            }
            Event::ReleaseCreated { release } => {
                step.change = Some(format!("release v{release} created"));
            }
            Event::StackStatus { status } => {
                // The services' lines already tell the in-between states.
                if matches!(status, StackStatus::Failed | StackStatus::Deleting) {
                    step.change = Some(format!("stack: {status}"));
                }
                if status == StackStatus::Deleting && matches!(self.goal, Goal::Release(_)) {
                    step.end = Some(Err(CliError::new(
                        Exit::Conflict,
                        "the stack is being deleted; the release will not go live",
                    )
                    .with_code("stack_deleting")));
                }
                self.stack_status = Some(status);
            }
            Event::ReleaseStatus {
                release,
                status,
                error,
            } => {
                step.change = Some(format!("release v{release}: {status}"));
                if let Goal::Release(n) = self.goal
                    && release == n
                {
                    step.end = match status {
                        ReleaseStatus::Live => Some(Ok(Outcome::Live)),
                        ReleaseStatus::Failed => Some(Ok(Outcome::Failed { error })),
                        ReleaseStatus::Superseded => Some(Err(CliError::new(
                            Exit::Conflict,
                            format!("release v{n} was superseded by a newer release before it went live"),
                        )
                        .with_code("release_superseded")
                        .with_hint("someone redeployed meanwhile; `stackyard status` shows the current release"))),
                        ReleaseStatus::Pending => None,
                    };
                }
            }
            Event::EnvVersion { version } => {
                step.change = Some(format!("env: version {version}"));
            }
            Event::RestartRequested { .. } | Event::StackDeleted {} => {}
        }
        step
    }

    /// An event after our `restart.requested`: only our services count, and the restart ends
    /// once each has settled (`healthy` or `failed`), or when the stack moves on (a redeploy
    /// or a deletion ends the restart early).
    fn apply_restart(&mut self, event: Event) -> Step {
        let mut step = Step::default();
        match event {
            Event::RestartRequested { services, .. } if self.services.is_empty() => {
                self.services = services
                    .into_iter()
                    .map(|n| {
                        let waiting = ServiceState {
                            status: "waiting".into(),
                            ..Default::default()
                        };
                        (n, waiting)
                    })
                    .collect();
                step.change = Some("restart requested".into());
            }
            Event::ServiceStatus {
                service: name,
                status,
                url,
                error,
            } => {
                let Some((_, s)) = self.services.iter_mut().find(|(n, _)| *n == name) else {
                    return step;
                };
                *s = ServiceState {
                    status: status.as_str().to_owned(),
                    url,
                    error,
                };
                let mut line = format!("{name}: {}", s.status);
                if let Some(e) = &s.error {
                    line.push_str(&format!(" — {}", one_line(e)));
                }
                step.change = Some(line);
                let settled = self
                    .services
                    .iter()
                    .all(|(_, s)| s.status == "healthy" || s.status == "failed");
                if settled {
                    let error = self
                        .services
                        .iter()
                        .find(|(_, s)| s.status == "failed")
                        .map(|(n, s)| match &s.error {
                            Some(e) => format!("`{n}` failed: {e}"),
                            None => format!("`{n}` failed"),
                        });
                    step.end = Some(Ok(match error {
                        None => Outcome::Live,
                        Some(e) => Outcome::Failed { error: Some(e) },
                    }));
                }
            }
            Event::StackStatus { status } => {
                self.stack_status = Some(status);
                let (what, code) = match status {
                    StackStatus::Deleting => ("is being deleted", "stack_deleting"),
                    StackStatus::Building | StackStatus::Deploying => {
                        ("was redeployed", "restart_superseded")
                    }
                    _ => return step,
                };
                step.change = Some(format!("stack: {status}"));
                step.end = Some(Err(CliError::new(
                    Exit::Conflict,
                    format!("the stack {what} before the restart finished"),
                )
                .with_code(code)));
            }
            _ => {}
        }
        step
    }
}

/// A stack event (`stackyard_api::StackEventData`) as the follower reads it: `data` by `kind`,
/// in the shapes `core::model::NewEvent` writes, with the fields the follower acts on.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", content = "data")]
enum Event {
    #[serde(rename = "stack.status")]
    StackStatus { status: StackStatus },
    #[serde(rename = "service.status")]
    ServiceStatus {
        service: String,
        status: ServiceStatus,
        url: Option<String>,
        error: Option<String>,
    },
    #[serde(rename = "release.created")]
    ReleaseCreated { release: i64 },
    #[serde(rename = "release.status")]
    ReleaseStatus {
        release: i64,
        status: ReleaseStatus,
        error: Option<String>,
    },
    #[serde(rename = "env.version")]
    EnvVersion { version: i64 },
    #[serde(rename = "restart.requested")]
    RestartRequested {
        request_id: Option<String>,
        services: Vec<String>,
    },
    #[serde(rename = "stack.deleted")]
    StackDeleted {},
}

/// The progress display.
struct View {
    out: Out,
    live: bool,
    plain: bool,
    title: String,
    drawn: usize,
    frame: usize,
    width: usize,
}

impl View {
    fn new(out: &Out, slug: &str, goal: &Goal) -> View {
        let title = match goal {
            Goal::Release(n) => format!("Deploying {slug} release v{n}"),
            Goal::Restart(_) => format!("Restarting {slug}"),
            Goal::Deleted => format!("Deleting {slug}"),
        };
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse::<usize>().ok())
            .filter(|&w| w >= 20)
            // Shells rarely export COLUMNS; 80 keeps lines from wrapping (which would break the
            // redraw) on any usual terminal.
            .unwrap_or(80);
        let live = out.live();
        let plain = out.chatty() && !live;
        if plain {
            out.note(&format!("{title}…"));
        }
        View {
            out: out.clone(),
            live,
            plain,
            title,
            drawn: 0,
            frame: 0,
            width,
        }
    }

    fn changed(&mut self, state: &State, line: &str) {
        if self.plain {
            self.out.note(&format!("  {}", clean(line)));
        } else if self.live {
            self.draw(state);
        }
    }

    /// A message between redraws (reconnects).
    fn note(&mut self, text: &str) {
        if self.live {
            self.clear();
        }
        self.out.note(text);
    }

    fn clear(&mut self) {
        if self.drawn > 0 {
            self.out
                .eprint_raw(&format!("\x1b[{}A\r\x1b[J", self.drawn));
            self.drawn = 0;
        }
    }

    fn lines(&self, state: &State, done: bool) -> Vec<String> {
        let spin = SPINNER[self.frame % SPINNER.len()];
        let mut lines = vec![self.out.paint_err(Style::Bold, &self.title)];
        let w = state
            .services
            .iter()
            .map(|(k, _)| k)
            .map(|k| k.chars().count())
            .max()
            .unwrap_or(0);
        for (name, s) in &state.services {
            let (mark, style) = match s.status.as_str() {
                "healthy" => ("✓", Style::Green),
                "failed" => ("✗", Style::Red),
                "stopped" => ("-", Style::Dim),
                _ if done => ("·", Style::Dim),
                _ => (spin, Style::Cyan),
            };
            let detail = s
                .error
                .as_deref()
                .or(s.url.as_deref())
                .map(one_line)
                .unwrap_or_default();
            let plain_len = 4 + w + 2 + s.status.chars().count() + 2;
            let room = self.width.saturating_sub(plain_len + 1);
            let detail: String = if detail.chars().count() > room {
                let mut d: String = detail.chars().take(room.saturating_sub(1)).collect();
                d.push('…');
                d
            } else {
                detail
            };
            lines.push(format!(
                "  {} {name:<w$}  {}  {detail}",
                self.out.paint_err(style, mark),
                self.out.paint_err(status_style(&s.status), &s.status),
            ));
        }
        if let Some(st) = state.stack_status
            && state.services.is_empty()
        {
            let st = st.as_str();
            lines.push(format!(
                "  {} stack {}",
                if done { "·" } else { spin },
                self.out.paint_err(status_style(st), st)
            ));
        }
        lines
    }

    fn draw(&mut self, state: &State) {
        if !self.live {
            return;
        }
        self.frame += 1;
        let lines = self.lines(state, false);
        self.render(&lines);
    }

    fn render(&mut self, lines: &[String]) {
        let mut buf = String::new();
        if self.drawn > 0 {
            buf.push_str(&format!("\x1b[{}A", self.drawn));
        }
        for l in lines {
            buf.push_str("\r\x1b[2K");
            buf.push_str(l);
            buf.push('\n');
        }
        buf.push_str("\x1b[J");
        self.out.eprint_raw(&buf);
        self.drawn = lines.len();
    }

    /// Leaves the final state on screen.
    fn finish(&mut self, state: &State) {
        if self.live {
            let lines = self.lines(state, true);
            self.render(&lines);
            self.drawn = 0;
        }
    }
}

/// The services of a stack detail (`GET /stacks/:slug`) as `(name, state)`.
pub fn services_of(detail: &StackDetail) -> Vec<(String, ServiceState)> {
    detail
        .services
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                ServiceState {
                    status: s.status.as_str().to_owned(),
                    url: s.url.clone(),
                    error: s.error.clone(),
                },
            )
        })
        .collect()
}

/// The `data` of the `deploy.result` line: the stack's final state, as the server has it,
/// when it could be read.
#[derive(Serialize)]
struct DeployResult<'a> {
    ok: bool,
    stack_id: &'a str,
    release: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StackStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    services: Option<&'a [Service]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// The `--json` summary line a deploy or redeploy ends with.
pub fn result_line(
    slug: &str,
    release: i64,
    ok: bool,
    detail: Option<&StackDetail>,
    error: Option<&CliError>,
) -> Value {
    let data = DeployResult {
        ok,
        stack_id: slug,
        release,
        status: detail.map(|d| d.status),
        services: detail.map(|d| d.services.as_slice()),
        error: error.map(|e| e.message.as_str()),
    };
    json!({ "kind": "deploy.result", "data": data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str, data: Value) -> Value {
        json!({ "id": 1, "at": "t", "kind": kind, "data": data })
    }

    fn state(goal: Goal) -> State {
        State {
            goal,
            started: false,
            services: Vec::new(),
            stack_status: None,
        }
    }

    #[test]
    fn events_of_earlier_releases_are_ignored() {
        let mut s = state(Goal::Release(2));
        // Release 1's history replays first.
        let r = s.apply(&ev(
            "release.status",
            json!({"release": 1, "status": "live"}),
        ));
        assert!(r.end.is_none());
        s.apply(&ev(
            "service.status",
            json!({"service": "web", "status": "healthy"}),
        ));
        assert!(s.services.is_empty());
        s.apply(&ev(
            "release.created",
            json!({"release": 2, "env_version": 1}),
        ));
        assert!(s.started);
        s.apply(&ev(
            "service.status",
            json!({"service": "web", "status": "deploying"}),
        ));
        assert_eq!(
            s.services[0],
            (
                "web".to_owned(),
                ServiceState {
                    status: "deploying".into(),
                    ..Default::default()
                }
            )
        );
        let r = s.apply(&ev(
            "release.status",
            json!({"release": 2, "status": "live"}),
        ));
        assert!(matches!(r.end, Some(Ok(Outcome::Live))));
    }

    #[test]
    fn failure_supersession_and_deletion_end_a_release_follow() {
        let mut s = state(Goal::Release(1));
        s.apply(&ev("release.created", json!({"release": 1})));
        let r = s.apply(&ev(
            "release.status",
            json!({"release": 1, "status": "failed", "error": "boom"}),
        ));
        assert!(matches!(r.end, Some(Ok(Outcome::Failed { error: Some(ref e) })) if e == "boom"));

        let mut s = state(Goal::Release(1));
        s.apply(&ev("release.created", json!({"release": 1})));
        let r = s.apply(&ev(
            "release.status",
            json!({"release": 1, "status": "superseded"}),
        ));
        assert!(matches!(r.end, Some(Err(ref e)) if e.exit == Exit::Conflict));

        let mut s = state(Goal::Release(1));
        s.apply(&ev("release.created", json!({"release": 1})));
        let r = s.apply(&ev("stack.status", json!({"status": "deleting"})));
        assert!(matches!(r.end, Some(Err(ref e)) if e.exit == Exit::Conflict));
    }

    #[test]
    fn a_restart_follow_starts_at_its_own_request_and_ends_when_its_services_settle() {
        let mut s = state(Goal::Restart("req-ours".into()));
        let requested = |id: &str| {
            ev(
                "restart.requested",
                json!({"release": 1, "services": ["web"], "request_id": id}),
            )
        };
        s.apply(&requested("req-earlier"));
        s.apply(&ev(
            "service.status",
            json!({"service": "web", "status": "healthy"}),
        ));
        assert!(!s.started, "an earlier restart is not ours");
        s.apply(&requested("req-ours"));
        assert!(s.started);
        let r = s.apply(&ev(
            "service.status",
            json!({"service": "api", "status": "healthy"}),
        ));
        assert!(r.end.is_none(), "api is not restarted here");
        assert!(
            s.apply(&ev(
                "service.status",
                json!({"service": "web", "status": "restarting"})
            ))
            .end
            .is_none()
        );
        let r = s.apply(&ev(
            "service.status",
            json!({"service": "web", "status": "healthy", "url": "http://w"}),
        ));
        assert!(matches!(r.end, Some(Ok(Outcome::Live))));

        let mut s = state(Goal::Restart("req-ours".into()));
        s.apply(&requested("req-ours"));
        let r = s.apply(&ev(
            "service.status",
            json!({"service": "web", "status": "failed", "error": "boom"}),
        ));
        assert!(
            matches!(r.end, Some(Ok(Outcome::Failed { error: Some(ref e) })) if e.contains("boom"))
        );

        let mut s = state(Goal::Restart("req-ours".into()));
        s.apply(&requested("req-ours"));
        let r = s.apply(&ev("stack.status", json!({"status": "building"})));
        assert!(matches!(r.end, Some(Err(ref e)) if e.exit == Exit::Conflict));
    }

    #[test]
    fn deletion_is_the_goal_of_rm_wait() {
        let mut s = state(Goal::Deleted);
        // The stack's earlier history is not ours to show.
        let r = s.apply(&ev("stack.status", json!({"status": "healthy"})));
        assert!(r.change.is_none() && !s.started);
        assert!(
            s.apply(&ev("stack.status", json!({"status": "deleting"})))
                .end
                .is_none()
        );
        assert!(matches!(
            s.apply(&ev("stack.deleted", json!({}))).end,
            Some(Ok(Outcome::Deleted))
        ));
    }
}
