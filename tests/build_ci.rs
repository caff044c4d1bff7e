//! What a CI step passes in and reads out: `-q`, `--label`,
//! `--metadata-file` (checked against skopeo and a real registry).

mod common;

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
    assert_eq!(out.status.code(), Some(1));
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
