//! `smrctl context import | list | use | export` with real certificates in a throw-away HOME:
//! an exported file imports as the same context, `use` makes it the default the next smrctl
//! picks, and a different context of the same name is not overwritten by accident.

use std::path::Path;
use std::process::{Command, Output};

use api_types::client::Context;
use pki::{ClusterCa, Role};

fn context(name: &str, url: &str) -> Context {
    let ca = ClusterCa::generate("ctx-test").unwrap();
    let (key_pem, csr) = pki::new_key_and_csr(Role::Admin, "alice", &[]).unwrap();
    let cert_pem = ca.sign_csr(&csr, Role::Admin, "alice", &[]).unwrap();
    Context {
        name: name.into(),
        api_url: url.into(),
        ca_pem: ca.cert_pem().into(),
        cert_pem,
        key_pem,
    }
}

fn smrctl(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smrctl"))
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("SMR_CONTEXT")
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn import_use_list_export() {
    pki::install_crypto_provider();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let prod = context("prod", "https://10.0.0.1:1443");
    let file = h.join("prod.context");
    prod.save(&file).unwrap();

    let out = ok(smrctl(h, &["context", "import", file.to_str().unwrap()]));
    assert!(out.contains("context prod imported"), "{out}");
    let stored = h.join(".config/smr/contexts/prod.json");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Not yet the default: the default is still the agent's admin.context (absent here).
    let out = smrctl(h, &["context"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");

    ok(smrctl(h, &["context", "use", "prod"]));
    let out = ok(smrctl(h, &["context"]));
    assert!(
        out.contains("context prod") && out.contains("https://10.0.0.1:1443"),
        "{out}"
    );
    let list = ok(smrctl(h, &["context", "list"]));
    let line = list.lines().find(|l| l.contains("prod")).unwrap();
    assert!(line.starts_with('*'), "{list}");

    // Export: the same context, in one file another smrctl imports under another name.
    let exported = h.join("for-bob.context");
    ok(smrctl(
        h,
        &[
            "context",
            "export",
            exported.to_str().unwrap(),
            "--name",
            "prod-bob",
        ],
    ));
    let back = Context::load(&exported).unwrap();
    assert_eq!(back.name, "prod-bob");
    assert_eq!(
        (&back.api_url, &back.ca_pem, &back.cert_pem, &back.key_pem),
        (&prod.api_url, &prod.ca_pem, &prod.cert_pem, &prod.key_pem)
    );
    let bob = tempfile::tempdir().unwrap();
    let out = ok(smrctl(
        bob.path(),
        &["context", "import", exported.to_str().unwrap(), "--use"],
    ));
    assert!(out.contains("prod-bob imported and in use"), "{out}");
    assert!(ok(smrctl(bob.path(), &["context"])).contains("context prod-bob"));

    // A different context under an existing name is refused unless --name/--force.
    let other = context("prod", "https://10.9.9.9:1443");
    let other_file = h.join("other.context");
    other.save(&other_file).unwrap();
    let out = smrctl(h, &["context", "import", other_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("a different context named prod exists"));
    ok(smrctl(
        h,
        &[
            "context",
            "import",
            other_file.to_str().unwrap(),
            "--name",
            "staging",
        ],
    ));
    let list = ok(smrctl(h, &["context", "list"]));
    assert!(
        list.contains("staging") && list.contains("https://10.9.9.9:1443"),
        "{list}"
    );

    // Unknown names and broken files are clear errors.
    let out = smrctl(h, &["context", "use", "nope"]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no context named \"nope\" (known: prod, staging)"),
        "{out:?}"
    );
    std::fs::write(h.join("junk.context"), "{}").unwrap();
    let out = smrctl(
        h,
        &[
            "context",
            "import",
            h.join("junk.context").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(7));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not valid"),
        "{out:?}"
    );
}
