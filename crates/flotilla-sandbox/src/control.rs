//! The control channel between a [`crate::Sandbox`] handle and the sandbox's
//! init: a `SOCK_SEQPACKET` Unix socket pair carrying one JSON message per
//! datagram, with file descriptors (a command's stdin, stdout, stderr)
//! attached as `SCM_RIGHTS`.
//!
//! Seqpacket keeps message boundaries, so there is no framing to get wrong,
//! and passing the pipes themselves means a command's output never flows
//! through init: the daemon reads it straight from the pipe.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{Deserialize, Serialize};

use crate::spec::{SandboxReport, SandboxSpec};

/// The largest message either side sends. A command line longer than this
/// could not be exec'd anyway (one argument may be at most 128 KiB).
pub const MAX_MESSAGE: usize = 192 * 1024;

/// From the handle to init.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The first message: what to build.
    Setup {
        /// The sandbox to build.
        spec: Box<SandboxSpec>,
    },
    /// Start a command. Three descriptors ride along: stdin, stdout, stderr.
    Spawn {
        /// Chosen by the handle; echoed in the replies.
        id: u64,
        /// Program and arguments; the program is looked up on `PATH` from `env`.
        argv: Vec<String>,
        /// Working directory inside the sandbox.
        cwd: PathBuf,
        /// The whole environment of the command.
        env: Vec<(String, String)>,
    },
    /// Send `signal` to the command's process group.
    Signal {
        /// The command.
        id: u64,
        /// Signal number.
        signal: i32,
    },
    /// Kill everything and exit.
    Shutdown,
}

/// From init to the handle.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Reply {
    /// The sandbox is built; commands may be spawned.
    Ready {
        /// What holds.
        report: Box<SandboxReport>,
    },
    /// The sandbox could not be built (or was refused as too weak).
    Failed {
        /// Why, for a person.
        error: String,
    },
    /// A command could not be started.
    SpawnFailed {
        /// The request's id.
        id: u64,
        /// Why.
        error: String,
    },
    /// A command's process exited (its background jobs may live on).
    Exited {
        /// The request's id.
        id: u64,
        /// Exit code, when it exited.
        code: Option<i32>,
        /// Signal, when it was killed.
        signal: Option<i32>,
    },
}

/// A connected pair: (handle side, init side). Both close-on-exec.
pub fn pair() -> nix::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

/// Encodes `msg`, refusing anything over [`MAX_MESSAGE`].
pub fn encode<T: Serialize>(msg: &T) -> std::io::Result<Vec<u8>> {
    let bytes = serde_json::to_vec(msg)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "sandbox control message of {} bytes is over the {} byte limit (is the command line that long?)",
                bytes.len(),
                MAX_MESSAGE
            ),
        ));
    }
    Ok(bytes)
}

/// Sends one datagram with `fds` attached. Non-blocking sockets return
/// `EAGAIN` as an error for the caller to wait on.
pub fn send_raw(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    sendmsg::<()>(sock, &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None).map(|_| ())
}

/// One received datagram: its bytes (empty at end of stream) and the
/// descriptors that came with it (close-on-exec).
pub struct Received {
    /// The message; empty means the peer closed.
    pub bytes: Vec<u8>,
    /// Attached descriptors, in order.
    pub fds: Vec<OwnedFd>,
}

/// Receives one datagram into `buf`.
pub fn recv_raw(sock: RawFd, buf: &mut [u8]) -> nix::Result<Received> {
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel just installed these descriptors in our
                // table for us; nothing else owns them.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
    let len = msg.bytes;
    if truncated {
        return Err(nix::Error::EMSGSIZE);
    }
    Ok(Received {
        bytes: buf[..len].to_vec(),
        fds,
    })
}

/// Blocking send of a message (init side, and the helper's first read).
pub fn send_blocking<T: Serialize>(sock: &OwnedFd, msg: &T, fds: &[RawFd]) -> std::io::Result<()> {
    let bytes = encode(msg)?;
    loop {
        match send_raw(sock.as_raw_fd(), &bytes, fds) {
            Ok(()) => return Ok(()),
            Err(nix::Error::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}
