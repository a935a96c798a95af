//! Certificates for verified custom domains from an ACME CA (`--acme-directory`), with the
//! HTTP-01 challenge answered by the local router's plain listener.
//!
//! A domain is ordered when it is verified and again once a third of its certificate's
//! lifetime is left (`domain::renew_at`), by whichever server claims the order first (a
//! compare-and-set on the domain's row, `CERT_ORDER_LEASE_MS`); a failed order is tried again
//! after the lease, a refused one (`failed`) after the domain's next successful check. The
//! account's key and every certificate's key are sealed in the store (resources.md).
//!
//! The challenge answers live in this process's route table: with several servers behind one
//! address, the CA's request must reach the server that placed the order (see
//! docs/decisions.md).

use crate::certs::{self, SniCerts};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use stackyard_core::domain::Domain;
use stackyard_core::store::{DomainStore, NewCertificate, StoreError};
use stackyard_core::time::Millis;
use stackyard_runtime_local::RouteTable;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long a CA gets to validate a challenge, and then to issue.
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);
/// Orders placed per maintenance pass, one after the other.
const ORDERS_PER_PASS: i64 = 10;

/// Runs [`Acme::pass`] every `every` (`--acme-every`) until `shutdown`, on its own task: an
/// order may take minutes and must not hold up the maintenance pass.
pub async fn run<S: DomainStore>(
    store: S,
    acme: Arc<Acme>,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = acme.pass(&store, crate::now()) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}

/// Why an order did not give a certificate.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The CA said no (a problem document, an invalid order): the domain is marked `failed`.
    #[error("the CA refused the certificate: {0}")]
    Refused(String),
    /// Anything that may pass (the CA unreachable, a timeout, rate limits): tried again later.
    #[error("the certificate order failed: {0}")]
    Failed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The ACME client of this server: its account (created once per directory, kept in the
/// store), the route table its challenges are answered from, and the certificates served.
pub struct Acme {
    directory: String,
    email: Option<String>,
    ca_file: Option<PathBuf>,
    routes: RouteTable,
    pub certs: Arc<SniCerts>,
    /// The account, once loaded or created; the lock also makes one creation per process.
    account: tokio::sync::Mutex<Option<Account>>,
}

impl Acme {
    pub fn new(
        directory: String,
        email: Option<String>,
        ca_file: Option<PathBuf>,
        routes: RouteTable,
    ) -> Self {
        Self {
            directory,
            email,
            ca_file,
            routes,
            certs: Arc::new(SniCerts::default()),
            account: tokio::sync::Mutex::new(None),
        }
    }

    /// Serves the store's certificates of verified domains from now on (errors logged: the
    /// set served stays as it was).
    pub async fn reload<S: DomainStore>(&self, store: &S) {
        match store.certificates().await {
            Ok(certs) => {
                self.certs.replace(certs);
            }
            Err(e) => tracing::warn!(error = %e, "could not read the domains' certificates"),
        }
    }

    /// One maintenance pass: orders what is missing or due at `now`, then reloads once (also
    /// when nothing was ordered here: another server may have renewed or removed one).
    pub async fn pass<S: DomainStore>(&self, store: &S, now: Millis) {
        match store.certificates_due(now, ORDERS_PER_PASS).await {
            Ok(due) => {
                for d in due {
                    self.claim_and_order(store, d, now).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not list the certificates due"),
        }
        self.reload(store).await;
    }

    /// Orders a certificate for `d` if this server wins its claim, stores it (or why not) and
    /// serves it. Returns whether a certificate was stored.
    pub async fn issue<S: DomainStore>(&self, store: &S, d: Domain, now: Millis) -> bool {
        let stored = self.claim_and_order(store, d, now).await;
        if stored {
            self.reload(store).await;
        }
        stored
    }

    /// [`Acme::issue`] without the reload: claim, order, store the certificate or the failure.
    async fn claim_and_order<S: DomainStore>(&self, store: &S, d: Domain, now: Millis) -> bool {
        match store.claim_certificate_order(&d.id, now).await {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                tracing::warn!(domain = %d.hostname, error = %e, "could not claim a certificate order");
                return false;
            }
        }
        let cert = match self.order(store, &d.hostname).await {
            Ok(cert) => cert,
            Err(e) => {
                let refused = matches!(e, OrderError::Refused(_));
                tracing::warn!(domain = %d.hostname, error = %e, "no certificate");
                if let Err(e) = store
                    .save_certificate_failure(&d.id, &e.to_string(), refused, now)
                    .await
                {
                    tracing::warn!(domain = %d.hostname, error = %e, "could not record a certificate failure");
                }
                return false;
            }
        };
        let not_after = cert.not_after.to_rfc3339();
        match store.save_certificate(&d.id, cert, now).await {
            Ok(saved) => {
                if saved {
                    let renewal = d.cert_not_after.is_some();
                    tracing::info!(domain = %d.hostname, renewal, %not_after, "certificate issued");
                }
                saved
            }
            Err(e) => {
                tracing::warn!(domain = %d.hostname, error = %e, "could not store a certificate");
                false
            }
        }
    }

    /// The account for the directory: the stored one, or a new one registered and stored
    /// (when two servers register at once, both use the one stored first).
    async fn account<S: DomainStore>(&self, store: &S) -> Result<Account, OrderError> {
        let mut slot = self.account.lock().await;
        if let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        let stored = match store.acme_account(&self.directory).await? {
            Some(stored) => stored,
            None => {
                let contact = self.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (_, credentials) = self
                    .builder()?
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.directory.clone(),
                        None,
                    )
                    .await
                    .map_err(classify)?;
                let json = serde_json::to_string(&credentials)
                    .map_err(|e| OrderError::Failed(format!("ACME credentials: {e}")))?;
                store
                    .save_acme_account(&self.directory, &json, crate::now())
                    .await?
            }
        };
        let credentials: AccountCredentials = serde_json::from_str(&stored)
            .map_err(|_| OrderError::Failed("the stored ACME account does not parse".into()))?;
        let account = self
            .builder()?
            .from_credentials(credentials)
            .await
            .map_err(classify)?;
        *slot = Some(account.clone());
        Ok(account)
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, OrderError> {
        match &self.ca_file {
            Some(path) => Account::builder_with_root(path)
                .map_err(|e| OrderError::Failed(format!("--acme-ca-file {}: {e}", path.display()))),
            None => Account::builder().map_err(classify),
        }
    }

    /// Places and completes one order for `host`: HTTP-01 answered by the router while it
    /// runs, a fresh key, the chain. Challenge answers are removed whatever happens.
    async fn order<S: DomainStore>(
        &self,
        store: &S,
        host: &str,
    ) -> Result<NewCertificate, OrderError> {
        let account = self.account(store).await?;
        let ids = [Identifier::Dns(host.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(classify)?;
        let mut tokens = Vec::new();
        let result = async {
            {
                let mut authorizations = order.authorizations();
                while let Some(a) = authorizations.next().await {
                    let mut a = a.map_err(classify)?;
                    match a.status {
                        AuthorizationStatus::Pending => {}
                        AuthorizationStatus::Valid => continue,
                        other => {
                            return Err(OrderError::Refused(format!(
                                "the authorization for {host} is {other:?}"
                            )));
                        }
                    }
                    let mut challenge = a.challenge(ChallengeType::Http01).ok_or_else(|| {
                        OrderError::Refused("the CA offers no HTTP-01 challenge".into())
                    })?;
                    let answer = challenge.key_authorization();
                    self.routes.set_challenge(&challenge.token, answer.as_str());
                    tokens.push(challenge.token.clone());
                    challenge.set_ready().await.map_err(classify)?;
                }
            }
            let retries = RetryPolicy::new().timeout(ORDER_TIMEOUT);
            match order.poll_ready(&retries).await.map_err(classify)? {
                OrderStatus::Ready => {}
                other => {
                    return Err(OrderError::Refused(format!(
                        "the order is {other:?}: the CA could not fetch \
                         http://{host}/.well-known/acme-challenge/… from this server's router \
                         (does the domain's CNAME or A record point here?)"
                    )));
                }
            }
            let key_pem = order.finalize().await.map_err(classify)?;
            let chain_pem = order.poll_certificate(&retries).await.map_err(classify)?;
            Ok((chain_pem, key_pem))
        }
        .await;
        for token in &tokens {
            self.routes.remove_challenge(token);
        }
        let (chain_pem, key_pem) = result?;
        let (not_before, not_after) = certs::validity(&chain_pem).map_err(OrderError::Failed)?;
        // Checked before it is stored: what is stored is what the listener can serve.
        certs::certified_key(&chain_pem, &key_pem).map_err(OrderError::Failed)?;
        Ok(NewCertificate {
            chain_pem,
            key_pem,
            not_before,
            not_after,
        })
    }
}

/// A problem document is the CA's answer (refused) unless it says to come back later.
fn classify(e: instant_acme::Error) -> OrderError {
    match e {
        instant_acme::Error::Api(problem) => {
            let kind = problem.r#type.as_deref().unwrap_or_default();
            let transient = ["rateLimited", "serverInternal", "badNonce"]
                .iter()
                .any(|t| kind.ends_with(t));
            if transient {
                OrderError::Failed(problem.to_string())
            } else {
                OrderError::Refused(problem.to_string())
            }
        }
        other => OrderError::Failed(other.to_string()),
    }
}
