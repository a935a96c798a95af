//! Service tarballs: checking an uploaded gzipped tar in memory before anything is written
//! (paths, links, entry kinds, size and count caps, decompression bombs), the path and link
//! rules the on-disk unpacker reuses, and working out how to start the service (manifest
//! `command`, then `Procfile`, then `Dockerfile`).

use crate::ids::{escape_for_message, sha256_hex};
use std::cell::Cell;
use std::collections::HashSet;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

/// The most bytes of a root `Procfile` or `Dockerfile` read for start-command detection.
pub const MAX_START_FILE_BYTES: usize = 64 * 1024;
/// The longest single path component accepted (Linux `NAME_MAX`).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// The largest PAX or GNU long-name header accepted. Real ones are a few hundred bytes; the
/// `tar` crate would otherwise buffer them whole.
const MAX_EXTENSION_HEADER_BYTES: u64 = 64 * 1024;
/// The most extension headers accepted in a row; an entry needs at most a long name, a long
/// link and a PAX header, plus the odd PAX global header.
const MAX_EXTENSION_RUN: u32 = 8;

/// Caps applied while reading a tarball.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TarballLimits {
    /// Cap on the decompressed tar stream (file data plus tar headers and padding), so also
    /// on the bytes the unpacked files take. Default 512 MiB.
    pub max_unpacked_bytes: u64,
    /// Cap on the number of entries (files, directories, links; not the GNU long-name and PAX
    /// headers that only describe them). Default 20,000.
    pub max_entries: u64,
    /// Cap on an entry's path (and a link's target) in bytes. Default 1024.
    pub max_path_bytes: usize,
}

impl Default for TarballLimits {
    fn default() -> Self {
        Self {
            max_unpacked_bytes: 512 * 1024 * 1024,
            max_entries: 20_000,
            max_path_bytes: 1024,
        }
    }
}

/// What [`inspect`] learned about an accepted tarball.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarballInfo {
    /// Lowercase hex SHA-256 of the compressed bytes, as uploaded: the artifact's identity.
    pub digest: String,
    /// Length of the compressed bytes.
    pub size: u64,
    /// Number of entries: files, directories and links (extension headers are not counted).
    pub entries: u64,
    /// Length of the decompressed tar stream; at most `max_unpacked_bytes`.
    pub unpacked_bytes: u64,
    /// Text of the root-level regular file `Procfile` (`Procfile` or `./Procfile`), at most
    /// [`MAX_START_FILE_BYTES`], invalid UTF-8 replaced.
    pub procfile: Option<String>,
    /// Text of the root-level regular file `Dockerfile`, same rules as `procfile`.
    pub dockerfile: Option<String>,
}

/// Why a tarball was rejected. Every variant is `invalid_tarball`; the message names the
/// entry (lossily decoded, control characters escaped, truncated) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TarballError {
    #[error("the upload is not a gzip-compressed tar archive (.tar.gz)")]
    NotGzip,
    #[error("the tarball is corrupt or truncated: {detail}")]
    Corrupt { detail: String },
    #[error("the tarball has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("the tarball unpacks to more than {}", human_bytes(*limit))]
    TooLarge { limit: u64 },
    #[error("tarball entry `{path}` {reason}")]
    BadEntry { path: String, reason: String },
    #[error("the tarball has no files")]
    Empty,
}

impl TarballError {
    /// The API error code for this error.
    pub fn code(&self) -> &'static str {
        "invalid_tarball"
    }
}

fn human_bytes(n: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    const KIB: u64 = 1024;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n.is_multiple_of(KIB) {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} bytes")
    }
}

/// An entry path for messages: lossy UTF-8, control characters escaped, truncated.
fn shown(raw: &[u8]) -> String {
    escape_for_message(&String::from_utf8_lossy(raw))
}

fn bad(raw: &[u8], reason: impl Into<String>) -> TarballError {
    TarballError::BadEntry {
        path: shown(raw),
        reason: reason.into(),
    }
}

/// Checks a raw entry name and returns it as a relative path of normal components only.
///
/// Accepts `a/b`, `./a/b`, `a//b/`, and `.` or `./` (the root itself, returned as an empty
/// path). Rejects non-UTF-8 names, NUL bytes, absolute paths, any `..` component, and
/// components longer than [`MAX_COMPONENT_BYTES`]. Backslashes are ordinary characters, as they
/// are on Unix.
pub fn safe_relative_path(raw: &[u8]) -> Result<PathBuf, TarballError> {
    let text = std::str::from_utf8(raw).map_err(|_| bad(raw, "has a name that is not UTF-8"))?;
    if text.is_empty() {
        return Err(bad(raw, "has an empty name"));
    }
    if text.contains('\0') {
        return Err(bad(raw, "has a NUL byte in its name"));
    }
    if text.starts_with('/') {
        return Err(bad(raw, "has an absolute path"));
    }
    let mut out = PathBuf::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(bad(raw, "has a `..` component")),
            p if p.len() > MAX_COMPONENT_BYTES => {
                return Err(bad(
                    raw,
                    format!("has a path component longer than {MAX_COMPONENT_BYTES} bytes"),
                ));
            }
            p => out.push(p),
        }
    }
    Ok(out)
}

/// Whether a symlink at `entry_path` (relative to the root, as returned by
/// [`safe_relative_path`]) pointing at `target` stays inside the root.
///
/// Lexical and deliberately strict: the target must be relative, may climb with leading `..`
/// components no higher than the link's directory, and must not use `..` after a normal
/// component. The last rule matters because `x/..` through a symlink `x` goes to the parent of
/// `x`'s target, not back to where it started, so only targets that are `..`* followed by
/// plain names resolve where they appear to. This assumes the link's parent directories are
/// real directories, which [`inspect`] enforces and the unpacker must preserve.
pub fn link_target_is_inside(entry_path: &Path, target: &Path) -> bool {
    let mut depth: usize = 0;
    for c in entry_path.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    // The link resolves from its directory, one level above the link itself.
    let mut room = depth.saturating_sub(1);
    let mut seen_name = false;
    let mut any = false;
    for c in target.components() {
        any = true;
        match c {
            Component::CurDir => {}
            Component::Normal(_) => seen_name = true,
            Component::ParentDir if !seen_name && room > 0 => room -= 1,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    any
}

/// Counts bytes coming out of the decompressor and fails the read once past the cap, so a
/// small upload can never make us inflate more than the cap. The count is shared so the caller
/// can tell this failure from a corrupt stream after the tar reader has wrapped the error.
struct Capped<R> {
    inner: R,
    count: Rc<Cell<u64>>,
    limit: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.count.get().saturating_add(n as u64);
        self.count.set(total);
        if total > self.limit {
            self.exceeded.set(true);
            return Err(io::Error::other("decompressed size limit exceeded"));
        }
        Ok(n)
    }
}

/// Reads the whole tarball without writing anything and checks every entry.
///
/// Accepts regular files, directories, symlinks and hard links whose targets stay inside
/// (see [`link_target_is_inside`]; a hard link's target is a path from the root and must pass
/// [`safe_relative_path`]), and PAX global headers (as written by `git archive`). Rejects
/// anything else (devices, FIFOs, sparse files), entries nested under a symlink of the same
/// tarball, a tarball with no regular file, and every limit in `limits`. Every entry's data is
/// read through, and so is the rest of the gzip stream, so the decompressed size and the gzip
/// checksum are really checked.
pub fn inspect(bytes: &[u8], limits: &TarballLimits) -> Result<TarballInfo, TarballError> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(TarballError::NotGzip);
    }
    let count = Rc::new(Cell::new(0u64));
    let exceeded = Rc::new(Cell::new(false));
    let reader = Capped {
        inner: flate2::bufread::GzDecoder::new(bytes),
        count: Rc::clone(&count),
        limit: limits.max_unpacked_bytes,
        exceeded: Rc::clone(&exceeded),
    };
    let too_large = TarballError::TooLarge {
        limit: limits.max_unpacked_bytes,
    };
    let io_error = |e: io::Error| {
        if exceeded.get() {
            too_large.clone()
        } else {
            TarballError::Corrupt {
                detail: e.to_string(),
            }
        }
    };

    let mut archive = tar::Archive::new(reader);
    let mut scan = Scan::new(limits);
    {
        // Raw mode hands us GNU long-name and PAX headers as entries, so their size is capped
        // here instead of being buffered whole by the `tar` crate.
        let entries = archive.entries().map_err(io_error)?.raw(true);
        for entry in entries {
            let mut entry = entry.map_err(io_error)?;
            scan.entry(&mut entry, &count).map_err(|e| match e {
                ScanError::Io(e) => io_error(e),
                ScanError::Reject(e) => e,
            })?;
        }
    }
    if scan.pending.is_some() {
        return Err(TarballError::Corrupt {
            detail: "it ends with an extension header that describes no entry".into(),
        });
    }
    // Reading to the end verifies the gzip checksum and catches a truncated stream; the cap
    // still applies to whatever follows the tar end marker.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(io_error)?;

    if scan.files == 0 {
        return Err(TarballError::Empty);
    }
    Ok(TarballInfo {
        digest: sha256_hex(bytes),
        size: bytes.len() as u64,
        entries: scan.entries,
        unpacked_bytes: count.get(),
        procfile: scan.procfile,
        dockerfile: scan.dockerfile,
    })
}

enum ScanError {
    Io(io::Error),
    Reject(TarballError),
}

impl From<io::Error> for ScanError {
    fn from(e: io::Error) -> Self {
        ScanError::Io(e)
    }
}

impl From<TarballError> for ScanError {
    fn from(e: TarballError) -> Self {
        ScanError::Reject(e)
    }
}

/// Overrides from GNU long-name/long-link and PAX headers for the next real entry.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    sparse: bool,
}

struct Scan<'a> {
    limits: &'a TarballLimits,
    entries: u64,
    files: u64,
    extension_run: u32,
    pending: Option<Pending>,
    symlinks: HashSet<PathBuf>,
    procfile: Option<String>,
    dockerfile: Option<String>,
}

impl<'a> Scan<'a> {
    fn new(limits: &'a TarballLimits) -> Self {
        Self {
            limits,
            entries: 0,
            files: 0,
            extension_run: 0,
            pending: None,
            symlinks: HashSet::new(),
            procfile: None,
            dockerfile: None,
        }
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        decompressed: &Cell<u64>,
    ) -> Result<(), ScanError> {
        // Refuse before inflating a declared size that cannot fit anyway.
        let size = entry.size();
        if decompressed.get().saturating_add(size) > self.limits.max_unpacked_bytes {
            return Err(TarballError::TooLarge {
                limit: self.limits.max_unpacked_bytes,
            }
            .into());
        }
        let kind = entry.header().entry_type();
        let header_path = entry.path_bytes().into_owned();

        let extension = kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions();
        if extension {
            // Extension headers don't count as entries (a project with deep paths has one per
            // file), but a run of them with no entry after is refused rather than looped over.
            self.extension_run += 1;
            if self.extension_run > MAX_EXTENSION_RUN {
                return Err(bad(
                    &header_path,
                    "is one of too many extension headers in a row",
                )
                .into());
            }
        } else {
            self.extension_run = 0;
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(TarballError::TooManyEntries {
                    limit: self.limits.max_entries,
                }
                .into());
            }
        }

        if kind.is_gnu_longname() || kind.is_gnu_longlink() {
            let cap = self.limits.max_path_bytes as u64 + 1;
            if size > cap {
                return Err(bad(
                    &header_path,
                    "has a GNU long name longer than the path limit",
                )
                .into());
            }
            let mut value = read_capped(entry, cap)?;
            while value.last() == Some(&0) {
                value.pop();
            }
            let pending = self.pending.get_or_insert_with(Pending::default);
            if kind.is_gnu_longname() {
                pending.path = Some(value);
            } else {
                pending.link = Some(value);
            }
            return Ok(());
        }
        if kind.is_pax_local_extensions() || kind.is_pax_global_extensions() {
            if size > MAX_EXTENSION_HEADER_BYTES {
                return Err(bad(&header_path, "is a PAX header larger than 64 KiB").into());
            }
            let data = read_capped(entry, MAX_EXTENSION_HEADER_BYTES)?;
            if kind.is_pax_local_extensions() {
                let pending = self.pending.get_or_insert_with(Pending::default);
                apply_pax(&data, pending).map_err(|why| bad(&header_path, why))?;
            }
            return Ok(());
        }

        let pending = self.pending.take().unwrap_or_default();
        let raw_path = pending.path.unwrap_or(header_path);
        if raw_path.len() > self.limits.max_path_bytes {
            return Err(bad(
                &raw_path,
                format!(
                    "has a path longer than {} bytes",
                    self.limits.max_path_bytes
                ),
            )
            .into());
        }
        if pending.sparse || kind.is_gnu_sparse() {
            return Err(bad(&raw_path, "is a sparse file, which is not supported").into());
        }
        if let Some(pax_size) = pending.size {
            // The `tar` crate in raw mode reads by the header's size; a PAX size that disagrees
            // would make two readers see different archives.
            if pax_size != size {
                return Err(bad(&raw_path, "has a PAX size that disagrees with its header").into());
            }
        }
        let path = safe_relative_path(&raw_path)?;
        self.check_not_under_symlink(&raw_path, &path)?;

        if kind.is_dir() {
            // `./` is the root itself, which needs no checks beyond the above.
        } else if path.as_os_str().is_empty() {
            return Err(bad(&raw_path, "would replace the tarball's root directory").into());
        } else if kind.is_file() || kind.is_contiguous() {
            self.files += 1;
            let slot = match path.to_str() {
                Some("Procfile") => Some(&mut self.procfile),
                Some("Dockerfile") => Some(&mut self.dockerfile),
                _ => None,
            };
            if let Some(slot) = slot {
                if size > MAX_START_FILE_BYTES as u64 {
                    return Err(bad(
                        &raw_path,
                        format!(
                            "is larger than {}, more than a start-command file should be",
                            human_bytes(MAX_START_FILE_BYTES as u64)
                        ),
                    )
                    .into());
                }
                let data = read_capped(entry, MAX_START_FILE_BYTES as u64)?;
                *slot = Some(String::from_utf8_lossy(&data).into_owned());
            }
        } else if kind.is_symlink() || kind.is_hard_link() {
            let raw_target = pending
                .link
                .or_else(|| entry.link_name_bytes().map(|t| t.into_owned()))
                .unwrap_or_default();
            self.check_link(&raw_path, &path, &raw_target, kind.is_symlink())?;
            if kind.is_symlink() {
                self.symlinks.insert(path);
            } else {
                self.files += 1;
            }
        } else {
            let what = if kind.is_character_special() || kind.is_block_special() {
                "is a device file"
            } else if kind.is_fifo() {
                "is a named pipe (FIFO)"
            } else {
                "has an unsupported entry type"
            };
            return Err(bad(&raw_path, what).into());
        }
        // Read whatever is left so the decompressed count covers every byte.
        io::copy(entry, &mut io::sink())?;
        Ok(())
    }

    fn check_link(
        &self,
        raw_path: &[u8],
        path: &Path,
        raw_target: &[u8],
        symbolic: bool,
    ) -> Result<(), ScanError> {
        if raw_target.is_empty() {
            return Err(bad(raw_path, "is a link with an empty target").into());
        }
        if raw_target.len() > self.limits.max_path_bytes {
            return Err(bad(
                raw_path,
                format!(
                    "is a link whose target is longer than {} bytes",
                    self.limits.max_path_bytes
                ),
            )
            .into());
        }
        let Ok(target) = std::str::from_utf8(raw_target) else {
            return Err(bad(raw_path, "is a link whose target is not UTF-8").into());
        };
        if target.contains('\0') {
            return Err(bad(raw_path, "is a link whose target contains a NUL byte").into());
        }
        if symbolic {
            if !link_target_is_inside(path, Path::new(target)) {
                return Err(bad(
                    raw_path,
                    format!(
                        "is a symlink to `{}`, which points outside the tarball",
                        shown(raw_target)
                    ),
                )
                .into());
            }
        } else {
            // A hard link names another entry by its path from the root.
            let inside = safe_relative_path(raw_target)
                .ok()
                .filter(|t| !t.as_os_str().is_empty());
            let Some(target_path) = inside else {
                return Err(bad(
                    raw_path,
                    format!(
                        "is a hard link to `{}`, which is not a file inside the tarball",
                        shown(raw_target)
                    ),
                )
                .into());
            };
            self.check_not_under_symlink(raw_target, &target_path)?;
        }
        Ok(())
    }

    /// Writing `d/x` after a symlink `d` would write wherever `d` points, so no entry (or hard
    /// link target) may sit below a symlink of the same tarball.
    fn check_not_under_symlink(&self, raw: &[u8], path: &Path) -> Result<(), ScanError> {
        if self.symlinks.is_empty() {
            return Ok(());
        }
        for ancestor in path.ancestors().skip(1) {
            if self.symlinks.contains(ancestor) {
                return Err(bad(
                    raw,
                    format!(
                        "is inside `{}`, which is a symlink in the same tarball",
                        shown(ancestor.as_os_str().as_encoded_bytes())
                    ),
                )
                .into());
            }
        }
        Ok(())
    }
}

/// Reads at most `cap` bytes of an entry; the caller has already checked the declared size.
fn read_capped(entry: &mut impl Read, cap: u64) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    entry.take(cap).read_to_end(&mut data)?;
    Ok(data)
}

/// Applies the PAX records that change what the next entry is: `path`, `linkpath`, `size`, and
/// the GNU sparse markers (which we refuse). Format: `"<len> <key>=<value>\n"` repeated.
fn apply_pax(mut data: &[u8], pending: &mut Pending) -> Result<(), String> {
    const MALFORMED: &str = "is a malformed PAX header";
    while !data.is_empty() {
        let space = data.iter().position(|&b| b == b' ').ok_or(MALFORMED)?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(MALFORMED)?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(MALFORMED.into());
        }
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or(MALFORMED)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => pending.path = Some(value.to_vec()),
            b"linkpath" => pending.link = Some(value.to_vec()),
            b"size" => {
                let size = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(MALFORMED)?;
                pending.size = Some(size);
            }
            k if k.starts_with(b"GNU.sparse.") => pending.sparse = true,
            _ => {}
        }
        data = &data[len..];
    }
    Ok(())
}

/// Where a service's start command came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StartSource {
    Manifest,
    Procfile,
    Dockerfile,
}

impl StartSource {
    /// The stable lowercase name, for release records and API responses.
    pub fn as_str(self) -> &'static str {
        match self {
            StartSource::Manifest => "manifest",
            StartSource::Procfile => "procfile",
            StartSource::Dockerfile => "dockerfile",
        }
    }
}

/// How the local runtime starts a service.
///
/// Invariants: `command` is non-empty and meant for `sh -c`; `workdir` is `""` (the tarball
/// root) or `/`-separated normal components (no `.`, `..`, leading `/` or empty parts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartCommand {
    pub command: String,
    pub workdir: String,
    pub source: StartSource,
}

/// The start command, taken from the first of these that gives one: the manifest's `command`
/// (trimmed, if non-empty); the root `Procfile` (its `web` process, else its only process); the
/// root `Dockerfile`'s `ENTRYPOINT`/`CMD`. `None` means the caller answers 400
/// `missing_start_command`.
///
/// Dockerfile support is deliberately small: only `FROM`, `WORKDIR`, `CMD` and `ENTRYPOINT` of
/// the final stage count (a stage built `FROM` an earlier stage inherits them). Exec-form
/// arguments are joined with POSIX shell quoting so `sh -c` runs exactly that argv, as Docker
/// would; shell-form commands are used as written. `SHELL`, `ENV`, `ARG` and everything else
/// are ignored, so `$VAR`s are left to the shell at run time. An absolute `WORKDIR /app`
/// becomes `app` under the tarball root; relative ones accumulate.
pub fn resolve_start(manifest_command: Option<&str>, info: &TarballInfo) -> Option<StartCommand> {
    if let Some(cmd) = manifest_command.map(str::trim).filter(|c| !c.is_empty()) {
        return Some(StartCommand {
            command: cmd.to_owned(),
            workdir: String::new(),
            source: StartSource::Manifest,
        });
    }
    if let Some(cmd) = info.procfile.as_deref().and_then(procfile_command) {
        return Some(StartCommand {
            command: cmd,
            workdir: String::new(),
            source: StartSource::Procfile,
        });
    }
    let (command, workdir) = info.dockerfile.as_deref().and_then(dockerfile_command)?;
    Some(StartCommand {
        command,
        workdir,
        source: StartSource::Dockerfile,
    })
}

/// The `web` process of a Procfile, else its only process (`release` is not a process: see
/// [`procfile_release`]). Lines are `name: command`, names `[A-Za-z0-9_-]+`; blank lines and
/// `#` comments are skipped; of repeated names the first counts.
pub fn procfile_command(text: &str) -> Option<String> {
    let processes: Vec<(&str, &str)> = procfile_entries(text)
        .into_iter()
        .filter(|(n, _)| *n != "release")
        .collect();
    let chosen = match processes.iter().find(|(n, _)| *n == "web") {
        Some((_, c)) => Some(*c),
        None if processes.len() == 1 => processes.first().map(|(_, c)| *c),
        None => None,
    };
    chosen.map(str::to_owned)
}

/// The Procfile's `release:` command, run once per release before its processes start.
pub fn procfile_release(text: &str) -> Option<String> {
    procfile_entries(text)
        .into_iter()
        .find(|(n, _)| *n == "release")
        .map(|(_, c)| c.to_owned())
}

fn procfile_entries(text: &str) -> Vec<(&str, &str)> {
    let mut processes: Vec<(&str, &str)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, command)) = line.split_once(':') else {
            continue;
        };
        let (name, command) = (name.trim(), command.trim());
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid_name && !command.is_empty() && !processes.iter().any(|(n, _)| *n == name) {
            processes.push((name, command));
        }
    }
    processes
}

/// `CMD`/`ENTRYPOINT` as Docker stores them: exec form is an argv, shell form a string Docker
/// would run with `/bin/sh -c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Form {
    Exec(Vec<String>),
    Shell(String),
}

#[derive(Debug, Clone, Default)]
struct Stage {
    alias: Option<String>,
    workdir: Vec<String>,
    cmd: Option<Form>,
    entrypoint: Option<Form>,
    /// Whether this stage itself set `CMD`: Docker clears an inherited `CMD` when a stage sets
    /// `ENTRYPOINT`, but not one the same stage set.
    cmd_set_here: bool,
}

/// The command (for `sh -c`) and the workdir (relative to the tarball root) a Dockerfile's
/// final stage would run.
pub fn dockerfile_command(text: &str) -> Option<(String, String)> {
    let escape = escape_directive(text);
    let mut stages: Vec<Stage> = Vec::new();
    let mut current = Stage::default();
    let mut started = false;
    let mut lines = text.lines();
    let mut heredocs: Vec<String> = Vec::new();

    while let Some(logical) = next_instruction(&mut lines, escape, &mut heredocs) {
        let (word, args) = match logical.split_once(char::is_whitespace) {
            Some((w, a)) => (w, a.trim()),
            None => (logical.as_str(), ""),
        };
        match word.to_ascii_uppercase().as_str() {
            "FROM" => {
                if started {
                    stages.push(std::mem::take(&mut current));
                }
                started = true;
                let mut words = args.split_whitespace().filter(|w| !w.starts_with("--"));
                let image = words.next().unwrap_or_default().to_ascii_lowercase();
                let alias = match (words.next(), words.next()) {
                    (Some(kw), Some(name)) if kw.eq_ignore_ascii_case("as") => {
                        Some(name.to_ascii_lowercase())
                    }
                    _ => None,
                };
                let base = stages
                    .iter()
                    .rev()
                    .find(|s| s.alias.as_deref() == Some(image.as_str()));
                current = match base {
                    Some(b) => Stage {
                        alias: None,
                        cmd_set_here: false,
                        ..b.clone()
                    },
                    None => Stage::default(),
                };
                current.alias = alias;
            }
            "WORKDIR" => {
                let dir = unquote(args);
                if dir.starts_with('/') {
                    current.workdir.clear();
                }
                for part in dir.split('/') {
                    match part {
                        "" | "." => {}
                        ".." => {
                            current.workdir.pop();
                        }
                        p => current.workdir.push(p.to_owned()),
                    }
                }
            }
            "CMD" => {
                current.cmd = parse_form(args);
                current.cmd_set_here = true;
            }
            "ENTRYPOINT" => {
                current.entrypoint = parse_form(args);
                if !current.cmd_set_here {
                    current.cmd = None;
                }
            }
            _ => {}
        }
    }

    let command = match (&current.entrypoint, &current.cmd) {
        (Some(Form::Shell(s)), _) => s.clone(),
        (Some(Form::Exec(e)), cmd) => {
            let mut argv = e.clone();
            match cmd {
                Some(Form::Exec(c)) => argv.extend(c.iter().cloned()),
                Some(Form::Shell(s)) => argv.extend(["/bin/sh".into(), "-c".into(), s.clone()]),
                None => {}
            }
            shell_join(&argv)
        }
        (None, Some(Form::Exec(c))) => shell_join(c),
        (None, Some(Form::Shell(s))) => s.clone(),
        (None, None) => return None,
    };
    let command = command.trim();
    if command.is_empty() {
        return None;
    }
    Some((command.to_owned(), current.workdir.join("/")))
}

/// The line-continuation character: `\`, or `` ` `` when the Dockerfile starts with the parser
/// directive `# escape=``.
pub(crate) fn escape_directive(text: &str) -> char {
    for line in text.lines() {
        let Some(directive) = line.trim().strip_prefix('#') else {
            break;
        };
        let Some((key, value)) = directive.split_once('=') else {
            break;
        };
        if key.trim().eq_ignore_ascii_case("escape") {
            return if value.trim() == "`" { '`' } else { '\\' };
        }
    }
    '\\'
}

/// The next instruction with continuations joined, skipping comments, blank lines and the
/// bodies of heredocs opened by the previous instruction.
pub(crate) fn next_instruction<'a>(
    lines: &mut impl Iterator<Item = &'a str>,
    escape: char,
    heredocs: &mut Vec<String>,
) -> Option<String> {
    // Bodies of `RUN <<EOF` and friends are data, not instructions.
    while !heredocs.is_empty() {
        let line = lines.next()?;
        if line.trim() == heredocs[0] {
            heredocs.remove(0);
        }
    }
    let mut joined = String::new();
    let mut continuing = false;
    for line in lines.by_ref() {
        let trimmed = line.trim();
        // Docker drops comment lines, and blank lines inside a continuation.
        if trimmed.starts_with('#') || (trimmed.is_empty() && (continuing || joined.is_empty())) {
            continue;
        }
        let body = line.trim_end();
        if let Some(head) = body.strip_suffix(escape) {
            joined.push_str(head);
            continuing = true;
            continue;
        }
        joined.push_str(body);
        break;
    }
    let instruction = joined.trim().to_owned();
    if instruction.is_empty() {
        return None;
    }
    let word = instruction
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    if matches!(word.as_str(), "RUN" | "COPY" | "ADD") {
        heredocs.extend(heredoc_terminators(&instruction));
    }
    Some(instruction)
}

/// Terminators of `<<WORD`, `<<-WORD`, `<<"WORD"` and `<<'WORD'` in an instruction.
pub(crate) fn heredoc_terminators(instruction: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = instruction;
    while let Some(i) = rest.find("<<") {
        rest = &rest[i + 2..];
        let r = rest.strip_prefix('-').unwrap_or(rest);
        let (quote, r) = match r.chars().next() {
            Some(q @ ('"' | '\'')) => (Some(q), &r[1..]),
            _ => (None, r),
        };
        let word: String = r
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let closed = match quote {
            Some(q) => r[word.len()..].starts_with(q),
            None => true,
        };
        if !word.is_empty() && closed {
            out.push(word);
        }
    }
    out
}

pub(crate) fn unquote(s: &str) -> &str {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

/// Exec form when the arguments are a JSON array of strings, else shell form (Docker falls back
/// the same way).
pub(crate) fn parse_form(args: &str) -> Option<Form> {
    let args = args.trim();
    if args.is_empty() {
        return None;
    }
    if args.starts_with('[')
        && let Ok(argv) = serde_json::from_str::<Vec<String>>(args)
    {
        return Some(Form::Exec(argv));
    }
    Some(Form::Shell(args.to_owned()))
}

/// Joins an argv into a `sh -c` string that reproduces it exactly.
pub fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// POSIX-quotes one word: left bare when it only has characters no shell treats specially,
/// else single-quoted with embedded `'` written as `'\''`.
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
    if safe {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use proptest::prelude::*;
    use std::io::Write;
    use tar::EntryType;

    /// One entry of a test tarball. Names and link targets are raw bytes written straight into
    /// the header, so hostile names the `tar` builder would refuse can be produced.
    enum E<'a> {
        File(&'a [u8], &'a [u8]),
        Dir(&'a [u8]),
        Symlink(&'a [u8], &'a [u8]),
        HardLink(&'a [u8], &'a [u8]),
        Typed(EntryType, &'a [u8]),
        /// A GNU long-name header followed by a file whose short name is `short`.
        LongFile(Vec<u8>, &'a [u8]),
        /// A PAX local header (records) followed by a file.
        PaxFile(Vec<u8>, &'a [u8], &'a [u8]),
        PaxGlobal(Vec<u8>),
    }

    fn header(kind: EntryType, name: &[u8], link: &[u8], size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_mtime(0);
        h.set_cksum();
        h
    }

    fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in records {
            let body_len = 1 + k.len() + 1 + v.len() + 1;
            let mut len = body_len + 1;
            while len != body_len + len.to_string().len() {
                len = body_len + len.to_string().len();
            }
            out.extend_from_slice(format!("{len} {k}=").as_bytes());
            out.extend_from_slice(v);
            out.push(b'\n');
        }
        out
    }

    fn tar_bytes(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            match e {
                E::File(p, data) => b.append(
                    &header(EntryType::Regular, p, b"", data.len() as u64),
                    *data,
                ),
                E::Dir(p) => b.append(&header(EntryType::Directory, p, b"", 0), io::empty()),
                E::Symlink(p, t) => b.append(&header(EntryType::Symlink, p, t, 0), io::empty()),
                E::HardLink(p, t) => b.append(&header(EntryType::Link, p, t, 0), io::empty()),
                E::Typed(kind, p) => b.append(&header(*kind, p, b"", 0), io::empty()),
                E::LongFile(name, data) => {
                    let mut long = name.clone();
                    long.push(0);
                    b.append(
                        &header(
                            EntryType::GNULongName,
                            b"././@LongLink",
                            b"",
                            long.len() as u64,
                        ),
                        long.as_slice(),
                    )
                    .unwrap();
                    b.append(
                        &header(EntryType::Regular, b"short", b"", data.len() as u64),
                        *data,
                    )
                }
                E::PaxFile(records, p, data) => {
                    b.append(
                        &header(EntryType::XHeader, b"PaxHeader", b"", records.len() as u64),
                        records.as_slice(),
                    )
                    .unwrap();
                    b.append(
                        &header(EntryType::Regular, p, b"", data.len() as u64),
                        *data,
                    )
                }
                E::PaxGlobal(records) => b.append(
                    &header(
                        EntryType::XGlobalHeader,
                        b"pax_global_header",
                        b"",
                        records.len() as u64,
                    ),
                    records.as_slice(),
                ),
            }
            .unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn targz(entries: &[E<'_>]) -> Vec<u8> {
        gz(&tar_bytes(entries))
    }

    fn inspect_default(bytes: &[u8]) -> Result<TarballInfo, TarballError> {
        inspect(bytes, &TarballLimits::default())
    }

    fn rejected(entries: &[E<'_>]) -> String {
        let err = inspect_default(&targz(entries)).unwrap_err();
        assert_eq!(err.code(), "invalid_tarball");
        err.to_string()
    }

    #[test]
    fn a_normal_tarball_is_described() {
        let tar = tar_bytes(&[
            E::Dir(b"./"),
            E::File(b"./Procfile", b"web: python3 app.py\n"),
            E::File(
                b"Dockerfile",
                b"FROM python\nCMD [\"python3\", \"app.py\"]\n",
            ),
            E::Dir(b"app/"),
            E::File(b"app/app.py", b"print('hi')\n"),
            E::Dir(b"bin"),
            E::Symlink(b"bin/run", b"../app/app.py"),
            E::Symlink(b"here", b"."),
            E::HardLink(b"app/copy.py", b"./app/app.py"),
            E::File(b"sub/Procfile", b"web: not this one\n"),
        ]);
        let bytes = gz(&tar);
        let info = inspect_default(&bytes).unwrap();
        assert_eq!(info.digest, sha256_hex(&bytes));
        assert_eq!(info.digest.len(), 64);
        assert_eq!(info.size, bytes.len() as u64);
        assert_eq!(info.entries, 10);
        assert_eq!(info.unpacked_bytes, tar.len() as u64);
        assert_eq!(info.procfile.as_deref(), Some("web: python3 app.py\n"));
        assert!(info.dockerfile.as_deref().unwrap().contains("CMD"));
    }

    #[test]
    fn tarballs_from_the_tar_builder_with_long_names_are_accepted() {
        let long = format!("{}/Procfile", "d".repeat(150));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(8);
        b.append_data(&mut h, "Procfile", &b"web: run"[..]).unwrap();
        let info = inspect_default(&gz(&b.into_inner().unwrap())).unwrap();
        assert_eq!(info.procfile.as_deref(), Some("web: run"));
        assert_eq!(info.entries, 2, "the long-name header is not an entry");
    }

    #[test]
    fn gnu_long_names_are_checked_like_short_ones() {
        let ok = inspect_default(&targz(&[E::LongFile(b"Procfile".to_vec(), b"web: x")])).unwrap();
        assert_eq!(ok.procfile.as_deref(), Some("web: x"));
        let msg = rejected(&[E::LongFile(b"../../etc/cron.d/x".to_vec(), b"x")]);
        assert!(
            msg.contains("`../../etc/cron.d/x`") && msg.contains("`..`"),
            "{msg}"
        );
        let msg = rejected(&[E::LongFile(vec![b'a'; 5000], b"x")]);
        assert!(msg.contains("long name"), "{msg}");
    }

    #[test]
    fn pax_headers_override_paths_and_are_checked() {
        let records = pax(&[("path", b"Procfile"), ("mtime", b"1.5")]);
        let info = inspect_default(&targz(&[E::PaxFile(records, b"ignored", b"web: y")])).unwrap();
        assert_eq!(info.procfile.as_deref(), Some("web: y"));

        let msg = rejected(&[E::PaxFile(pax(&[("path", b"/etc/passwd")]), b"fine", b"x")]);
        assert!(
            msg.contains("`/etc/passwd`") && msg.contains("absolute"),
            "{msg}"
        );
        let msg = rejected(&[E::PaxFile(pax(&[("size", b"99")]), b"f", b"x")]);
        assert!(msg.contains("PAX size"), "{msg}");
        let msg = rejected(&[E::PaxFile(pax(&[("GNU.sparse.major", b"1")]), b"f", b"x")]);
        assert!(msg.contains("sparse"), "{msg}");
        let msg = rejected(&[E::PaxFile(b"garbage".to_vec(), b"f", b"x")]);
        assert!(msg.contains("malformed PAX"), "{msg}");
    }

    #[test]
    fn extension_headers_must_describe_an_entry() {
        let dangling: Vec<E<'_>> =
            vec![E::File(b"a", b"1"), E::PaxGlobal(pax(&[("comment", b"x")]))];
        inspect_default(&targz(&dangling)).unwrap();
        let many: Vec<E<'_>> = (0..20)
            .map(|_| E::PaxGlobal(pax(&[("comment", b"x")])))
            .collect();
        let msg = rejected(&many);
        assert!(msg.contains("too many extension headers"), "{msg}");
        let mut tar = tar_bytes(&[E::File(b"a", b"1")]);
        tar.truncate(tar.len() - 1024);
        let long = b"x/y\0";
        let mut b = tar::Builder::new(Vec::new());
        b.append(
            &header(
                EntryType::GNULongName,
                b"././@LongLink",
                b"",
                long.len() as u64,
            ),
            &long[..],
        )
        .unwrap();
        tar.extend(b.into_inner().unwrap());
        let err = inspect_default(&gz(&tar)).unwrap_err();
        assert!(err.to_string().contains("describes no entry"), "{err}");
    }

    #[test]
    fn git_archive_global_headers_are_accepted() {
        let global = pax(&[("comment", b"0123456789abcdef0123456789abcdef01234567")]);
        let info = inspect_default(&targz(&[E::PaxGlobal(global), E::File(b"a", b"1")])).unwrap();
        assert_eq!(info.entries, 1);
    }

    #[test]
    fn escaping_paths_are_rejected() {
        let cases: [(&[u8], &str); 6] = [
            (b"../x", "`..`"),
            (b"a/../../x", "`..`"),
            (b"a/..", "`..`"),
            (b"/etc/passwd", "absolute"),
            (b"//etc/passwd", "absolute"),
            (b"bad\xffname", "not UTF-8"),
        ];
        for (path, why) in cases {
            let msg = rejected(&[E::File(path, b"x")]);
            assert!(msg.contains(why), "{path:?}: {msg}");
        }
        let msg = rejected(&[E::File(b"bad\xffname", b"x")]);
        assert!(msg.contains("bad\u{fffd}name"), "{msg}");
        let msg = rejected(&[E::Dir(b"../up/")]);
        assert!(msg.contains("`..`"), "{msg}");
    }

    #[test]
    fn escaping_links_are_rejected() {
        let bad_links: [(&[u8], &[u8]); 7] = [
            (b"etc", b"../../etc"),
            (b"etc", b"/etc"),
            (b"a/b", b"../../x"),
            (b"up", b".."),
            (b"sub/l", b"x/../../y"),
            (b"sub/l", b"x/.."),
            (b"empty", b""),
        ];
        for (path, target) in bad_links {
            let msg = rejected(&[E::File(b"f", b"x"), E::Symlink(path, target)]);
            assert!(msg.contains(&*String::from_utf8_lossy(path)), "{msg}");
        }
        let msg = rejected(&[E::File(b"f", b"x"), E::Symlink(b"etc", b"../../etc")]);
        assert!(msg.contains("points outside"), "{msg}");
        let msg = rejected(&[E::File(b"f", b"x"), E::Symlink(b"l", b"bad\xff")]);
        assert!(msg.contains("not UTF-8"), "{msg}");
        for target in [&b"../x"[..], b"/etc/passwd", b"", b"."] {
            let msg = rejected(&[E::File(b"f", b"x"), E::HardLink(b"h", target)]);
            assert!(msg.contains("`h`"), "{msg}");
        }
        let msg = rejected(&[E::File(b"f", b"x"), E::HardLink(b"h", b"/etc/shadow")]);
        assert!(msg.contains("hard link to `/etc/shadow`"), "{msg}");
    }

    #[test]
    fn nothing_may_be_written_through_a_symlink_of_the_same_tarball() {
        let msg = rejected(&[
            E::Dir(b"real/"),
            E::Symlink(b"d", b"real"),
            E::File(b"d/x", b"x"),
        ]);
        assert!(
            msg.contains("`d/x`") && msg.contains("`d`") && msg.contains("symlink"),
            "{msg}"
        );
        let msg = rejected(&[
            E::File(b"real/x", b"x"),
            E::Symlink(b"d", b"real"),
            E::HardLink(b"h", b"d/x"),
        ]);
        assert!(msg.contains("inside `d`"), "{msg}");
        // A file at the link's own path is fine (it replaces the link, it does not follow it).
        inspect_default(&targz(&[E::Symlink(b"d", b"real"), E::File(b"d", b"x")])).unwrap();
    }

    #[test]
    fn special_files_are_rejected() {
        let cases = [
            (EntryType::Fifo, "named pipe"),
            (EntryType::Char, "device"),
            (EntryType::Block, "device"),
            (EntryType::GNUSparse, "sparse"),
            (EntryType::new(b'Z'), "unsupported entry type"),
        ];
        for (kind, why) in cases {
            let msg = rejected(&[E::File(b"f", b"x"), E::Typed(kind, b"dev/thing")]);
            assert!(
                msg.contains("`dev/thing`") && msg.contains(why),
                "{kind:?}: {msg}"
            );
        }
    }

    #[test]
    fn the_root_cannot_be_replaced() {
        let msg = rejected(&[E::File(b"./", b"x")]);
        assert!(msg.contains("root"), "{msg}");
        let msg = rejected(&[E::File(b"f", b"x"), E::Symlink(b".", b"f")]);
        assert!(msg.contains("root"), "{msg}");
    }

    #[test]
    fn limits_on_entries_paths_and_size_apply() {
        let small = TarballLimits {
            max_unpacked_bytes: 64 * 1024,
            max_entries: 3,
            max_path_bytes: 20,
        };
        let four = targz(&[
            E::File(b"a", b""),
            E::File(b"b", b""),
            E::File(b"c", b""),
            E::File(b"d", b""),
        ]);
        assert_eq!(
            inspect(&four, &small).unwrap_err(),
            TarballError::TooManyEntries { limit: 3 }
        );
        assert_eq!(
            inspect(&four, &TarballLimits::default()).unwrap().entries,
            4
        );

        let long = targz(&[E::File(b"aaaaaaaaaa/bbbbbbbbbbbb", b"x")]);
        let msg = inspect(&long, &small).unwrap_err().to_string();
        assert!(msg.contains("longer than 20 bytes"), "{msg}");

        let component = vec![b'c'; 256];
        let msg = rejected(&[E::LongFile(component, b"x")]);
        assert!(msg.contains("longer than 255 bytes"), "{msg}");

        let big = vec![0u8; 200 * 1024];
        let bomb = targz(&[E::File(b"zeros", &big)]);
        assert!(bomb.len() < 2 * 1024, "zeros compress well: {}", bomb.len());
        let err = inspect(&bomb, &small).unwrap_err();
        assert_eq!(err, TarballError::TooLarge { limit: 64 * 1024 });
        assert_eq!(err.to_string(), "the tarball unpacks to more than 64 KiB");
    }

    #[test]
    fn a_bomb_is_stopped_even_when_headers_under_declare_nothing() {
        // Many small files: each header is honest, the total is what trips the cap.
        let data = vec![7u8; 1000];
        let names: Vec<String> = (0..100).map(|i| format!("f{i}")).collect();
        let entries: Vec<E<'_>> = names.iter().map(|n| E::File(n.as_bytes(), &data)).collect();
        let limits = TarballLimits {
            max_unpacked_bytes: 50_000,
            ..TarballLimits::default()
        };
        let err = inspect(&targz(&entries), &limits).unwrap_err();
        assert_eq!(err, TarballError::TooLarge { limit: 50_000 });
    }

    #[test]
    fn data_after_the_tar_end_marker_counts_too() {
        let mut tar = tar_bytes(&[E::File(b"a", b"1")]);
        tar.extend(std::iter::repeat_n(0u8, 300 * 1024));
        let limits = TarballLimits {
            max_unpacked_bytes: 100 * 1024,
            ..TarballLimits::default()
        };
        let err = inspect(&gz(&tar), &limits).unwrap_err();
        assert_eq!(err, TarballError::TooLarge { limit: 100 * 1024 });
    }

    #[test]
    fn broken_uploads_are_rejected_clearly() {
        let good = targz(&[E::File(b"app.py", &[b'x'; 5000]), E::File(b"b", b"y")]);
        let truncated = &good[..good.len() / 2];
        assert!(matches!(
            inspect_default(truncated),
            Err(TarballError::Corrupt { .. })
        ));
        let no_trailer = &good[..good.len() - 4];
        assert!(matches!(
            inspect_default(no_trailer),
            Err(TarballError::Corrupt { .. })
        ));
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        assert!(matches!(
            inspect_default(&flipped),
            Err(TarballError::Corrupt { .. })
        ));

        assert_eq!(inspect_default(b""), Err(TarballError::NotGzip));
        assert_eq!(
            inspect_default(b"PK\x03\x04 a zip"),
            Err(TarballError::NotGzip)
        );
        let plain_tar = tar_bytes(&[E::File(b"a", b"1")]);
        assert_eq!(inspect_default(&plain_tar), Err(TarballError::NotGzip));
        let random: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert!(inspect_default(&random).is_err());
        let mut random_gz = vec![0x1f, 0x8b];
        random_gz.extend(&random);
        assert!(matches!(
            inspect_default(&random_gz),
            Err(TarballError::Corrupt { .. })
        ));
        // Valid gzip, but not a tar inside.
        let not_tar = gz(&[b'x'; 2048]);
        assert!(matches!(
            inspect_default(&not_tar),
            Err(TarballError::Corrupt { .. })
        ));
        let msg = inspect_default(truncated).unwrap_err().to_string();
        assert!(
            msg.starts_with("the tarball is corrupt or truncated"),
            "{msg}"
        );
    }

    #[test]
    fn a_tarball_without_files_is_rejected() {
        assert_eq!(inspect_default(&targz(&[])), Err(TarballError::Empty));
        assert_eq!(
            inspect_default(&targz(&[E::Dir(b"./"), E::Dir(b"a/")])),
            Err(TarballError::Empty)
        );
        assert_eq!(TarballError::Empty.to_string(), "the tarball has no files");
    }

    #[test]
    fn oversized_start_files_are_rejected() {
        let big = vec![b'#'; MAX_START_FILE_BYTES + 1];
        let msg = rejected(&[E::File(b"Procfile", &big)]);
        assert!(
            msg.contains("`Procfile`") && msg.contains("64 KiB"),
            "{msg}"
        );
        // The same size anywhere else is fine.
        inspect_default(&targz(&[E::File(b"data/Procfile", &big)])).unwrap();
    }

    #[test]
    fn messages_escape_and_truncate_paths() {
        let msg = rejected(&[E::File(b"../evil\nname\x1b[31m", b"x")]);
        assert!(msg.contains("evil\\nname\\u{1b}[31m"), "{msg}");
        assert!(!msg.contains('\n') && !msg.contains('\x1b'), "{msg}");
        let long = [b"../".as_slice(), &[b'a'; 90]].concat();
        let msg = rejected(&[E::File(&long, b"x")]);
        assert!(msg.contains('…') && msg.len() < 200, "{msg}");
    }

    #[test]
    fn safe_relative_path_normalises_or_rejects() {
        let ok: [(&[u8], &str); 6] = [
            (b"a/b", "a/b"),
            (b"./a/b", "a/b"),
            (b"a//b/", "a/b"),
            (b"./", ""),
            (b".", ""),
            (b"a\\..\\b", "a\\..\\b"),
        ];
        for (raw, want) in ok {
            assert_eq!(
                safe_relative_path(raw).unwrap(),
                PathBuf::from(want),
                "{raw:?}"
            );
        }
        for raw in [
            &b""[..],
            b"/",
            b"/a",
            b"..",
            b"a/../b",
            b"a/\xc3",
            b"a\0b",
            &[b'x'; 256],
        ] {
            assert!(safe_relative_path(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn link_targets_are_judged_from_the_links_directory() {
        let inside = [
            ("l", "x"),
            ("l", "./x/y"),
            ("l", "."),
            ("a/l", ".."),
            ("a/l", "../b/c"),
            ("a/b/l", "../../c"),
            ("a/b/l", "./../x"),
        ];
        for (p, t) in inside {
            assert!(
                link_target_is_inside(Path::new(p), Path::new(t)),
                "{p} -> {t}"
            );
        }
        let outside = [
            ("l", ".."),
            ("l", "../x"),
            ("a/l", "../.."),
            ("a/l", "/a"),
            ("a/l", "x/../.."),
            ("a/l", "x/.."),
            ("l", ""),
            ("../l", "x"),
            ("/l", "x"),
        ];
        for (p, t) in outside {
            assert!(
                !link_target_is_inside(Path::new(p), Path::new(t)),
                "{p} -> {t}"
            );
        }
    }

    fn info(procfile: Option<&str>, dockerfile: Option<&str>) -> TarballInfo {
        TarballInfo {
            digest: String::new(),
            size: 0,
            entries: 0,
            unpacked_bytes: 0,
            procfile: procfile.map(str::to_owned),
            dockerfile: dockerfile.map(str::to_owned),
        }
    }

    fn start(
        manifest: Option<&str>,
        procfile: Option<&str>,
        dockerfile: Option<&str>,
    ) -> Option<(String, String, StartSource)> {
        resolve_start(manifest, &info(procfile, dockerfile))
            .map(|s| (s.command, s.workdir, s.source))
    }

    fn docker(text: &str) -> Option<(String, String)> {
        dockerfile_command(text)
    }

    #[test]
    fn a_procfile_release_line_is_not_a_process() {
        let text = "release: python migrate.py\nworker: python w.py\n";
        assert_eq!(procfile_command(text).as_deref(), Some("python w.py"));
        assert_eq!(procfile_release(text).as_deref(), Some("python migrate.py"));
        assert_eq!(procfile_release("web: x\n"), None);
        assert_eq!(procfile_command("release: x\n"), None);
    }

    #[test]
    fn start_sources_are_tried_in_order() {
        let proc = Some("web: gunicorn app\n");
        let dock = Some("FROM x\nWORKDIR /srv\nCMD [\"node\", \"s.js\"]\n");
        assert_eq!(
            start(Some("  python3 app.py  "), proc, dock),
            Some(("python3 app.py".into(), "".into(), StartSource::Manifest))
        );
        assert_eq!(
            start(Some("   "), proc, dock),
            Some(("gunicorn app".into(), "".into(), StartSource::Procfile))
        );
        assert_eq!(
            start(None, Some("# nothing\n"), dock),
            Some(("node s.js".into(), "srv".into(), StartSource::Dockerfile))
        );
        assert_eq!(start(None, None, Some("FROM x\nRUN make\n")), None);
        assert_eq!(start(None, None, None), None);
        assert_eq!(StartSource::Procfile.as_str(), "procfile");
    }

    #[test]
    fn procfile_prefers_web_then_a_single_entry() {
        assert_eq!(
            procfile_command("worker: w\nweb: bundle exec puma -p $PORT\n").as_deref(),
            Some("bundle exec puma -p $PORT")
        );
        assert_eq!(
            procfile_command("# comment\n\n  worker:  python w.py  \r\n").as_deref(),
            Some("python w.py")
        );
        assert_eq!(procfile_command("worker: a\nclock: b\n"), None);
        assert_eq!(
            procfile_command("web: first\nweb: second\n").as_deref(),
            Some("first")
        );
        assert_eq!(procfile_command("web:\nnot a line\nbad name: x\n"), None);
        assert_eq!(
            procfile_command("web: node -e 'a:b'\n").as_deref(),
            Some("node -e 'a:b'")
        );
        assert_eq!(procfile_command(""), None);
    }

    #[test]
    fn dockerfile_exec_and_shell_forms() {
        assert_eq!(
            docker("FROM x\nCMD [\"python3\", \"-m\", \"http.server\"]\n"),
            Some(("python3 -m http.server".into(), "".into()))
        );
        assert_eq!(
            docker("FROM x\nCMD python3 app.py --port $PORT\n"),
            Some(("python3 app.py --port $PORT".into(), "".into()))
        );
        assert_eq!(
            docker("FROM x\nCMD [\"echo\", \"it's a $HOME test\", \"\"]\n"),
            Some((r#"echo 'it'\''s a $HOME test' ''"#.into(), "".into()))
        );
        // Not valid JSON: Docker treats it as shell form.
        assert_eq!(
            docker("FROM x\nCMD [python3, app.py]\n"),
            Some(("[python3, app.py]".into(), "".into()))
        );
        assert_eq!(docker("FROM x\nCMD []\n"), None);
        assert_eq!(docker("FROM x\nCMD\n"), None);
        assert_eq!(docker("FROM x\nRUN echo hi\n"), None);
    }

    #[test]
    fn dockerfile_entrypoint_combines_with_cmd_like_docker() {
        assert_eq!(
            docker(
                "FROM x\nENTRYPOINT [\"gunicorn\"]\nCMD [\"-b\", \"0.0.0.0:8000\", \"app:app\"]\n"
            )
            .unwrap()
            .0,
            "gunicorn -b 0.0.0.0:8000 app:app"
        );
        assert_eq!(
            docker("FROM x\nCMD [\"--flag\"]\nENTRYPOINT [\"tool\"]\n")
                .unwrap()
                .0,
            "tool --flag"
        );
        assert_eq!(
            docker("FROM x\nENTRYPOINT [\"tini\", \"--\"]\nCMD node server.js\n")
                .unwrap()
                .0,
            "tini -- /bin/sh -c 'node server.js'"
        );
        assert_eq!(
            docker("FROM x\nENTRYPOINT exec node server.js\nCMD [\"ignored\"]\n")
                .unwrap()
                .0,
            "exec node server.js"
        );
        assert_eq!(
            docker("FROM x\nENTRYPOINT [\"serve\"]\n").unwrap().0,
            "serve"
        );
    }

    #[test]
    fn dockerfile_last_stage_counts_and_inherits_from_named_stages() {
        let multi = "FROM node AS build\nWORKDIR /src\nCMD [\"npm\", \"run\", \"build\"]\n\nFROM nginx\nCMD [\"nginx\", \"-g\", \"daemon off;\"]\n";
        assert_eq!(
            docker(multi),
            Some(("nginx -g 'daemon off;'".into(), "".into()))
        );
        let no_cmd_in_last = "FROM a AS one\nCMD [\"one\"]\nFROM b\nRUN x\n";
        assert_eq!(docker(no_cmd_in_last), None);
        let inherit = "FROM python AS base\nWORKDIR /app\nCMD [\"python\", \"main.py\"]\nFROM base\nWORKDIR src\n";
        assert_eq!(
            docker(inherit),
            Some(("python main.py".into(), "app/src".into()))
        );
        let reset = "FROM python AS base\nCMD [\"python\", \"main.py\"]\nFROM --platform=linux/amd64 BASE as final\nENTRYPOINT [\"run\"]\n";
        assert_eq!(docker(reset).unwrap().0, "run");
    }

    #[test]
    fn dockerfile_workdir_is_relative_to_the_tarball_root() {
        let w = |t: &str| docker(&format!("FROM x\n{t}\nCMD run\n")).unwrap().1;
        assert_eq!(w("WORKDIR /app"), "app");
        assert_eq!(
            w("WORKDIR /app\nWORKDIR src\nWORKDIR ./lib/"),
            "app/src/lib"
        );
        assert_eq!(w("WORKDIR /app\nWORKDIR /srv"), "srv");
        assert_eq!(w("WORKDIR /app/../../.."), "");
        assert_eq!(w("WORKDIR a/b\nWORKDIR ../c"), "a/c");
        assert_eq!(w("WORKDIR \"/my app\""), "my app");
        assert_eq!(w("WORKDIR /"), "");
    }

    #[test]
    fn dockerfile_syntax_details() {
        let text = "# syntax=docker/dockerfile:1\n\
                    from python:3.12 as app\n\
                    # a comment\n\
                    workdir /code\n\
                    RUN apt-get update && \\\n\
                    # comment inside a continuation\n\
                    \n\
                        apt-get install -y curl\n\
                    Cmd [\"python3\", \\\n\
                         \"app.py\"]   \n";
        assert_eq!(docker(text), Some(("python3 app.py".into(), "code".into())));
        let backtick = "# escape=`\nFROM x\nCMD python3 `\n  app.py\n";
        assert_eq!(docker(backtick).unwrap().0, "python3   app.py");
        let crlf = "FROM x\r\nCMD [\"a\"]\r\n";
        assert_eq!(docker(crlf).unwrap().0, "a");
        let heredoc = "FROM x\nRUN <<EOF\nCMD [\"not\", \"this\"]\nEOF\nCOPY <<-'CONF' /etc/x\nCMD nope\nCONF\nCMD [\"yes\"]\n";
        assert_eq!(docker(heredoc).unwrap().0, "yes");
        let no_from = "CMD [\"still\"]\n";
        assert_eq!(docker(no_from).unwrap().0, "still");
    }

    /// Splits the subset of POSIX shell syntax `shell_join` produces: bare words and
    /// single-quoted strings, with `\'` between them.
    fn sh_split(s: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut cur = String::new();
        let mut in_word = false;
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                ' ' => {
                    if in_word {
                        words.push(std::mem::take(&mut cur));
                        in_word = false;
                    }
                }
                '\'' => {
                    in_word = true;
                    for q in chars.by_ref() {
                        if q == '\'' {
                            break;
                        }
                        cur.push(q);
                    }
                }
                '\\' => {
                    in_word = true;
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
                other => {
                    in_word = true;
                    cur.push(other);
                }
            }
        }
        if in_word {
            words.push(cur);
        }
        words
    }

    #[test]
    fn shell_join_runs_the_same_argv_under_sh() {
        let argv: Vec<String> = [
            "printf", "%s|", "a b", "it's", "", "$HOME", "`x`", "*", "a\nb", "-n",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let Ok(out) = std::process::Command::new("sh")
            .arg("-c")
            .arg(shell_join(&argv))
            .output()
        else {
            return; // No `sh` on this machine; the pure round-trip property below still runs.
        };
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "a b|it's||$HOME|`x`|*|a\nb|-n|"
        );
    }

    proptest! {
        #[test]
        fn shell_join_round_trips(argv in proptest::collection::vec(".{0,12}", 0..6)) {
            prop_assert_eq!(sh_split(&shell_join(&argv)), argv);
        }

        #[test]
        fn inspect_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = inspect_default(&bytes);
            let mut with_magic = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
            with_magic.extend(&bytes);
            let _ = inspect_default(&with_magic);
        }

        #[test]
        fn inspect_never_panics_on_corrupted_tars(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
        ) {
            let mut tar = tar_bytes(&[
                E::Dir(b"./"),
                E::File(b"Procfile", b"web: x"),
                E::Symlink(b"l", b"Procfile"),
                E::LongFile(b"long/name".to_vec(), b"data"),
                E::PaxFile(pax(&[("path", b"p")]), b"q", b"z"),
            ]);
            for (at, byte) in edits {
                let i = at.index(tar.len());
                tar[i] = byte;
            }
            let limits = TarballLimits { max_unpacked_bytes: 1 << 20, ..TarballLimits::default() };
            let _ = inspect(&gz(&tar), &limits);
        }

        #[test]
        fn safe_paths_never_escape(raw in proptest::collection::vec(prop_oneof![Just(b'/'), Just(b'.'), Just(b'a'), any::<u8>()], 0..40)) {
            if let Ok(p) = safe_relative_path(&raw) {
                prop_assert!(p.components().all(|c| matches!(c, Component::Normal(_))));
            }
        }

        #[test]
        fn accepted_link_targets_resolve_inside(
            entry in proptest::collection::vec(prop_oneof![Just("a"), Just("b")], 1..4),
            target in proptest::collection::vec(prop_oneof![Just(".."), Just("."), Just("x"), Just("y")], 0..6),
        ) {
            let entry = entry.join("/");
            let target = target.join("/");
            if link_target_is_inside(Path::new(&entry), Path::new(&target)) {
                // Lexically from the link's directory, never above the root...
                let mut depth = entry.matches('/').count() as i64;
                let mut seen_name = false;
                for part in target.split('/') {
                    match part {
                        ".." => {
                            depth -= 1;
                            prop_assert!(!seen_name, "`..` after a name");
                        }
                        "." | "" => {}
                        _ => { depth += 1; seen_name = true; }
                    }
                    prop_assert!(depth >= 0);
                }
            }
        }
    }
}
