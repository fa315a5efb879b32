//! Real Monero parts for tests: a regtest monerod and monero-wallet-rpc
//! (Debian package `monero`), each on free ports in the test's directory.

use std::path::Path;
use std::time::Duration;

use monero_wallet::address::{MoneroAddress, Network};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// A regtest monerod of the test's own, on free ports, in its own directory.
pub struct Monerod {
    proc: Option<Proc>,
    pub url: String,
    ports: (u16, u16),
    dir: std::path::PathBuf,
}

impl Monerod {
    pub async fn start(dir: &Path) -> Self {
        // Two distinct ports: free_port() can hand out the same one twice.
        let rpc = free_port();
        let p2p = std::iter::repeat_with(free_port)
            .find(|&p| p != rpc)
            .expect("an endless iterator");
        let ports = (rpc, p2p);
        let mut monerod = Self {
            proc: None,
            url: format!("http://127.0.0.1:{}", ports.0),
            ports,
            dir: dir.to_path_buf(),
        };
        monerod.launch(false).await;
        monerod
    }

    async fn launch(&mut self, keep_chain: bool) {
        let (rpc, p2p) = self.ports;
        let log = self.dir.join("monerod.out");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut command = std::process::Command::new("monerod");
        command
            .args([
                "--regtest",
                "--offline",
                "--fixed-difficulty",
                "1",
                "--no-igd",
                "--non-interactive",
            ])
            .arg("--data-dir")
            .arg(self.dir.join("monerod"))
            .args([
                "--rpc-bind-ip",
                "127.0.0.1",
                "--rpc-bind-port",
                &rpc.to_string(),
            ])
            .args(["--p2p-bind-port", &p2p.to_string()])
            // Nothing here uses ZMQ, and its port is one more to collide.
            .arg("--no-zmq")
            .arg("--log-file")
            .arg(self.dir.join("monerod.log"))
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        if keep_chain {
            // A regtest monerod deletes its chain at start unless told not to.
            command.arg("--keep-fakechain");
        }
        let child = command
            .spawn()
            .expect("monerod from the Debian `monero` package (apt-get install monero)");
        self.proc = Some(Proc {
            child,
            log,
            name: "monerod".into(),
        });
        let daemon = processor::monero::Daemon::new(self.url.clone());
        eventually("monerod answers", Duration::from_secs(60), || async {
            daemon.tip().await.ok()
        })
        .await;
    }

    /// Stops the daemon (SIGTERM, so its chain is saved).
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.signal(nix::sys::signal::Signal::SIGTERM);
            assert!(
                proc.wait_exit(Duration::from_secs(60)).is_some(),
                "monerod did not stop"
            );
        }
    }

    /// Starts it again on the same ports with the same chain.
    pub async fn restart(&mut self) {
        self.launch(true).await;
    }

    /// Pops the top `n` blocks (regtest), to stage a reorganisation.
    pub async fn pop_blocks(&self, n: usize) {
        let daemon = monero_simple_request_rpc::SimpleRequestTransport::new(self.url.clone())
            .await
            .unwrap();
        daemon
            .rpc_call("pop_blocks", Some(format!("{{\"nblocks\": {n}}}")), 1 << 20)
            .await
            .unwrap();
    }

    /// The number of the top block.
    pub async fn height(&self) -> u64 {
        processor::monero::Daemon::new(self.url.clone())
            .tip()
            .await
            .unwrap()
    }

    pub async fn mine(&self, address: &str, blocks: usize) {
        let daemon = monero_simple_request_rpc::SimpleRequestTransport::new(self.url.clone())
            .await
            .unwrap();
        let address = MoneroAddress::from_str(Network::Mainnet, address).unwrap();
        daemon.generate_blocks(&address, blocks).await.unwrap();
    }
}

/// An address nobody here holds, to mine blocks that pay no processor.
pub fn elsewhere() -> String {
    let key = curve25519_dalek::EdwardsPoint::mul_base_clamped(rand::random::<[u8; 32]>())
        .compress()
        .to_bytes();
    processor::keystore::dkg::monero_address(&key).unwrap()
}

/// monero-wallet-rpc (Debian `monero`) without a daemon: enough for
/// `validate_address`.
pub struct WalletRpc {
    _proc: Proc,
    port: u16,
}

impl WalletRpc {
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(dir, None).await
    }

    /// With `daemon` (a monerod RPC URL), a wallet that can sync and send.
    pub async fn start_with(dir: &Path, daemon: Option<&str>) -> Self {
        let port = free_port();
        let wallets = dir.join("wallets");
        std::fs::create_dir_all(&wallets).unwrap();
        let log = dir.join("wallet-rpc.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new("monero-wallet-rpc")
            .args([
                "--rpc-bind-ip",
                "127.0.0.1",
                "--rpc-bind-port",
                &port.to_string(),
            ])
            .args(["--disable-rpc-login", "--non-interactive"])
            .args(match daemon {
                Some(url) => vec![
                    "--daemon-address".to_owned(),
                    url.trim_start_matches("http://").to_owned(),
                    "--trusted-daemon".to_owned(),
                ],
                None => vec!["--offline".to_owned()],
            })
            .args(["--rpc-ssl", "disabled", "--daemon-ssl", "disabled"])
            .arg("--wallet-dir")
            .arg(&wallets)
            .arg("--shared-ringdb-dir")
            .arg(dir.join("ringdb"))
            .arg("--log-file")
            .arg(dir.join("wallet-rpc.internal.log"))
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("monero-wallet-rpc from the Debian `monero` package (apt-get install monero)");
        wait_port(port).await;
        Self {
            _proc: Proc {
                child,
                log,
                name: "monero-wallet-rpc".into(),
            },
            port,
        }
    }

    pub async fn call(&self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": "0", "method": method, "params": params})
                .to_string();
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let request = format!(
            "POST /json_rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        // `Connection: close`: the answer ends when the server closes.
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(120), async {
            stream.read_to_end(&mut response).await.unwrap();
            let text = String::from_utf8_lossy(&response);
            let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a Content-Length");
            assert!(
                body.len() >= length,
                "short answer: {} of {length} bytes",
                body.len()
            );
            serde_json::from_str::<serde_json::Value>(&body[..length]).expect("JSON-RPC answer")
        })
        .await
        .expect("monero-wallet-rpc answers within 120s")
    }
}
