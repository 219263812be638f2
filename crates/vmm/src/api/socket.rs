//! The API's Unix socket file: created with mode 0600 with no moment at which it is wider,
//! refused when another process is listening on the path, removed when dropped.
//!
//! ```text
//!  bind(path) ─ live listener at path? ─ yes ─► Error::InUse
//!      │                                └ stale socket ─► removed
//!      ├─ mkdir <dir>/.<name>.<pid>.api (0700: nobody else can reach what is inside)
//!      ├─ bind the socket inside, chmod 0600
//!      ├─ link(2) it to path (never replaces: EEXIST if something appeared meanwhile)
//!      └─ remove the private name and directory ─► ApiSocket (Drop: unlink path if still ours)
//! ```

use std::fs::{DirBuilder, Permissions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why the socket cannot be created; each message is one sentence with the path.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process listens there.
    #[error("The API socket {} is in use by a running process", .0.display())]
    InUse(PathBuf),
    /// Something that is not a socket is there.
    #[error("The API socket path {} exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    /// An I/O step failed.
    #[error("Cannot create the API socket {}", .path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// The bound socket; dropping it removes the file (when it is still the one bound here).
#[derive(Debug)]
pub struct ApiSocket {
    path: PathBuf,
    identity: (u64, u64),
    listener: Option<UnixListener>,
}

impl ApiSocket {
    /// Binds `path` (see the module docs).
    pub fn bind(path: &Path) -> Result<Self, SocketError> {
        let io = |source| SocketError::Io {
            path: path.to_owned(),
            source,
        };
        remove_if_stale(path)?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| io(std::io::ErrorKind::InvalidInput.into()))?;
        let private_dir = parent.join(format!(
            ".{}.{}.api",
            name.to_string_lossy(),
            std::process::id()
        ));
        DirBuilder::new()
            .mode(0o700)
            .create(&private_dir)
            .map_err(io)?;
        let private = private_dir.join("socket");
        let bound = UnixListener::bind(&private)
            .and_then(|listener| {
                std::fs::set_permissions(&private, Permissions::from_mode(0o600))?;
                std::fs::hard_link(&private, path)?;
                Ok(listener)
            })
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => SocketError::InUse(path.to_owned()),
                _ => io(e),
            });
        let _ = std::fs::remove_file(&private);
        let _ = std::fs::remove_dir(&private_dir);
        let listener = bound?;
        let meta = std::fs::symlink_metadata(path).map_err(io)?;
        Ok(ApiSocket {
            path: path.to_owned(),
            identity: (meta.dev(), meta.ino()),
            listener: Some(listener),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listener, once (the server takes it).
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.identity)
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes a socket at `path` that nobody listens on; refuses a live one or a non-socket.
fn remove_if_stale(path: &Path) -> Result<(), SocketError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket(path.to_owned()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse(path.to_owned())),
        Err(_) => std::fs::remove_file(path).map_err(|source| SocketError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vtd-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn mode_0600_refused_while_live_replaced_when_stale_removed_on_drop() {
        let dir = temp_dir("socket");
        let path = dir.join("api.sock");
        let socket = ApiSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            UnixStream::connect(&path).is_ok(),
            "the linked name reaches the listener"
        );
        let err = ApiSocket::bind(&path).unwrap_err();
        assert!(matches!(err, SocketError::InUse(_)), "{err}");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no private directory left behind"
        );
        drop(socket);
        assert!(!path.exists());

        // A socket nobody listens on (a VMM that was killed) is replaced.
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let again = ApiSocket::bind(&path).unwrap();
        drop(again);
        assert!(!path.exists());

        std::fs::write(&path, b"x").unwrap();
        let err = ApiSocket::bind(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "The API socket path {} exists and is not a socket",
                path.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
