//! Unpacking a service tarball into its directory. The server inspects every upload before
//! storing it, but this is where bytes become files, so the rules are enforced again here, on
//! the same terms (core's `inspect`, then core's path and link rules on every entry as it is
//! written): no absolute paths, no `..`, no links pointing out, nothing written through a
//! symlink (every parent directory is checked to be a real directory, and files are created
//! with `O_EXCL`, which never follows a link), size and entry caps.

use stackyard_core::TarballLimits;
use stackyard_core::ids::escape_for_message;
use stackyard_core::tarball::{TarballError, inspect, link_target_is_inside, safe_relative_path};
use std::cell::Cell;
use std::collections::HashSet;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Why a service could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UnpackError {
    #[error("its artifact is missing from the server's data directory")]
    Missing,
    /// The tarball breaks a rule; the message names the entry.
    #[error("{0}")]
    Rejected(#[from] TarballError),
    /// The disk failed us; worth retrying.
    #[error("cannot unpack it: {0}")]
    Io(#[from] io::Error),
}

/// Unpacks the artifact at `artifact` into `dest`, which is removed first if a previous
/// attempt left it behind.
pub(crate) fn unpack_artifact(
    artifact: &Path,
    dest: &Path,
    limits: &TarballLimits,
) -> Result<(), UnpackError> {
    let bytes = match fs::read(artifact) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(UnpackError::Missing),
        Err(e) => return Err(e.into()),
    };
    inspect(&bytes, limits)?;
    extract(&bytes, dest, limits)
}

/// Writes the entries of a gzipped tar into a fresh `dest`, checking each one independently
/// of `inspect` (defence in depth: a bug in one should not be enough).
pub(crate) fn extract(
    bytes: &[u8],
    dest: &Path,
    limits: &TarballLimits,
) -> Result<(), UnpackError> {
    reset_dir(dest)?;
    let exceeded = Rc::new(Cell::new(false));
    let reader = Capped {
        inner: flate2::read::GzDecoder::new(bytes),
        count: 0,
        limit: limits.max_unpacked_bytes,
        exceeded: Rc::clone(&exceeded),
    };
    let read_error = |e: io::Error| -> UnpackError {
        if exceeded.get() {
            TarballError::TooLarge {
                limit: limits.max_unpacked_bytes,
            }
            .into()
        } else {
            TarballError::Corrupt {
                detail: e.to_string(),
            }
            .into()
        }
    };
    let mut archive = tar::Archive::new(reader);
    let mut writer = Writer {
        root: dest,
        limits,
        entries: 0,
        symlinks: HashSet::new(),
    };
    for entry in archive.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        writer.entry(&mut entry, &read_error)?;
    }
    Ok(())
}

/// Removes whatever is at `dest` (without following a symlink there) and creates it empty.
fn reset_dir(dest: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(dest)?,
        Ok(_) => fs::remove_file(dest)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    DirBuilder::new().mode(0o755).create(dest)
}

/// Counts decompressed bytes and fails the read past the cap, so a small artifact can never
/// make us inflate (or write) more than the cap.
struct Capped<R> {
    inner: R,
    count: u64,
    limit: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count = self.count.saturating_add(n as u64);
        if self.count > self.limit {
            self.exceeded.set(true);
            return Err(io::Error::other("decompressed size limit exceeded"));
        }
        Ok(n)
    }
}

struct Writer<'a> {
    root: &'a Path,
    limits: &'a TarballLimits,
    entries: u64,
    /// Symlinks this tarball created (relative paths): nothing may be written below one.
    symlinks: HashSet<PathBuf>,
}

impl Writer<'_> {
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        read_error: &impl Fn(io::Error) -> UnpackError,
    ) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            // Archive-wide metadata (`git archive` writes one); it names no file.
            return Ok(());
        }
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(TarballError::TooManyEntries {
                limit: self.limits.max_entries,
            }
            .into());
        }
        let raw = entry.path_bytes().into_owned();
        if raw.len() > self.limits.max_path_bytes {
            return Err(bad(&raw, "has a path that is too long"));
        }
        let rel = safe_relative_path(&raw)?;
        self.check_not_under_symlink(&raw, &rel)?;

        if kind.is_dir() {
            return self.make_dirs(&raw, &rel);
        }
        if rel.as_os_str().is_empty() {
            return Err(bad(&raw, "would replace the tarball's root directory"));
        }
        if let Some(parent) = rel.parent() {
            self.make_dirs(&raw, parent)?;
        }
        let target = self.root.join(&rel);
        clear_slot(&raw, &target)?;

        if kind.is_file() || kind.is_contiguous() {
            let mode = entry.header().mode().unwrap_or(0o644);
            // Keep the execute bits scripts need; drop setuid/setgid/sticky and group/other
            // write; always let ourselves read, write and so delete it.
            let mode = (mode & 0o755) | 0o600;
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&target)?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = entry.read(&mut buf).map_err(read_error)?;
                if n == 0 {
                    break;
                }
                file.write_all(&buf[..n])?;
            }
            // The create mode went through the umask; this does not.
            file.set_permissions(Permissions::from_mode(mode))?;
        } else if kind.is_symlink() {
            let link = entry
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default();
            let text = self.link_text(&raw, &link)?;
            if !link_target_is_inside(&rel, Path::new(text)) {
                return Err(bad(
                    &raw,
                    format!(
                        "is a symlink to `{}`, which points outside the tarball",
                        shown(&link)
                    ),
                ));
            }
            std::os::unix::fs::symlink(text, &target)?;
            self.symlinks.insert(rel);
        } else if kind.is_hard_link() {
            let link = entry
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default();
            self.link_text(&raw, &link)?;
            let source = safe_relative_path(&link)
                .ok()
                .filter(|p| !p.as_os_str().is_empty());
            let Some(source) = source else {
                return Err(bad(&raw, "is a hard link to something outside the tarball"));
            };
            self.check_not_under_symlink(&link, &source)?;
            let source_path = self.root.join(&source);
            // Only to a regular file we wrote: never a symlink, a directory, or a path that
            // climbs through something that is not a real directory.
            let is_file = fs::symlink_metadata(&source_path).is_ok_and(|m| m.file_type().is_file());
            if !is_file || self.has_non_dir_ancestor(&source) {
                return Err(bad(
                    &raw,
                    format!(
                        "is a hard link to `{}`, which is not a file written before it",
                        shown(&link)
                    ),
                ));
            }
            fs::hard_link(&source_path, &target)?;
        } else {
            return Err(bad(&raw, "has an entry type that is not supported"));
        }
        Ok(())
    }

    fn link_text<'l>(&self, raw: &[u8], link: &'l [u8]) -> Result<&'l str, UnpackError> {
        if link.is_empty() {
            return Err(bad(raw, "is a link with an empty target"));
        }
        if link.len() > self.limits.max_path_bytes {
            return Err(bad(raw, "is a link whose target is too long"));
        }
        let text = std::str::from_utf8(link)
            .map_err(|_| bad(raw, "is a link whose target is not UTF-8"))?;
        if text.contains('\0') {
            return Err(bad(raw, "is a link whose target contains a NUL byte"));
        }
        Ok(text)
    }

    fn check_not_under_symlink(&self, raw: &[u8], rel: &Path) -> Result<(), UnpackError> {
        if rel.ancestors().skip(1).any(|a| self.symlinks.contains(a)) {
            return Err(bad(raw, "is inside a symlink of the same tarball"));
        }
        Ok(())
    }

    /// Creates `rel` and its parents under the root, each checked to be a real directory (a
    /// symlink there is refused, not followed).
    fn make_dirs(&self, raw: &[u8], rel: &Path) -> Result<(), UnpackError> {
        let mut cur = self.root.to_path_buf();
        for part in rel.components() {
            cur.push(part);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(bad(
                        raw,
                        "is inside something that is not a directory (a file or a symlink)",
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    DirBuilder::new().mode(0o755).create(&cur)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn has_non_dir_ancestor(&self, rel: &Path) -> bool {
        rel.ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
            .any(|a| !fs::symlink_metadata(self.root.join(a)).is_ok_and(|m| m.is_dir()))
    }
}

/// Makes room for a new file or link at `target`: a file or link already there (an entry
/// repeated later in the tarball wins) is removed, never written through; a directory is
/// refused.
fn clear_slot(raw: &[u8], target: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => Err(bad(raw, "would replace a directory")),
        Ok(_) => Ok(fs::remove_file(target)?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn bad(raw: &[u8], reason: impl Into<String>) -> UnpackError {
    TarballError::BadEntry {
        path: shown(raw),
        reason: reason.into(),
    }
    .into()
}

/// An entry name for a message: lossy UTF-8, control characters escaped, truncated.
fn shown(raw: &[u8]) -> String {
    escape_for_message(&String::from_utf8_lossy(raw))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    /// One raw tar entry; names are written into the header as given, so hostile ones are
    /// possible (`tar::Builder` would refuse them).
    pub(crate) enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a [u8]),
        Exec(&'a str, &'a [u8]),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
        Fifo(&'a str),
    }

    pub(crate) fn targz(entries: &[E<'_>]) -> Vec<u8> {
        let mut tar = Vec::new();
        for e in entries {
            let mut h = tar::Header::new_old();
            let (name, kind, data, link, mode): (&str, tar::EntryType, &[u8], &str, u32) = match e {
                E::Dir(n) => (n, tar::EntryType::Directory, b"", "", 0o755),
                E::File(n, d) => (n, tar::EntryType::Regular, d, "", 0o644),
                E::Exec(n, d) => (n, tar::EntryType::Regular, d, "", 0o4777),
                E::Symlink(n, t) => (n, tar::EntryType::Symlink, b"", t, 0o777),
                E::Hardlink(n, t) => (n, tar::EntryType::Link, b"", t, 0o644),
                E::Fifo(n) => (n, tar::EntryType::Fifo, b"", "", 0o644),
            };
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_mtime(0);
            h.set_cksum();
            tar.extend_from_slice(h.as_bytes());
            tar.extend_from_slice(data);
            tar.resize(tar.len().div_ceil(512) * 512, 0);
        }
        tar.resize(tar.len() + 1024, 0);
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    fn limits() -> TarballLimits {
        TarballLimits::default()
    }

    /// Runs `extract` alone (no `inspect` first) and returns the message.
    fn refused(entries: &[E<'_>]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("svc");
        let err = extract(&targz(entries), &dest, &limits()).unwrap_err();
        assert!(matches!(err, UnpackError::Rejected(_)), "{err:?}");
        // Nothing escaped next to the destination.
        let siblings: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(siblings, vec![std::ffi::OsString::from("svc")]);
        err.to_string()
    }

    #[test]
    fn a_normal_tarball_unpacks_with_modes_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("r1").join("web");
        let bytes = targz(&[
            E::Dir("./"),
            E::File("./app.py", b"print('hi')"),
            E::Exec("bin/run", b"#!/bin/sh\n"),
            E::Symlink("bin/app", "../app.py"),
            E::Hardlink("copy.py", "app.py"),
            E::File("app.py", b"print('second wins')"),
        ]);
        // Twice: the second run replaces what the first left.
        for _ in 0..2 {
            extract(&bytes, &dest, &limits()).unwrap();
        }
        assert_eq!(
            fs::read(dest.join("app.py")).unwrap(),
            b"print('second wins')"
        );
        assert_eq!(fs::read(dest.join("copy.py")).unwrap(), b"print('hi')");
        assert_eq!(
            fs::read(dest.join("bin/app")).unwrap(),
            b"print('second wins')"
        );
        let mode = fs::metadata(dest.join("bin/run"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(
            mode, 0o755,
            "setuid and group/other write dropped, exec kept"
        );
    }

    #[test]
    fn hostile_entries_are_refused_by_the_unpacker_itself() {
        let cases: Vec<(Vec<E<'_>>, &str)> = vec![
            (vec![E::File("../evil", b"x")], "`..`"),
            (vec![E::File("a/../../evil", b"x")], "`..`"),
            (vec![E::File("/tmp/evil", b"x")], "absolute"),
            (vec![E::Symlink("l", "/etc")], "outside"),
            (vec![E::Symlink("a/l", "../../x")], "outside"),
            (
                vec![E::Symlink("l", ".."), E::File("l/evil", b"x")],
                "outside",
            ),
            (
                vec![E::Symlink("l", "."), E::File("l/x", b"x")],
                "inside a symlink",
            ),
            (
                vec![E::Hardlink("h", "../../etc/passwd")],
                "outside the tarball",
            ),
            (
                vec![E::Hardlink("h", "missing")],
                "not a file written before",
            ),
            (vec![E::Fifo("p")], "not supported"),
            (vec![E::File("./", b"x")], "root"),
            (vec![E::Dir("d"), E::File("d", b"x")], "directory"),
            (
                vec![E::File("f", b"x"), E::File("f/g", b"x")],
                "not a directory",
            ),
        ];
        for (entries, want) in cases {
            let msg = refused(&entries);
            assert!(msg.contains(want), "{msg} should mention {want}");
        }
    }

    #[test]
    fn a_symlink_planted_in_the_destination_is_not_followed() {
        // Even if something put a link where a directory goes, the unpacker refuses it rather
        // than writing through it.
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let dest = dir.path().join("svc");
        let limits = limits();
        let w = Writer {
            root: &dest,
            limits: &limits,
            entries: 0,
            symlinks: HashSet::new(),
        };
        reset_dir(&dest).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("sub")).unwrap();
        let err = w.make_dirs(b"sub/x", Path::new("sub/x")).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn caps_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("svc");
        let small = TarballLimits {
            max_unpacked_bytes: 4096,
            max_entries: 2,
            max_path_bytes: 16,
        };
        let big = vec![b'x'; 10_000];
        let err = extract(&targz(&[E::File("big", &big)]), &dest, &small).unwrap_err();
        assert!(
            matches!(err, UnpackError::Rejected(TarballError::TooLarge { .. })),
            "{err:?}"
        );
        let many = targz(&[E::File("a", b""), E::File("b", b""), E::File("c", b"")]);
        let err = extract(&many, &dest, &small).unwrap_err();
        assert!(
            matches!(
                err,
                UnpackError::Rejected(TarballError::TooManyEntries { .. })
            ),
            "{err:?}"
        );
        let err = extract(
            &targz(&[E::File("a-very-long-file-name", b"")]),
            &dest,
            &small,
        )
        .unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
    }

    #[test]
    fn a_missing_or_corrupt_artifact_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("svc");
        let missing = unpack_artifact(&dir.path().join("none.tar.gz"), &dest, &limits());
        assert!(matches!(missing, Err(UnpackError::Missing)));
        let art = dir.path().join("bad.tar.gz");
        fs::write(&art, b"not a tarball").unwrap();
        assert!(matches!(
            unpack_artifact(&art, &dest, &limits()),
            Err(UnpackError::Rejected(TarballError::NotGzip))
        ));
        // And inspect runs first: a hostile tarball never reaches the disk.
        fs::write(
            &art,
            targz(&[E::File("ok", b"x"), E::File("../evil", b"x")]),
        )
        .unwrap();
        assert!(matches!(
            unpack_artifact(&art, &dest, &limits()),
            Err(UnpackError::Rejected(TarballError::BadEntry { .. }))
        ));
        assert!(!dest.exists());
    }
}
