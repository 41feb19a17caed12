//! Writing certificate and key files: private directories, keys at 0600, no silent overwrite.
//!
//! Two ways to write. [`write_new`] creates the file and fails if it exists (the default of
//! `gateway certs`). [`write_replace`] writes a temporary file beside the target (0600 for
//! keys) and renames it over, so a gateway reloading on file change never reads half a file.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::CertError;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io { path: path.to_path_buf(), source }
}

fn mode(private: bool) -> u32 {
    if private {
        0o600
    } else {
        0o644
    }
}

/// Create `dir` (and missing parents) with mode 0700; existing dirs are left alone.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), CertError> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_err(dir))
}

/// Create the parent directory of `path` (0700) if it is missing.
pub(crate) fn create_parent(path: &Path) -> Result<(), CertError> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => create_private_dir(parent),
        None => Ok(()),
    }
}

/// Refuse (naming the first one) if any of `paths` exists, unless `force`.
///
/// Called before anything is written, so a refusal leaves every file as it was.
pub(crate) fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), CertError> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.symlink_metadata().is_ok()) {
        Some(p) => Err(CertError::Exists { path: p.to_path_buf() }),
        None => Ok(()),
    }
}

/// Write `contents` to `path`: replacing it atomically if `force`, else only if it does not exist.
pub(crate) fn write(path: &Path, contents: &[u8], private: bool, force: bool) -> Result<(), CertError> {
    if force {
        write_replace(path, contents, private)
    } else {
        write_new(path, contents, private)
    }
}

/// Create `path` with `contents` (mode 0600 if `private`); fails if it exists.
pub(crate) fn write_new(path: &Path, contents: &[u8], private: bool) -> Result<(), CertError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode(private));
    }
    let mut file = options.open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => CertError::Exists { path: path.to_path_buf() },
        _ => CertError::Io { path: path.to_path_buf(), source },
    })?;
    let written = file.write_all(contents).and_then(|()| file.sync_all()).map_err(io_err(path));
    if written.is_err() {
        // Never leave half a key or certificate behind.
        let _ = std::fs::remove_file(path);
    }
    written
}

/// Atomically write `contents` to `path` (temp file + rename); `private` => mode 0600.
///
/// Atomic so a gateway reloading on file change never reads a half-written file.
pub(crate) fn write_replace(path: &Path, contents: &[u8], private: bool) -> Result<(), CertError> {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));

    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode(private));
    }
    let result = (|| {
        let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
        #[cfg(unix)]
        {
            // `mode` only applies on creation; enforce it if a stale temp file existed.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode(private))).map_err(io_err(&tmp))?;
        }
        file.write_all(contents).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file_mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_files_refuse_to_overwrite_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("a.key");
        write(&key, b"one", true, false).unwrap();
        assert_eq!(file_mode(&key), 0o600);
        let err = write(&key, b"two", true, false).unwrap_err();
        assert!(matches!(&err, CertError::Exists { path } if path == &key), "{err}");
        assert!(err.to_string().contains("a.key") && err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read(&key).unwrap(), b"one");
        assert!(refuse_existing(&[&dir.path().join("other"), &key], false).is_err());
        refuse_existing(&[&key], true).unwrap();

        // Forced: replaced, and a loosened key file comes back 0600.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        write(&key, b"two", true, true).unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), b"two");
        assert_eq!(file_mode(&key), 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }
}
