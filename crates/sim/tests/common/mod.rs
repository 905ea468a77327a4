//! What the `sim` end-to-end tests share: the binary, root, output and namespace helpers.
#![allow(dead_code, clippy::unwrap_used)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `sim` binary, run from the workspace root.
pub(crate) fn sim() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sim"));
    c.current_dir(workspace());
    c
}

pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// These tests fail loudly without root rather than skip (CI runs as root).
pub(crate) fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests build network namespaces and need root (CI runs as root)"
    );
}

/// Status and both outputs, for assertion messages.
pub(crate) fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub(crate) fn namespaces_with(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// The namespaces of the sim process `pid` (named `nsim<pid>x<n>-...`).
pub(crate) fn sim_namespaces_of(pid: u32) -> Vec<String> {
    namespaces_with(&format!("nsim{pid}x"))
}

/// A fresh folder for one test.
pub(crate) fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sim-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
