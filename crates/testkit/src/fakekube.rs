//! A stateful fake Kubernetes API server for the Kubernetes runtime's tests.
//!
//! It is a fake because no kube-apiserver, kind or k3s can be had on the machines these tests
//! run on. [`FakeKube`] serves plain HTTP on 127.0.0.1 (port 0) and is reached through an
//! ordinary [`kube::Client`], so the runtime under test speaks the real wire protocol of the
//! typed `Api<K>` calls; only the server side is simplified.
//!
//! What it models, for the kinds the runtime renders (Namespace, NetworkPolicy, ResourceQuota,
//! LimitRange, Secret, Service, Deployment, ReplicaSet, Ingress, Pod):
//! - Objects stored as JSON, with `metadata.resourceVersion` (one global counter, as a string,
//!   bumped only by a real change), `metadata.generation` (1 on create, bumped when `spec`
//!   changes), `uid` and `creationTimestamp`.
//! - GET, LIST (per namespace and across namespaces), POST (409 `AlreadyExists`), PUT (409 on a
//!   stale `resourceVersion`), DELETE and delete-collection; `status` subresources by merge patch
//!   or PUT. A namespaced object cannot be created in a missing namespace (404) or in a
//!   terminating one (403), as the NamespaceLifecycle admission plugin refuses.
//! - Server-side apply (`PATCH`, `application/apply-patch+yaml`, JSON body, `fieldManager`
//!   required, `force`, `dryRun`) as an upsert with per-manager ownership simplified to two
//!   levels: each key of `metadata.labels` and `metadata.annotations`, and each top-level field
//!   (`spec`, `data`, `stringData`, `type`, …) as a whole. A manager's apply replaces the
//!   fields it names and removes those it named last time and no longer does; without `force`
//!   a different value in a field another manager owns is a 409 `Conflict`. `status` in an
//!   applied body is ignored. A Secret's `stringData` is merged into `data` on write (so a key
//!   dropped from `stringData` stays, as on a real server). Other `metadata` fields of an
//!   applied body (finalizers, owner references) are ignored. Merge patch (and strategic merge
//!   patch, treated as a merge patch) works; JSON patch does not (415).
//! - Label selectors (`a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x,y)`) and
//!   field selectors on any dotted path (`metadata.name=x`, `status.phase!=Running`).
//! - `?watch=true` streams of newline-delimited `{"type","object"}` events for every kind: from
//!   the given `resourceVersion`, or, without one (or with `0`), synthetic `ADDED` events of
//!   what exists first, as the real server does; `timeoutSeconds` ends the stream. The whole
//!   event history is kept, so a watch is never answered 410 Gone.
//! - Namespace deletion: the namespace turns `Terminating` (`status.phase`,
//!   `metadata.deletionTimestamp`) and disappears, with everything in it, only after
//!   [`FakeKube::namespace_delete_delay`]; [`FakeKube::stuck_finalizer`] keeps it forever.
//!   Deleting a Deployment or ReplicaSet deletes its ReplicaSets and pods at once (any
//!   propagation policy but `Orphan`); everything else is deleted at once.
//! - A Deployment controller: after [`FakeKube::rollout_delay`], each new generation gets a
//!   ReplicaSet `<deploy>-<hash>` and one Ready pod per replica named `<deploy>-<hash>-<n>`
//!   (template labels plus `pod-template-hash`, template annotations); old pods go and the
//!   status reports `observedGeneration`, the replica counts and the `Available`/`Progressing`
//!   (`NewReplicaSetAvailable`) conditions. [`FakeKube::fail_next_rollout`] makes the next
//!   rollout of a Deployment fail the way a cluster would show it while the old pods keep
//!   serving.
//! - `pods/{name}/log` with `follow`, `tailLines` and `timestamps` (RFC 3339, nanoseconds),
//!   from lines a test pushes with [`FakeKube::push_log`]; a follow ends when the pod goes.
//! - Fault injection for any path: [`FakeKube::answer_next`] (409, 429 with `Retry-After`,
//!   500, …) with a `Status` body, and [`FakeKube::requests`] to see what was asked.
//! - `/version`, `/api`, `/apis` and the per-group resource lists, for discovery.
//!
//! What it does not model: authentication and RBAC, admission and validation against the
//! OpenAPI schemas, defaulting (a stored Deployment has no `strategy` or `revisionHistoryLimit`
//! unless applied; a Service gets no `clusterIP`), field ownership below the top-level field
//! (two managers sharing `spec` conflict as a whole), `managedFields`, YAML apply bodies,
//! JSON patch, graceful pod termination, `ownerReferences` beyond the Deployment's own
//! ReplicaSets and pods, foreground deletion waiting for dependents (dependents go at once),
//! watch bookmarks and `DELETED` events for objects leaving a label selector by a change,
//! pagination (`limit` is ignored), the Deployment's `maxSurge`/`maxUnavailable` arithmetic,
//! scaling a ReplicaSet directly, scheduling, containers, restarts, and log streams per
//! container or `previous`.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{self, Query, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::stream;
use serde_json::{Map, Value, json};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The kinds the fake stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Secret,
    Service,
    Pod,
    ResourceQuota,
    LimitRange,
    Deployment,
    ReplicaSet,
    NetworkPolicy,
    Ingress,
}

const KINDS: [Kind; 10] = [
    Kind::Namespace,
    Kind::Secret,
    Kind::Service,
    Kind::Pod,
    Kind::ResourceQuota,
    Kind::LimitRange,
    Kind::Deployment,
    Kind::ReplicaSet,
    Kind::NetworkPolicy,
    Kind::Ingress,
];

impl Kind {
    /// The `kind` field, `Deployment`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Secret => "Secret",
            Kind::Service => "Service",
            Kind::Pod => "Pod",
            Kind::ResourceQuota => "ResourceQuota",
            Kind::LimitRange => "LimitRange",
            Kind::Deployment => "Deployment",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Ingress => "Ingress",
        }
    }

    /// The resource in URL paths, `deployments`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Secret => "secrets",
            Kind::Service => "services",
            Kind::Pod => "pods",
            Kind::ResourceQuota => "resourcequotas",
            Kind::LimitRange => "limitranges",
            Kind::Deployment => "deployments",
            Kind::ReplicaSet => "replicasets",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::Ingress => "ingresses",
        }
    }

    /// The API group, empty for the core group.
    pub fn group(self) -> &'static str {
        match self {
            Kind::Deployment | Kind::ReplicaSet => "apps",
            Kind::NetworkPolicy | Kind::Ingress => "networking.k8s.io",
            _ => "",
        }
    }

    /// The `apiVersion` field, `apps/v1`.
    pub fn api_version(self) -> &'static str {
        match self.group() {
            "apps" => "apps/v1",
            "networking.k8s.io" => "networking.k8s.io/v1",
            _ => "v1",
        }
    }

    pub fn namespaced(self) -> bool {
        self != Kind::Namespace
    }

    fn from_path(api_version: &str, plural: &str) -> Option<Kind> {
        KINDS
            .into_iter()
            .find(|k| k.api_version() == api_version && k.plural() == plural)
    }

    /// `deployments.apps`, as the real server names a resource in its messages.
    fn resource(self) -> String {
        match self.group() {
            "" => self.plural().to_owned(),
            g => format!("{}.{g}", self.plural()),
        }
    }
}

/// How the next rollout of a Deployment fails. The new pods never become ready for the new
/// generation; the pods of the previous rollout keep serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The new pods' containers wait in `ImagePullBackOff`.
    ImagePullBackOff,
    /// The new pods' containers wait in `CrashLoopBackOff` after restarts; their log holds
    /// [`CRASH_LOG_LINE`].
    CrashLoopBackOff,
    /// The new pods stay `ContainerCreating` and the Deployment reports
    /// `Progressing=False`, reason `ProgressDeadlineExceeded`.
    ProgressDeadlineExceeded,
}

/// The line every pod of a [`Fault::CrashLoopBackOff`] rollout has in its log.
pub const CRASH_LOG_LINE: &str = "fatal: the service exited with status 1";

/// One request the fake answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string, empty when there was none.
    pub query: String,
    pub status: u16,
}

/// A running fake API server. Its handles share one state; dropping it stops the server, its
/// controller and every open watch or log stream.
pub struct FakeKube {
    shared: Arc<Shared>,
    url: String,
    server: JoinHandle<()>,
    controller: JoinHandle<()>,
}

/// The state every handler, the controller and the test share.
///
/// Invariant: every change to `state` is followed by a bump of `changed`, which is how watch
/// streams, log follows, the controller and namespace reapers learn that there is something
/// to look at. The lock is a `std` mutex because it is never held across an `.await`: each
/// critical section is a few map operations.
struct Shared {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

type Key = (Kind, String, String);

struct State {
    rv: u64,
    uids: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change ever made, in `resourceVersion` order.
    history: Vec<Event>,
    /// What each field manager owns of each object.
    managed: HashMap<Key, BTreeMap<String, Owned>>,
    logs: HashMap<(String, String), Vec<LogLine>>,
    faults: HashMap<(String, String), Fault>,
    stuck: HashSet<String>,
    namespace_delete_delay: Duration,
    rollout_delay: Duration,
    answers: VecDeque<Answer>,
    requests: Vec<RecordedRequest>,
    closed: bool,
}

#[derive(Clone)]
struct Event {
    rv: u64,
    kind: Kind,
    namespace: String,
    type_: &'static str,
    object: Value,
}

#[derive(Clone, Default)]
struct Owned {
    labels: BTreeSet<String>,
    annotations: BTreeSet<String>,
    fields: BTreeSet<String>,
}

struct LogLine {
    timestamp: String,
    text: String,
}

struct Answer {
    prefix: Option<String>,
    remaining: usize,
    status: u16,
}

/// Seconds a 429 asks the client to wait (`Retry-After`).
const RETRY_AFTER_SECONDS: u64 = 1;
/// The body size a request may have.
const MAX_BODY: usize = 16 * 1024 * 1024;

impl FakeKube {
    /// Starts the server on 127.0.0.1, port 0, and its Deployment controller.
    pub async fn start() -> FakeKube {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake API server");
        let addr = listener.local_addr().expect("the fake's address");
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1,
                uids: 0,
                objects: BTreeMap::new(),
                history: Vec::new(),
                managed: HashMap::new(),
                logs: HashMap::new(),
                faults: HashMap::new(),
                stuck: HashSet::new(),
                namespace_delete_delay: Duration::from_millis(200),
                rollout_delay: Duration::from_millis(50),
                answers: VecDeque::new(),
                requests: Vec::new(),
                closed: false,
            }),
            changed,
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let controller = tokio::spawn(deployment_controller(shared.clone()));
        FakeKube {
            shared,
            url: format!("http://{addr}"),
            server,
            controller,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A client of this fake, as the runtime would build one from a kubeconfig.
    pub fn client(&self) -> kube::Client {
        let url = self.url.parse().expect("the fake's URL");
        let mut config = kube::Config::new(url);
        config.default_namespace = "default".to_owned();
        kube::Client::try_from(config).expect("a client of the fake")
    }

    /// The stored object, as the server would return it.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let ns = if kind.namespaced() { namespace } else { "" };
        self.shared
            .lock()
            .objects
            .get(&(kind, ns.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every stored object of `kind` in `namespace` (ignored for namespaces), by name.
    pub fn list(&self, kind: Kind, namespace: &str) -> Vec<Value> {
        let ns = if kind.namespaced() { namespace } else { "" };
        self.shared
            .lock()
            .objects
            .iter()
            .filter(|((k, n, _), _)| *k == kind && n == ns)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The names of the namespaces that exist, terminating ones included.
    pub fn namespaces(&self) -> Vec<String> {
        self.shared
            .lock()
            .objects
            .keys()
            .filter(|(k, _, _)| *k == Kind::Namespace)
            .map(|(_, _, name)| name.clone())
            .collect()
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// The current `resourceVersion` counter.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Appends a line to a pod's log (the pod need not exist yet); followers see it at once.
    pub fn push_log(&self, namespace: &str, pod: &str, line: &str) {
        self.shared.mutate(|st| {
            st.logs
                .entry((namespace.to_owned(), pod.to_owned()))
                .or_default()
                .push(LogLine {
                    timestamp: timestamp_nanos(),
                    text: line.to_owned(),
                });
        });
    }

    /// The next rollout (the next new generation the controller acts on) of Deployment
    /// `namespace/deployment` fails with `fault`. Later rollouts succeed again.
    pub fn fail_next_rollout(&self, namespace: &str, deployment: &str, fault: Fault) {
        self.shared.mutate(|st| {
            st.faults
                .insert((namespace.to_owned(), deployment.to_owned()), fault);
        });
    }

    /// A finalizer that never finishes: the namespace, once deleted, stays `Terminating`
    /// until [`FakeKube::release_finalizer`].
    pub fn stuck_finalizer(&self, namespace: &str) {
        self.shared.mutate(|st| {
            st.stuck.insert(namespace.to_owned());
        });
    }

    /// Lets a namespace held by [`FakeKube::stuck_finalizer`] go.
    pub fn release_finalizer(&self, namespace: &str) {
        self.shared.mutate(|st| {
            st.stuck.remove(namespace);
        });
    }

    /// How long a deleted namespace stays `Terminating` (default 200 ms).
    pub fn namespace_delete_delay(&self, delay: Duration) {
        self.shared.mutate(|st| st.namespace_delete_delay = delay);
    }

    /// How long the Deployment controller takes to act on a new generation (default 50 ms).
    pub fn rollout_delay(&self, delay: Duration) {
        self.shared.mutate(|st| st.rollout_delay = delay);
    }

    /// The next `n` requests, whatever their path, are answered `status` with a `Status`
    /// body (429 also with `Retry-After: 1`) and change nothing.
    pub fn answer_next(&self, n: usize, status: u16) {
        self.push_answer(None, n, status);
    }

    /// As [`FakeKube::answer_next`], for requests whose path starts with `prefix` only.
    pub fn answer_next_on(&self, prefix: &str, n: usize, status: u16) {
        self.push_answer(Some(prefix.to_owned()), n, status);
    }

    fn push_answer(&self, prefix: Option<String>, n: usize, status: u16) {
        self.shared.mutate(|st| {
            st.answers.push_back(Answer {
                prefix,
                remaining: n,
                status,
            })
        });
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        // Open watch and log streams end when they see `closed`; the listener closes with the
        // server task.
        self.shared.mutate(|st| st.closed = true);
        self.controller.abort();
        self.server.abort();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the maps consistent enough for a test fake.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state, then wakes everyone waiting for a change.
    fn mutate<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let out = f(&mut self.lock());
        self.changed.send_modify(|n| *n += 1);
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// A failed request, rendered as a `Status` object.
#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn not_found(kind: Kind, name: &str) -> ApiError {
        ApiError {
            details: Some(json!({"name": name, "group": kind.group(), "kind": kind.plural()})),
            ..ApiError::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", kind.resource()),
            )
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    fn injected(status: u16) -> ApiError {
        let reason = match status {
            409 => "Conflict",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "Unknown",
        };
        let mut e = ApiError::new(status, reason, format!("injected by the fake: {reason}"));
        if status == 429 {
            e.details = Some(json!({"retryAfterSeconds": RETRY_AFTER_SECONDS}));
        }
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = self.details {
            body["details"] = details;
        }
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut res = (status, axum::Json(body)).into_response();
        if self.code == 429 {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        res
    }
}

type ApiResult<T> = Result<T, ApiError>;

// ---------------------------------------------------------------------------------------------
// Routing

/// What a path names.
enum Target {
    Version,
    CoreVersions,
    Groups,
    Resources(String),
    Collection {
        kind: Kind,
        namespace: Option<String>,
    },
    Item {
        kind: Kind,
        namespace: String,
        name: String,
        sub: Option<String>,
    },
}

fn route(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match segs.as_slice() {
        ["version"] => return Some(Target::Version),
        ["api"] => return Some(Target::CoreVersions),
        ["apis"] => return Some(Target::Groups),
        ["api", v] => return Some(Target::Resources((*v).to_owned())),
        ["apis", g, v] => return Some(Target::Resources(format!("{g}/{v}"))),
        ["api", v, rest @ ..] => ((*v).to_owned(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let kind = |plural: &str| Kind::from_path(&api_version, plural);
    let sub = |s: &[&str]| (!s.is_empty()).then(|| s.join("/"));
    match rest {
        ["namespaces", ns, plural, tail @ ..] if kind(plural).is_some_and(Kind::namespaced) => {
            let kind = kind(plural)?;
            match tail {
                [] => Some(Target::Collection {
                    kind,
                    namespace: Some((*ns).to_owned()),
                }),
                [name, s @ ..] => Some(Target::Item {
                    kind,
                    namespace: (*ns).to_owned(),
                    name: (*name).to_owned(),
                    sub: sub(s),
                }),
            }
        }
        [plural] => Some(Target::Collection {
            kind: kind(plural)?,
            namespace: None,
        }),
        [plural, name, s @ ..] if kind(plural).is_some_and(|k| !k.namespaced()) => {
            Some(Target::Item {
                kind: kind(plural)?,
                namespace: String::new(),
                name: (*name).to_owned(),
                sub: sub(s),
            })
        }
        _ => None,
    }
}

async fn handle(extract::State(shared): extract::State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let injected = shared.mutate(|st| {
        let i = st.answers.iter().position(|a| {
            a.remaining > 0 && a.prefix.as_deref().is_none_or(|p| path.starts_with(p))
        })?;
        let a = &mut st.answers[i];
        a.remaining -= 1;
        let status = a.status;
        if a.remaining == 0 {
            st.answers.remove(i);
        }
        Some(status)
    });
    let res = match injected {
        Some(status) => ApiError::injected(status).into_response(),
        None => dispatch(&shared, req)
            .await
            .unwrap_or_else(IntoResponse::into_response),
    };
    let status = res.status().as_u16();
    shared.mutate(|st| {
        st.requests.push(RecordedRequest {
            method: method.to_string(),
            path,
            query,
            status,
        })
    });
    res
}

async fn dispatch(shared: &Arc<Shared>, req: Request) -> ApiResult<Response> {
    let Query(params) = Query::<HashMap<String, String>>::try_from_uri(req.uri())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let method = req.method().clone();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let Some(target) = route(req.uri().path()) else {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    };
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let flag = |name: &str| params.get(name).is_some_and(|v| v == "true");
    let not_allowed = || ApiError::new(405, "MethodNotAllowed", "method not allowed");
    match target {
        Target::Version => Ok(json_ok(version())),
        Target::CoreVersions => Ok(json_ok(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"},
            ],
        }))),
        Target::Groups => Ok(json_ok(groups())),
        Target::Resources(gv) => resources(&gv).map(json_ok),
        Target::Collection { kind, namespace } => match method {
            Method::GET if flag("watch") => watch(shared, kind, namespace, &params),
            Method::GET => list(shared, kind, namespace.as_deref(), &params).map(json_ok),
            Method::POST => {
                let ns = namespace.unwrap_or_default();
                let obj = parse_body(&body)?;
                let name = obj["metadata"]["name"]
                    .as_str()
                    .ok_or_else(|| ApiError::bad_request("metadata.name is required"))?
                    .to_owned();
                let created =
                    shared.mutate(|st| st.create(kind, &ns, &name, obj, flag_dry(&params)))?;
                Ok((StatusCode::CREATED, axum::Json(created)).into_response())
            }
            Method::DELETE => {
                let ns = namespace.unwrap_or_default();
                let policy = propagation(&body)?;
                let lst = list(shared, kind, Some(&ns), &params)?;
                let names: Vec<String> = lst["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_owned))
                    .collect();
                let mut items = Vec::new();
                for name in names {
                    items.push(delete(shared, kind, &ns, &name, &policy)?);
                }
                Ok(json_ok(json!({
                    "apiVersion": kind.api_version(),
                    "kind": format!("{}List", kind.name()),
                    "metadata": {"resourceVersion": shared.lock().rv.to_string()},
                    "items": items,
                })))
            }
            _ => Err(not_allowed()),
        },
        Target::Item {
            kind,
            namespace,
            name,
            sub,
        } => match (method, sub.as_deref()) {
            (Method::GET, None) => shared
                .lock()
                .objects
                .get(&(kind, namespace, name.clone()))
                .cloned()
                .map(json_ok)
                .ok_or_else(|| ApiError::not_found(kind, &name)),
            (Method::GET, Some("status")) => shared
                .lock()
                .objects
                .get(&(kind, namespace, name.clone()))
                .cloned()
                .map(json_ok)
                .ok_or_else(|| ApiError::not_found(kind, &name)),
            (Method::GET, Some("log")) if kind == Kind::Pod => {
                pod_log(shared, &namespace, &name, &params)
            }
            (Method::PATCH, sub @ (None | Some("status"))) => {
                let status_only = sub.is_some();
                let patch = parse_body(&body)?;
                let dry = flag_dry(&params);
                let out = if content_type.starts_with("application/apply-patch") {
                    let manager = params
                        .get("fieldManager")
                        .filter(|m| !m.is_empty())
                        .ok_or_else(|| {
                            ApiError::bad_request("fieldManager is required for apply requests")
                        })?
                        .clone();
                    let force = flag("force");
                    shared.mutate(|st| {
                        st.apply(
                            kind,
                            &namespace,
                            &name,
                            patch,
                            &manager,
                            force,
                            dry,
                            status_only,
                        )
                    })?
                } else if content_type.starts_with("application/merge-patch+json")
                    || content_type.starts_with("application/strategic-merge-patch+json")
                {
                    shared
                        .mutate(|st| st.merge(kind, &namespace, &name, &patch, dry, status_only))?
                } else {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("the fake does not support patches of type {content_type}"),
                    ));
                };
                Ok(json_ok(out))
            }
            (Method::PUT, sub @ (None | Some("status"))) => {
                let obj = parse_body(&body)?;
                let status_only = sub.is_some();
                let dry = flag_dry(&params);
                shared
                    .mutate(|st| st.replace(kind, &namespace, &name, obj, dry, status_only))
                    .map(json_ok)
            }
            (Method::DELETE, None) => {
                let policy = propagation(&body)?;
                delete(shared, kind, &namespace, &name, &policy).map(json_ok)
            }
            (Method::POST | Method::PUT, Some("finalize")) if kind == Kind::Namespace => shared
                .lock()
                .objects
                .get(&(kind, namespace, name.clone()))
                .cloned()
                .map(json_ok)
                .ok_or_else(|| ApiError::not_found(kind, &name)),
            _ => Err(not_allowed()),
        },
    }
}

fn json_ok(v: Value) -> Response {
    axum::Json(v).into_response()
}

fn parse_body(body: &Bytes) -> ApiResult<Value> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the fake reads JSON bodies only (YAML is not parsed): {e}"
        ))
    })?;
    if !v.is_object() {
        return Err(ApiError::bad_request("the body must be an object"));
    }
    Ok(v)
}

fn flag_dry(params: &HashMap<String, String>) -> bool {
    params.get("dryRun").is_some_and(|v| v == "All")
}

/// The `propagationPolicy` of a DeleteOptions body (kube sends it in the body).
fn propagation(body: &Bytes) -> ApiResult<String> {
    if body.is_empty() {
        return Ok("Background".to_owned());
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(v["propagationPolicy"]
        .as_str()
        .unwrap_or("Background")
        .to_owned())
}

fn version() -> Value {
    json!({
        "major": "1", "minor": "37", "gitVersion": "v1.37.0-fake", "gitCommit": "fake",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25",
        "compiler": "gc", "platform": "linux/amd64",
    })
}

fn groups() -> Value {
    let groups: Vec<Value> = ["apps", "networking.k8s.io"]
        .iter()
        .map(|g| {
            let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resources(gv: &str) -> ApiResult<Value> {
    let list: Vec<Value> = KINDS
        .iter()
        .filter(|k| k.api_version() == gv)
        .map(|k| {
            json!({
                "name": k.plural(), "singularName": k.name().to_lowercase(),
                "namespaced": k.namespaced(), "kind": k.name(),
                "verbs": [
                    "create", "delete", "deletecollection", "get", "list", "patch", "update",
                    "watch",
                ],
            })
        })
        .collect();
    if list.is_empty() {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    Ok(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list,
    }))
}

// ---------------------------------------------------------------------------------------------
// Selectors

enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

struct Filter {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl Filter {
    fn from_params(params: &HashMap<String, String>) -> ApiResult<Filter> {
        let parse = |name: &str| {
            params
                .get(name)
                .map(String::as_str)
                .map(parse_selector)
                .transpose()
                .map(Option::unwrap_or_default)
                .map_err(|e| ApiError::bad_request(format!("invalid {name}: {e}")))
        };
        Ok(Filter {
            labels: parse("labelSelector")?,
            fields: parse("fieldSelector")?,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let label = |k: &str| labels[k].as_str().map(str::to_owned);
        let field = |path: &str| {
            let mut v = obj;
            for part in path.split('.') {
                v = &v[part];
            }
            match v {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            }
        };
        self.labels.iter().all(|r| r.holds(label))
            && self
                .fields
                .iter()
                .all(|r| r.holds(|p| Some(field(p).unwrap_or_default())))
    }
}

impl Requirement {
    fn holds(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        match self {
            Requirement::Eq(k, v) => get(k).as_ref() == Some(v),
            Requirement::NotEq(k, v) => get(k).as_ref() != Some(v),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::In(k, vs) => get(k).is_some_and(|v| vs.contains(&v)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|v| !vs.contains(&v)),
        }
    }
}

fn parse_selector(s: &str) -> Result<Vec<Requirement>, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("unbalanced parentheses")?,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    let set = |rest: &str| -> Result<Vec<String>, String> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| format!("expected a set in parentheses, got `{rest}`"))?;
        Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    let mut out = Vec::new();
    for term in terms.into_iter().map(str::trim).filter(|t| !t.is_empty()) {
        let words: Vec<&str> = term.splitn(3, ' ').collect();
        let r = if let [key, op @ ("in" | "notin"), rest] = words.as_slice() {
            let values = set(rest)?;
            if *op == "in" {
                Requirement::In((*key).to_owned(), values)
            } else {
                Requirement::NotIn((*key).to_owned(), values)
            }
        } else if let Some(key) = term.strip_prefix('!') {
            Requirement::NotExists(key.trim().to_owned())
        } else if let Some((k, v)) = term.split_once("!=") {
            Requirement::NotEq(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = term.split_once("==") {
            Requirement::Eq(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = term.split_once('=') {
            Requirement::Eq(k.trim().to_owned(), v.trim().to_owned())
        } else if term.contains(' ') {
            return Err(format!("cannot parse `{term}`"));
        } else {
            Requirement::Exists(term.to_owned())
        };
        out.push(r);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Reads

fn list(
    shared: &Shared,
    kind: Kind,
    namespace: Option<&str>,
    params: &HashMap<String, String>,
) -> ApiResult<Value> {
    let filter = Filter::from_params(params)?;
    let st = shared.lock();
    let items: Vec<Value> = st
        .objects
        .iter()
        .filter(|((k, ns, _), obj)| {
            *k == kind && namespace.is_none_or(|n| n == ns) && filter.matches(obj)
        })
        .map(|(_, v)| v.clone())
        .collect();
    Ok(json!({
        "apiVersion": kind.api_version(),
        "kind": format!("{}List", kind.name()),
        "metadata": {"resourceVersion": st.rv.to_string()},
        "items": items,
    }))
}

/// A stream of lines produced by `next`, which is called again after every change to the
/// state until it returns `None`, or until `deadline`.
fn line_stream<S, F>(
    shared: &Arc<Shared>,
    state: S,
    deadline: Option<tokio::time::Instant>,
    next: F,
) -> Body
where
    S: Send + 'static,
    F: FnMut(&mut State, &mut S) -> Option<Vec<String>> + Send + 'static,
{
    struct Cursor<S, F> {
        shared: Arc<Shared>,
        rx: watch::Receiver<u64>,
        state: S,
        next: F,
        pending: VecDeque<String>,
        deadline: Option<tokio::time::Instant>,
        done: bool,
    }
    let cursor = Cursor {
        shared: shared.clone(),
        // Subscribed before the first look at the state, so no change is missed in between.
        rx: shared.changed.subscribe(),
        state,
        next,
        pending: VecDeque::new(),
        deadline,
        done: false,
    };
    let s = stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(line) = c.pending.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), c));
            }
            if c.done {
                return None;
            }
            c.rx.borrow_and_update();
            let got = {
                let mut st = c.shared.lock();
                if st.closed {
                    None
                } else {
                    (c.next)(&mut st, &mut c.state)
                }
            };
            match got {
                None => c.done = true,
                Some(lines) if !lines.is_empty() => c.pending.extend(lines),
                Some(_) => {
                    let changed = c.rx.changed();
                    let ok = match c.deadline {
                        Some(d) => tokio::time::timeout_at(d, changed)
                            .await
                            .is_ok_and(|r| r.is_ok()),
                        None => changed.await.is_ok(),
                    };
                    if !ok {
                        c.done = true;
                    }
                }
            }
        }
    });
    Body::from_stream(s)
}

fn watch(
    shared: &Arc<Shared>,
    kind: Kind,
    namespace: Option<String>,
    params: &HashMap<String, String>,
) -> ApiResult<Response> {
    let filter = Filter::from_params(params)?;
    let from: Option<u64> = match params.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv}")))?,
        ),
    };
    let deadline = params
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let in_scope =
        move |k: Kind, ns: &str| k == kind && namespace.as_deref().is_none_or(|n| n == ns);
    // The first call sends what exists (no resourceVersion) or what happened after it.
    let start = {
        let st = shared.lock();
        match from {
            Some(rv) => (Vec::new(), st.history.partition_point(|e| e.rv <= rv)),
            None => {
                let existing: Vec<String> = st
                    .objects
                    .iter()
                    .filter(|((k, ns, _), obj)| in_scope(*k, ns) && filter.matches(obj))
                    .map(|(_, obj)| event_line("ADDED", obj))
                    .collect();
                (existing, st.history.len())
            }
        }
    };
    let body = line_stream(shared, start, deadline, move |st, (initial, cursor)| {
        let mut lines = std::mem::take(initial);
        for e in &st.history[*cursor..] {
            if in_scope(e.kind, &e.namespace) && filter.matches(&e.object) {
                lines.push(event_line(e.type_, &e.object));
            }
        }
        *cursor = st.history.len();
        Some(lines)
    });
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn event_line(type_: &str, obj: &Value) -> String {
    let mut line = json!({"type": type_, "object": obj}).to_string();
    line.push('\n');
    line
}

fn pod_log(
    shared: &Arc<Shared>,
    namespace: &str,
    name: &str,
    params: &HashMap<String, String>,
) -> ApiResult<Response> {
    let uid = shared
        .lock()
        .objects
        .get(&(Kind::Pod, namespace.to_owned(), name.to_owned()))
        .map(|p| p["metadata"]["uid"].clone())
        .ok_or_else(|| ApiError::not_found(Kind::Pod, name))?;
    let follow = params.get("follow").is_some_and(|v| v == "true");
    let timestamps = params.get("timestamps").is_some_and(|v| v == "true");
    let tail: Option<usize> = params.get("tailLines").and_then(|s| s.parse().ok());
    let key = (namespace.to_owned(), name.to_owned());
    let podkey = (Kind::Pod, namespace.to_owned(), name.to_owned());
    let format = move |l: &LogLine| {
        if timestamps {
            format!("{} {}\n", l.timestamp, l.text)
        } else {
            format!("{}\n", l.text)
        }
    };
    // State: the index of the next line to send, None before the first call.
    let body = line_stream(shared, None::<usize>, None, move |st, next| {
        let lines = st.logs.get(&key).map(Vec::as_slice).unwrap_or_default();
        let first = next.is_none();
        let from = next.unwrap_or_else(|| lines.len().saturating_sub(tail.unwrap_or(lines.len())));
        let out: Vec<String> = lines[from.min(lines.len())..].iter().map(&format).collect();
        *next = Some(lines.len());
        if !follow {
            return (first && !out.is_empty()).then_some(out);
        }
        let alive = st
            .objects
            .get(&podkey)
            .is_some_and(|p| p["metadata"]["uid"] == uid);
        (alive || !out.is_empty()).then_some(out)
    });
    Ok(([(header::CONTENT_TYPE, "text/plain")], body).into_response())
}

fn delete(
    shared: &Arc<Shared>,
    kind: Kind,
    namespace: &str,
    name: &str,
    policy: &str,
) -> ApiResult<Value> {
    if kind == Kind::Namespace {
        let (obj, started) = shared.mutate(|st| st.start_namespace_deletion(name))?;
        if started {
            tokio::spawn(reap_namespace(shared.clone(), name.to_owned()));
        }
        return Ok(obj);
    }
    let orphan = policy == "Orphan";
    shared.mutate(|st| {
        st.remove(kind, namespace, name, !orphan)
            .ok_or_else(|| ApiError::not_found(kind, name))
    })
}

/// Removes namespace `name` and everything in it once the delay has passed and no stuck
/// finalizer holds it.
async fn reap_namespace(shared: Arc<Shared>, name: String) {
    let delay = shared.lock().namespace_delete_delay;
    tokio::time::sleep(delay).await;
    let mut rx = shared.changed.subscribe();
    loop {
        rx.borrow_and_update();
        let done = {
            let st = shared.lock();
            st.closed || !st.stuck.contains(&name)
        };
        if done {
            break;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
    shared.mutate(|st| {
        let inside: Vec<Key> = st
            .objects
            .keys()
            .filter(|(_, ns, _)| *ns == name)
            .cloned()
            .collect();
        for (kind, ns, n) in inside {
            st.remove(kind, &ns, &n, false);
        }
        st.remove(Kind::Namespace, "", &name, false);
    });
}

// ---------------------------------------------------------------------------------------------
// Writes

impl State {
    fn key(kind: Kind, namespace: &str, name: &str) -> Key {
        let ns = if kind.namespaced() { namespace } else { "" };
        (kind, ns.to_owned(), name.to_owned())
    }

    /// Stores `obj` under a new resourceVersion and records the event.
    fn commit(&mut self, key: Key, mut obj: Value, type_: &'static str) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.history.push(Event {
            rv: self.rv,
            kind: key.0,
            namespace: key.1.clone(),
            type_,
            object: obj.clone(),
        });
        if type_ == "DELETED" {
            self.objects.remove(&key);
            self.managed.remove(&key);
        } else {
            self.objects.insert(key, obj.clone());
        }
        obj
    }

    /// Refuses a new namespaced object whose namespace is missing or terminating.
    fn admit(&self, kind: Kind, namespace: &str) -> ApiResult<()> {
        if !kind.namespaced() {
            return Ok(());
        }
        match self
            .objects
            .get(&(Kind::Namespace, String::new(), namespace.to_owned()))
        {
            None => Err(ApiError::not_found(Kind::Namespace, namespace)),
            Some(ns) if ns["status"]["phase"] == "Terminating" => Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{} is forbidden: unable to create new content in namespace {namespace} \
                     because it is being terminated",
                    kind.resource()
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// The fields the server sets on a new object.
    fn initialise(&mut self, kind: Kind, namespace: &str, name: &str, obj: &mut Value) {
        self.uids += 1;
        obj["apiVersion"] = json!(kind.api_version());
        obj["kind"] = json!(kind.name());
        let meta = &mut obj["metadata"];
        meta["name"] = json!(name);
        if kind.namespaced() {
            meta["namespace"] = json!(namespace);
        }
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uids));
        meta["creationTimestamp"] = json!(timestamp_seconds());
        meta["generation"] = json!(1);
        if kind == Kind::Namespace {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
        }
        normalise(kind, obj);
    }

    fn create(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        mut obj: Value,
        dry: bool,
    ) -> ApiResult<Value> {
        check_identity(kind, name, &obj)?;
        let key = Self::key(kind, namespace, name);
        if self.objects.contains_key(&key) {
            return Err(ApiError {
                details: Some(json!({"name": name, "group": kind.group(), "kind": kind.plural()})),
                ..ApiError::new(
                    409,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", kind.resource()),
                )
            });
        }
        self.admit(kind, namespace)?;
        obj.as_object_mut().map(|o| o.remove("status"));
        self.initialise(kind, namespace, name, &mut obj);
        if dry {
            return Ok(obj);
        }
        Ok(self.commit(key, obj, "ADDED"))
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        applied: Value,
        manager: &str,
        force: bool,
        dry: bool,
        status_only: bool,
    ) -> ApiResult<Value> {
        check_identity(kind, name, &applied)?;
        let key = Self::key(kind, namespace, name);
        let old = self.objects.get(&key).cloned();
        let mut obj = match &old {
            Some(o) => o.clone(),
            None => {
                if status_only {
                    return Err(ApiError::not_found(kind, name));
                }
                self.admit(kind, namespace)?;
                let mut o = json!({"metadata": {}});
                self.initialise(kind, namespace, name, &mut o);
                o
            }
        };
        let Value::Object(applied_map) = &applied else {
            return Err(ApiError::bad_request("the body must be an object"));
        };
        let fields: BTreeSet<String> = applied_map
            .keys()
            .filter(|k| {
                if status_only {
                    *k == "status"
                } else {
                    !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status")
                }
            })
            .cloned()
            .collect();
        let map_keys = |which: &str| -> BTreeSet<String> {
            applied["metadata"][which]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        };
        let mine = Owned {
            labels: if status_only {
                BTreeSet::new()
            } else {
                map_keys("labels")
            },
            annotations: if status_only {
                BTreeSet::new()
            } else {
                map_keys("annotations")
            },
            fields,
        };
        // A manager's status writes are owned apart from its writes of the object, as the
        // real server tracks the status subresource apart.
        let manager = if status_only {
            format!("{manager}/status")
        } else {
            manager.to_owned()
        };
        let mut managers = self.managed.get(&key).cloned().unwrap_or_default();
        let before = managers.remove(&manager).unwrap_or_default();

        // Conflicts: a different value in something another manager owns.
        if !force {
            let mut conflicts = Vec::new();
            for (other, owned) in &managers {
                for f in mine.fields.intersection(&owned.fields) {
                    if obj[f.as_str()] != applied[f.as_str()] {
                        conflicts.push(format!("conflict with \"{other}\": .{f}"));
                    }
                }
                for (which, set, theirs) in [
                    ("labels", &mine.labels, &owned.labels),
                    ("annotations", &mine.annotations, &owned.annotations),
                ] {
                    for k in set.intersection(theirs) {
                        if obj["metadata"][which][k.as_str()]
                            != applied["metadata"][which][k.as_str()]
                        {
                            conflicts
                                .push(format!("conflict with \"{other}\": .metadata.{which}.{k}"));
                        }
                    }
                }
            }
            if !conflicts.is_empty() {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Apply failed with {} conflict(s): {}",
                        conflicts.len(),
                        conflicts.join(", ")
                    ),
                ));
            }
        } else {
            // Forced: what this manager names is taken from the others.
            for owned in managers.values_mut() {
                owned.fields.retain(|f| !mine.fields.contains(f));
                owned.labels.retain(|f| !mine.labels.contains(f));
                owned.annotations.retain(|f| !mine.annotations.contains(f));
            }
        }
        let owned_by_others = |pick: fn(&Owned) -> &BTreeSet<String>, k: &str| {
            managers.values().any(|o| pick(o).contains(k))
        };

        // Labels and annotations, key by key.
        for (which, pick) in [
            (
                "labels",
                (|o: &Owned| &o.labels) as fn(&Owned) -> &BTreeSet<String>,
            ),
            ("annotations", |o: &Owned| &o.annotations),
        ] {
            let mut current = obj["metadata"][which]
                .as_object()
                .cloned()
                .unwrap_or_default();
            for k in pick(&before) {
                if !pick(&mine).contains(k) && !owned_by_others(pick, k) {
                    current.remove(k);
                }
            }
            if let Some(m) = applied["metadata"][which].as_object() {
                current.extend(m.clone());
            }
            let meta = obj["metadata"]
                .as_object_mut()
                .expect("metadata is an object");
            if current.is_empty() {
                meta.remove(which);
            } else {
                meta.insert(which.to_owned(), Value::Object(current));
            }
        }
        // Top-level fields, each as a whole.
        let top = obj.as_object_mut().expect("an object");
        for f in &before.fields {
            if !mine.fields.contains(f) && !owned_by_others(|o| &o.fields, f) {
                top.remove(f);
            }
        }
        for f in &mine.fields {
            top.insert(f.clone(), applied[f.as_str()].clone());
        }
        normalise(kind, &mut obj);
        if let Some(o) = &old
            && o["spec"] != obj["spec"]
        {
            let generation = o["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            obj["metadata"]["generation"] = json!(generation);
        }
        if dry {
            return Ok(obj);
        }
        managers.insert(manager, mine);
        self.managed.insert(key.clone(), managers);
        match old {
            Some(o) if o == obj => Ok(o),
            Some(_) => Ok(self.commit(key, obj, "MODIFIED")),
            None => Ok(self.commit(key, obj, "ADDED")),
        }
    }

    fn merge(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        patch: &Value,
        dry: bool,
        status_only: bool,
    ) -> ApiResult<Value> {
        let key = Self::key(kind, namespace, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        let mut obj = old.clone();
        if status_only {
            merge_patch(&mut obj["status"], &patch["status"]);
        } else {
            let mut p = patch.clone();
            if let Some(m) = p.as_object_mut() {
                m.remove("status");
            }
            merge_patch(&mut obj, &p);
        }
        self.finish_update(kind, key, old, obj, dry)
    }

    fn replace(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        new: Value,
        dry: bool,
        status_only: bool,
    ) -> ApiResult<Value> {
        check_identity(kind, name, &new)?;
        let key = Self::key(kind, namespace, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        if let Some(rv) = new["metadata"]["resourceVersion"].as_str()
            && Some(rv) != old["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been \
                     modified; please apply your changes to the latest version and try again",
                    kind.resource()
                ),
            ));
        }
        let mut obj = old.clone();
        if status_only {
            obj["status"] = new["status"].clone();
        } else {
            let keep = [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
            ];
            let mut new = new;
            for k in keep {
                new["metadata"][k] = old["metadata"][k].clone();
            }
            new["status"] = old["status"].clone();
            obj = new;
        }
        self.finish_update(kind, key, old, obj, dry)
    }

    fn finish_update(
        &mut self,
        kind: Kind,
        key: Key,
        old: Value,
        mut obj: Value,
        dry: bool,
    ) -> ApiResult<Value> {
        for k in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "resourceVersion",
        ] {
            obj["metadata"][k] = old["metadata"][k].clone();
        }
        strip_nulls(&mut obj);
        normalise(kind, &mut obj);
        if old["spec"] != obj["spec"] {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            obj["metadata"]["generation"] = json!(generation);
        }
        if dry || obj == old {
            return Ok(obj);
        }
        Ok(self.commit(key, obj, "MODIFIED"))
    }

    /// Deletes an object now; `cascade` also deletes a Deployment's ReplicaSets and a
    /// ReplicaSet's pods. `None` when it does not exist.
    fn remove(&mut self, kind: Kind, namespace: &str, name: &str, cascade: bool) -> Option<Value> {
        let key = Self::key(kind, namespace, name);
        let mut obj = self.objects.get(&key).cloned()?;
        if cascade {
            let uid = obj["metadata"]["uid"].clone();
            let child = match kind {
                Kind::Deployment => Some(Kind::ReplicaSet),
                Kind::ReplicaSet => Some(Kind::Pod),
                _ => None,
            };
            if let Some(child) = child {
                for n in self.owned_by(child, namespace, &uid) {
                    self.remove(child, namespace, &n, true);
                }
            }
        }
        if obj["metadata"]["deletionTimestamp"].is_null() {
            obj["metadata"]["deletionTimestamp"] = json!(timestamp_seconds());
        }
        if kind == Kind::Pod {
            self.logs.remove(&(namespace.to_owned(), name.to_owned()));
        }
        Some(self.commit(key, obj, "DELETED"))
    }

    fn owned_by(&self, kind: Kind, namespace: &str, uid: &Value) -> Vec<String> {
        self.objects
            .iter()
            .filter(|((k, ns, _), o)| {
                *k == kind
                    && ns == namespace
                    && o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == *uid))
            })
            .map(|((_, _, n), _)| n.clone())
            .collect()
    }

    /// Marks a namespace `Terminating`. The flag says whether this call started it.
    fn start_namespace_deletion(&mut self, name: &str) -> ApiResult<(Value, bool)> {
        let key = Self::key(Kind::Namespace, "", name);
        let mut obj = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(Kind::Namespace, name))?;
        if obj["status"]["phase"] == "Terminating" {
            return Ok((obj, false));
        }
        obj["metadata"]["deletionTimestamp"] = json!(timestamp_seconds());
        obj["status"]["phase"] = json!("Terminating");
        if self.stuck.contains(name) {
            obj["metadata"]["finalizers"] = json!(["fake.stackyard.dev/stuck"]);
        }
        Ok((self.commit(key, obj, "MODIFIED"), true))
    }
}

/// The object's `kind`, `apiVersion` and name, when given, must be the path's.
fn check_identity(kind: Kind, name: &str, obj: &Value) -> ApiResult<()> {
    let given = |f: &str| obj[f].as_str();
    if given("kind").is_some_and(|k| k != kind.name())
        || given("apiVersion").is_some_and(|v| v != kind.api_version())
    {
        return Err(ApiError::bad_request(format!(
            "the body's kind and apiVersion must be {} {}",
            kind.api_version(),
            kind.name()
        )));
    }
    if obj["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    Ok(())
}

/// What the real server does to every write of `kind`: a Secret's `stringData` goes into
/// `data`.
fn normalise(kind: Kind, obj: &mut Value) {
    if kind != Kind::Secret {
        return;
    }
    let Some(Value::Object(strings)) = obj.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    let mut data = obj["data"].as_object().cloned().unwrap_or_default();
    for (k, v) in strings {
        let text = v.as_str().unwrap_or_default();
        data.insert(
            k,
            json!(base64::engine::general_purpose::STANDARD.encode(text)),
        );
    }
    obj["data"] = Value::Object(data);
}

/// RFC 7386.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("just made an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn strip_nulls(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|_, v| !v.is_null());
        m.values_mut().for_each(strip_nulls);
    }
}

fn timestamp_seconds() -> String {
    format!("{:.0}", k8s_openapi::jiff::Timestamp::now())
}

fn timestamp_nanos() -> String {
    format!("{:.9}", k8s_openapi::jiff::Timestamp::now())
}

// ---------------------------------------------------------------------------------------------
// The Deployment controller

/// Watches the event history for Deployments whose generation changed and rolls each out
/// after the rollout delay.
async fn deployment_controller(shared: Arc<Shared>) {
    let mut rx = shared.changed.subscribe();
    let mut cursor = 0;
    let mut seen: HashMap<(String, String), i64> = HashMap::new();
    loop {
        rx.borrow_and_update();
        let (events, delay) = {
            let st = shared.lock();
            if st.closed {
                return;
            }
            let events: Vec<Event> = st.history[cursor..]
                .iter()
                .filter(|e| e.kind == Kind::Deployment)
                .cloned()
                .collect();
            cursor = st.history.len();
            (events, st.rollout_delay)
        };
        for e in events {
            let name = e.object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let key = (e.namespace.clone(), name.clone());
            if e.type_ == "DELETED" {
                seen.remove(&key);
                continue;
            }
            let generation = e.object["metadata"]["generation"].as_i64().unwrap_or(0);
            if seen.get(&key) != Some(&generation) {
                seen.insert(key, generation);
                let shared = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    shared.mutate(|st| st.roll_out(&e.namespace, &name, generation));
                });
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

impl State {
    /// Rolls Deployment `namespace/name` out at `generation`, unless it has moved on since.
    fn roll_out(&mut self, namespace: &str, name: &str, generation: i64) {
        if self.closed {
            return;
        }
        let key = Self::key(Kind::Deployment, namespace, name);
        let Some(deploy) = self.objects.get(&key).cloned() else {
            return;
        };
        if deploy["metadata"]["generation"].as_i64() != Some(generation) {
            return;
        }
        let fault = self.faults.remove(&(namespace.to_owned(), name.to_owned()));
        let template = deploy["spec"]["template"].clone();
        let want = deploy["spec"]["replicas"].as_u64().unwrap_or(1);
        let hash = {
            let mut h = DefaultHasher::new();
            template.to_string().hash(&mut h);
            format!("{:010x}", h.finish() & 0xff_ffff_ffff)
        };
        let rs_name = format!("{name}-{hash}");
        let deploy_uid = deploy["metadata"]["uid"].clone();

        // The ReplicaSets of this Deployment: the new one, and the old ones with ready pods.
        let rs_names = self.owned_by(Kind::ReplicaSet, namespace, &deploy_uid);
        let mut old_ready: u64 = 0;
        for rs in rs_names.iter().filter(|n| **n != rs_name) {
            let rs_uid =
                self.objects[&Self::key(Kind::ReplicaSet, namespace, rs)]["metadata"]["uid"]
                    .clone();
            let pods = self.owned_by(Kind::Pod, namespace, &rs_uid);
            let ready: Vec<String> = pods
                .iter()
                .filter(|p| pod_ready(&self.objects[&Self::key(Kind::Pod, namespace, p)]))
                .cloned()
                .collect();
            if fault.is_none() || ready.is_empty() {
                // Scaled down: a healthy rollout replaces everything, a failing one keeps
                // only what still serves.
                for p in pods {
                    self.remove(Kind::Pod, namespace, &p, false);
                }
                self.set_rs_replicas(namespace, rs, 0, 0);
            } else {
                old_ready += ready.len() as u64;
            }
        }

        // The new ReplicaSet and its pods, replacing any of a previous try.
        let rs_key = Self::key(Kind::ReplicaSet, namespace, &rs_name);
        let rs_uid = match self.objects.get(&rs_key) {
            Some(rs) => rs["metadata"]["uid"].clone(),
            None => {
                let mut rs = json!({
                    "metadata": {
                        "labels": template["metadata"]["labels"],
                        "annotations": {
                            "deployment.kubernetes.io/revision": generation.to_string(),
                        },
                        "ownerReferences": [owner_ref("apps/v1", "Deployment", name, &deploy_uid)],
                    },
                    "spec": {
                        "replicas": want,
                        "selector": deploy["spec"]["selector"],
                        "template": template,
                    },
                });
                rs["metadata"]["labels"]["pod-template-hash"] = json!(hash);
                strip_nulls(&mut rs);
                self.initialise(Kind::ReplicaSet, namespace, &rs_name, &mut rs);
                self.commit(rs_key.clone(), rs, "ADDED")["metadata"]["uid"].clone()
            }
        };
        for p in self.owned_by(Kind::Pod, namespace, &rs_uid) {
            self.remove(Kind::Pod, namespace, &p, false);
        }
        for n in 0..want {
            let pod_name = format!("{rs_name}-{n}");
            let mut pod = json!({
                "metadata": {
                    "labels": template["metadata"]["labels"],
                    "annotations": template["metadata"]["annotations"],
                    "ownerReferences": [owner_ref("apps/v1", "ReplicaSet", &rs_name, &rs_uid)],
                },
                "spec": template["spec"],
            });
            pod["metadata"]["labels"]["pod-template-hash"] = json!(hash);
            pod["spec"]["nodeName"] = json!("fake-node");
            strip_nulls(&mut pod);
            self.initialise(Kind::Pod, namespace, &pod_name, &mut pod);
            pod["status"] = pod_status(&pod_name, &template["spec"], fault);
            if fault == Some(Fault::CrashLoopBackOff) {
                // What the crashed container printed before it exited.
                self.logs
                    .entry((namespace.to_owned(), pod_name.clone()))
                    .or_default()
                    .push(LogLine {
                        timestamp: timestamp_nanos(),
                        text: CRASH_LOG_LINE.to_owned(),
                    });
            }
            self.commit(Self::key(Kind::Pod, namespace, &pod_name), pod, "ADDED");
        }
        let new_ready = if fault.is_none() { want } else { 0 };
        self.set_rs_replicas(namespace, &rs_name, want, new_ready);

        // The Deployment's status.
        let now = timestamp_seconds();
        let condition = |type_: &str, status: &str, reason: &str, message: String| {
            json!({
                "type": type_, "status": status, "reason": reason, "message": message,
                "lastUpdateTime": now, "lastTransitionTime": now,
            })
        };
        let available = old_ready + new_ready;
        let available_condition = if available >= want {
            condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".to_owned(),
            )
        } else {
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".to_owned(),
            )
        };
        let progressing = match fault {
            None => condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            ),
            Some(Fault::ProgressDeadlineExceeded) => condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
            ),
            Some(_) => condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{rs_name}\" is progressing."),
            ),
        };
        let mut status = json!({
            "observedGeneration": generation,
            "replicas": old_ready + want,
            "updatedReplicas": want,
            "readyReplicas": available,
            "availableReplicas": available,
            "conditions": [available_condition, progressing],
        });
        if want > new_ready {
            status["unavailableReplicas"] = json!(want - new_ready);
        }
        let mut deploy = deploy;
        deploy["status"] = status;
        self.commit(key, deploy, "MODIFIED");
    }

    fn set_rs_replicas(&mut self, namespace: &str, rs: &str, replicas: u64, ready: u64) {
        let key = Self::key(Kind::ReplicaSet, namespace, rs);
        let Some(mut obj) = self.objects.get(&key).cloned() else {
            return;
        };
        obj["spec"]["replicas"] = json!(replicas);
        obj["status"] = json!({
            "replicas": replicas, "readyReplicas": ready, "availableReplicas": ready,
            "observedGeneration": obj["metadata"]["generation"],
        });
        if self.objects.get(&key) != Some(&obj) {
            self.commit(key, obj, "MODIFIED");
        }
    }
}

fn owner_ref(api_version: &str, kind: &str, name: &str, uid: &Value) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
        "controller": true, "blockOwnerDeletion": true,
    })
}

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The status of a new pod of `spec`: running and ready, or stuck the way `fault` says.
fn pod_status(pod_name: &str, spec: &Value, fault: Option<Fault>) -> Value {
    let now = timestamp_seconds();
    let containers = |field: &str| -> Vec<(String, String)> {
        spec[field]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or_default().to_owned(),
                    c["image"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let init: Vec<Value> = containers("initContainers")
        .into_iter()
        .map(|(name, image)| {
            let state = match fault {
                Some(Fault::ProgressDeadlineExceeded) => {
                    json!({"running": {"startedAt": now}})
                }
                _ => json!({"terminated": {"exitCode": 0, "reason": "Completed",
                                           "startedAt": now, "finishedAt": now}}),
            };
            json!({"name": name, "image": image, "ready": fault.is_none(),
                   "restartCount": 0, "state": state})
        })
        .collect();
    let main: Vec<Value> = containers("containers")
        .into_iter()
        .map(|(name, image)| {
            let (state, ready, restarts) = match fault {
                None => (json!({"running": {"startedAt": now}}), true, 0),
                Some(Fault::ImagePullBackOff) => (
                    json!({"waiting": {"reason": "ImagePullBackOff",
                                       "message": format!("Back-off pulling image \"{image}\"")}}),
                    false,
                    0,
                ),
                Some(Fault::CrashLoopBackOff) => (
                    json!({"waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": format!(
                            "back-off 40s restarting failed container={name} pod={pod_name}"
                        ),
                    }}),
                    false,
                    3,
                ),
                Some(Fault::ProgressDeadlineExceeded) => {
                    (json!({"waiting": {"reason": "PodInitializing"}}), false, 0)
                }
            };
            json!({"name": name, "image": image, "ready": ready,
                   "restartCount": restarts, "started": ready, "state": state})
        })
        .collect();
    let ready = if fault.is_none() { "True" } else { "False" };
    let initialized = if fault == Some(Fault::ProgressDeadlineExceeded) {
        "False"
    } else {
        "True"
    };
    let phase = match fault {
        None | Some(Fault::CrashLoopBackOff) => "Running",
        _ => "Pending",
    };
    let mut status = json!({
        "phase": phase,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": initialized, "lastTransitionTime": now},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
            {"type": "Ready", "status": ready, "lastTransitionTime": now},
        ],
        "hostIP": "10.0.0.1",
        "podIP": "10.244.0.10",
        "startTime": now,
        "containerStatuses": main,
    });
    if !init.is_empty() {
        status["initContainerStatuses"] = json!(init);
    }
    status
}
