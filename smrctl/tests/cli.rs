//! smrctl starts and answers `--help`. This test also makes `cargo test --workspace` build the
//! smrctl binary that smr's end-to-end suites run (smrctl is its own package since issue 13).

use std::process::Command;

#[test]
fn help_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_smrctl"))
        .arg("--help")
        .output()
        .expect("run smrctl --help");
    assert!(out.status.success(), "smrctl --help: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
}
