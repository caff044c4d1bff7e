//! What a CI step passes in and reads out: `-q`, `--label`,
//! `--metadata-file` (checked against skopeo and a real registry).

use crate::common;

use std::process::Command;

use common::{run_ok, stderr, stdout, tool, Env, RegistryConf, RegistryGuard};
use serde_json::Value;

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("metadata file")).expect("JSON")
}

#[test]
fn quiet_labels_and_metadata_file() {
    let Some(skopeo) = tool("skopeo", "skopeo") else {
        return;
    };
    let env = Env::new();
    let ctx = env.context(
        "c",
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY a.txt /a.txt\nLABEL from=file\n",
            ),
            ("a.txt", "hello\n"),
        ],
    );
    let meta = env.path("out/meta.json");
    std::fs::create_dir_all(meta.parent().unwrap()).unwrap();
    let args = [
        "build",
        "-q",
        "--label",
        "org.example.ci=yes",
        "--label",
        "from=flag",
        "--metadata-file",
        meta.to_str().unwrap(),
        "-t",
        "ci:v1",
        ctx.to_str().unwrap(),
    ];
    let out = env.rbuild_ok(&args);
    // -q: the image ID alone on stdout, nothing on stderr.
    let id = stdout(&out);
    assert_eq!(stderr(&out), "");
    let id = id.strip_suffix('\n').expect("one line");
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id:?}");

    let oci = format!("oci:{}:ci:v1", env.root().display());
    let cfg: Value = serde_json::from_str(&run_ok(
        Command::new(&skopeo).args(["inspect", "--config", &oci]),
    ))
    .unwrap();
    let labels = &cfg["config"]["Labels"];
    assert_eq!(labels["org.example.ci"], "yes", "{cfg}");
    assert_eq!(labels["from"], "flag", "a --label overrides LABEL: {cfg}");
    let raw = run_ok(Command::new(&skopeo).args(["inspect", "--raw", &oci]));
    let manifest_digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(raw.as_bytes()))
    );

    let m = read_json(&meta);
    assert_eq!(m["containerimage.config.digest"], id);
    assert_eq!(m["containerimage.digest"], manifest_digest.as_str());
    assert_eq!(
        m["containerimage.descriptor"]["digest"],
        manifest_digest.as_str()
    );
    assert_eq!(m["containerimage.descriptor"]["size"], raw.len());
    assert_eq!(
        m["containerimage.descriptor"]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(m["image.name"], "docker.io/library/ci:v1");
    let steps = m["rbuild.steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 1, "{m}");
    assert_eq!(steps[0]["cached"], false);
    assert!(steps[0]["name"]
        .as_str()
        .unwrap()
        .contains("COPY a.txt /a.txt"));
    assert!(steps[0]["layer"].as_str().unwrap().starts_with("sha256:"));
    assert!(steps[0]["seconds"].as_f64().unwrap() >= 0.0);
    // No temp file is left beside it.
    let left: Vec<_> = std::fs::read_dir(meta.parent().unwrap()).unwrap().collect();
    assert_eq!(left.len(), 1);

    // Again: the step is a cache hit with the same layer.
    env.rbuild_ok(&args);
    let again = read_json(&meta);
    assert_eq!(again["rbuild.steps"][0]["cached"], true);
    assert_eq!(again["rbuild.steps"][0]["layer"], steps[0]["layer"]);
    assert_eq!(again["containerimage.digest"], m["containerimage.digest"]);
}

#[test]
fn bad_label_names_the_flag() {
    let env = Env::new();
    let ctx = env.context("c", &[("Dockerfile", "FROM scratch\n")]);
    let out = env.rbuild(&["build", "--label", "=x", ctx.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid --label \"=x\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn metadata_after_push_holds_the_registry_digest() {
    let (Some(_), Some(skopeo)) = (
        tool("docker-registry", "docker-registry"),
        tool("skopeo", "skopeo"),
    ) else {
        return;
    };
    let reg = RegistryGuard::start(RegistryConf::default());
    let name = format!("{}/ci/app:1", reg.addr());
    let env = Env::new();
    let ctx = env.context(
        "c",
        &[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "x")],
    );
    let meta = env.path("meta.json");
    let out = env.rbuild_ok(&[
        "build",
        "--push",
        "-q",
        "--insecure-registry",
        &reg.addr(),
        "--metadata-file",
        meta.to_str().unwrap(),
        "-t",
        &name,
        ctx.to_str().unwrap(),
    ]);
    let printed = stdout(&out).trim().to_string();
    let remote: Value = serde_json::from_str(&run_ok(
        Command::new(&skopeo)
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{name}")),
    ))
    .unwrap();
    let digest = remote["Digest"].as_str().expect("Digest");
    assert_eq!(printed, digest, "-q --push prints the pushed digest");
    let m = read_json(&meta);
    assert_eq!(m["containerimage.digest"], digest);
    assert_eq!(m["rbuild.pushed"][0]["digest"], digest);
    assert_eq!(m["image.name"], name.as_str());
}

#[test]
fn add_host_reaches_run_and_the_cache_key() {
    let Some(busybox) = tool("busybox", "busybox-static") else {
        return;
    };
    let env = Env::new();
    let ctx = env.context(
        "c",
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"cp\", \"/etc/hosts\", \"/hosts.txt\"]\n",
        )],
    );
    std::fs::copy(&busybox, ctx.join("busybox")).unwrap();
    let out_dir = env.path("out");
    let meta = env.path("m.json");
    let build = |extra: &[&str]| {
        let mut args = vec![
            "build",
            "--metadata-file",
            meta.to_str().unwrap(),
            "-o",
            out_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.push(ctx.to_str().unwrap());
        env.rbuild_ok(&args);
        std::fs::read_to_string(out_dir.join("hosts.txt")).unwrap()
    };
    let hosts = build(&["--add-host", "db.local:10.1.2.3", "--add-host", "v6=::1"]);
    assert!(hosts.contains("10.1.2.3\tdb.local\n"), "{hosts}");
    assert!(hosts.contains("::1\tv6\n"), "{hosts}");
    // Another host list is another RUN: not a cache hit.
    let hosts = build(&["--add-host", "db.local:10.9.9.9"]);
    assert!(hosts.contains("10.9.9.9\tdb.local\n"), "{hosts}");
    assert_eq!(read_json(&meta)["rbuild.steps"][1]["cached"], false);
    let out = env.rbuild(&[
        "build",
        "--add-host",
        "bad host:1.2.3.4",
        ctx.to_str().unwrap(),
    ]);
    assert!(
        stderr(&out).contains("invalid --add-host"),
        "{}",
        stderr(&out)
    );
    let out = env.rbuild(&["build", "--add-host", "h:999.1.1.1", ctx.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("not an IP address"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn no_cache_filter_rebuilds_only_the_named_stage() {
    let env = Env::new();
    let ctx = env.context(
        "c",
        &[
            (
                "Dockerfile",
                "FROM scratch AS deps\nCOPY x /x\nFROM scratch\nCOPY y /y\nCOPY --from=deps /x /x2\n",
            ),
            ("x", "x"),
            ("y", "y"),
        ],
    );
    let meta = env.path("m.json");
    let args = |filter: Option<&str>| {
        let mut v = vec![
            "build".to_string(),
            "--metadata-file".to_string(),
            meta.to_str().unwrap().to_string(),
        ];
        if let Some(f) = filter {
            v.push("--no-cache-filter".into());
            v.push(f.into());
        }
        v.push(ctx.to_str().unwrap().into());
        v
    };
    let run = |filter: Option<&str>| {
        let a = args(filter);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        env.rbuild_ok(&refs);
        let m = read_json(&meta);
        let steps = m["rbuild.steps"].as_array().unwrap().clone();
        let cached = |what: &str| {
            steps
                .iter()
                .find(|s| s["name"].as_str().unwrap().contains(what))
                .unwrap_or_else(|| panic!("no step {what}: {m}"))["cached"]
                .clone()
        };
        (cached("COPY x /x"), cached("COPY y /y"))
    };
    run(None);
    assert_eq!(run(None), (Value::Bool(true), Value::Bool(true)));
    assert_eq!(run(Some("deps")), (Value::Bool(false), Value::Bool(true)));
}

#[test]
fn progress_quiet_and_rawjson() {
    let env = Env::new();
    let ctx = env.context(
        "c",
        &[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "1")],
    );
    let out = env.rbuild_ok(&["build", "--progress", "quiet", ctx.to_str().unwrap()]);
    assert_eq!(stderr(&out), "");
    assert!(stdout(&out).contains("image ID sha256:"));
    let out = env.rbuild_ok(&[
        "build",
        "--progress",
        "rawjson",
        "--no-cache",
        ctx.to_str().unwrap(),
    ]);
    let lines: Vec<&str> = stderr_lines(&out);
    assert!(!lines.is_empty());
    for l in lines {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l}: {e}"));
    }
}

fn stderr_lines(out: &std::process::Output) -> Vec<&str> {
    std::str::from_utf8(&out.stderr)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn annotations_land_on_the_manifest() {
    let Some(skopeo) = tool("skopeo", "skopeo") else {
        return;
    };
    let env = Env::new();
    let ctx = env.context("c", &[("Dockerfile", "FROM scratch\nLABEL a=b\n")]);
    env.rbuild_ok(&[
        "build",
        "-t",
        "ann:1",
        "--annotation",
        "org.opencontainers.image.source=https://example.com/r",
        "--annotation",
        "manifest:com.example.k=v=w",
        ctx.to_str().unwrap(),
    ]);
    let raw = run_ok(
        Command::new(&skopeo)
            .args(["inspect", "--raw"])
            .arg(format!("oci:{}:ann:1", env.root().display())),
    );
    let m: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        m["annotations"]["org.opencontainers.image.source"],
        "https://example.com/r"
    );
    assert_eq!(m["annotations"]["com.example.k"], "v=w");
    for bad in ["index:a=b", "nokey", "manifest:=x"] {
        let out = env.rbuild(&["build", "--annotation", bad, ctx.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            stderr(&out).contains("invalid --annotation"),
            "{}",
            stderr(&out)
        );
    }
    let out = env.rbuild(&[
        "build",
        "--format",
        "docker",
        "--annotation",
        "a=b",
        ctx.to_str().unwrap(),
    ]);
    assert!(
        stderr(&out).contains("needs an OCI manifest"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn platform_sets_config_target_args_and_picks_the_base() {
    let (Some(_), Some(skopeo)) = (
        tool("docker-registry", "docker-registry"),
        tool("skopeo", "skopeo"),
    ) else {
        return;
    };
    let env = Env::new();
    let df = "FROM scratch\nARG TARGETPLATFORM TARGETARCH BUILDARCH\nLABEL target=$TARGETPLATFORM arch=$TARGETARCH build=$BUILDARCH\n";
    let ctx = env.context("c", &[("Dockerfile", df)]);
    let reg = RegistryGuard::start(RegistryConf::default());
    let repo = format!("{}/plat/base", reg.addr());
    let mut digests = Vec::new();
    for (plat, tag) in [("linux/arm64/v8", "arm"), ("linux/s390x", "s390")] {
        let name = format!("{repo}:{tag}");
        let meta = env.path(&format!("{tag}.json"));
        env.rbuild_ok(&[
            "build",
            "--platform",
            plat,
            "--push",
            "--insecure-registry",
            &reg.addr(),
            "--metadata-file",
            meta.to_str().unwrap(),
            "-t",
            &name,
            ctx.to_str().unwrap(),
        ]);
        let cfg: Value = serde_json::from_str(&run_ok(
            Command::new(&skopeo)
                .args(["inspect", "--config", "--tls-verify=false"])
                .arg(format!("docker://{name}")),
        ))
        .unwrap();
        let (os_arch, _) = plat
            .rsplit_once('/')
            .filter(|_| plat.matches('/').count() == 2)
            .unwrap_or((plat, ""));
        assert_eq!(
            format!(
                "{}/{}",
                cfg["os"].as_str().unwrap(),
                cfg["architecture"].as_str().unwrap()
            ),
            os_arch
        );
        assert_eq!(cfg["config"]["Labels"]["target"], plat, "{cfg}");
        assert_eq!(
            cfg["config"]["Labels"]["arch"], cfg["architecture"],
            "{cfg}"
        );
        assert_eq!(
            cfg["config"]["Labels"]["build"],
            rbuild::oci::Platform::host().arch,
            "BUILDARCH stays the host's"
        );
        let m = read_json(&meta);
        let d = &m["containerimage.descriptor"];
        digests.push((
            plat.to_string(),
            d["digest"].as_str().unwrap().to_string(),
            d["size"].as_u64().unwrap(),
        ));
    }
    // A multi-platform index over both, then a build FROM it for s390x.
    let manifests: Vec<Value> = digests
        .iter()
        .map(|(plat, digest, size)| {
            let parts: Vec<&str> = plat.split('/').collect();
            let mut p = serde_json::json!({"os": parts[0], "architecture": parts[1]});
            if let Some(v) = parts.get(2) {
                p["variant"] = Value::String(v.to_string());
            }
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest, "size": size, "platform": p,
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let client = reqwest::blocking::Client::new();
    let resp = client
        .put(format!(
            "http://{}/v2/plat/base/manifests/multi",
            reg.addr()
        ))
        .header("Content-Type", "application/vnd.oci.image.index.v1+json")
        .body(index.to_string())
        .send()
        .unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.text());
    let env2 = Env::new();
    let ctx2 = env2.context(
        "c",
        &[("Dockerfile", &format!("FROM {repo}:multi\nLABEL on=top\n"))],
    );
    env2.rbuild_ok(&[
        "build",
        "--platform",
        "linux/s390x",
        "--insecure-registry",
        &reg.addr(),
        "-t",
        "picked:1",
        ctx2.to_str().unwrap(),
    ]);
    let cfg: Value = serde_json::from_str(&run_ok(
        Command::new(&skopeo)
            .args(["inspect", "--config"])
            .arg(format!("oci:{}:picked:1", env2.root().display())),
    ))
    .unwrap();
    assert_eq!(cfg["architecture"], "s390x");
    assert_eq!(cfg["config"]["Labels"]["target"], "linux/s390x", "{cfg}");
    let out = env.rbuild(&[
        "build",
        "--platform",
        "linux/amd64,linux/arm64",
        ctx.to_str().unwrap(),
    ]);
    assert!(
        stderr(&out).contains("one platform at a time"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn several_ssh_agents_by_id() {
    let Some(busybox) = tool("busybox", "busybox-static") else {
        return;
    };
    let env = Env::new();
    let df = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
              RUN --mount=type=ssh,id=one,target=/run/one.sock --mount=type=ssh,id=two,target=/run/two.sock,required=true \
              test -S /run/one.sock && test -S /run/two.sock && echo ok > /ssh-ok\n";
    let ctx = env.context("c", &[("Dockerfile", df)]);
    std::fs::copy(&busybox, ctx.join("busybox")).unwrap();
    let (s1, s2) = (env.path("one.sock"), env.path("two.sock"));
    let _l1 = std::os::unix::net::UnixListener::bind(&s1).unwrap();
    let _l2 = std::os::unix::net::UnixListener::bind(&s2).unwrap();
    let out_dir = env.path("out");
    let one = format!("one={}", s1.display());
    let two = format!("two={}", s2.display());
    let c = ctx.to_str().unwrap();
    env.rbuild_ok(&[
        "build",
        "--ssh",
        &one,
        "--ssh",
        &two,
        "-o",
        out_dir.to_str().unwrap(),
        c,
    ]);
    assert_eq!(
        std::fs::read_to_string(out_dir.join("ssh-ok")).unwrap(),
        "ok\n"
    );
    // An id the Dockerfile needs but the flags lack (sockets are not part of
    // the cache key, as in BuildKit: run the step again).
    let out = env.rbuild(&["build", "--no-cache", "--ssh", &one, c]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("SSH agent \"two\" is required"),
        "{}",
        stderr(&out)
    );
    // A key file is not an agent.
    let key = env.path("id_ed25519");
    std::fs::write(&key, "not a socket").unwrap();
    let out = env.rbuild(&["build", "--ssh", &format!("one={}", key.display()), c]);
    assert!(
        stderr(&out).contains("is not an agent socket"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn build_context_docker_image_stands_in_for_a_name() {
    let (env, ctx) = named_context_setup();
    let out_dir = env.path("out");
    let meta = env.path("m.json");
    let c = ctx.to_str().unwrap();
    env.rbuild_ok(&[
        "build",
        "--pull=never",
        "--build-context",
        "base=docker-image://realbase:1",
        "--build-context",
        "files=docker-image://realbase:1",
        "--metadata-file",
        meta.to_str().unwrap(),
        "-o",
        out_dir.to_str().unwrap(),
        "-t",
        "on:1",
        c,
    ]);
    assert_eq!(
        std::fs::read_to_string(out_dir.join("f")).unwrap(),
        "real file\n"
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("copied")).unwrap(),
        "real file\n"
    );
    let inspect =
        stdout(&env.rbuild_ok(&["inspect", "--format", "{{.Config.Labels.from}}", "on:1"]));
    assert_eq!(inspect, "real\n");
    // Without the flag, `base` is an image nobody has.
    let out = env.rbuild(&["build", "--pull=never", c]);
    assert_eq!(out.status.code(), Some(1));
    for (flag, want) in [
        ("base=/no/such/dir", "is not a directory"),
        ("base=ftp://x", "the value is a directory"),
        ("nonsense", "expected NAME=VALUE"),
    ] {
        let out = env.rbuild(&["build", "--build-context", flag, c]);
        assert!(stderr(&out).contains(want), "{}", stderr(&out));
    }
    // A stage of that name is replaced too (FROM and --from), as in BuildKit.
    let staged = env.context(
        "s",
        &[(
            "Dockerfile",
            "FROM scratch AS base\nLABEL from=stage\nFROM base\nCOPY --from=base /f /again\n",
        )],
    );
    let out4 = env.path("out4");
    env.rbuild_ok(&[
        "build",
        "--build-context",
        "BASE=docker-image://realbase:1",
        "-t",
        "replaced:1",
        "-o",
        out4.to_str().unwrap(),
        staged.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(out4.join("again")).unwrap(),
        "real file\n"
    );
    let label = stdout(&env.rbuild_ok(&[
        "inspect",
        "--format",
        "{{.Config.Labels.from}}",
        "replaced:1",
    ]));
    assert_eq!(label, "real\n");
}

#[test]
fn build_context_directory_stands_in_for_a_name() {
    let (env, ctx) = named_context_setup();
    let meta = env.path("m.json");
    let c = ctx.to_str().unwrap();
    // A directory: its files stand in for the image (FROM and --from).
    let dir = env.context("named", &[("f", "from a dir\n"), ("sub/g", "g\n")]);
    let out3 = env.path("out3");
    let named = format!("files={}", dir.display());
    let args = [
        "build",
        "--build-context",
        &named,
        "--build-context",
        &named.replacen("files", "base", 1),
        "--metadata-file",
        meta.to_str().unwrap(),
        "-o",
        out3.to_str().unwrap(),
        c,
    ];
    env.rbuild_ok(&args);
    assert_eq!(
        std::fs::read_to_string(out3.join("copied")).unwrap(),
        "from a dir\n"
    );
    assert_eq!(std::fs::read_to_string(out3.join("sub/g")).unwrap(), "g\n");
    env.rbuild_ok(&args);
    let m = read_json(&meta);
    assert_eq!(
        m["rbuild.steps"][0]["cached"], true,
        "same files, same image: {m}"
    );
}

#[test]
fn build_context_oci_layout_stands_in_for_a_name() {
    let (env, ctx) = named_context_setup();
    let c = ctx.to_str().unwrap();
    // oci-layout://: a fresh store imports the image from a layout skopeo wrote.
    if let Some(skopeo) = tool("skopeo", "skopeo") {
        let layout = env.path("layout");
        run_ok(
            Command::new(skopeo)
                .args(["copy", "-q"])
                .arg(format!("oci:{}:realbase:1", env.root().display()))
                .arg(format!("oci:{}:lay", layout.display())),
        );
        let env2 = Env::new();
        let out2 = env2.path("out");
        env2.rbuild_ok(&[
            "build",
            "--pull=never",
            "--build-context",
            &format!("base=oci-layout://{}:lay", layout.display()),
            "--build-context",
            &format!("files=oci-layout://{}", layout.display()),
            "-o",
            out2.to_str().unwrap(),
            c,
        ]);
        assert_eq!(
            std::fs::read_to_string(out2.join("copied")).unwrap(),
            "real file\n"
        );
        let out = env2.rbuild(&[
            "build",
            "--build-context",
            &format!("base=oci-layout://{}:nope", layout.display()),
            c,
        ]);
        assert!(
            stderr(&out).contains("has no image nope"),
            "{}",
            stderr(&out)
        );
    }
}

/// A store with `realbase:1` (file /f, label from=real) and a context whose
/// Dockerfile uses `base` and `--from=files`; returns (env, context dir).
fn named_context_setup() -> (Env, std::path::PathBuf) {
    let env = Env::new();
    let base = env.context(
        "base",
        &[
            ("Dockerfile", "FROM scratch\nCOPY f /f\nLABEL from=real\n"),
            ("f", "real file\n"),
        ],
    );
    env.rbuild_ok(&["build", "-t", "realbase:1", base.to_str().unwrap()]);
    let ctx = env.context(
        "c",
        &[(
            "Dockerfile",
            "FROM base\nCOPY --from=files /f /copied\nLABEL x=y\n",
        )],
    );
    (env, ctx)
}
