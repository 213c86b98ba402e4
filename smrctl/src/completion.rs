//! `smrctl completion SHELL` (and `smrmgr completion SHELL`): the shell completion script of a
//! clap command, generated from the command's own definition, so it always offers exactly the
//! subcommands and flags the binary accepts.
//!
//! The packages ship the scripts for bash, zsh and fish in their standard Debian paths
//! (`packaging/build.sh` runs this command at packaging time); without a package, load one with
//! e.g. `source <(smrctl completion bash)`.

use std::io::Write;

pub use clap_complete::Shell;

/// Writes the completion script of `cmd` for `shell` to `out`, for the binary named as `cmd` is.
pub fn generate(shell: Shell, cmd: &mut clap::Command, out: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, cmd, name, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(shell: Shell) -> String {
        let mut cmd = clap::Command::new("demo")
            .subcommand(clap::Command::new("apply").arg(clap::Arg::new("file").long("file")));
        let mut out = Vec::new();
        generate(shell, &mut cmd, &mut out);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn scripts_name_the_binary_and_its_subcommands() {
        let bash = script(Shell::Bash);
        assert!(bash.contains("complete -F _demo"), "{bash}");
        assert!(bash.contains("apply") && bash.contains("--file"), "{bash}");
        let zsh = script(Shell::Zsh);
        assert!(zsh.starts_with("#compdef demo"), "{zsh}");
        let fish = script(Shell::Fish);
        assert!(fish.contains("complete -c demo"), "{fish}");
        assert!(fish.contains("-l file"), "{fish}");
    }
}
