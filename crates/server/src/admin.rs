//! `stackyard admin …`: operations run directly against the store, for the server's operator.

use crate::config::{KeyArgs, StoreArgs, redact_url};
use crate::serve::{WithStore, is_postgres};
use anyhow::{Context, bail};
use stackyard_core::model::{Actor, AuditCtx, StackId};
use stackyard_core::store::{NewToken, Store, StoreError, WrappedRow};
use stackyard_core::{ApiToken, TeamName};
use std::path::{Path, PathBuf};

/// Creates a team and returns its first token (to be printed once).
pub struct CreateTeam {
    pub name: TeamName,
    pub max_stacks: Option<i64>,
}

impl WithStore for CreateTeam {
    type Output = ApiToken;

    async fn run<S: Store>(self, store: S) -> anyhow::Result<ApiToken> {
        let token = ApiToken::generate();
        let ctx = AuditCtx {
            actor: Actor::admin(),
            request_id: None,
            now: crate::now(),
        };
        match store
            .create_team(
                &self.name,
                self.max_stacks,
                NewToken {
                    name: "initial".into(),
                    digest: token.digest(),
                },
                ctx,
            )
            .await
        {
            Ok(_) => Ok(token),
            Err(StoreError::Conflict(_)) => {
                anyhow::bail!("a team named {} already exists", self.name)
            }
            Err(e) => Err(e).context("creating the team"),
        }
    }
}

/// `admin backup`: a consistent copy of the SQLite database, taken while the server runs, at
/// `to` (which must not exist); returns its size. PostgreSQL has its own tools for this, and a
/// copy made here would be neither faster nor safer, so it is refused with what to run.
pub async fn backup(store: &StoreArgs, to: &Path) -> anyhow::Result<u64> {
    let url = store.database_url();
    if is_postgres(&url) {
        bail!(
            "admin backup copies SQLite databases only; back PostgreSQL up with its own tools: \
             `pg_dump --format=custom --file=FILE DATABASE_URL` (restore: `pg_restore --clean \
             --if-exists --dbname=DATABASE_URL FILE` with the servers stopped)"
        );
    }
    if !url.starts_with("sqlite:") {
        bail!(
            "unsupported --database-url {}: use sqlite://PATH or postgres://…",
            redact_url(&url)
        );
    }
    eprintln!("backing up {} to {}", redact_url(&url), to.display());
    stackyard_store_sqlite::backup(&url, to)
        .await
        .with_context(|| format!("backing up {}", redact_url(&url)))
}

/// `admin rotate-master-key`: proves the current key (the usual `--master-key-file` /
/// `STACKYARD_MASTER_KEY`, or `<data dir>/master.key`) and moves the database to the key in
/// `new_key_file` (see `masterkey::rotate`).
pub struct RotateMasterKey {
    pub keys: KeyArgs,
    pub data_dir: PathBuf,
    pub new_key_file: PathBuf,
}

impl WithStore for RotateMasterKey {
    type Output = ();

    async fn run<S: Store>(self, store: S) -> anyhow::Result<()> {
        let (old, _) = crate::masterkey::load(&self.keys, &self.data_dir, false)?;
        let new_keys = KeyArgs {
            master_key_file: Some(self.new_key_file),
            master_key: None,
        };
        let (new, _) = crate::masterkey::load(&new_keys, &self.data_dir, false)?;
        crate::masterkey::rotate(&store, &old, &new).await
    }
}

/// `admin rotate-data-keys`: gives every stack a new data key, one stack per transaction under
/// its lock (env writes to it wait, others go on), so it runs while servers serve and an
/// interrupted run is finished by running it again. Progress goes to stderr.
pub struct RotateDataKeys {
    pub keys: KeyArgs,
    pub data_dir: PathBuf,
}

impl WithStore for RotateDataKeys {
    type Output = u64;

    async fn run<S: Store>(self, store: S) -> anyhow::Result<u64> {
        if store.master_canary().await?.is_none() {
            bail!("this database has no master key yet: start the server once first");
        }
        let master = crate::masterkey::unlock(&store, &self.keys, &self.data_dir).await?;
        crate::masterkey::install(&store, master, &self.keys, &self.data_dir).await?;
        let stacks: Vec<StackId> = store
            .wrapped_keys()
            .await
            .context("listing the data keys")?
            .into_iter()
            .filter_map(|k| match k.row {
                WrappedRow::Stack(id) => Some(StackId(id)),
                _ => None,
            })
            .collect();
        let total = stacks.len();
        let mut done = 0;
        for (i, stack) in stacks.into_iter().enumerate() {
            if store
                .rekey_stack(stack)
                .await
                .context("sealing a stack's env with its new data key")?
            {
                done += 1;
            }
            if (i + 1) % 100 == 0 || i + 1 == total {
                eprintln!("re-keyed {}/{total} stacks", i + 1);
            }
        }
        Ok(done)
    }
}
