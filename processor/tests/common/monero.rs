//! Real Monero parts for tests: a regtest monerod and monero-wallet-rpc
//! (Debian package `monero`), each on free ports in the test's directory.

use std::path::Path;
use std::time::Duration;

use monero_wallet::address::{MoneroAddress, Network};

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
        let mut command = std::process::Command::new(super::tools::monerod());
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
        let child = command.spawn().expect("start monerod");
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

    /// A regtest monerod on the chain already in `dir/monerod` (a saved
    /// fixture), kept rather than deleted at start.
    pub async fn start_keeping(dir: &Path) -> Self {
        let rpc = free_port();
        let p2p = std::iter::repeat_with(free_port)
            .find(|&p| p != rpc)
            .expect("an endless iterator");
        let mut monerod = Self {
            proc: None,
            url: format!("http://127.0.0.1:{rpc}"),
            ports: (rpc, p2p),
            dir: dir.to_path_buf(),
        };
        monerod.launch(true).await;
        monerod
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
    /// The typed client (monero-rpc), for everything it has a call for.
    pub client: monero_rpc::WalletClient,
    url: String,
    http: reqwest::Client,
}

/// How long one wallet call may take (a `refresh` over many blocks is slow).
const WALLET_TIMEOUT: Duration = Duration::from_secs(120);

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
        let child = std::process::Command::new(super::tools::monero_wallet_rpc())
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
            .expect("start monero-wallet-rpc");
        wait_port(port).await;
        let url = format!("http://127.0.0.1:{port}");
        Self {
            _proc: Proc {
                child,
                log,
                name: "monero-wallet-rpc".into(),
            },
            client: monero_rpc::RpcClientBuilder::new()
                .timeout(WALLET_TIMEOUT)
                .build(url.clone())
                .expect("a client of a plain http URL builds")
                .wallet(),
            url,
            http: reqwest::Client::builder()
                .timeout(WALLET_TIMEOUT)
                .build()
                .expect("a client without TLS builds"),
        }
    }

    /// Creates and opens wallet `name` (in the wallet directory).
    pub async fn create_wallet(&self, name: &str) {
        self.client
            .create_wallet(name.to_owned(), None, "English".to_owned())
            .await
            .expect("create_wallet");
    }

    /// The open wallet's main address.
    pub async fn address(&self) -> String {
        self.client
            .get_address(0, None)
            .await
            .expect("get_address")
            .address
            .to_string()
    }

    pub async fn refresh(&self) {
        self.client.refresh(None).await.expect("refresh");
    }

    /// Pays `to` (distinct addresses) from account 0; the transaction's hash,
    /// or the wallet's refusal (e.g. no unlocked outputs left).
    pub async fn transfer(
        &self,
        to: &[(&str, u64)],
        options: monero_rpc::TransferOptions,
    ) -> Result<String, String> {
        let destinations = to
            .iter()
            .map(|(address, amount)| {
                (
                    address.parse().expect("a Monero address"),
                    monero_rpc::monero::Amount::from_pico(*amount),
                )
            })
            .collect::<std::collections::HashMap<_, _>>();
        assert_eq!(destinations.len(), to.len(), "distinct addresses");
        self.client
            .transfer(destinations, monero_rpc::TransferPriority::Default, options)
            .await
            .map(|sent| sent.tx_hash.to_string())
            .map_err(|e| format!("transfer: {e:#}"))
    }

    /// A call monero-rpc has no typed method for (`validate_address`,
    /// `auto_refresh`, multisig): its JSON-RPC envelope (jsonrpc-core, as
    /// monero-rpc builds them) over reqwest. The `result`, or the error.
    pub async fn try_call(
        &self,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let serde_json::Value::Object(params) = params else {
            panic!("{method}: wallet RPC parameters are an object");
        };
        let call = jsonrpc_core::MethodCall {
            jsonrpc: Some(jsonrpc_core::Version::V2),
            method: method.to_owned(),
            params: jsonrpc_core::Params::Map(params),
            id: jsonrpc_core::Id::Num(0),
        };
        let answer: jsonrpc_core::Output = self
            .http
            .post(format!("{}/json_rpc", self.url))
            .json(&call)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("{method}: {e}"))?
            .json()
            .await
            .map_err(|e| format!("{method}: the answer is not JSON-RPC: {e}"))?;
        jsonrpc_core::Result::<serde_json::Value>::from(answer)
            .map_err(|e| format!("{method}: {} ({})", e.message, e.code.code()))
    }

    /// As `try_call`; the wallet refusing fails the test.
    pub async fn call(&self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.try_call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }
}
