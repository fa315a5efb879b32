//! A TCP proxy between the coordinator and one processor, whose live
//! connections can be severed at any instant: the exactly-once link must
//! notice, reconnect and resend, and nothing on the stream itself is
//! altered.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// One proxy: listens on its own port, forwards every connection to the
/// processor's port.
#[derive(Debug, Clone)]
pub struct Proxy {
    port: u16,
    /// Cancelled to sever every live connection; replaced at once so new
    /// connections go through.
    cut: Arc<Mutex<CancellationToken>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target` until
    /// `shutdown`. Must be called within a tokio runtime.
    pub fn start(target: u16, shutdown: CancellationToken) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let listener = TcpListener::from_std(listener)?;
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let proxy = Self {
            port,
            cut: cut.clone(),
        };
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = shutdown.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                let token = cut.lock().unwrap_or_else(PoisonError::into_inner).clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    // The processor down (killed): the coordinator sees the
                    // connection close and redials, as it would without us.
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    tokio::select! {
                        () = token.cancelled() => {}
                        () = shutdown.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                    // Both sockets close here.
                });
            }
        });
        Ok(proxy)
    }

    /// The port to dial.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every connection through this proxy now.
    pub fn sever(&self) {
        let mut cut = self.cut.lock().unwrap_or_else(PoisonError::into_inner);
        cut.cancel();
        *cut = CancellationToken::new();
    }
}
