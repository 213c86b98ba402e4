//! The `cluster` network against the host's real Docker engine, under unique names that
//! a guard removes even on failure. Skips (with a message) when Docker is unreachable.

use std::process::Command;

use overlay::docker::{
    BollardNetworks, ClusterNetworkSpec, DockerError, NetworkAction, ensure_cluster_network,
};

/// Removes the recorded networks on drop.
struct Networks(Vec<String>);

impl Drop for Networks {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("docker").args(["network", "rm", n]).output();
        }
    }
}

fn inspect(name: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["network", "inspect", name, "--format", format])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn cluster_network_is_created_kept_and_never_stolen() {
    let docker = match BollardNetworks::connect().await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: no Docker engine: {e}");
            return;
        }
    };
    let pid = std::process::id();
    let name = format!("smr-ovl-test-{pid}");
    let foreign = format!("smr-ovl-foreign-{pid}");
    let _guard = Networks(vec![name.clone(), foreign.clone()]);
    let third = pid % 250;
    let spec = ClusterNetworkSpec {
        name: name.clone(),
        subnet: format!("10.254.{third}.0/24").parse().unwrap(),
        mtu: 1450,
        bridge: format!("smrt{}", pid % 100_000),
    };

    assert_eq!(
        ensure_cluster_network(&docker, &spec).await.unwrap(),
        NetworkAction::Create
    );
    assert_eq!(
        ensure_cluster_network(&docker, &spec).await.unwrap(),
        NetworkAction::Keep
    );
    assert_eq!(inspect(&name, "{{.Driver}}"), "bridge");
    assert_eq!(
        inspect(
            &name,
            "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}"
        ),
        format!("10.254.{third}.0/24 10.254.{third}.1")
    );
    assert_eq!(
        inspect(
            &name,
            "{{index .Options \"com.docker.network.driver.mtu\"}}"
        ),
        "1450"
    );
    assert_eq!(
        inspect(
            &name,
            "{{index .Options \"com.docker.network.bridge.name\"}}"
        ),
        spec.bridge
    );
    assert_eq!(
        inspect(&name, "{{index .Labels \"io.smr.managed\"}}"),
        "true"
    );

    // Same name, other lease: refused, and the existing network is left alone.
    let moved = ClusterNetworkSpec {
        subnet: format!("10.254.{}.0/24", (third + 1) % 250)
            .parse()
            .unwrap(),
        ..spec.clone()
    };
    let err = ensure_cluster_network(&docker, &moved).await.unwrap_err();
    assert!(matches!(err, DockerError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("its subnet is"), "{err}");
    assert_eq!(
        inspect(&name, "{{range .IPAM.Config}}{{.Subnet}}{{end}}"),
        format!("10.254.{third}.0/24")
    );

    // A network of the same name that is not ours: refused, kept.
    let out = Command::new("docker")
        .args([
            "network",
            "create",
            "--subnet",
            &format!("10.254.{}.0/24", (third + 2) % 250),
            &foreign,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let not_ours = ClusterNetworkSpec {
        name: foreign.clone(),
        ..spec.clone()
    };
    let err = ensure_cluster_network(&docker, &not_ours)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("lacks the label io.smr.managed=true"),
        "{err}"
    );
    assert_eq!(inspect(&foreign, "{{.Name}}"), foreign);
}
