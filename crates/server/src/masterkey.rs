//! The master key: where it comes from (`KeyArgs`), creating it at the first start, and proving
//! before anything is served that it is the key this database was written with (the canary),
//! so a wrong key stops start-up instead of failing the first read of a secret.

use crate::config::KeyArgs;
use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use stackyard_core::crypto::{DATA_KEY_ID, KEY_LEN, Keyring, MasterKey};
use stackyard_core::store::KeyStore;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a loaded key came from, for messages (never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `STACKYARD_MASTER_KEY`.
    Env,
    /// A key file (`--master-key-file`, or the default in the data directory).
    File(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env => f.write_str("STACKYARD_MASTER_KEY"),
            KeySource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Reads a key as a file holds it: exactly 32 raw bytes, or base64 text of them. The first
/// line is the key; see [`parse_all`] for the others.
fn parse(bytes: &[u8], source: &KeySource) -> anyhow::Result<MasterKey> {
    let mut keys = parse_all(bytes, source)?;
    Ok(keys.swap_remove(0))
}

/// Every key a file holds: 32 raw bytes, or one base64 key per line. More than one line is a
/// rotation in progress: the first line is the key new data keys are wrapped with until the
/// canary names another; the others are still opened with (README: rotating the master key).
fn parse_all(bytes: &[u8], source: &KeySource) -> anyhow::Result<Vec<MasterKey>> {
    if let Ok(key) = MasterKey::from_slice(bytes) {
        return Ok(vec![key]);
    }
    let text = std::str::from_utf8(bytes).unwrap_or("");
    // The decoding error is dropped on purpose: it can quote the offending input.
    let keys: Option<Vec<MasterKey>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let raw = STANDARD.decode(l).ok().filter(|raw| raw.len() == KEY_LEN)?;
            MasterKey::from_slice(&raw).ok()
        })
        .collect();
    match keys {
        Some(keys) if !keys.is_empty() => Ok(keys),
        _ => bail!("the master key in {source} is not {KEY_LEN} bytes, raw or base64"),
    }
}

/// Every key the settings name (a key file during a rotation holds two), for a server that
/// meets a data key its current key does not open.
pub fn load_all(keys: &KeyArgs, data_dir: &Path) -> Vec<MasterKey> {
    if let Some(text) = keys.master_key.as_deref().filter(|t| !t.is_empty()) {
        return parse_all(text.as_bytes(), &KeySource::Env).unwrap_or_default();
    }
    let path = keys
        .master_key_file
        .clone()
        .unwrap_or_else(|| data_dir.join("master.key"));
    let source = KeySource::File(path.clone());
    std::fs::read(&path)
        .ok()
        .and_then(|b| parse_all(&b, &source).ok())
        .unwrap_or_default()
}

/// The key the settings name. With neither `STACKYARD_MASTER_KEY` nor `--master-key-file`, the
/// key is `<data dir>/master.key`; `may_create` allows writing a new one there (mode 0600)
/// when it does not exist: only for a database that has no canary yet, since a new key could
/// never open what an old one sealed.
pub fn load(
    keys: &KeyArgs,
    data_dir: &Path,
    may_create: bool,
) -> anyhow::Result<(MasterKey, KeySource)> {
    if let Some(text) = keys.master_key.as_deref().filter(|t| !t.is_empty()) {
        let source = KeySource::Env;
        return Ok((parse(text.as_bytes(), &source)?, source));
    }
    let (path, default) = match &keys.master_key_file {
        Some(p) => (p.clone(), false),
        None => (data_dir.join("master.key"), true),
    };
    let source = KeySource::File(path.clone());
    match std::fs::read(&path) {
        Ok(bytes) => Ok((parse(&bytes, &source)?, source)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && default && may_create => {
            let key = MasterKey::generate();
            create_key_file(&path, &key)
                .with_context(|| format!("writing a new master key to {}", path.display()))?;
            tracing::info!(path = %path.display(), "created the master key; back this file up: the database cannot be read without it");
            Ok((key, source))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no master key at {}: this database is encrypted with a key that must be given \
             (--master-key-file or STACKYARD_MASTER_KEY)",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("reading the master key {}", path.display())),
    }
}

/// Writes `key` as base64 text to a new file only its owner can read, synced, so a canary the
/// database commits next is never sealed by a key that did not reach the disk.
fn create_key_file(path: &Path, key: &MasterKey) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(STANDARD.encode(key.expose_bytes()).as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Loads the key and proves it against the database's canary, writing the canary at the first
/// start. Fails with a message naming where the key came from when it is the wrong one.
pub async fn unlock<S: KeyStore>(
    store: &S,
    keys: &KeyArgs,
    data_dir: &Path,
) -> anyhow::Result<MasterKey> {
    let canary = store
        .master_canary()
        .await
        .context("reading the master key's canary")?;
    let (mut key, source) = load(keys, data_dir, canary.is_none())?;
    match canary {
        Some(canary) => check(&key, &source, &canary).or_else(|e| {
            // A restart in the middle of a rotation: the key file's other line may be the
            // one the canary names by now.
            load_all(keys, data_dir)
                .into_iter()
                .find(|k| k.check_canary(&canary).is_ok())
                .map(|k| key = k)
                .ok_or(e)
        })?,
        None => {
            let written = store
                .swap_master_canary(None, &key.seal_canary(), crate::now())
                .await
                .context("storing the master key's canary")?;
            if !written {
                // Another server of this database wrote its canary first: ours must match it.
                let canary = store
                    .master_canary()
                    .await
                    .context("reading the master key's canary")?
                    .context("the master key's canary vanished")?;
                check(&key, &source, &canary)?;
            }
        }
    }
    tracing::info!(source = %source, "master key verified");
    Ok(key)
}

/// Gives the store its keyring (the proved key; the key source read again when a data key
/// was wrapped by a key rotated in since), then seals whatever is still stored plain: the
/// resumable migration of a database from before encryption at rest, one owner per
/// transaction, before anything is served.
pub async fn install<S: KeyStore>(
    store: &S,
    key: MasterKey,
    keys: &KeyArgs,
    data_dir: &Path,
) -> anyhow::Result<()> {
    let (keys, data_dir) = (keys.clone(), data_dir.to_owned());
    let keyring = Keyring::new(key).with_reload(move || load_all(&keys, &data_dir));
    store.install_keyring(Arc::new(keyring));
    let sealed = store
        .seal_at_rest()
        .await
        .context("encrypting the secrets still stored in plain text")?;
    if sealed.stacks + sealed.resources > 0 {
        tracing::info!(
            stacks = sealed.stacks,
            resources = sealed.resources,
            "encrypted secrets stored in plain text"
        );
    }
    Ok(())
}

fn check(key: &MasterKey, source: &KeySource, canary: &[u8]) -> anyhow::Result<()> {
    key.check_canary(canary).map_err(|_| {
        anyhow::anyhow!(
            "the master key from {source} is not this database's: it does not open the canary \
             the database was written with. Start with the key this database was created (or \
             last rotated) with: --master-key-file FILE or STACKYARD_MASTER_KEY"
        )
    })
}

/// `admin rotate-master-key`: re-wraps every data key from `old` to `new`, then replaces the
/// canary by compare-and-set, then re-wraps once more (a data key a running server wrapped
/// with `old` between the first pass and the canary's move; after the move, servers wrap with
/// the key the canary names: `Keyring::follow_canary`). Each key is one compare-and-set, so
/// it is safe while servers run, and re-running after an interruption finishes the job: a
/// key that `new` opens is skipped. Servers open keys wrapped by `new` once their key file
/// holds it (they read it again when a key does not open).
pub async fn rotate<S: KeyStore>(
    store: &S,
    old: &MasterKey,
    new: &MasterKey,
) -> anyhow::Result<()> {
    rotate_observed(store, old, new, || async {}).await
}

/// [`rotate`], awaiting `step()` before each write it makes (every re-wrap and the canary's
/// move): the points where a test lets other writers in.
async fn rotate_observed<S, F, Fut>(
    store: &S,
    old: &MasterKey,
    new: &MasterKey,
    mut step: F,
) -> anyhow::Result<()>
where
    S: KeyStore,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let canary = store
        .master_canary()
        .await
        .context("reading the master key's canary")?
        .context(
            "this database has no canary yet: start the server once before rotating its key",
        )?;
    if new.check_canary(&canary).is_err() {
        old.check_canary(&canary).map_err(|_| {
            anyhow::anyhow!(
                "the current master key (--master-key-file / STACKYARD_MASTER_KEY) does not open \
                 this database's canary: give the key it was written with"
            )
        })?;
        let n = rewrap(store, old, new, &mut step).await?;
        tracing::info!(
            data_keys = n,
            "re-wrapped the data keys with the new master key"
        );
        step().await;
        if !store
            .swap_master_canary(Some(&canary), &new.seal_canary(), crate::now())
            .await
            .context("storing the new master key's canary")?
        {
            bail!("the canary changed while rotating (another rotation?): run the command again");
        }
    } else {
        tracing::info!("the database's canary already names the new master key");
    }
    let n = rewrap(store, old, new, &mut step).await?;
    if n > 0 {
        tracing::info!(data_keys = n, "re-wrapped data keys wrapped meanwhile");
    }
    Ok(())
}

/// One pass over every wrapped data key: those `new` does not open yet are re-wrapped.
async fn rewrap<S, F, Fut>(
    store: &S,
    old: &MasterKey,
    new: &MasterKey,
    step: &mut F,
) -> anyhow::Result<u64>
where
    S: KeyStore,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut done = 0;
    let mut unreadable = 0;
    for key in store
        .wrapped_keys()
        .await
        .context("listing the data keys")?
    {
        if new.unwrap(key.owner, DATA_KEY_ID, &key.wrapped).is_ok() {
            continue;
        }
        let Ok(data) = old.unwrap(key.owner, DATA_KEY_ID, &key.wrapped) else {
            unreadable += 1;
            continue;
        };
        let wrapped = new.wrap(key.owner, DATA_KEY_ID, &data);
        step().await;
        // A row changed meanwhile (its owner deleted, or sealed again) is left to the next
        // pass, which reads it afresh.
        if store
            .swap_wrapped_key(&key, &wrapped)
            .await
            .context("storing a re-wrapped data key")?
        {
            done += 1;
        }
    }
    if unreadable > 0 {
        bail!(
            "{unreadable} data keys open with neither the current nor the new master key: \
             the database was not written with the current key"
        );
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_raw_or_as_base64_and_never_quoted_in_errors() {
        let src = KeySource::Env;
        assert!(parse(&[7u8; 32], &src).is_ok());
        let b64 = STANDARD.encode([7u8; 32]);
        assert!(parse(format!("{b64}\n").as_bytes(), &src).is_ok());
        let err = parse(b"c2VjcmV0LXNlbnRpbmVs", &src)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("c2VjcmV0"), "{err}");
        assert!(err.contains("STACKYARD_MASTER_KEY"), "{err}");
    }

    #[test]
    fn settings_never_show_the_key_in_debug_output() {
        let keys = KeyArgs {
            master_key_file: None,
            master_key: Some("c2VjcmV0LXNlbnRpbmVs".into()),
        };
        assert!(!format!("{keys:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn the_default_key_file_is_created_private_once_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyArgs::default();
        assert!(
            load(&keys, dir.path(), false).is_err(),
            "not created unless allowed"
        );
        let (a, _) = load(&keys, dir.path(), true).unwrap();
        let mode = std::fs::metadata(dir.path().join("master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (b, _) = load(&keys, dir.path(), true).unwrap();
        assert_eq!(a.expose_bytes(), b.expose_bytes());
    }

    /// Env writes at any point of a rotation, to stacks sealed before it, stacks sealed by their
    /// first write during it and stacks created during it: afterwards a server holding only the
    /// new key reads every acknowledged value. `plan[i]` is how many writes go in before the
    /// rotation's `i`-th write (re-wraps and the canary's move).
    mod interleaved {
        use super::*;
        use proptest::prelude::*;
        use stackyard_core::env::EnvPatch;
        use stackyard_core::model::StackId;
        use stackyard_core::store::{EnvOp, EnvStore, EnvWrite, StackStore};
        use stackyard_store_sqlite::SqliteStore;
        use stackyard_testkit::suite::{ctx, new_stack};
        use std::collections::BTreeMap;
        use std::sync::Mutex;

        type Model = Arc<Mutex<BTreeMap<i64, BTreeMap<String, String>>>>;

        async fn write(store: &SqliteStore, model: &Model, stack: StackId, key: String, n: u64) {
            let value = format!("v{n}");
            let body = serde_json::json!({ "env": { key.clone(): value.clone() } }).to_string();
            let w = EnvWrite {
                op: EnvOp::Patch(EnvPatch::parse(body.as_bytes()).unwrap()),
                if_match: None,
                ctx: ctx(1),
                idempotency: None,
                deadline: None,
            };
            let out = store.apply_env_writes(stack, &[w]).await.unwrap();
            assert!(out[0].is_ok(), "{:?}", out[0]);
            let mut m = model.lock().unwrap();
            m.entry(stack.0).or_default().insert(key, value);
        }

        async fn new_stack_id(store: &SqliteStore) -> StackId {
            store.create_stack(new_stack(None, 1)).await.unwrap().id
        }

        async fn run(plan: Vec<usize>) {
            let db = stackyard_testkit::sqlite::fresh();
            let opts = stackyard_core::store::StoreOptions::default();
            let (old, new) = (
                MasterKey::from_slice(&[1; 32]).unwrap(),
                MasterKey::from_slice(&[2; 32]).unwrap(),
            );
            // The writers' server: its key file holds both keys, as the README's procedure has.
            let store = SqliteStore::connect(&db.url, opts.clone()).await.unwrap();
            let both = (old.clone(), new.clone());
            store.install_keyring(Arc::new(
                Keyring::new(old.clone()).with_reload(move || vec![both.0.clone(), both.1.clone()]),
            ));
            assert!(
                store
                    .swap_master_canary(None, &old.seal_canary(), crate::now())
                    .await
                    .unwrap()
            );
            let model: Model = Arc::default();
            let mut stacks = Vec::new();
            for i in 0..3 {
                let id = new_stack_id(&store).await;
                if i < 2 {
                    write(&store, &model, id, "BEFORE".into(), 0).await;
                }
                stacks.push(id);
            }
            let stacks = Arc::new(Mutex::new(stacks));
            let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let step = || {
                let (store, model, stacks) = (store.clone(), model.clone(), stacks.clone());
                let i = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let writes = plan.get(i).copied().unwrap_or(0);
                async move {
                    for j in 0..writes {
                        let n = (i * 10 + j) as u64;
                        let stack = if j == 2 {
                            let id = new_stack_id(&store).await;
                            stacks.lock().unwrap().push(id);
                            id
                        } else {
                            let all = stacks.lock().unwrap();
                            all[(i + j) % all.len()]
                        };
                        write(&store, &model, stack, format!("K{i}_{j}"), n).await;
                    }
                }
            };
            rotate_observed(&store, &old, &new, step).await.unwrap();
            // A write after the rotation, to a stack never written before: wrapped by `new`.
            let late = new_stack_id(&store).await;
            write(&store, &model, late, "AFTER".into(), 1).await;

            let reader = SqliteStore::connect(&db.url, opts).await.unwrap();
            reader.install_keyring(Arc::new(Keyring::new(new.clone())));
            let canary = reader.master_canary().await.unwrap().unwrap();
            assert!(new.check_canary(&canary).is_ok());
            let expected = model.lock().unwrap().clone();
            for (stack, env) in expected {
                let got = reader.get_env(StackId(stack), None).await.unwrap().unwrap();
                assert_eq!(got.env.to_map(), env, "stack {stack}");
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
            #[test]
            fn rotation_at_any_point_among_env_writes_loses_nothing(
                plan in proptest::collection::vec(0usize..4, 0..8)
            ) {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(run(plan));
            }
        }
    }
}
