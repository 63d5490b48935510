//! Finding the workspace's binaries from inside a test.
//!
//! Cargo puts an integration test at `target/<profile>/deps/<test>-<hash>`
//! and the workspace binaries at `target/<profile>/<name>`, so they are
//! found relative to the running test, whatever the target directory.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The cluster node binary.
pub const SERVER_BINARY: &str = "agora-server";

/// Environment variable naming the directory of the binaries, for layouts
/// where they do not sit next to the test.
const BIN_DIR_ENV: &str = "AGORA_BIN_DIR";

/// The path of the workspace binary `name` (`agora-server`, `agora`,
/// `agora-admin`, ...).
///
/// # Errors
/// When it has not been built.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().context("could not find the running test's path")?;
            target_dir_of(&exe)
                .context("the running test is not inside a cargo target directory")?
        }
    };
    binary_in(&dir, name)
}

/// `target/<profile>` for a test at `target/<profile>/deps/<test>` (or a
/// binary at `target/<profile>/<name>`).
fn target_dir_of(exe: &Path) -> Option<PathBuf> {
    let parent = exe.parent()?;
    if parent.file_name().is_some_and(|name| name == "deps") {
        parent.parent().map(Path::to_path_buf)
    } else {
        Some(parent.to_path_buf())
    }
}

fn binary_in(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        anyhow::bail!(
            "build the binaries first: cargo build --workspace --bins (there is no {})",
            path.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_profile_dir_from_a_test() {
        assert_eq!(
            target_dir_of(Path::new("/w/target/debug/deps/t00_harness-abc")),
            Some(PathBuf::from("/w/target/debug"))
        );
        assert_eq!(
            target_dir_of(Path::new("/w/target/debug/agora-admin")),
            Some(PathBuf::from("/w/target/debug"))
        );
    }

    #[test]
    fn says_how_to_build_a_missing_binary() {
        let err = binary_in(Path::new("/nonexistent"), "agora-server")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("build the binaries first: cargo build --workspace --bins"),
            "{err}"
        );
    }
}
