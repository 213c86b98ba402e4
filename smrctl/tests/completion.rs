//! `smrctl completion SHELL` prints a script that completes smrctl's real subcommands, one that
//! bash accepts and runs; an unknown shell is a usage error naming the shells there are.

use std::process::Command;

fn completion(shell: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_smrctl"))
        .args(["completion", shell])
        .output()
        .expect("run smrctl completion")
}

#[test]
fn scripts_cover_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = completion(shell);
        assert!(out.status.success(), "smrctl completion {shell}: {out:?}");
        let script = String::from_utf8(out.stdout).expect("utf-8");
        for sub in ["apply", "nodes", "gitops", "completion"] {
            assert!(script.contains(sub), "{shell} script lacks {sub}");
        }
    }
}

#[test]
fn bash_completes_a_subcommand_and_a_flag() {
    let script = String::from_utf8(completion("bash").stdout).expect("utf-8");
    let complete = |words: &str, cword: usize, cur: &str, prev: &str| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "{script}\nCOMP_WORDS=({words}); COMP_CWORD={cword}; _smrctl smrctl '{cur}' '{prev}'; \
                 printf '%s\\n' \"${{COMPREPLY[@]}}\""
            ))
            .output()
            .expect("run bash");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    assert_eq!(complete("smrctl ap", 1, "ap", "smrctl").trim(), "apply");
    let flags = complete("smrctl apply --dry", 2, "--dry", "apply");
    assert_eq!(flags.trim(), "--dry-run");
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let out = completion("tcsh");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
}
