//! Packing a service's build directory into the gzipped tarball the server expects.
//!
//! - Streamed: entries go file by file through the tar writer and gzip into a temporary file,
//!   so memory stays at a few buffers whatever the directory's size; the upload then streams
//!   that file too.
//! - Ignore rules: `.stackyardignore` files (gitignore syntax, anywhere in the build directory,
//!   each applying below its own directory) decide what is left out; an entry named `.git`
//!   (directory or file, at any depth) is always left out. `.gitignore` is *not* read: build
//!   output that git ignores is often exactly what must be deployed.
//! - Paths: every entry is stored relative to the build directory; never absolute, never `..`.
//! - Symlinks are never followed. A link is stored as a link when its target stays inside the
//!   directory in the plain form the server accepts (relative, `..` only at the start, no
//!   higher than the link's directory; see `stackyard_core::tarball::link_target_is_inside`),
//!   and does not resolve outside through another link; an absolute target inside the
//!   directory is rewritten to the equivalent relative one. Any other link is skipped with a
//!   warning. Devices, FIFOs and sockets are skipped with a warning.
//! - Ownership is not stored (uid/gid 0, no names); mode bits and modification times are.

use crate::error::{CliError, Result};
use flate2::Compression;
use flate2::write::GzEncoder;
use stackyard_core::tarball::{TarballLimits, link_target_is_inside};
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use tar::{EntryType, Header};

/// The per-directory ignore file.
pub const IGNORE_FILE: &str = ".stackyardignore";

/// A packed build directory.
#[derive(Debug)]
pub struct Packed {
    /// The `.tar.gz`, deleted when this is dropped.
    pub file: tempfile::NamedTempFile,
    /// Compressed size in bytes.
    pub len: u64,
    /// Entries written: directories, files and links.
    pub entries: u64,
    pub files: u64,
    /// Sum of the regular files' sizes.
    pub content_bytes: u64,
    /// One sentence per entry left out for safety (links out, special files, bad names).
    pub warnings: Vec<String>,
}

impl Packed {
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

/// What to do with a symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkDecision {
    /// Store it with this (relative) target.
    Keep(PathBuf),
    /// Leave it out, for this reason.
    Skip(&'static str),
}

/// Packs `dir` into a new temporary `.tar.gz`. Blocking: call it off the async runtime.
pub fn pack_dir(dir: &Path) -> Result<Packed> {
    pack_dir_with(dir, &TarballLimits::default())
}

/// [`pack_dir`] with the server's limits as given (tests use small ones). Going over a limit
/// fails here, with a hint, instead of after an upload.
pub fn pack_dir_with(dir: &Path, limits: &TarballLimits) -> Result<Packed> {
    let root = fs::canonicalize(dir).map_err(|e| {
        CliError::other(format!(
            "cannot open the build directory {}: {e}",
            dir.display()
        ))
    })?;
    if !root.is_dir() {
        return Err(CliError::other(format!(
            "the build directory {} is not a directory",
            dir.display()
        )));
    }
    // The form the user wrote, made absolute without resolving links: absolute link targets
    // are usually spelled this way.
    let given_root = std::path::absolute(dir).unwrap_or_else(|_| root.clone());
    let mut tmp = tempfile::Builder::new()
        .prefix("stackyard-pack-")
        .suffix(".tar.gz")
        .tempfile()
        .map_err(|e| CliError::other(format!("cannot create a temporary file: {e}")))?;
    let mut stats = Stats::default();
    let io_err = |what: &str, e: io::Error| {
        CliError::other(format!("cannot pack {}: {what}: {e}", dir.display()))
    };
    {
        let writer = BufWriter::with_capacity(64 * 1024, tmp.as_file_mut());
        let gz = GzEncoder::new(writer, Compression::default());
        let mut tar = tar::Builder::new(gz);
        walk(&root, &given_root, &mut tar, &mut stats, limits)?;
        let gz = tar
            .into_inner()
            .map_err(|e| io_err("finishing the archive", e))?;
        let mut writer = gz.finish().map_err(|e| io_err("compressing", e))?;
        writer.flush().map_err(|e| io_err("writing", e))?;
    }
    tmp.as_file().sync_all().map_err(|e| io_err("writing", e))?;
    let len = tmp
        .as_file()
        .metadata()
        .map_err(|e| io_err("writing", e))?
        .len();
    if stats.files == 0 {
        return Err(CliError::other(format!(
            "the build directory {} has no files to deploy",
            dir.display()
        ))
        .with_hint(format!(
            "check its {IGNORE_FILE}, or the service's `build` path"
        )));
    }
    Ok(Packed {
        file: tmp,
        len,
        entries: stats.entries,
        files: stats.files,
        content_bytes: stats.content_bytes,
        warnings: stats.warnings,
    })
}

#[derive(Debug, Default)]
struct Stats {
    entries: u64,
    files: u64,
    content_bytes: u64,
    /// Decompressed tar bytes so far (headers, data, padding), as the server counts them.
    tar_bytes: u64,
    warnings: Vec<String>,
}

fn walk<W: Write>(
    root: &Path,
    given_root: &Path,
    tar: &mut tar::Builder<W>,
    stats: &mut Stats,
    limits: &TarballLimits,
) -> Result<()> {
    let mut builder = ignore::WalkBuilder::new(root);
    builder
        .standard_filters(false)
        .follow_links(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        // Sorted, so the same directory always gives the same archive.
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(|e| e.file_name() != ".git");
    for entry in builder.build() {
        let entry = entry.map_err(|e| {
            CliError::other(format!("cannot read the build directory: {e}")).with_hint(format!(
                "check permissions, and the syntax of any {IGNORE_FILE}"
            ))
        })?;
        if entry.depth() == 0 {
            continue;
        }
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let shown = rel.display().to_string();
        if rel.to_str().is_none() {
            stats
                .warnings
                .push(format!("skipped {shown}: its name is not UTF-8"));
            continue;
        }
        let Some(ft) = entry.file_type() else {
            continue;
        };
        let meta = fs::symlink_metadata(path)
            .map_err(|e| CliError::other(format!("cannot read {shown}: {e}")))?;
        if ft.is_dir() {
            let mut h = base_header(&meta, EntryType::Directory);
            h.set_size(0);
            append(tar, stats, limits, &mut h, rel, io::empty(), 0)?;
        } else if ft.is_file() {
            let file = fs::File::open(path)
                .map_err(|e| CliError::other(format!("cannot read {shown}: {e}")))?;
            // Size from the open file: the one we will read.
            let fmeta = file
                .metadata()
                .map_err(|e| CliError::other(format!("cannot read {shown}: {e}")))?;
            if !fmeta.is_file() {
                stats
                    .warnings
                    .push(format!("skipped {shown}: it changed while being packed"));
                continue;
            }
            let size = fmeta.len();
            let mut h = base_header(&fmeta, EntryType::Regular);
            h.set_size(size);
            let exact = Exact {
                inner: file.take(size),
                remaining: size,
            };
            append(tar, stats, limits, &mut h, rel, exact, size)?;
            stats.files += 1;
            stats.content_bytes += size;
        } else if ft.is_symlink() {
            let target = fs::read_link(path)
                .map_err(|e| CliError::other(format!("cannot read the link {shown}: {e}")))?;
            match decide_link(root, given_root, rel, &target) {
                LinkDecision::Keep(target) => {
                    let mut h = base_header(&meta, EntryType::Symlink);
                    h.set_size(0);
                    count(stats, limits, 512 * 3)?;
                    tar.append_link(&mut h, rel, &target)
                        .map_err(|e| CliError::other(format!("cannot pack {shown}: {e}")))?;
                }
                LinkDecision::Skip(why) => {
                    stats
                        .warnings
                        .push(format!("skipped the link {shown}: {why}"));
                }
            }
        } else {
            stats.warnings.push(format!(
                "skipped {shown}: not a regular file, directory or symlink"
            ));
        }
    }
    Ok(())
}

fn base_header(meta: &fs::Metadata, kind: EntryType) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode_of(meta, kind));
    h.set_uid(0);
    h.set_gid(0);
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    h.set_mtime(mtime);
    h
}

#[cfg(unix)]
fn mode_of(meta: &fs::Metadata, _kind: EntryType) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    // Permission bits only: setuid/setgid/sticky have no business in a deploy.
    meta.permissions().mode() & 0o777
}

#[cfg(not(unix))]
fn mode_of(_meta: &fs::Metadata, kind: EntryType) -> u32 {
    if kind == EntryType::Directory {
        0o755
    } else {
        0o644
    }
}

/// Adds one entry and keeps the counts the server's limits apply to.
#[allow(clippy::too_many_arguments)]
fn append<W: Write, R: Read>(
    tar: &mut tar::Builder<W>,
    stats: &mut Stats,
    limits: &TarballLimits,
    header: &mut Header,
    rel: &Path,
    data: R,
    size: u64,
) -> Result<()> {
    // Header, a possible GNU long-name header pair, the data rounded up to blocks.
    count(stats, limits, 512 * 3 + size.div_ceil(512) * 512)?;
    tar.append_data(header, rel, data)
        .map_err(|e| CliError::other(format!("cannot pack {}: {e}", rel.display())))
}

fn count(stats: &mut Stats, limits: &TarballLimits, bytes: u64) -> Result<()> {
    stats.entries += 1;
    stats.tar_bytes = stats.tar_bytes.saturating_add(bytes);
    if stats.entries > limits.max_entries {
        return Err(CliError::other(format!(
            "the build directory has more than {} entries, the server's limit",
            limits.max_entries
        ))
        .with_hint(format!(
            "leave out what the service does not need at run time (dependencies it can install, caches) with a {IGNORE_FILE}"
        )));
    }
    if stats.tar_bytes > limits.max_unpacked_bytes {
        return Err(CliError::other(format!(
            "the build directory holds more than {} MiB, the server's limit",
            limits.max_unpacked_bytes / (1024 * 1024)
        ))
        .with_hint(format!(
            "leave out large files the service does not need with a {IGNORE_FILE}"
        )));
    }
    Ok(())
}

/// Reads exactly `remaining` bytes, failing if the file ends early: a tar entry whose data is
/// shorter than its header says would corrupt every entry after it.
struct Exact<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being packed",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Decides how to store the symlink at `rel` (relative to the canonical `root`) whose target is
/// `target`, as the module doc says.
pub fn decide_link(root: &Path, given_root: &Path, rel: &Path, target: &Path) -> LinkDecision {
    const OUTSIDE: &str = "it points outside the directory";
    let target = if target.is_absolute() {
        let Some(normal) = lexical_normal(target) else {
            return LinkDecision::Skip(OUTSIDE);
        };
        let inside = [root, given_root]
            .iter()
            .find_map(|r| normal.strip_prefix(r).ok().map(Path::to_path_buf));
        let Some(inside) = inside else {
            return LinkDecision::Skip(OUTSIDE);
        };
        // From the link's directory back up to the root, then down to the target.
        let ups = rel.components().count().saturating_sub(1);
        let mut relative = PathBuf::new();
        for _ in 0..ups {
            relative.push("..");
        }
        relative.push(inside);
        if relative.as_os_str().is_empty() {
            relative.push(".");
        }
        relative
    } else {
        target.to_path_buf()
    };
    if target.to_str().is_none() {
        return LinkDecision::Skip("its target is not UTF-8");
    }
    if !link_target_is_inside(rel, &target) {
        return LinkDecision::Skip(
            "it points outside the directory (or uses `..` after a name, which the server refuses)",
        );
    }
    // Lexically inside, but a directory on the way may itself be a link out.
    if let Ok(real) = fs::canonicalize(root.join(rel))
        && !real.starts_with(root)
    {
        return LinkDecision::Skip("it resolves outside the directory through another link");
    }
    LinkDecision::Keep(target)
}

/// `path` with `.` dropped and `..` applied lexically; `None` if `..` would climb above `/`.
fn lexical_normal(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Entry path → (kind, link target or size).
    fn entries(p: &Packed) -> BTreeMap<String, (EntryType, String)> {
        let f = fs::File::open(p.path()).unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
        let mut out = BTreeMap::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_owned();
            let kind = e.header().entry_type();
            let detail = match kind {
                EntryType::Symlink => e.link_name().unwrap().unwrap().display().to_string(),
                _ => io::copy(&mut e, &mut io::sink()).unwrap().to_string(),
            };
            out.insert(path, (kind, detail));
        }
        out
    }

    fn write(root: &Path, rel: &str, body: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }

    /// What the server would say about the archive.
    fn server_accepts(p: &Packed) {
        let bytes = fs::read(p.path()).unwrap();
        stackyard_core::tarball::inspect(&bytes, &TarballLimits::default())
            .expect("the server accepts the archive");
    }

    #[test]
    fn stackyardignore_rules_apply_like_gitignore_and_git_is_always_skipped() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(r, "Procfile", "web: ./run\n");
        write(r, "app.log", "x");
        write(r, "keep.log", "x");
        write(r, "build/out.bin", "x");
        write(r, "src/main.py", "print(1)");
        write(r, "src/cache/tmp.dat", "x");
        write(r, "src/notes.txt", "x");
        write(r, ".git/HEAD", "ref: x");
        write(r, "vendor/lib/.git", "gitdir: ../x");
        write(r, "vendor/lib/code.py", "x");
        write(r, ".env.example", "A=1");
        write(r, ".gitignore", "src/\n");
        write(r, IGNORE_FILE, "*.log\n!keep.log\nbuild/\n");
        write(r, "src/.stackyardignore", "cache/\n/notes.txt\n");
        let p = pack_dir(r).unwrap();
        let got: Vec<String> = entries(&p).into_keys().collect();
        assert_eq!(
            got,
            vec![
                ".env.example",
                ".gitignore",
                ".stackyardignore",
                "Procfile",
                "keep.log",
                "src",
                "src/.stackyardignore",
                "src/main.py",
                "vendor",
                "vendor/lib",
                "vendor/lib/code.py",
            ]
        );
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        server_accepts(&p);
    }

    #[test]
    fn archive_paths_are_relative_and_modes_survive() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(r, "Procfile", "web: ./run\n");
        write(r, "bin/run", "#!/bin/sh\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(r.join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let deep = format!("{}/f.txt", ["d"; 60].join("/"));
        write(r, &deep, "x");
        // Packed through a path with `..` in it: still only relative entries.
        let via = r.join("bin").join("..");
        let p = pack_dir(&via).unwrap();
        let f = fs::File::open(p.path()).unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
        let mut seen_run = false;
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let path = e.path().unwrap().into_owned();
            assert!(path.is_relative(), "{path:?}");
            assert!(
                path.components().all(|c| matches!(c, Component::Normal(_))),
                "{path:?}"
            );
            assert_eq!(e.header().uid().unwrap(), 0);
            if path == Path::new("bin/run") {
                seen_run = true;
                #[cfg(unix)]
                assert_eq!(e.header().mode().unwrap() & 0o777, 0o755);
            }
        }
        assert!(seen_run);
        assert!(entries(&p).contains_key(&deep), "long paths are kept");
        server_accepts(&p);
    }

    #[cfg(unix)]
    #[test]
    fn links_out_are_skipped_with_a_warning_and_links_in_are_kept() {
        use std::os::unix::fs::symlink;
        let outer = tempfile::tempdir().unwrap();
        let r = outer.path().join("svc");
        fs::create_dir(&r).unwrap();
        write(outer.path(), "secret.txt", "outside");
        write(&r, "Procfile", "web: ./run\n");
        write(&r, "static/a.css", "x");
        symlink("Procfile", r.join("proc-link")).unwrap();
        symlink("../Procfile", r.join("static/up-link")).unwrap();
        symlink(r.join("static/a.css"), r.join("abs-inside")).unwrap();
        symlink("../secret.txt", r.join("escape")).unwrap();
        symlink("/etc/passwd", r.join("abs-outside")).unwrap();
        symlink("static/../../secret.txt", r.join("sneaky")).unwrap();
        symlink(outer.path(), r.join("dir-out")).unwrap();
        // A link inside that goes through `dir-out`: lexically fine, really outside.
        symlink("dir-out/secret.txt", r.join("through")).unwrap();
        let p = pack_dir(&r).unwrap();
        let got = entries(&p);
        assert_eq!(got["proc-link"], (EntryType::Symlink, "Procfile".into()));
        assert_eq!(
            got["static/up-link"],
            (EntryType::Symlink, "../Procfile".into())
        );
        assert_eq!(
            got["abs-inside"],
            (EntryType::Symlink, "static/a.css".into())
        );
        for skipped in ["escape", "abs-outside", "sneaky", "dir-out", "through"] {
            assert!(!got.contains_key(skipped), "{skipped} was packed");
            assert!(
                p.warnings.iter().any(|w| w.contains(skipped)),
                "no warning for {skipped}: {:?}",
                p.warnings
            );
        }
        // Nothing from outside was read: the secret's bytes are not in the archive.
        assert!(!got.keys().any(|k| k.contains("secret")));
        server_accepts(&p);
    }

    #[cfg(unix)]
    #[test]
    fn special_files_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "Procfile", "web: ./run\n");
        let fifo = d.path().join("pipe");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return;
        }
        let p = pack_dir(d.path()).unwrap();
        assert!(!entries(&p).contains_key("pipe"));
        assert!(p.warnings.iter().any(|w| w.contains("pipe")));
    }

    #[test]
    fn empty_or_fully_ignored_directories_are_refused() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), IGNORE_FILE, "*\n");
        write(d.path(), "a.txt", "x");
        let e = pack_dir(d.path()).unwrap_err();
        assert!(e.message.contains("no files"), "{}", e.message);
    }

    #[test]
    fn server_limits_are_checked_before_upload() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..5 {
            write(d.path(), &format!("f{i}"), "x");
        }
        let limits = TarballLimits {
            max_entries: 3,
            ..TarballLimits::default()
        };
        let e = pack_dir_with(d.path(), &limits).unwrap_err();
        assert!(e.message.contains("more than 3 entries"), "{}", e.message);
        assert!(e.hint.unwrap().contains(IGNORE_FILE));
    }

    #[test]
    fn absolute_targets_inside_are_made_relative() {
        let root = Path::new("/srv/app");
        assert_eq!(
            decide_link(root, root, Path::new("a/b/link"), Path::new("/srv/app/x/y")),
            LinkDecision::Keep(PathBuf::from("../../x/y"))
        );
        assert_eq!(
            decide_link(root, root, Path::new("link"), Path::new("/srv/app")),
            LinkDecision::Keep(PathBuf::from("."))
        );
        assert!(matches!(
            decide_link(
                root,
                root,
                Path::new("link"),
                Path::new("/srv/app/../other")
            ),
            LinkDecision::Skip(_)
        ));
        assert!(matches!(
            decide_link(root, root, Path::new("link"), Path::new("/srv/application")),
            LinkDecision::Skip(_)
        ));
    }

    /// Peak resident memory of this process in KiB (`VmHWM`).
    fn peak_rss_kib() -> Option<u64> {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    fn rss_kib() -> Option<u64> {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    #[test]
    fn a_100_mib_directory_packs_in_bounded_memory() {
        const SIZE: u64 = 100 * 1024 * 1024;
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "Procfile", "web: ./run\n");
        // Sparse: 100 MiB to read and compress, almost nothing on disk.
        let big = fs::File::create(d.path().join("big.bin")).unwrap();
        big.set_len(SIZE).unwrap();
        drop(big);
        let Some(before) = rss_kib() else {
            return; // no /proc: nothing to measure with
        };
        // Reset the peak to the current RSS (Linux ≥ 4.0), so the peak below is this test's.
        let reset = fs::write("/proc/self/clear_refs", "5").is_ok();
        let p = pack_dir(d.path()).unwrap();
        let peak = peak_rss_kib().unwrap();
        let baseline = if reset { before } else { 0 };
        let growth_mib = peak.saturating_sub(baseline) / 1024;
        assert!(
            growth_mib < 40,
            "packing 100 MiB raised peak RSS by {growth_mib} MiB (reset={reset})"
        );
        assert_eq!(p.content_bytes, SIZE + "web: ./run\n".len() as u64);
        eprintln!("peak RSS growth while packing 100 MiB: {growth_mib} MiB (reset={reset})");
        assert!(p.len < SIZE / 50, "zeros compress: {} bytes", p.len);
        assert_eq!(entries(&p)["big.bin"].1, SIZE.to_string());
    }
}
