//! `stackyard serve` settings: one clap struct, each flag also a `STACKYARD_*` variable.

use clap::{Args, ValueEnum};
use ipnet::IpNet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `--sandbox`: how the local runtime confines services (`isolation.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxArg {
    /// Every layer the kernel offers, reported at start-up and in `/readyz`.
    Auto,
    /// Refuse to start without Landlock ABI 4 or newer (files and TCP ports).
    Required,
    /// Services run unconfined, as the server's user (development only).
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    /// Run services as local child processes, served through the built-in router.
    Local,
    /// Move services through their statuses without running anything.
    Noop,
    /// Run each stack as a namespace of a Kubernetes cluster (`--k8s-*`, kubernetes.md).
    Kubernetes,
}

/// Where the server keeps its data and how it runs. Secrets (the database URL may carry a
/// password) are redacted in `Debug`.
#[derive(Clone, Args)]
pub struct StoreArgs {
    /// SQLite file, artifacts, unpacked services, logs and `admin-token` live here.
    #[arg(long, env = "STACKYARD_DATA_DIR", default_value = "./stackyard-data")]
    pub data_dir: PathBuf,

    /// `sqlite://PATH` or `postgres://…`; default `sqlite://<data-dir>/stackyard.db`.
    #[arg(long, env = "STACKYARD_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl fmt::Debug for StoreArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreArgs")
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self.database_url.as_ref().map(|u| redact_url(u)),
            )
            .finish()
    }
}

impl StoreArgs {
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", self.data_dir.join("stackyard.db").display()),
        }
    }
}

/// A URL that carries a password: its `Debug` is `redact_url`'s, so printing the config (or
/// a panic message holding it) cannot leak it.
#[derive(Clone)]
pub struct SecretUrl(pub String);

impl std::str::FromStr for SecretUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// Where the master key (encryption at rest) comes from. Its value is never shown in `Debug`,
/// a log or an error.
#[derive(Clone, Default, Args)]
pub struct KeyArgs {
    /// File holding the 32-byte master key (raw, or base64 text); default
    /// `<data-dir>/master.key`, created with mode 0600 at the first start.
    #[arg(long, env = "STACKYARD_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,

    /// The master key itself, base64. Meant for the environment: the flag exists only because
    /// clap needs one, and is hidden, since a flag would show in other users' `ps`.
    #[arg(
        long,
        env = "STACKYARD_MASTER_KEY",
        hide = true,
        hide_env_values = true
    )]
    pub master_key: Option<String>,
}

impl fmt::Debug for KeyArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyArgs")
            .field("master_key_file", &self.master_key_file)
            .field("master_key", &self.master_key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// `scheme://user:***@host/db` — the password and query string dropped, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    let rest = rest.split('?').next().unwrap_or("");
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => format!("{scheme}://{rest}"),
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub keys: KeyArgs,

    #[command(flatten)]
    pub kube: KubeArgs,

    /// API address; port 0 picks a free port.
    #[arg(long, env = "STACKYARD_LISTEN", default_value = "127.0.0.1:8700")]
    pub listen: SocketAddr,

    /// How services run.
    #[arg(long, env = "STACKYARD_RUNTIME", value_enum, default_value = "local")]
    pub runtime: RuntimeKind,

    /// The router's address (local runtime); port 0 picks a free port.
    #[arg(
        long,
        env = "STACKYARD_ROUTER_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub router_listen: SocketAddr,

    /// Serve HTTPS for every verified custom domain here (SNI), with certificates from ACME
    /// (local runtime); the plain router answers the HTTP-01 challenges. Port 0 picks one.
    #[arg(long, env = "STACKYARD_ROUTER_TLS_LISTEN")]
    pub router_tls_listen: Option<SocketAddr>,

    /// The ACME directory custom domains' certificates come from.
    #[arg(
        long,
        env = "STACKYARD_ACME_DIRECTORY",
        default_value = "https://acme-staging-v02.api.letsencrypt.org/directory"
    )]
    pub acme_directory: String,

    /// Contact address of the ACME account (expiry notices).
    #[arg(long, env = "STACKYARD_ACME_EMAIL")]
    pub acme_email: Option<String>,

    /// PEM roots the ACME directory's own HTTPS is checked against, instead of the system's
    /// (a private CA).
    #[arg(long, env = "STACKYARD_ACME_CA_FILE")]
    pub acme_ca_file: Option<PathBuf>,

    /// How often certificates are looked at: the missing and the due (a third of their
    /// lifetime left) ordered, the set served reloaded.
    #[arg(long, env = "STACKYARD_ACME_EVERY", default_value = "30s", value_parser = humantime::parse_duration, hide = true)]
    pub acme_every: Duration,

    /// Serve the API over HTTPS with this certificate chain (PEM); needs `--tls-key`.
    #[arg(long, env = "STACKYARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, env = "STACKYARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Host suffix of service URLs served by the router.
    #[arg(long, env = "STACKYARD_BASE_DOMAIN", default_value = "localhost")]
    pub base_domain: String,

    /// Redis for shared rate-limit counters.
    #[arg(long, env = "STACKYARD_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Key prefix of the counters kept in Redis (several deployments may share one Redis).
    #[arg(
        long,
        env = "STACKYARD_REDIS_PREFIX",
        default_value = "stackyard:",
        hide = true
    )]
    pub redis_prefix: String,

    /// PostgreSQL server for `POST /db/new` resources: an admin role with CREATEDB and
    /// CREATEROLE (not superuser). None: those routes answer 503 `resource_unavailable`.
    #[arg(long, env = "STACKYARD_RESOURCE_POSTGRES_URL", hide_env_values = true)]
    pub resource_postgres_url: Option<SecretUrl>,

    /// Redis server for `POST /cache/new` resources (a user allowed `ACL SETUSER`). None:
    /// those routes answer 503 `resource_unavailable`.
    #[arg(long, env = "STACKYARD_RESOURCE_REDIS_URL", hide_env_values = true)]
    pub resource_redis_url: Option<SecretUrl>,

    /// Resources (databases and caches together) each team may hold; none: no cap.
    #[arg(long, env = "STACKYARD_MAX_RESOURCES")]
    pub max_resources: Option<i64>,

    /// Stacks an anonymous caller's network may create per UTC day.
    #[arg(long, env = "STACKYARD_ANONYMOUS_DAILY_LIMIT", default_value_t = 5)]
    pub anonymous_daily_limit: i64,

    /// Reverse proxies (`CIDR,...`, a bare address is one host) whose `X-Forwarded-For` names
    /// the client for anonymous limits: the right-most address in it that is not one of them.
    /// Empty: the header is ignored and the peer address is the client.
    #[arg(long, env = "STACKYARD_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_proxy)]
    pub trusted_proxies: Vec<IpNet>,

    /// The nameserver (`ip:port`) custom domains' TXT records are looked up at; default: the
    /// system's resolvers.
    #[arg(long, env = "STACKYARD_DNS_RESOLVER")]
    pub dns_resolver: Option<SocketAddr>,

    /// Most custom domains a team may hold.
    #[arg(long, env = "STACKYARD_MAX_DOMAINS", default_value_t = 20)]
    pub max_domains: i64,

    /// The name custom domains point at (their CNAME record): this server's public hostname.
    #[arg(long, env = "STACKYARD_PUBLIC_HOSTNAME", default_value = "localhost")]
    pub public_hostname: String,

    /// Envs a promote into needs an approval by another token of the team (`env,...`; empty:
    /// none).
    #[arg(
        long,
        env = "STACKYARD_APPROVAL_ENVS",
        value_delimiter = ',',
        default_value = "production"
    )]
    pub approval_envs: Vec<String>,

    /// How long a promote approval may wait for its decision and execution.
    #[arg(long, env = "STACKYARD_APPROVAL_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub approval_ttl: Duration,

    /// Lifetime of anonymous stacks (`6h`, `90m`, …).
    #[arg(long, env = "STACKYARD_ANONYMOUS_TTL", default_value = "6h", value_parser = humantime::parse_duration)]
    pub anonymous_ttl: Duration,

    /// Time a service gets to become healthy.
    #[arg(long, env = "STACKYARD_DEPLOY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub deploy_timeout: Duration,

    /// Time a service's Dockerfile build (all its steps) and a Procfile `release:` command
    /// may take (local runtime).
    #[arg(long, env = "STACKYARD_BUILD_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub build_timeout: Duration,

    /// Whether callers without a token may create stacks.
    #[arg(long, env = "STACKYARD_ALLOW_ANONYMOUS", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_anonymous: bool,

    /// Env versions kept per stack.
    #[arg(long, env = "STACKYARD_ENV_HISTORY", default_value_t = 1000)]
    pub env_history: i64,

    /// How long `DELETE /stacks/:slug` waits for the teardown it queued: done in time, 200 and
    /// the stack is gone; not yet, 202 (`?wait=false` answers 202 at once).
    #[arg(long, env = "STACKYARD_DELETE_WAIT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub delete_wait: Duration,

    /// Bound on a planned stop (SIGTERM, Ctrl-C): open requests finish, running jobs are
    /// cancelled (resumed after the restart), the services this server runs are stopped; what
    /// is still running past it is left to the next start (which stops it from its run records)
    /// and the exit status is 1.
    #[arg(long, env = "STACKYARD_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Bound on waiting for a database lock; past it writes answer 503 with Retry-After.
    #[arg(long, env = "STACKYARD_LOCK_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub lock_timeout: Duration,

    /// How long a claimed job stays claimed without a heartbeat before another worker may take
    /// it over (a server that died).
    #[arg(long, env = "STACKYARD_JOB_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub job_lease: Duration,

    /// How long an uploaded artifact no release uses is kept before it is removed: the time a
    /// create has between writing its tarballs and committing the release that names them.
    #[arg(long, env = "STACKYARD_ARTIFACT_GRACE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub artifact_grace: Duration,

    /// Jobs this server runs at once.
    #[arg(long, env = "STACKYARD_JOB_WORKERS", default_value_t = 8)]
    pub job_workers: usize,

    /// Delay of each step of the `noop` runtime (for demos and tests of in-flight jobs).
    #[arg(long, env = "STACKYARD_NOOP_STEP", default_value = "50ms", value_parser = humantime::parse_duration, hide = true)]
    pub noop_step: Duration,

    /// Database connections in the pool.
    #[arg(long, env = "STACKYARD_DB_CONNECTIONS", default_value_t = 16)]
    pub db_connections: u32,

    /// How the local runtime confines services: `auto` uses every layer the kernel offers,
    /// `required` refuses to start without Landlock ABI ≥ 4, `off` runs them unconfined.
    #[arg(long, env = "STACKYARD_SANDBOX", value_enum, default_value = "auto")]
    pub sandbox: SandboxArg,

    /// TCP ports every service may connect to, besides its own stack's services.
    #[arg(
        long,
        env = "STACKYARD_SANDBOX_EGRESS_PORTS",
        default_value = "53,80,443",
        value_delimiter = ','
    )]
    pub sandbox_egress_ports: Vec<u16>,

    /// First uid of the per-stack Unix users (when the server runs as root); a stack's user is
    /// this plus its id. 0: services run as the server's user (Landlock still confines them).
    #[arg(long, env = "STACKYARD_SANDBOX_UID_BASE", default_value_t = 200_000)]
    pub sandbox_uid_base: u32,

    /// Memory limit of each service (`512MiB`, `1GiB`, bytes), where the cgroup memory
    /// controller is writable.
    #[arg(long, env = "STACKYARD_SERVICE_MEMORY", default_value = "512MiB", value_parser = parse_size)]
    pub service_memory: u64,

    /// Process limit of each service.
    #[arg(long, env = "STACKYARD_SERVICE_PIDS", default_value_t = 256)]
    pub service_pids: u64,

    /// The supervisor's first wait before restarting a crashed service (doubling to 60 s).
    #[arg(long, env = "STACKYARD_RESTART_BACKOFF", default_value = "1s", value_parser = humantime::parse_duration, hide = true)]
    pub restart_backoff: Duration,

    /// How often the supervisor checks a live service's `health` path (three failures in a
    /// row restart it).
    #[arg(long, env = "STACKYARD_HEALTH_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration, hide = true)]
    pub health_interval: Duration,

    /// Behave as if the kernel had no Landlock (tests of `--sandbox required`).
    #[arg(long, env = "STACKYARD_SANDBOX_IGNORE_LANDLOCK", hide = true)]
    pub sandbox_ignore_landlock: bool,
}

/// A `--trusted-proxies` entry: a CIDR (`10.0.0.0/8`) or one address (`127.0.0.1`).
pub fn parse_proxy(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("`{s}` is not a CIDR such as 10.0.0.0/8 or an address"))
}

/// A size in bytes: digits with an optional `K`, `M`, `G` (powers of 1024, with or without
/// `iB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as 512MiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("`{s}` has an unknown unit: use K, M or G")),
    };
    n.checked_mul(1 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("`{s}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn trusted_proxies_parse_as_cidrs_or_single_addresses() {
        assert_eq!(parse_proxy("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            parse_proxy("127.0.0.1").unwrap().to_string(),
            "127.0.0.1/32"
        );
        assert_eq!(parse_proxy("::1").unwrap().to_string(), "::1/128");
        assert!(parse_proxy("10.0.0.0/33").is_err());
        assert!(parse_proxy("proxy.local").is_err());
    }

    #[test]
    fn redacted_urls_keep_no_password_or_query() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/x?sslpassword=p"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            redact_url("sqlite://./d/stackyard.db"),
            "sqlite://./d/stackyard.db"
        );
        assert!(
            !format!(
                "{:?}",
                StoreArgs {
                    data_dir: "d".into(),
                    database_url: Some("postgres://a:pw@h/d".into())
                }
            )
            .contains("pw")
        );
    }
}

/// The Kubernetes runtime's settings (`--runtime kubernetes`).
#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// Kubeconfig file of the cluster; without it: `KUBECONFIG`, `~/.kube/config`, or the
    /// in-cluster service account, in that order.
    #[arg(long, env = "STACKYARD_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// `spec.ingressClassName` of every exposed service's Ingress.
    #[arg(long, env = "STACKYARD_K8S_INGRESS_CLASS", default_value = "nginx")]
    pub k8s_ingress_class: String,

    /// Namespace of the ingress controller: the only namespace whose pods may reach a stack's
    /// exposed services.
    #[arg(
        long,
        env = "STACKYARD_K8S_INGRESS_NAMESPACE",
        default_value = "ingress-nginx"
    )]
    pub k8s_ingress_namespace: String,

    /// Where services may connect outside their namespace besides DNS (`CIDR,...`); empty:
    /// nowhere else.
    #[arg(long, env = "STACKYARD_K8S_EGRESS_CIDRS", value_delimiter = ',')]
    pub k8s_egress_cidrs: Vec<IpNet>,

    /// Image of the init container that fetches and unpacks a service's tarball: it needs
    /// `/bin/sh`, `wget` and `tar`.
    #[arg(
        long,
        env = "STACKYARD_K8S_FETCH_IMAGE",
        default_value = "busybox:1.37"
    )]
    pub k8s_fetch_image: String,

    /// Image services run their start command in.
    #[arg(
        long,
        env = "STACKYARD_K8S_BASE_IMAGE",
        default_value = "debian:bookworm-slim"
    )]
    pub k8s_base_image: String,

    /// This API as pods reach it: signed artifact URLs start with it.
    #[arg(
        long,
        env = "STACKYARD_K8S_ARTIFACT_BASE_URL",
        default_value = "http://stackyard.stackyard.svc:8700"
    )]
    pub k8s_artifact_base_url: String,

    /// Namespace the API replicas run in (pods labelled `app.kubernetes.io/name=stackyard`):
    /// init containers may reach them there, on the port of `--k8s-artifact-base-url`.
    #[arg(long, env = "STACKYARD_K8S_API_NAMESPACE", default_value = "stackyard")]
    pub k8s_api_namespace: String,

    /// Scheme of exposed services' URLs, as the ingress controller serves them.
    #[arg(long, env = "STACKYARD_K8S_URL_SCHEME", default_value = "https")]
    pub k8s_url_scheme: String,

    /// A stack tier's namespace quota: `tier=pods:N,cpu:Q,memory:Q` (repeatable); tiers not
    /// named get `--k8s-default-quota`.
    #[arg(long, env = "STACKYARD_K8S_TIER_QUOTA", value_delimiter = ';', value_parser = parse_tier_quota)]
    pub k8s_tier_quota: Vec<(String, TierQuota)>,

    /// The quota of tiers `--k8s-tier-quota` does not name.
    #[arg(long, env = "STACKYARD_K8S_DEFAULT_QUOTA", default_value = "pods:10,cpu:2,memory:2Gi", value_parser = parse_quota)]
    pub k8s_default_quota: TierQuota,

    /// Time a stack's namespace gets to go (finalizers included) before teardown is retried.
    #[arg(long, env = "STACKYARD_K8S_TEARDOWN_TIMEOUT", default_value = "2m", value_parser = humantime::parse_duration)]
    pub k8s_teardown_timeout: Duration,

    /// How often rollouts, deletions and log followers look at the cluster.
    #[arg(long, env = "STACKYARD_K8S_POLL", default_value = "1s", value_parser = humantime::parse_duration, hide = true)]
    pub k8s_poll: Duration,

    /// How often every stack's artifact URLs are signed anew (they live 10 minutes).
    #[arg(long, env = "STACKYARD_K8S_ARTIFACT_REFRESH", default_value = "4m", value_parser = humantime::parse_duration, hide = true)]
    pub k8s_artifact_refresh: Duration,
}

/// What one stack of a tier may use in all: pods, CPU and memory (Kubernetes quantities).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierQuota {
    pub pods: u32,
    pub cpu: String,
    pub memory: String,
}

fn parse_tier_quota(s: &str) -> Result<(String, TierQuota), String> {
    let (tier, quota) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected tier=pods:N,cpu:Q,memory:Q"))?;
    Ok((tier.trim().to_owned(), parse_quota(quota)?))
}

fn parse_quota(s: &str) -> Result<TierQuota, String> {
    let (mut pods, mut cpu, mut memory) = (None, None, None);
    for part in s.split(',') {
        let (k, v) = part
            .split_once(':')
            .ok_or_else(|| format!("`{part}`: expected key:value"))?;
        let v = v.trim();
        let quantity = |v: &str| {
            let ok = !v.is_empty()
                && v.starts_with(|c: char| c.is_ascii_digit())
                && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '.');
            ok.then(|| v.to_owned())
                .ok_or_else(|| format!("`{v}` is not a Kubernetes quantity"))
        };
        match k.trim() {
            "pods" => {
                pods = Some(
                    v.parse()
                        .map_err(|_| format!("pods: `{v}` is not a count"))?,
                )
            }
            "cpu" => cpu = Some(quantity(v)?),
            "memory" => memory = Some(quantity(v)?),
            other => return Err(format!("unknown quota key `{other}` (pods, cpu, memory)")),
        }
    }
    match (pods, cpu, memory) {
        (Some(pods), Some(cpu), Some(memory)) => Ok(TierQuota { pods, cpu, memory }),
        _ => Err(format!("`{s}`: pods, cpu and memory are all needed")),
    }
}
