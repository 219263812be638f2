//! The control plane: HTTP/1.1 with JSON bodies over a Unix socket (`--api-socket`), in Cloud
//! Hypervisor's shape, and the client that `vtd-nest remote` runs.
//!
//! ```text
//!  vtd-nest remote ─ client::request ─► socket (0600, socket::ApiSocket) ─► tiny_http accept
//!                                                                            thread + pool
//!  ApiServer threads (SERVING_THREADS, each: recv ─► answer), so a remove-device waiting for
//!  the guest holds one of them and the others keep answering:
//!     routes::handle(ApiContext, method, endpoint, body)
//!     GET  vm.info, vm.counters, vm.iommu-state ─► config, Counters, iommu_state::Reporter
//!     PUT  vm.pause, vm.resume, vm.shutdown     ─► control::VmControl ─► Vm::run's wait loop
//!     PUT  vm.add-disk, vm.add-device, vm.remove-device ─► validated by config's parsers,
//!          then pci_hotplug::PciHotplug (add at a free slot / ask the guest to eject, wait
//!          at most 10 s)
//!  ─► status + JSON body ({"error": "one sentence"} for 4xx/5xx), or text/plain when asked
//! ```
//!
//! The server reads the VM's state, sends control requests and changes bus 0 through
//! `PciHotplug`: a bad request gets its 4xx and never reaches the guest.

pub mod client;
pub mod remote;
pub mod routes;
pub mod socket;
pub mod text;

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

pub use routes::ApiContext;
pub use socket::{ApiSocket, SocketError};

/// The largest request body read (the largest valid body is a few hundred bytes).
pub const MAX_BODY: u64 = 64 << 10;

/// How many requests are answered at once.
pub const SERVING_THREADS: usize = 4;

/// The API server: its threads answer requests until dropped; dropping it also removes the
/// socket file.
pub struct ApiServer {
    server: Option<Arc<tiny_http::Server>>,
    threads: Vec<JoinHandle<()>>,
    socket: ApiSocket,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
#[error("Cannot start the API server on {}: {why}", .path.display())]
pub struct StartError {
    /// The socket.
    pub path: PathBuf,
    /// What failed.
    pub why: String,
}

impl ApiServer {
    /// Serves `context` on `socket` from [`SERVING_THREADS`] threads of its own.
    pub fn start(mut socket: ApiSocket, context: ApiContext) -> Result<Self, StartError> {
        let path = socket.path().to_owned();
        let fail = |why: String| StartError {
            path: path.clone(),
            why,
        };
        let listener = socket
            .take_listener()
            .ok_or_else(|| fail("the socket is already served".into()))?;
        let server = Arc::new(
            tiny_http::Server::from_listener(listener, None).map_err(|e| fail(e.to_string()))?,
        );
        let context = Arc::new(context);
        let mut started = ApiServer {
            server: Some(server.clone()),
            threads: Vec::with_capacity(SERVING_THREADS),
            socket,
        };
        for i in 0..SERVING_THREADS {
            let (serving, context) = (server.clone(), context.clone());
            let thread = std::thread::Builder::new()
                .name(format!("api-{i}"))
                .spawn(move || serve(&serving, &context))
                .map_err(|e| fail(e.to_string()))?;
            started.threads.push(thread);
        }
        Ok(started)
    }
}

fn serve(server: &tiny_http::Server, context: &ApiContext) {
    while let Ok(request) = server.recv() {
        routes::answer(context, request);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            // One unblock per thread: each takes one when it next waits for a request.
            for _ in &self.threads {
                server.unblock();
            }
            for thread in self.threads.drain(..) {
                let _ = thread.join();
            }
            // Dropping the server sets its close flag; its accept thread sees it on the next
            // connection. It tries to connect to the private name the socket was bound under
            // (gone by now), so connect once through the public one.
            drop(server);
            let _ = UnixStream::connect(self.socket.path());
        }
    }
}
