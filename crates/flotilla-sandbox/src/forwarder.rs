//! Inside a sandbox with `network = proxy`: relays TCP connections to
//! [`crate::spec::PROXY_INSIDE_ADDR`] to the egress proxy's Unix socket.
//!
//! The network namespace has nothing but loopback, and most tools only speak
//! to an HTTP proxy over TCP, so this small relay is the bridge. It runs as a
//! child of the sandbox's init, with every layer of the sandbox applied.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::thread;

use crate::spec::PROXY_INSIDE_SOCKET;

/// Accepts forever; each connection gets two copying threads.
pub fn serve(listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(tcp) = conn else {
            continue;
        };
        let _ = thread::Builder::new()
            .name("forward".into())
            .spawn(move || relay(tcp));
    }
}

fn relay(tcp: TcpStream) {
    let Ok(unix) = UnixStream::connect(PROXY_INSIDE_SOCKET) else {
        let _ = tcp.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(mut tcp_read), Ok(mut unix_write)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let upstream = thread::Builder::new()
        .name("forward-up".into())
        .spawn(move || {
            let _ = io::copy(&mut tcp_read, &mut unix_write);
            let _ = unix_write.shutdown(Shutdown::Write);
        });
    let (mut unix_read, mut tcp_write) = (unix, tcp);
    let _ = io::copy(&mut unix_read, &mut tcp_write);
    let _ = tcp_write.shutdown(Shutdown::Write);
    if let Ok(handle) = upstream {
        let _ = handle.join();
    }
}
