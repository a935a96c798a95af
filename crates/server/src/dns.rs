//! TXT look-ups for custom domain verification, through `--dns-resolver` (a nameserver
//! `ip:port`) or the system's resolvers, each bounded at 5 s.

use hickory_resolver::Resolver;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use std::net::SocketAddr;
use std::time::Duration;

const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A shared resolver (cheap to clone).
#[derive(Clone)]
pub struct Dns {
    resolver: Resolver<TokioConnectionProvider>,
}

impl Dns {
    /// `server`: the one nameserver to ask; `None`: the system's (`/etc/resolv.conf`). A
    /// system without a readable configuration gets a resolver with no nameserver, whose
    /// look-ups fail with that reason: custom domains are not worth refusing to start for.
    pub fn new(server: Option<SocketAddr>) -> Dns {
        Self::build(server).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no DNS resolver: custom domains cannot be verified");
            Dns {
                resolver: Resolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), NameServerConfigGroup::new()),
                    TokioConnectionProvider::default(),
                )
                .build(),
            }
        })
    }

    fn build(server: Option<SocketAddr>) -> anyhow::Result<Dns> {
        let mut opts = ResolverOpts::default();
        opts.timeout = LOOKUP_TIMEOUT;
        opts.attempts = 1;
        // A record just created must be seen at the next check, not after a cached TTL.
        opts.cache_size = 0;
        let builder = match server {
            Some(addr) => {
                let group = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
                Resolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), group),
                    TokioConnectionProvider::default(),
                )
            }
            None => Resolver::builder(TokioConnectionProvider::default())
                .map_err(|e| anyhow::anyhow!("reading the system's DNS configuration: {e}"))?,
        };
        Ok(Dns {
            resolver: builder.with_options(opts).build(),
        })
    }

    /// The TXT strings at `name` (each record's strings joined); `Err` says why there are none.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.resolver.txt_lookup(fqdn)).await {
            Err(_) => Err(format!("no answer for TXT {name} within 5 s")),
            Ok(Err(e)) if e.is_no_records_found() => Err(format!("no TXT record at {name}")),
            Ok(Err(e)) => Err(format!("looking up TXT {name} failed: {e}")),
            Ok(Ok(found)) => Ok(found
                .iter()
                .map(|txt| {
                    txt.txt_data()
                        .iter()
                        .map(|part| String::from_utf8_lossy(part).into_owned())
                        .collect::<String>()
                })
                .collect()),
        }
    }
}
