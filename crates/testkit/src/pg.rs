//! A fresh PostgreSQL database per test.
//!
//! Which server (decided once per process, see [`admin_url`]):
//! 1. `STACKYARD_TEST_DATABASE_URL`, if set and answering;
//! 2. else `postgres://postgres@127.0.0.1:5432/postgres`, if it answers (skipped when
//!    `STACKYARD_TEST_SKIP_LOCAL_PG=1`, which exists to exercise step 3 on a machine that has
//!    a local server);
//! 3. else a private server started from the machine's binaries
//!    (`/usr/lib/postgresql/*/bin/{initdb,postgres}`, or `initdb` on `PATH`), in a temporary
//!    directory, on a free port, with trust authentication and `fsync=off` (a throwaway test
//!    server). PostgreSQL refuses to run as root, so under root it runs as the `postgres` user
//!    (through `setpriv`, else `runuser`) with the directory handed over to that user. A small
//!    shell wrapper owns it: when this test process exits (however it dies) the wrapper
//!    notices within a second, shuts the server down and deletes the directory.
//!
//! If none works, PostgreSQL tests skip after printing every reason to stderr; with `CI=true`
//! that is a panic instead, because a skipped suite in CI is a silent failure.
//!
//! Each [`fresh`] database is named `sy_t_<unix ms>_<random>` and dropped (`WITH (FORCE)`)
//! when its [`PgTestDb`] is dropped. Test processes run in parallel against one server, so a
//! process only ever drops its own databases, plus — once per process — leftovers of crashed
//! runs whose name says they are more than an hour old.

use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::OnceCell;

const URL_VAR: &str = "STACKYARD_TEST_DATABASE_URL";
const SKIP_LOCAL_VAR: &str = "STACKYARD_TEST_SKIP_LOCAL_PG";
const LOCAL_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Test databases are named `sy_t_<unix ms>_<hex>`.
const DB_PREFIX: &str = "sy_t_";
/// Leftover test databases older than this (by the time in their name) are dropped.
const LEFTOVER_AGE: Duration = Duration::from_secs(60 * 60);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const START_TIMEOUT: Duration = Duration::from_secs(60);

static ADMIN: OnceCell<Option<String>> = OnceCell::const_new();
static SWEPT: OnceCell<()> = OnceCell::const_new();

/// The URL of a server (connected to its `postgres` database) on which tests may create and
/// drop databases, or `None` (after printing why) when there is none. Decided once per process.
///
/// # Panics
/// When no server is available and `CI=true`.
pub async fn admin_url() -> Option<String> {
    ADMIN.get_or_init(find_server).await.clone()
}

/// A brand-new, empty database (no tables: the store's `connect` runs the migrations).
/// Dropped when this value is dropped; keep it alive as long as the store is used.
pub struct PgTestDb {
    /// `postgres://…/sy_t_…`.
    pub url: String,
    /// The database name.
    pub name: String,
    admin: String,
}

impl std::fmt::Debug for PgTestDb {
    // The URL may carry a password (from STACKYARD_TEST_DATABASE_URL).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTestDb")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Creates a new empty database on the [`admin_url`] server; `None` when there is no server.
///
/// # Panics
/// When the server answered before but cannot create a database now (a real failure), and
/// when no server is available and `CI=true`.
pub async fn fresh() -> Option<PgTestDb> {
    let admin = admin_url().await?;
    SWEPT.get_or_init(|| drop_leftover_databases(&admin)).await;
    let name = format!(
        "{DB_PREFIX}{}_{}",
        unix_ms(),
        stackyard_core::ids::random_hex(4)
    );
    let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
        panic!(
            "connecting to the test PostgreSQL server {} failed: {e}",
            redact(&admin)
        )
    });
    conn.execute(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .await
        .unwrap_or_else(|e| panic!("creating test database {name} failed: {e}"));
    let _ = conn.close().await;
    Some(PgTestDb {
        url: with_database(&admin, &name),
        name,
        admin,
    })
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on; a short-lived
        // thread with its own runtime does the drop, and we wait for it so that the database
        // is gone when the test ends. Best effort: a failure leaves a database the next run's
        // leftover sweep removes.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Err(e) = drop_database(&admin, &name).await {
                    eprintln!("stackyard-testkit: could not drop test database {name}: {e}");
                }
            });
        });
        let _ = dropper.join();
    }
}

async fn drop_database(admin: &str, name: &str) -> Result<(), sqlx::Error> {
    let mut conn = tokio::time::timeout(PROBE_TIMEOUT, PgConnection::connect(admin))
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    // FORCE: the store's pool may still hold connections to it.
    conn.execute(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .await?;
    let _ = conn.close().await;
    Ok(())
}

/// Drops `sy_t_*` databases whose name dates them more than `LEFTOVER_AGE` ago: left behind by
/// runs that crashed before their `PgTestDb` was dropped. Younger ones may belong to a test
/// running right now in another process, so they are never touched.
async fn drop_leftover_databases(admin: &str) {
    let Ok(mut conn) = PgConnection::connect(admin).await else {
        return;
    };
    let names: Vec<String> =
        match sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'sy\\_t\\_%'")
            .fetch_all(&mut conn)
            .await
        {
            Ok(names) => names,
            Err(_) => return,
        };
    let _ = conn.close().await;
    let now = unix_ms();
    let cutoff = i64::try_from(LEFTOVER_AGE.as_millis()).unwrap_or(i64::MAX);
    for name in names {
        let Some(created) = created_ms(&name) else {
            continue;
        };
        if now.saturating_sub(created) <= cutoff {
            continue;
        }
        if let Err(e) = drop_database(admin, &name).await {
            eprintln!("stackyard-testkit: could not drop leftover database {name}: {e}");
        }
    }
}

/// The creation time in a test database name `sy_t_<ms>_<hex>`.
fn created_ms(name: &str) -> Option<i64> {
    let rest = name.strip_prefix(DB_PREFIX)?;
    let (ms, suffix) = rest.split_once('_')?;
    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    ms.parse().ok()
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `url` with its database (path) replaced by `db`, keeping any query parameters.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{db}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// `url` with any password replaced, for messages.
fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return "<unparseable URL>".into();
    };
    let authority_end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let authority = &url[start..authority_end];
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let shown = if userinfo.contains(':') {
                format!("{user}:***@{host}")
            } else {
                format!("{user}@{host}")
            };
            format!("{}{shown}{}", &url[..start], &url[authority_end..])
        }
        None => url.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// choosing the server

async fn find_server() -> Option<String> {
    let mut reasons = Vec::new();
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => match probe(&url).await {
            Ok(()) => return Some(url),
            Err(e) => reasons.push(format!("{URL_VAR} ({}) did not answer: {e}", redact(&url))),
        },
        _ => reasons.push(format!("{URL_VAR} is not set")),
    }
    if std::env::var(SKIP_LOCAL_VAR).is_ok_and(|v| v == "1" || v == "true") {
        reasons.push(format!(
            "{LOCAL_URL} was not tried ({SKIP_LOCAL_VAR} is set)"
        ));
    } else {
        match probe(LOCAL_URL).await {
            Ok(()) => return Some(LOCAL_URL.to_owned()),
            Err(e) => reasons.push(format!("{LOCAL_URL} did not answer: {e}")),
        }
    }
    match start_private_server().await {
        Ok(url) => {
            eprintln!(
                "stackyard-testkit: PostgreSQL tests use a private server at {url} ({})",
                reasons.join("; ")
            );
            return Some(url);
        }
        Err(e) => reasons.push(format!("could not start a private PostgreSQL server: {e}")),
    }
    let why = format!(
        "no PostgreSQL server for tests:\n  - {}",
        reasons.join("\n  - ")
    );
    if crate::under_ci() {
        panic!("{why}\n(CI=true: a skipped PostgreSQL suite counts as a failure)");
    }
    eprintln!("stackyard-testkit: skipping PostgreSQL tests: {why}");
    None
}

async fn probe(url: &str) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, PgConnection::connect(url)).await {
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
        Ok(Err(e)) => Err(describe(&e)),
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
    }
}

/// A connection error without anything from the URL.
fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => format!("I/O error: {io}"),
        sqlx::Error::Database(d) => format!("server error: {}", d.message()),
        sqlx::Error::Configuration(_) => "the URL is not valid".into(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// the private server

/// Runs the server until the test process is gone, then stops it (fast shutdown) and deletes
/// its directory. If the server exits on its own while the test process lives (it could not
/// start), the directory is left for the caller to read the log and clean up. Arguments: the
/// directory, the test process id, then the server command.
const WRAPPER: &str = r#"
dir=$1; parent=$2; shift 2
exec >>"$dir/server.log" 2>&1
"$@" &
pid=$!
trap 'kill -INT "$pid" 2>/dev/null' TERM INT HUP
( while kill -0 "$parent" 2>/dev/null; do sleep 1; done; kill -INT "$pid" 2>/dev/null ) &
watcher=$!
wait "$pid"; status=$?
# A trapped signal interrupts wait: wait again until postgres has really finished.
wait "$pid" 2>/dev/null
kill "$watcher" 2>/dev/null
if kill -0 "$parent" 2>/dev/null; then exit "$status"; fi
rm -rf "$dir"
"#;

/// A cluster made by initdb in a temporary directory, and how to run its binaries.
struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    root: bool,
}

/// Starts a private server: initdb once, then `postgres` on a free port under the wrapper,
/// trying another port if the first start fails (another process may grab the port between
/// our probe and postgres binding it). Returns the admin URL once the server answers.
async fn start_private_server() -> Result<String, String> {
    let cluster = tokio::task::spawn_blocking(init_cluster)
        .await
        .map_err(|e| format!("initdb panicked: {e}"))??;
    let mut last = String::new();
    for _ in 0..3 {
        let (url, mut child) = launch(&cluster)?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                last = format!(
                    "postgres exited with {status}: {}",
                    log_tail(&cluster.dir.join("server.log"))
                );
                break;
            }
            match probe(&url).await {
                Ok(()) => return Ok(url),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = std::fs::remove_dir_all(&cluster.dir);
                    return Err(format!(
                        "postgres did not answer within {START_TIMEOUT:?}: {e}"
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    let _ = std::fs::remove_dir_all(&cluster.dir);
    Err(last)
}

fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(3).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// initdb's a new cluster (trust authentication, superuser `postgres`) in a new temporary
/// directory, owned by the `postgres` user when we are root.
fn init_cluster() -> Result<Cluster, String> {
    init_cluster_with(None)
}

/// [`init_cluster`], or with `scram_password` a cluster whose every connection authenticates
/// by SCRAM-SHA-256 (`initdb -A scram-sha-256`), the superuser's password being that.
fn init_cluster_with(scram_password: Option<&str>) -> Result<Cluster, String> {
    let bin = find_bin_dir()?;
    let root = is_root();
    let dir = tempfile::Builder::new()
        .prefix("stackyard-pg-")
        .tempdir()
        .map_err(|e| format!("creating a temporary directory: {e}"))?
        .keep();
    let cleanup = |msg: String| {
        let _ = std::fs::remove_dir_all(&dir);
        msg
    };
    if root {
        run(Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(&dir))
        .map_err(|e| {
            cleanup(format!(
                "handing {} to the postgres user: {e}",
                dir.display()
            ))
        })?;
    }
    let mut initdb = as_server_user(root, &bin.join("initdb")).map_err(cleanup)?;
    initdb
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
        .current_dir(&dir);
    match scram_password {
        None => {
            initdb.args(["-A", "trust"]);
        }
        Some(password) => {
            let pwfile = dir.join("pwfile");
            std::fs::write(&pwfile, password)
                .map_err(|e| cleanup(format!("writing the password file: {e}")))?;
            if root {
                run(Command::new("chown").arg("postgres:postgres").arg(&pwfile))
                    .map_err(|e| cleanup(format!("handing the password file over: {e}")))?;
            }
            initdb
                .args(["-A", "scram-sha-256", "--pwfile"])
                .arg(&pwfile);
        }
    }
    run(&mut initdb).map_err(|e| cleanup(format!("initdb failed: {e}")))?;
    Ok(Cluster { dir, bin, root })
}

/// A private cluster one test owns, whose connections authenticate by SCRAM-SHA-256 (the
/// shared test server trusts local connections, so a login there proves no password right).
/// Dropping it stops the server (SIGTERM to its wrapper, by pid) and removes its directory.
pub struct ScramServer {
    /// The superuser's URL, password included.
    pub url: String,
    child: std::process::Child,
    dir: PathBuf,
}

impl ScramServer {
    /// initdb's and starts the cluster; `Err` says why it could not.
    pub async fn start() -> Result<ScramServer, String> {
        let password = stackyard_core::ids::random_hex(16);
        let pw = password.clone();
        let cluster = tokio::task::spawn_blocking(move || init_cluster_with(Some(&pw)))
            .await
            .map_err(|e| format!("initdb panicked: {e}"))??;
        let (url, child) = launch(&cluster)?;
        let url = url.replace("postgres@", &format!("postgres:{password}@"));
        let server = ScramServer {
            url,
            child,
            dir: cluster.dir,
        };
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            match probe(&server.url).await {
                Ok(()) => return Ok(server),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(format!("the SCRAM cluster did not answer: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for ScramServer {
    fn drop(&mut self) {
        // The wrapper turns TERM into a fast shutdown of its postgres.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `postgres` for `cluster` on a free port under the wrapper.
fn launch(cluster: &Cluster) -> Result<(String, std::process::Child), String> {
    let port = crate::free_port().map_err(|e| format!("finding a free port: {e}"))?;
    let mut server = as_server_user(cluster.root, &cluster.bin.join("postgres"))?;
    server
        .arg("-D")
        .arg(cluster.dir.join("data"))
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(&cluster.dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=300",
            "-c",
            "fsync=off",
        ]);
    let child = Command::new("sh")
        .arg("-c")
        .arg(WRAPPER)
        .arg("stackyard-pg-wrapper")
        .arg(&cluster.dir)
        .arg(std::process::id().to_string())
        .arg(server.get_program())
        .args(server.get_args())
        .current_dir(&cluster.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting postgres: {e}"))?;
    Ok((
        format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        child,
    ))
}

/// The directory holding `initdb` and `postgres`: the newest `/usr/lib/postgresql/<v>/bin`,
/// else wherever `initdb` is on `PATH`.
fn find_bin_dir() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file()).then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|p| p.join("initdb").is_file() && p.join("postgres").is_file())
        .ok_or_else(|| {
            "no initdb/postgres binaries under /usr/lib/postgresql/*/bin or on PATH".to_owned()
        })
}

/// A command that runs `program` as the `postgres` user when we are root (PostgreSQL refuses
/// to run as root), else as ourselves. `setpriv` execs the program itself (so the wrapper's
/// signals reach postgres directly); `runuser` is the fallback.
fn as_server_user(root: bool, program: &Path) -> Result<Command, String> {
    if !root {
        return Ok(Command::new(program));
    }
    if which("setpriv") {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        Ok(c)
    } else if which("runuser") {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        Ok(c)
    } else {
        Err("running as root and neither setpriv nor runuser is available to run postgres as the postgres user".into())
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .any(|p| p.join(program).is_file())
}

/// Whether this process runs as root (real uid 0), from /proc (no libc calls: unsafe code is
/// denied in this workspace).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    Err(format!(
        "{:?} exited with {}: {}",
        cmd.get_program(),
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_in_urls() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            with_database("postgres:///postgres?host=/run/pg", "x"),
            "postgres:///x?host=/run/pg"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:1/db"),
            "postgres://u:***@h:1/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn only_our_names_carry_a_time() {
        assert_eq!(
            created_ms("sy_t_1700000000000_ab12"),
            Some(1_700_000_000_000)
        );
        assert_eq!(created_ms("sy_t_1700000000000_"), None);
        assert_eq!(created_ms("sy_t_x_ab"), None);
        assert_eq!(created_ms("postgres"), None);
    }
}
