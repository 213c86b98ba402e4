use std::path::Path;
use std::time::Duration;

use super::*;

const BUSYBOX: &str = r#"kind: containers
prefix: simplecontainer.io/v1
meta:
  group: busybox
  name: busybox
  labels:
    app: demo
spec:
  image: busybox
  tag: 1.37.0
  replicas: 2
  entrypoint: ["sh", "-c"]
  args: ["sleep 3600"]
  networks:
    - group: internal
      name: cluster
  spread:
    spread: uniform
"#;

const MYSQL: &str = r#"---
kind: configuration
prefix: simplecontainer.io/v1
meta:
  group: mysql
  name: config
spec:
  data:
    database: app
    port: "3306"
---
kind: secret
prefix: simplecontainer.io/v1
meta:
  group: mysql
  name: secrets
spec:
  data:
    password: c2VjcmV0
---
kind: containers
prefix: simplecontainer.io/v1
meta:
  group: mysql
  name: mysql
spec:
  image: mysql
  tag: 8.0
  replicas: 1
  envs:
    - MYSQL_ROOT_PASSWORD=(( .password ))
    - MYSQL_DATABASE=(( .database ))
  ports:
    - container: "3306"
      host: "0.0.0.0:3306"
    - container: 33060
  configuration:
    password: (( lookup "secret/mysql/secrets:password" | base64decode ))
    database: (( .database ))
  configurations:
    - group: mysql
      name: config
  resources:
    - group: mysql
      name: cnf
      key: my.cnf
      mountPoint: /etc/mysql/conf.d/my.cnf
  readiness:
    - name: mysql
      timeout: "60s"
      command: ["mysqladmin", "ping", "-h", "127.0.0.1"]
    - name: http
      type: http
      url: http://localhost:8080/health
      method: GET
      body:
        k: v
      timeout: 1h30m
  dependencies:
    - prefix: simplecontainer.io/v1
      group: base
      name: "*"
      timeout: "30s"
  spread:
    spread: specific
    agents: [1, 2, smr-agent-3]
  restart:
    policy: on-failure
    initialBackoff: 1s
    maxBackoff: 5m
  limits:
    cpus: 0.5
    memory: 512Mi
  nodeSelector:
    disk: ssd
  rollingUpdate:
    maxUnavailable: 0
    maxSurge: 1
"#;

const GITOPS: &str = r#"kind: gitops
prefix: simplecontainer.io/v1
meta:
  group: infra
  name: apps
spec:
  repoURL: https://github.com/example/apps.git
  revision: main
  directoryPath: /definitions
  poolingInterval: "5s"
  automaticSync: true
  httpAuthRef:
    group: infra
    name: git-auth
  certKeyRef:
    prefix: simplecontainer.io/v1
    group: infra
    name: git-key
---
kind: httpauth
prefix: simplecontainer.io/v1
meta: {group: infra, name: git-auth}
spec: {username: bot, password: token}
---
kind: certkey
prefix: simplecontainer.io/v1
meta: {group: infra, name: git-key}
spec:
  privateKey: "-----BEGIN OPENSSH PRIVATE KEY-----"
  publicKey: ssh-ed25519 AAAA
"#;

const OTHERS: &str = r#"kind: network
meta: {group: net, name: backend}
spec: {driver: bridge, ipv4addresspool: 10.20.0.0/24}
---
kind: volume
meta: {group: data, name: shared}
spec:
  driver: local
  driver_opts: {type: tmpfs}
---
kind: resource
meta: {group: mysql, name: cnf}
spec:
  data:
    my.cnf: |
      [mysqld]
      bind-address=0.0.0.0
---
kind: custom
meta: {group: x, name: y}
spec:
  anything: [1, two, {three: 3}]
  nested: {a: true}
"#;

fn err(text: &str) -> DefinitionError {
    parse_str("app.yaml", text).expect_err("should fail")
}

fn containers(o: &Object) -> &ContainersSpec {
    o.spec.as_containers().expect("containers")
}

#[test]
fn busybox_parses() {
    let objs = parse_str("busybox.yaml", BUSYBOX).unwrap();
    assert_eq!(objs.len(), 1);
    let o = &objs[0];
    assert_eq!(o.key().to_string(), "containers/busybox/busybox");
    assert_eq!(o.meta.labels.get("app").map(String::as_str), Some("demo"));
    let c = containers(o);
    assert_eq!(c.tag.as_deref(), Some("1.37.0"));
    assert_eq!(c.image_ref(), "busybox:1.37.0");
    assert_eq!(c.replicas, 2);
    assert_eq!(c.entrypoint, ["sh", "-c"]);
    assert_eq!(
        c.networks,
        [NetworkRef {
            group: "internal".into(),
            name: "cluster".into()
        }]
    );
    assert_eq!(
        c.spread,
        Some(Spread {
            spread: SpreadMode::Uniform,
            agents: vec![]
        })
    );
}

#[test]
fn mysql_parses_with_templates_and_loose_scalars() {
    let objs = parse_str("mysql.yaml", MYSQL).unwrap();
    assert_eq!(objs.len(), 3);
    assert_eq!(objs[0].spec.data().unwrap()["port"], "3306");
    assert_eq!(objs[1].kind, Kind::Secret);
    let c = containers(&objs[2]);
    assert_eq!(
        c.tag.as_deref(),
        Some("8.0"),
        "a number-looking tag stays as written"
    );
    assert_eq!(c.ports[0].container_port(), Ok((3306, Protocol::Tcp)));
    assert_eq!(
        c.ports[0].host_binding(),
        Ok(Some((Some("0.0.0.0".parse().unwrap()), 3306)))
    );
    assert_eq!(c.ports[1].container, "33060");
    assert_eq!(c.ports[1].host_binding(), Ok(None));
    assert_eq!(
        c.configuration["password"],
        "(( lookup \"secret/mysql/secrets:password\" | base64decode ))"
    );
    assert_eq!(
        c.configurations,
        [GroupName {
            group: "mysql".into(),
            name: "config".into()
        }]
    );
    assert_eq!(c.resources[0].mount_point, "/etc/mysql/conf.d/my.cnf");
    assert_eq!(c.readiness[0].check_type(), ReadinessType::Command);
    assert_eq!(
        c.readiness[0].timeout,
        Some(DurationValue(Duration::from_secs(60)))
    );
    assert_eq!(c.readiness[1].check_type(), ReadinessType::Http);
    assert_eq!(
        c.readiness[1].timeout.unwrap().get(),
        Duration::from_secs(5400)
    );
    assert_eq!(c.dependencies[0].name, "*");
    assert_eq!(
        c.dependencies[0].timeout.unwrap().get(),
        Duration::from_secs(30)
    );
    assert_eq!(
        c.spread.as_ref().unwrap().agents,
        [
            AgentRef::Id(1),
            AgentRef::Id(2),
            AgentRef::Name("smr-agent-3".into())
        ]
    );
    let r = c.restart.as_ref().unwrap();
    assert_eq!(r.policy, RestartMode::OnFailure);
    assert_eq!(r.max_backoff.unwrap().get(), Duration::from_secs(300));
    let l = c.limits.as_ref().unwrap();
    assert_eq!((l.cpus, l.memory_bytes()), (Some(0.5), Ok(Some(512 << 20))));
    assert_eq!(c.node_selector["disk"], "ssd");
    assert_eq!(
        c.rolling_update,
        Some(RollingUpdate {
            max_unavailable: 0,
            max_surge: 1
        })
    );
}

#[test]
fn gitops_and_other_kinds_parse() {
    let objs = parse_str("gitops.yaml", GITOPS).unwrap();
    let g = objs[0].spec.as_gitops().unwrap();
    assert_eq!(g.repo_url, "https://github.com/example/apps.git");
    assert_eq!(g.pooling_interval.unwrap().get(), Duration::from_secs(5));
    assert!(g.automatic_sync);
    assert_eq!(g.http_auth_ref.as_ref().unwrap().name, "git-auth");
    assert_eq!(
        g.cert_key_ref.as_ref().unwrap().prefix.as_deref(),
        Some(PREFIX)
    );
    assert_eq!(
        objs[1].spec,
        Spec::Httpauth(HttpAuthSpec {
            username: "bot".into(),
            password: "token".into()
        })
    );
    let Spec::Certkey(ck) = &objs[2].spec else {
        panic!()
    };
    assert_eq!(ck.public_key.as_deref(), Some("ssh-ed25519 AAAA"));

    let objs = parse_str("others.yaml", OTHERS).unwrap();
    assert_eq!(
        objs.iter().map(|o| o.kind).collect::<Vec<_>>(),
        [Kind::Network, Kind::Volume, Kind::Resource, Kind::Custom]
    );
    assert_eq!(objs[0].prefix, PREFIX, "an absent prefix defaults");
    let Spec::Network(n) = &objs[0].spec else {
        panic!()
    };
    assert_eq!(n.ipv4_address_pool.as_deref(), Some("10.20.0.0/24"));
    assert_eq!(
        objs[2].spec.data().unwrap()["my.cnf"],
        "[mysqld]\nbind-address=0.0.0.0\n"
    );
    let Spec::Custom(c) = &objs[3].spec else {
        panic!()
    };
    assert_eq!(c["anything"], serde_json::json!([1, "two", {"three": 3}]));
}

#[test]
fn simplecontainer_spellings_are_accepted() {
    let text = "kind: Containers\nprefix: simplecontainers.io/v1\nmeta: {group: a, name: b}\nspec:\n  image: x\n  command: [run]\n  network_mode: bridge\n  groupAdd: [\"2000\"]\n  user: 1000\ninitContainer:\n  image: init\n";
    let o = &parse_str("sc.yaml", text).unwrap()[0];
    assert_eq!(o.prefix, PREFIX);
    let c = containers(o);
    assert_eq!(c.args, ["run"]);
    assert_eq!(c.user.as_deref(), Some("1000"));
    assert_eq!(c.init_container.as_ref().unwrap().image, "init");
    assert_eq!(c.network_mode.as_deref(), Some("bridge"));
}

#[test]
fn multi_document_skips_empty_documents() {
    let text = format!("---\n---\n{BUSYBOX}---\n# only a comment\n---\n{GITOPS}\n---\n");
    let objs = parse_str("all.yaml", &text).unwrap();
    assert_eq!(objs.len(), 4);
    assert!(parse_str("empty.yaml", "").unwrap().is_empty());
    assert!(
        parse_str("empty.yaml", "---\n# nothing\n")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn unknown_field_names_file_line_field_and_suggestion() {
    let text = "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: n\n  label:\n    a: b\nspec:\n  image: x\n";
    let e = err(text);
    assert_eq!(
        (e.kind, e.line, e.column, e.path.as_str()),
        (ErrorKind::UnknownField, 6, 3, "meta.label")
    );
    assert_eq!(e.suggestion.as_deref(), Some("labels"));
    assert_eq!(
        e.to_string(),
        "app.yaml:6:3: unknown field meta.label, did you mean labels?"
    );

    // Deep in the spec, in the second document.
    let text = format!(
        "{BUSYBOX}---\nkind: containers\nmeta: {{group: g, name: n}}\nspec:\n  image: x\n  readiness:\n    - name: r\n      url: http://x\n      timout: 5s\n"
    );
    let e = err(&text);
    assert_eq!(
        (e.line, e.column, e.path.as_str()),
        (27, 7, "spec.readiness[0].timout")
    );
    assert_eq!(
        e.to_string(),
        "app.yaml:27:7: unknown field spec.readiness[0].timout, did you mean timeout?"
    );

    // Top level, and no near match: the expected names are listed.
    let e = err("kind: secret\nmeta: {group: g, name: n}\nspec: {}\nzzz: 1\n");
    assert_eq!(
        (e.kind, e.line, e.path.as_str(), e.suggestion.clone()),
        (ErrorKind::UnknownField, 4, "zzz", None)
    );
    assert_eq!(
        e.to_string(),
        "app.yaml:4:1: unknown field zzz (expected one of kind, prefix, meta, spec)"
    );
    let e = err("kind: secret\nmeta: {group: g, name: n}\nspecs: {}\n");
    assert_eq!(e.suggestion.as_deref(), Some("spec"));
}

#[test]
fn wrong_types_and_values_name_the_field() {
    let e =
        err("kind: containers\nmeta: {group: g, name: n}\nspec:\n  image: x\n  replicas: two\n");
    assert_eq!(
        (e.kind, e.line, e.column, e.path.as_str()),
        (ErrorKind::InvalidType, 5, 13, "spec.replicas")
    );
    assert!(
        e.to_string()
            .starts_with("app.yaml:5:13: spec.replicas: expected"),
        "{e}"
    );

    let e = err("kind: containers\nmeta: {group: g, name: n}\nspec:\n  image: [a, b]\n");
    assert_eq!(
        (e.kind, e.line, e.path.as_str()),
        (ErrorKind::InvalidType, 4, "spec.image")
    );

    let e = err(
        "kind: containers\nmeta: {group: g, name: n}\nspec:\n  image: x\n  readiness:\n    - name: r\n      command: [true]\n      timeout: soon\n",
    );
    assert_eq!(
        (e.kind, e.line, e.path.as_str()),
        (ErrorKind::InvalidValue, 8, "spec.readiness[0].timeout")
    );
    assert!(e.message.contains("invalid duration \"soon\""), "{e}");

    let e = err(
        "kind: containers\nmeta: {group: g, name: n}\nspec:\n  image: x\n  spread: {spread: uniformm}\n",
    );
    assert_eq!(
        (e.kind, e.line, e.path.as_str()),
        (ErrorKind::InvalidValue, 5, "spec.spread.spread")
    );
    assert_eq!(e.suggestion.as_deref(), Some("uniform"));

    let e = err("kind: pods\nmeta: {group: g, name: n}\nspec: {}\n");
    assert_eq!(
        (e.kind, e.line, e.column, e.path.as_str()),
        (ErrorKind::InvalidValue, 1, 1, "kind")
    );
    assert!(e.message.contains("expected one of containers,"), "{e}");
    // `kind: container` (singular) is read as containers.
    assert_eq!(
        parse_str(
            "a.yaml",
            "kind: container\nmeta: {group: g, name: n}\nspec: {image: x}\n"
        )
        .unwrap()[0]
            .kind,
        Kind::Containers
    );

    let e = err("kind: containers\nmeta:\n  group: g\nspec: {image: x}\n");
    assert_eq!(
        (e.kind, e.line, e.path.as_str()),
        (ErrorKind::MissingField, 3, "meta.name")
    );
    assert_eq!(
        e.to_string(),
        "app.yaml:3:3: meta.name: required field is missing"
    );

    let e = err("kind: containers\nmeta: {group: g, name: n}\n");
    assert_eq!((e.kind, e.path.as_str()), (ErrorKind::MissingField, "spec"));

    let e = err(
        "kind: containers\nmeta: {group: g, name: n}\nspec:\n  image: x\n  volumes:\n    - hostPath: /x\n",
    );
    assert_eq!(
        (e.kind, e.path.as_str()),
        (ErrorKind::MissingField, "spec.volumes[0].mountPoint")
    );

    let e = err(
        "kind: containers\nmeta: {group: g, name: n}\nspec:\n  image: x\n  privileged: maybe\n",
    );
    assert_eq!(
        e.to_string(),
        "app.yaml:5:15: spec.privileged: expected true or false, found \"maybe\""
    );

    let e = err("meta: {group: g, name: n}\nspec: {image: x}\nkind: containers\n");
    assert_eq!(
        e.to_string(),
        "app.yaml:2:1: spec: expected `kind` first, found `spec` before `kind`"
    );
    assert_eq!(e.line, 2, "{e}");
}

#[test]
fn syntax_errors_are_placed() {
    let e = err("kind: containers\nmeta: {group: g, name: n\nspec:\n  image: x\n");
    assert_eq!(e.kind, ErrorKind::Syntax);
    assert!(e.line >= 2, "{e}");
    assert!(e.to_string().starts_with("app.yaml:"), "{e}");
    let e = err("kind: containers\nkind: secret\nmeta: {group: g, name: n}\nspec: {}\n");
    assert_eq!(e.line, 2, "duplicate keys are refused: {e}");
    let e = err("kind: containers\nmeta: {group: g, name: n}\nspec:\n\timage: x\n");
    assert!(e.line >= 3, "{e}");
}

fn invalid(text: &str) -> (u64, String, String) {
    let e = err(text);
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
    (e.line, e.path.clone(), e.to_string())
}

#[test]
fn validation_errors_point_at_the_field() {
    let head = "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: n\nspec:\n  image: x\n";
    let (line, path, text) =
        invalid("kind: containers\nmeta:\n  group: My_Group\n  name: n\nspec: {image: x}\n");
    assert_eq!((line, path.as_str()), (3, "meta.group"));
    assert!(
        text.starts_with("app.yaml:3:3: meta.group: \"My_Group\" is not a DNS label"),
        "{text}"
    );
    assert_eq!(
        invalid("kind: containers\nmeta: {group: g, name: -n}\nspec: {image: x}\n").1,
        "meta.name"
    );
    let long = "a".repeat(30);
    let (_, path, text) = invalid(&format!(
        "kind: containers\nmeta: {{group: {long}, name: {long}}}\nspec: {{image: x, replicas: 100}}\n"
    ));
    assert_eq!(path, "meta.name");
    assert!(text.contains("longer than 63"), "{text}");
    // The same names are fine for a secret, which has no replicas.
    assert!(
        parse_str(
            "a.yaml",
            &format!("kind: secret\nmeta: {{group: {long}, name: {long}}}\nspec: {{}}\n")
        )
        .is_ok()
    );
    assert_eq!(invalid("kind: containers\nprefix: example.com/v2\nmeta: {group: g, name: n}\nspec: {image: x}\n").1, "prefix");
    assert_eq!(
        invalid("kind: containers\nmeta: {group: g, name: n}\nspec: {replicas: 1}\n").1,
        "spec.image"
    );
    assert_eq!(
        invalid(&format!("{head}  replicas: 1001\n")),
        (
            8,
            "spec.replicas".into(),
            "app.yaml:8:3: spec.replicas: 1001 replicas is more than the limit of 1000".into()
        )
    );
    let (line, path, text) = invalid(&format!(
        "{head}  ports:\n    - container: 80\n    - container: \"70000\"\n"
    ));
    assert_eq!((line, path.as_str()), (10, "spec.ports[1].container"));
    assert!(
        text.ends_with("port 70000 is out of range 1..=65535"),
        "{text}"
    );
    assert_eq!(
        invalid(&format!(
            "{head}  ports:\n    - container: 80\n      host: 0.0.0.0:0\n"
        ))
        .1,
        "spec.ports[0].host"
    );
    assert_eq!(
        invalid(&format!("{head}  spread:\n    spread: specific\n")),
        (
            8,
            "spec.spread.agents".into(),
            "app.yaml:8:3: spec.spread.agents: spread: specific needs a list of agents".into()
        )
    );
    assert_eq!(
        invalid(&format!(
            "{head}  spread:\n    spread: specific\n    agents: [0]\n"
        ))
        .1,
        "spec.spread.agents[0]"
    );
    assert_eq!(
        invalid(&format!(
            "{head}  readiness:\n    - name: r\n      timeout: 5s\n"
        ))
        .1,
        "spec.readiness[0].url"
    );
    assert_eq!(
        invalid(&format!(
            "{head}  readiness:\n    - name: r\n      type: command\n"
        ))
        .1,
        "spec.readiness[0].command"
    );
    assert_eq!(
        invalid(&format!(
            "{head}  readiness:\n    - name: r\n      url: ftp://x\n"
        ))
        .1,
        "spec.readiness[0].url"
    );
    assert_eq!(
        invalid(&format!(
            "{head}  dependencies:\n    - group: G\n      name: x\n"
        ))
        .1,
        "spec.dependencies[0].group"
    );
    assert_eq!(
        invalid(&format!(
            "{head}  resources:\n    - {{group: g, name: r, key: k, mountPoint: relative}}\n"
        ))
        .1,
        "spec.resources[0].mountPoint"
    );
    assert_eq!(
        invalid(&format!("{head}  limits: {{memory: lots}}\n")).1,
        "spec.limits.memory"
    );
    assert_eq!(
        invalid(&format!("{head}  limits: {{cpus: 0}}\n")).1,
        "spec.limits.cpus"
    );
    assert_eq!(
        invalid(&format!(
            "{head}  restart: {{initialBackoff: 10s, maxBackoff: 1s}}\n"
        ))
        .1,
        "spec.restart.maxBackoff"
    );
    assert_eq!(
        invalid(&format!("{head}  rollingUpdate: {{maxUnavailable: 0}}\n")).1,
        "spec.rollingUpdate"
    );
    assert_eq!(
        invalid(&format!("{head}  initContainer:\n    image: \"\"\n")).1,
        "spec.initContainer.image"
    );
    assert_eq!(
        invalid("kind: gitops\nmeta: {group: g, name: n}\nspec:\n  revision: main\n").1,
        "spec.repoURL"
    );
    assert_eq!(
        invalid(&format!("{BUSYBOX}---\n{BUSYBOX}")).0,
        24,
        "the second copy is the duplicate"
    );

    // Templates in string fields are left for later.
    let ok = format!(
        "{head}  ports:\n    - container: (( .port ))\n      host: (( .host ))\n  readiness:\n    - name: r\n      url: (( .url ))\n      method: (( .method ))\n  limits: {{memory: (( .mem ))}}\n  volumes:\n    - {{hostPath: /x, mountPoint: (( .dir ))}}\n"
    );
    parse_str("t.yaml", &ok).unwrap();
}

#[test]
fn size_and_budget_guards() {
    let big = format!(
        "kind: secret\nmeta: {{group: g, name: n}}\nspec:\n  data:\n    k: \"{}\"\n",
        "x".repeat(MAX_INPUT_BYTES)
    );
    assert_eq!(err(&big).kind, ErrorKind::TooLarge);

    let mut bomb = String::from(
        "kind: custom\nmeta: {group: g, name: n}\nspec:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for i in 1..12 {
        let p = i - 1;
        bomb.push_str(&format!(
            "  a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let started = std::time::Instant::now();
    let e = err(&bomb);
    assert_eq!(e.kind, ErrorKind::Budget, "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let deep = format!(
        "kind: custom\nmeta: {{group: g, name: n}}\nspec:\n  a: {}{}\n",
        "[".repeat(500),
        "]".repeat(500)
    );
    assert!(matches!(
        err(&deep).kind,
        ErrorKind::Budget | ErrorKind::Syntax
    ));
}

#[test]
fn json_round_trip() {
    for text in [BUSYBOX, MYSQL, GITOPS, OTHERS] {
        for o in parse_str("x.yaml", text).unwrap() {
            let json = serde_json::to_string(&o).unwrap();
            let back: Object = serde_json::from_str(&json).unwrap();
            assert_eq!(back, o, "{json}");
        }
    }
    let o = &parse_str("x.yaml", BUSYBOX).unwrap()[0];
    let v = serde_json::to_value(o).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "kind": "containers",
            "prefix": "simplecontainer.io/v1",
            "meta": {"group": "busybox", "name": "busybox", "labels": {"app": "demo"}},
            "spec": {
                "image": "busybox", "tag": "1.37.0", "replicas": 2,
                "entrypoint": ["sh", "-c"], "args": ["sleep 3600"],
                "networks": [{"group": "internal", "name": "cluster"}],
                "spread": {"spread": "uniform"}
            }
        })
    );
}

#[test]
fn yaml_round_trip() {
    let mut all = Vec::new();
    for text in [BUSYBOX, MYSQL, GITOPS, OTHERS] {
        all.extend(parse_str("x.yaml", text).unwrap());
    }
    let yaml = to_yaml(&all).unwrap();
    let back = parse_str("out.yaml", &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(back, all, "{yaml}");
    assert_eq!(to_yaml(&back).unwrap(), yaml, "output is stable");
    assert!(
        yaml.starts_with("kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n"),
        "{yaml}"
    );
}

#[test]
fn directory_and_pack_loading() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("b/nested")).unwrap();
    std::fs::write(root.join("b/nested/gitops.yml"), GITOPS).unwrap();
    std::fs::write(root.join("a.yaml"), BUSYBOX).unwrap();
    std::fs::write(root.join("c.yaml"), OTHERS).unwrap();
    std::fs::write(root.join("README.md"), "not yaml").unwrap();
    let objs = load_path(root).unwrap();
    let keys: Vec<String> = objs.iter().map(|o| o.key().to_string()).collect();
    assert_eq!(
        keys,
        [
            "containers/busybox/busybox",
            "gitops/infra/apps",
            "httpauth/infra/git-auth",
            "certkey/infra/git-key",
            "network/net/backend",
            "volume/data/shared",
            "resource/mysql/cnf",
            "custom/x/y"
        ]
    );
    assert_eq!(load_path(&root.join("a.yaml")).unwrap().len(), 1);

    // A pack, loaded directly and as a sub-folder of a tree.
    let pack = root.join("packs/mysql");
    std::fs::create_dir_all(pack.join("definitions")).unwrap();
    std::fs::write(
        pack.join("Pack.yaml"),
        "name: mysql
version: 0.1.0
",
    )
    .unwrap();
    std::fs::write(pack.join("definitions/mysql.yaml"), MYSQL).unwrap();
    std::fs::write(
        pack.join("values.yaml"),
        "not: a definition
",
    )
    .unwrap();
    let (manifest, objs) = load_pack(&pack).unwrap();
    assert_eq!(
        (
            manifest.name.as_str(),
            manifest.version.as_str(),
            objs.len()
        ),
        ("mysql", "0.1.0", 3)
    );
    assert_eq!(load_path(&pack).unwrap(), objs);
    assert_eq!(load_path(root).unwrap().len(), 11);

    // Errors name the file.
    std::fs::write(
        root.join("d.yaml"),
        "kind: secret
meta: {group: g, name: n}
spec: {dta: {}}
",
    )
    .unwrap();
    let e = load_path(root).unwrap_err();
    assert_eq!(e.file, root.join("d.yaml").display().to_string());
    assert_eq!(
        (e.line, e.path.as_str(), e.suggestion.as_deref()),
        (3, "spec.dta", Some("data"))
    );
    std::fs::remove_file(root.join("d.yaml")).unwrap();

    // The same object in two files.
    std::fs::write(root.join("e.yaml"), BUSYBOX).unwrap();
    assert!(
        load_path(root)
            .unwrap_err()
            .to_string()
            .contains("containers/busybox/busybox is defined twice")
    );

    let empty_pack = root.join("empty");
    std::fs::create_dir_all(&empty_pack).unwrap();
    std::fs::write(
        empty_pack.join("Pack.yaml"),
        "name: e
version: 1
",
    )
    .unwrap();
    assert_eq!(load_pack(&empty_pack).unwrap_err().kind, ErrorKind::Pack);
    assert_eq!(
        load_path(&root.join("missing")).unwrap_err().kind,
        ErrorKind::Io
    );
}

/// Deterministic pseudo-random mutations of valid inputs must give `Ok` or `Err`, never a panic.
#[test]
fn never_panics_on_mutations() {
    let mut seed: u64 = 0x5eed_1234_abcd_0001;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let inserts: &[&str] = &[
        "\n", ":", " ", "-", "[", "]", "{", "}", "&a", "*a", "\"", "'", "#", "---\n", "((", "\t",
        "é", "!!", "0",
    ];
    let mut outcomes = [0usize; 2];
    for base in [BUSYBOX, MYSQL, GITOPS, OTHERS] {
        for _ in 0..300 {
            let mut bytes = base.as_bytes().to_vec();
            for _ in 0..(1 + next() % 3) {
                let at = (next() as usize) % (bytes.len() + 1);
                match next() % 4 {
                    0 => bytes.truncate(at),
                    1 if at < bytes.len() => bytes[at] ^= 1 << (next() % 7),
                    2 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => {
                        let s = inserts[(next() as usize) % inserts.len()];
                        bytes.splice(at..at, s.bytes());
                    }
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let r = parse_str("fuzz.yaml", &text);
            if let Err(e) = &r {
                let _ = e.to_string();
            }
            outcomes[usize::from(r.is_ok())] += 1;
        }
    }
    assert!(outcomes[0] > 100 && outcomes[1] > 10, "{outcomes:?}");
}

const SC_FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/simplecontainer"
);

fn fixture(name: &str) -> (String, String) {
    let path = format!("{SC_FIXTURES}/{name}");
    let text = std::fs::read_to_string(&path).unwrap();
    (name.to_string(), text)
}

#[test]
fn resource_permissions_are_file_info_and_refused_when_set() {
    let (name, text) = fixture("nginx-permissions.yaml");
    let e = parse_str(&name, &text).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
    assert_eq!(e.path, "spec.resources[0].permissions", "{e}");
    assert_eq!(e.line, 29, "{e}");
    assert!(
        e.to_string()
            .contains("smr does not set the owner, group or mode of mounted files yet"),
        "{e}"
    );
    // An empty `permissions: {}` asks for nothing and is accepted (spread-unset.yaml).
    // The mode is read as simplecontainer's reader reads it: 0640 is octal.
    let info: FileInfo = serde_saphyr::from_str("owner: 101\npermissions: 0640\n").unwrap();
    assert_eq!(info.permissions, Some(0o640));
    assert_eq!(info.owner, Some(101));
    let info: FileInfo = serde_saphyr::from_str("permissions: \"0o755\"\n").unwrap();
    assert_eq!(info.permissions, Some(0o755));
    let info: FileInfo = serde_saphyr::from_str("permissions: 420\n").unwrap();
    assert_eq!(info.permissions, Some(0o644));
    let json = serde_json::to_string(&info).unwrap();
    assert_eq!(json, r#"{"permissions":"0644"}"#);
    assert_eq!(serde_json::from_str::<FileInfo>(&json).unwrap(), info);
    assert!(serde_saphyr::from_str::<FileInfo>("permissions: \"rw\"\n").is_err());
    assert!(serde_saphyr::from_str::<FileInfo>("permissions: 99999\n").is_err());
}

#[test]
fn spread_empty_means_uniform() {
    let (name, text) = fixture("spread-unset.yaml");
    let objs = parse_str(&name, &text).unwrap();
    let c = containers(&objs[0]);
    assert_eq!(
        c.spread.as_ref().map(|s| s.spread),
        Some(SpreadMode::Uniform)
    );
    assert_eq!(c.resources[0].file_info, Some(FileInfo::default()));
    // Written back as `uniform`.
    assert!(to_yaml(&objs).unwrap().contains("spread: uniform"));
}

#[test]
fn command_with_args_names_both_at_the_second() {
    let (name, text) = fixture("command-and-args.yaml");
    let e = parse_str(&name, &text).unwrap_err();
    assert_eq!(
        e.to_string(),
        "command-and-args.yaml:11:3: spec.args: `command` and `args` are two names of the same field (smr reads `command` as `args`): write the program as `entrypoint` and its arguments as `args`"
    );
    // The same inside an init container, and in the other order.
    let e = err(
        "kind: containers\nmeta: {group: a, name: b}\nspec:\n  image: x\n  initContainer:\n    image: y\n    args: [a]\n    command: [b]\n",
    );
    assert_eq!(e.line, 8, "{e}");
    assert_eq!(e.path, "spec.initContainer.command", "{e}");
}

#[test]
fn duplicate_key_has_no_library_hint() {
    let (name, text) = fixture("duplicate-key.yaml");
    let e = parse_str(&name, &text).unwrap_err();
    assert_eq!(
        e.to_string(),
        "duplicate-key.yaml:10:3: spec.tag: key \"tag\" is given twice in the same mapping"
    );
    assert!(!e.to_string().contains("DuplicateKeyPolicy"));
}

#[test]
fn custom_kind_takes_any_prefix() {
    let (name, text) = fixture("traefik-dynamic.yaml");
    let objs = parse_str(&name, &text).unwrap();
    assert_eq!(objs[0].kind, Kind::Custom);
    assert_eq!(objs[0].prefix, "traefik.io/v1");
    assert_eq!(objs[0].address(), "traefik.io/v1/custom/proxy/routes");
    assert_eq!(
        objs[1].address(),
        "simplecontainer.io/v1/containers/proxy/provider"
    );
    // The prefix survives the store's JSON and YAML.
    let json = serde_json::to_string(&objs[0]).unwrap();
    assert_eq!(serde_json::from_str::<Object>(&json).unwrap(), objs[0]);
    assert_eq!(
        parse_str("again.yaml", &to_yaml(&objs).unwrap()).unwrap(),
        objs
    );

    // Other kinds keep simplecontainer's prefix; a custom prefix must look like one.
    let e = err(
        "prefix: traefik.io/v1\nkind: containers\nmeta: {group: g, name: n}\nspec: {image: x}\n",
    );
    assert_eq!(e.path, "prefix");
    assert!(
        e.to_string()
            .contains("only kind custom takes other prefixes"),
        "{e}"
    );
    let e = err("prefix: Traefik\nkind: custom\nmeta: {group: g, name: n}\nspec: {}\n");
    assert_eq!(
        e.to_string(),
        "app.yaml:1:1: prefix: \"Traefik\" is not a prefix: write DOMAIN/VERSION, e.g. traefik.io/v1"
    );

    // Custom objects of different prefixes are different objects, keyed PREFIX/KIND/GROUP/NAME;
    // the built-in kinds (and custom objects with simplecontainer's prefix) keep KIND/GROUP/NAME.
    let both = parse_str(
        "two.yaml",
        "prefix: a.io/v1\nkind: custom\nmeta: {group: g, name: n}\nspec: {}\n---\nprefix: b.io/v1\nkind: custom\nmeta: {group: g, name: n}\nspec: {}\n---\nkind: custom\nmeta: {group: g, name: n}\nspec: {}\n",
    )
    .unwrap();
    let keys: Vec<String> = both.iter().map(|o| o.key().to_string()).collect();
    assert_eq!(
        keys,
        ["a.io/v1/custom/g/n", "b.io/v1/custom/g/n", "custom/g/n"]
    );
    assert_eq!(objs[1].key().to_string(), "containers/proxy/provider");
    let e = err(
        "prefix: a.io/v1\nkind: custom\nmeta: {group: g, name: n}\nspec: {}\n---\nprefix: a.io/v1\nkind: custom\nmeta: {group: g, name: n}\nspec: {x: 1}\n",
    );
    assert!(
        e.to_string()
            .contains("a.io/v1/custom/g/n is defined twice (documents 1 and 2)"),
        "{e}"
    );

    // Keys and addresses with a prefix: parsed, shown and serialized as written; the standard
    // prefix (or its alias) is the key without one; only custom objects take another.
    let a: Address = "traefik.io/v1/custom/proxy/routes".parse().unwrap();
    assert_eq!(a.prefix.as_deref(), Some("traefik.io/v1"));
    assert_eq!(a.key, objs[0].key());
    assert_eq!(a.key.to_string(), "traefik.io/v1/custom/proxy/routes");
    assert_eq!(a.key.prefix(), "traefik.io/v1");
    assert!(a.matches(&objs[0]));
    let other: Address = "other.io/v1/custom/proxy/routes".parse().unwrap();
    assert!(!other.matches(&objs[0]));
    let plain: Address = "custom/proxy/routes".parse().unwrap();
    assert!(plain.prefix.is_none() && !plain.matches(&objs[0]));
    assert!("custom/g/n".parse::<Address>().unwrap().matches(&both[2]));
    assert_eq!(plain.key.prefix(), PREFIX);
    for standard in [
        "simplecontainer.io/v1/custom/g/n",
        "simplecontainers.io/v1/custom/g/n",
    ] {
        assert_eq!(
            standard.parse::<ObjectKey>().unwrap(),
            ObjectKey::new(Kind::Custom, "g", "n")
        );
    }
    assert_eq!(
        "simplecontainer.io/v1/containers/g/n"
            .parse::<ObjectKey>()
            .unwrap()
            .to_string(),
        "containers/g/n"
    );
    assert_eq!(
        "traefik.io/v1/containers/g/n"
            .parse::<ObjectKey>()
            .unwrap_err()
            .to_string(),
        "object address \"traefik.io/v1/containers/g/n\": only custom objects have a prefix other than simplecontainer.io/v1"
    );
    let json = serde_json::to_string(&a.key).unwrap();
    assert_eq!(json, "\"traefik.io/v1/custom/proxy/routes\"");
    assert_eq!(serde_json::from_str::<ObjectKey>(&json).unwrap(), a.key);
    assert!("nodots/v1/custom/proxy/routes".parse::<Address>().is_err());
    assert!("a.io/v1/custom/g".parse::<ObjectKey>().is_err());
    // simplecontainer's long forms, with the category `kind`.
    let long: Address = "traefik.io/v1/kind/custom/proxy/routes".parse().unwrap();
    assert_eq!(long.key, objs[0].key());
    assert_eq!(long.prefix.as_deref(), Some("traefik.io/v1"));
    assert_eq!(
        "simplecontainer.io/v1/kind/containers/proxy/provider"
            .parse::<ObjectKey>()
            .unwrap(),
        objs[1].key()
    );
    assert_eq!(
        "kind/containers/proxy/provider"
            .parse::<ObjectKey>()
            .unwrap(),
        objs[1].key()
    );
    assert!(
        "state/containers/proxy/provider"
            .parse::<ObjectKey>()
            .is_err()
    );
    assert!(is_prefix("simplecontainer.io/v1") && !is_prefix("x.io/") && !is_prefix("x.io"));
}

#[test]
fn pack_variables_defaults_and_set() {
    let repo = Path::new(SC_FIXTURES).join("repo");
    let pack = repo.join("packs/redis");
    // Defaults from definitions/variables.yaml; variables.yaml itself is not a definition.
    let (manifest, objs) = load_pack(&pack).unwrap();
    assert_eq!(manifest.name, "redis");
    let keys: Vec<String> = objs.iter().map(|o| o.key().to_string()).collect();
    assert_eq!(
        keys,
        ["configuration/cache/redis", "containers/cache/redis"]
    );
    let c = containers(&objs[1]);
    assert_eq!(c.image_ref(), "redis:7.2.5");
    assert_eq!(c.replicas, 1);
    assert_eq!(c.ports[0].container, "6379");

    // --set overrides, nested keys included; every --set must be used.
    let mut loader = Loader::new(&[
        "redis.tag=7.4".into(),
        "replicas=3".into(),
        "group=kv".into(),
    ])
    .unwrap();
    let objs = loader.load(&pack).unwrap();
    loader.finish().unwrap();
    let c = containers(&objs[1]);
    assert_eq!(c.image_ref(), "redis:7.4");
    assert_eq!(c.replicas, 3);
    assert_eq!(objs[1].key().to_string(), "containers/kv/redis");
    let mut loader = Loader::new(&["redis.tga=7.4".into()]).unwrap();
    loader.load(&pack).unwrap();
    assert_eq!(
        loader.finish().unwrap_err().to_string(),
        "--set: --set redis.tga: no template of the pack uses {{ .redis.tga }}"
    );
    let mut loader = Loader::new(&["tag=1".into()]).unwrap();
    loader.load(&repo.join("apps")).unwrap();
    assert!(
        loader
            .finish()
            .unwrap_err()
            .to_string()
            .contains("no pack was given")
    );
    assert!(Loader::new(&["novalue".into()]).is_err());

    // The rendered text, as `smrctl template` shows it.
    let rendered = Loader::new(&[]).unwrap().render(&pack).unwrap();
    assert_eq!(rendered.files.len(), 2);
    assert!(
        rendered.files[1]
            .1
            .contains("image: redis\n  tag: \"7.2.5\"\n  replicas: 1\n"),
        "{}",
        rendered.files[1].1
    );
}

#[test]
fn pack_undefined_variable_names_it_and_the_file() {
    let pack = Path::new(SC_FIXTURES).join("broken-pack");
    let e = load_path(&pack).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Pack);
    assert_eq!(
        e.to_string(),
        format!(
            "{}:8: variable `tag` is not defined (give it in definitions/variables.yaml or with --set tag=VALUE)",
            pack.join("definitions/web.yaml").display()
        )
    );
    let mut loader = Loader::new(&["tag=1.27".into()]).unwrap();
    let objs = loader.load(&pack).unwrap();
    loader.finish().unwrap();
    assert_eq!(containers(&objs[0]).image_ref(), "nginx:1.27");
}

#[test]
fn repository_root_skips_dot_folders_and_reads_packs() {
    let repo = Path::new(SC_FIXTURES).join("repo");
    // .github/workflows/ci.yaml is not a definition and would not parse as one.
    assert!(
        parse_str(
            "ci.yaml",
            &std::fs::read_to_string(repo.join(".github/workflows/ci.yaml")).unwrap()
        )
        .is_err()
    );
    let objs = load_path(&repo).unwrap();
    let keys: Vec<String> = objs.iter().map(|o| o.key().to_string()).collect();
    assert_eq!(
        keys,
        [
            "containers/apps/busybox",
            "configuration/cache/redis",
            "containers/cache/redis"
        ]
    );
}

#[test]
fn lone_pack_files_point_at_the_pack_folder() {
    let pack = Path::new(SC_FIXTURES).join("repo/packs/redis");
    let e = load_path(&pack.join("Pack.yaml")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Pack);
    assert_eq!(
        e.to_string(),
        format!(
            "{}: this is pack metadata; apply the pack folder {} instead",
            pack.join("Pack.yaml").display(),
            pack.display()
        )
    );
    let e = load_path(&pack.join("definitions/variables.yaml")).unwrap_err();
    assert!(
        e.to_string()
            .contains("this is a pack's variables file; apply the pack folder"),
        "{e}"
    );
    let e = load_path(&pack.join("definitions")).unwrap_err();
    assert!(
        e.to_string()
            .contains("this is the definitions folder of a pack; apply the pack folder"),
        "{e}"
    );
}

#[test]
fn fields_smr_does_not_act_on_are_refused() {
    let e = err(
        "kind: containers\nmeta: {group: a, name: b}\nspec:\n  image: x\n  nodes: [smr-agent-1]\n",
    );
    assert_eq!(e.path, "spec.nodes");
    assert!(e.to_string().contains("spread: {spread: specific"), "{e}");
    let e = err(
        "kind: containers\nmeta: {group: a, name: b}\nspec:\n  image: x\n  volumes: [{hostPath: /srv, mountPoint: /data, subPath: logs}]\n",
    );
    assert_eq!(e.path, "spec.volumes[0].subPath");
    parse_str("ok.yaml", "kind: containers\nmeta: {group: a, name: b}\nspec:\n  image: x\n  nodes: []\n  volumes: [{hostPath: /srv, mountPoint: /data, subPath: /}]\n").unwrap();
}

#[test]
fn the_documentation_constructs_parse() {
    let objs = load_path(&Path::new(SC_FIXTURES).join("docs")).unwrap();
    let keys: Vec<String> = objs.iter().map(|o| o.key().to_string()).collect();
    assert_eq!(
        keys,
        [
            "configuration/shop/db",
            "secret/shop/db-password",
            "resource/shop/db",
            "containers/shop/db",
            "containers/shop/web",
            "httpauth/shop/git",
            "certkey/shop/deploy-key",
            "gitops/shop/apps",
            "volume/shop/cache",
        ]
    );
    // Its network (driver bridge, node-local) parses on its own (applying it: see networks).
    let (name, text) = fixture("network-bridge.yaml");
    let net = parse_str(&name, &text).unwrap();
    assert_eq!(net[0].key().to_string(), "network/shop/backend");
    assert_eq!(net[0].prefix, PREFIX);
    let web = containers(&objs[4]);
    assert_eq!(web.init_container.as_ref().unwrap().image, "busybox");
    assert_eq!(web.dependencies[0].name, "*");
    assert!(objs.iter().all(|o| o.prefix == PREFIX));
}

#[test]
fn pack_templates_use_simplecontainers_functions_and_conditionals() {
    let pack = Path::new(SC_FIXTURES).join("functions-pack");
    let (manifest, objs) = load_pack(&pack).unwrap();
    assert_eq!(manifest.name, "whoami");
    let keys: Vec<String> = objs.iter().map(|o| o.key().to_string()).collect();
    assert_eq!(
        keys,
        ["configuration/demo/who-am-i", "containers/demo/who-am-i"]
    );
    let Spec::Configuration(conf) = &objs[0].spec else {
        panic!("{:?}", objs[0].spec)
    };
    let data: Vec<(&str, &str)> = conf
        .data
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        data,
        [
            ("hosts", "whoami.example.test who.example.test"),
            ("image", "traefik/whoami:v1.10"),
            ("motd", "welcome\nto the demo\n"),
            ("password", "Y2hhbmdlbWU="),
        ]
    );
    assert_eq!(objs[1].meta.labels["env"], "production");
    let c = containers(&objs[1]);
    assert_eq!(c.image_ref(), "traefik/whoami:v1.10");
    assert_eq!(c.replicas, 2);
    assert_eq!(
        c.envs,
        [
            "APP_ENV=PRODUCTION",
            "APP_NAME=who_am_i",
            "HOST_WHOAMI=whoami.example.test",
            "HOST_WHO=who.example.test"
        ]
    );
    // --set fills the conditional (any non-empty value is true, as in Go) and the default.
    let mut loader = Loader::new(&[
        "debug=1".into(),
        "password=s3cret".into(),
        "env=Staging".into(),
    ])
    .unwrap();
    let objs = loader.load(&pack).unwrap();
    loader.finish().unwrap();
    let Spec::Configuration(conf) = &objs[0].spec else {
        panic!()
    };
    assert_eq!(conf.data["password"], "czNjcmV0");
    assert_eq!(
        containers(&objs[1]).envs[..3],
        ["APP_ENV=STAGING", "APP_NAME=who_am_i", "DEBUG=1"]
    );
    assert_eq!(objs[1].meta.labels["env"], "staging");
    // A function smr does not have is refused naming it, the file and the line.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("definitions")).unwrap();
    std::fs::write(dir.path().join("Pack.yaml"), "name: p\nversion: 1.0.0\n").unwrap();
    std::fs::write(
        dir.path().join("definitions/app.yaml"),
        "kind: configuration\nmeta: {group: a, name: b}\nspec:\n  data:\n    x: {{ .x | toYaml }}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("definitions/variables.yaml"), "x: 1\n").unwrap();
    let e = load_path(dir.path()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Pack);
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!(
            "{}:5: `{{{{ .x | toYaml }}}}`: function \"toYaml\" is not supported in pack templates (supported: and, ",
            dir.path().join("definitions/app.yaml").display()
        )),
        "{shown}"
    );
}
