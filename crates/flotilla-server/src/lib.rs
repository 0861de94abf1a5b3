//! The flotilla daemon: HTTP/JSON over a Unix socket (and TCP with a bearer
//! token), SSE event streams, and the daemon's life cycle.

pub mod api;
pub mod approvals;
pub mod compliance;
pub mod daemon;
pub mod paths;
pub mod principals;
pub mod secrets;

pub use daemon::{acquire_lock, serve, AuditSettings, DaemonError, DaemonLock, ServeOptions};
pub use paths::Paths;
pub use principals::{Caller, Principals};
