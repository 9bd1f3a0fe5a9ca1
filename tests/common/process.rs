//! What the process tests (tests/examples.rs, tests/cli.rs) share: building and finding
//! the example binaries, and a child process that cannot outlive its test.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::OnceLock;

/// The path of a built example, building all the examples first (once per process).
pub(crate) fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--examples", "--quiet"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("could not run cargo to build the examples");
        assert!(status.success(), "cargo build --examples failed: {status}");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    target
        .join("debug")
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// A child process that is killed (and reaped) when this is dropped, so a failing test
/// leaves no server behind.
pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
