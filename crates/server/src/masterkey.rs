//! The master key: where it comes from (`KeyArgs`), creating it at the first start, and proving
//! before anything is served that it is the key this database was written with (the canary),
//! so a wrong key stops start-up instead of failing the first read of a secret.

use crate::config::KeyArgs;
use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use stackyard_core::crypto::{KEY_LEN, MasterKey};
use stackyard_core::store::KeyStore;
use std::fmt;
use std::path::{Path, PathBuf};

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

/// Reads a key as a file holds it: exactly 32 raw bytes, or base64 text of them.
fn parse(bytes: &[u8], source: &KeySource) -> anyhow::Result<MasterKey> {
    if let Ok(key) = MasterKey::from_slice(bytes) {
        return Ok(key);
    }
    let text = std::str::from_utf8(bytes).unwrap_or("").trim();
    // The decoding error is dropped on purpose: it can quote the offending input.
    let raw = STANDARD
        .decode(text)
        .ok()
        .filter(|raw| raw.len() == KEY_LEN);
    match raw {
        Some(raw) => Ok(MasterKey::from_slice(&raw)?),
        None => bail!("the master key in {source} is not {KEY_LEN} bytes, raw or base64"),
    }
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
    let (key, source) = load(keys, data_dir, canary.is_none())?;
    match canary {
        Some(canary) => check(&key, &source, &canary)?,
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

fn check(key: &MasterKey, source: &KeySource, canary: &[u8]) -> anyhow::Result<()> {
    key.check_canary(canary).map_err(|_| {
        anyhow::anyhow!(
            "the master key from {source} is not this database's: it does not open the canary \
             the database was written with. Start with the key this database was created (or \
             last rotated) with: --master-key-file FILE or STACKYARD_MASTER_KEY"
        )
    })
}

/// `admin rotate-master-key`: replaces the canary sealed by `old` with one sealed by `new`, in
/// one compare-and-set, so it is safe while servers run (they proved their key at start-up and
/// keep it) and re-running it after an interruption finds either the old canary (and rotates)
/// or the new one (and has nothing left to do). Data keys, once owners have them, are re-wrapped
/// before the canary moves, one owner per transaction.
pub async fn rotate<S: KeyStore>(
    store: &S,
    old: &MasterKey,
    new: &MasterKey,
) -> anyhow::Result<()> {
    let canary = store
        .master_canary()
        .await
        .context("reading the master key's canary")?
        .context(
            "this database has no canary yet: start the server once before rotating its key",
        )?;
    if new.check_canary(&canary).is_ok() {
        tracing::info!("the database already uses the new master key");
        return Ok(());
    }
    old.check_canary(&canary).map_err(|_| {
        anyhow::anyhow!(
            "the current master key (--master-key-file / STACKYARD_MASTER_KEY) does not open \
             this database's canary: give the key it was written with"
        )
    })?;
    if !store
        .swap_master_canary(Some(&canary), &new.seal_canary(), crate::now())
        .await
        .context("storing the new master key's canary")?
    {
        bail!("the canary changed while rotating (another rotation?): run the command again");
    }
    Ok(())
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
}
