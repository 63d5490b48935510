//! The replicated state machine under arbitrary command sequences: each
//! input is read as an [`apply_check::Script`] (up to
//! [`apply_check::MAX_STEPS`] entries of register, deposit, withdraw,
//! holds, publish, reprice, purchases, expiries, disputes, settings,
//! suspensions, deletions... over small id spaces) and applied to a real
//! [`StateMachine`](agora_server::raft::state_machine::StateMachine) on a
//! SQLite file in a temporary directory, as a node opens it.
//!
//! Properties checked after every entry (by [`apply_check::check`], the
//! same checker `cargo test -p agora-server apply_check` runs on seeded
//! random scripts), besides "never panics":
//!
//! - applying never fails with a storage error;
//! - the ledger audit is clean (balances equal journals and sum to zero,
//!   held money matches open holds and pending proceeds, purchases agree
//!   with their holds);
//! - an entry whose proposals were all refused, or answered from memory
//!   as retries, changes no data;
//! - at the end, a second state machine applying the same log in other
//!   batch sizes gives the same answers and the same state digest.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use agora_server::raft::apply_check::{self, Script};
use libfuzzer_sys::fuzz_target;

/// Where the temporary databases go: memory when the machine has a
/// tmpfs at /dev/shm (no disk writes, many more runs per second).
fn scratch() -> &'static PathBuf {
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let script = Script::from_bytes(data);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let dir = tempfile::tempdir_in(scratch()).expect("a temporary directory");
    let replica = tempfile::tempdir_in(scratch()).expect("a temporary directory");
    if let Err(violation) =
        runtime.block_on(apply_check::check(&script, dir.path(), replica.path()))
    {
        panic!("{violation}\n{script:#?}");
    }
});
