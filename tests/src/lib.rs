//! End-to-end test support: real `agora-server` processes on loopback.
//!
//! [`TestCluster`] starts a cluster in a temporary directory (certificates
//! made by `agora-server certs`, one process per node on port 0, then
//! `Initialize`), and gives tests what they need to break it: kill, stop,
//! restart, add nodes, and poll every node's status with deadlines.
//!
//! The server binaries are not built by `cargo test -p agora-tests`; build
//! them first with `cargo build --workspace --bins`. Every node's log goes
//! to a file in the cluster's directory, and the tail of each is printed
//! when the cluster is dropped (test output is only shown when a test
//! fails). Environment knobs:
//!
//! - `AGORA_BIN_DIR`: where the binaries are, instead of next to the test.
//! - `AGORA_TEST_KEEP_DIR=1`: keep the cluster directory after the test (it
//!   is always kept when the test panics).
//! - `AGORA_TEST_LOG_LINES=N`: how many lines of each node's log to print
//!   on drop (default 80, 0 for none).
//! - `RUST_LOG`: passed through to the nodes.
//!
//! [`PeerCli`] runs the `agora` peer command line against a test cluster:
//! commands that run to their end, and long-running ones (`agora serve`)
//! whose output lines a test waits for.

mod audit;
pub mod bank;
mod binaries;
mod cli;
mod cluster;
mod market;
pub mod nemesis;
mod node;
pub mod proxy;
mod raw;
pub mod soak;
mod wait;

pub use audit::wait_clean_audit;
pub use binaries::{binary, SERVER_BINARY};
pub use cli::{CliOutput, CliProcess, PeerCli, Pipe, PEER_BINARY, RUN_TIMEOUT};
pub use cluster::{CertDir, TestCluster, TestOptions};
pub use market::{peer_client, write_random_file, MarketUser, Shop};
pub use node::NodeInfo;
pub use raw::{call_raw, descriptor_rpcs, RawCodec, RawDecoder, RawEncoder};
pub use wait::{wait_for, Probe, POLL_INTERVAL};
