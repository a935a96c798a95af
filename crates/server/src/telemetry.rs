//! Logging and metrics set-up. Both are process-global; `init_*` are safe to call more than
//! once (tests start many servers in one process).

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::io::IsTerminal;
use std::sync::OnceLock;

/// Logs to stderr, filtered by `STACKYARD_LOG` (else `default_level`): one JSON object per
/// line with `STACKYARD_LOG_FORMAT=json` (for log collectors), else text, coloured only when
/// stderr is a terminal and `NO_COLOR` is not set (a redirected log file gets no escape codes).
pub fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STACKYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let format = std::env::var("STACKYARD_LOG_FORMAT").unwrap_or_default();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format.as_str() {
        "json" => builder.json().try_init(),
        _ => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(colour).try_init()
        }
    };
    if !matches!(format.as_str(), "" | "json" | "text") {
        tracing::warn!("STACKYARD_LOG_FORMAT is `json` or `text`; logging as text");
    }
}

/// The process's Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours just stays empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
