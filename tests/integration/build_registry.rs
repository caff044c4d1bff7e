//! Builds and registries together: `build --push` to a real registry, then
//! a build in an empty store `FROM` the pushed image pulls it by itself.

use crate::common;

use std::process::Command;

use common::{run_ok, stderr, stdout, tool, Env, RegistryConf, RegistryGuard};

#[test]
fn build_push_then_build_from_the_pushed_image_in_an_empty_store() {
    let (Some(_), Some(busybox)) = (
        tool("docker-registry", "docker-registry"),
        tool("busybox", "busybox-static"),
    ) else {
        return;
    };
    let reg = RegistryGuard::start(RegistryConf::default());
    let base = format!("{}/test/base:1", reg.addr());
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nENV FROM_BASE=yes\n",
        )],
    );
    std::fs::copy(&busybox, ctx.join("busybox")).unwrap();
    env.rbuild_ok(&[
        "build",
        "--push",
        "-t",
        &base,
        "--progress",
        "plain",
        ctx.to_str().unwrap(),
    ]);

    if let Some(skopeo) = tool("skopeo", "skopeo") {
        let out = run_ok(
            Command::new(skopeo)
                .args(["inspect", "--tls-verify=false", "--config"])
                .arg(format!("docker://{base}")),
        );
        assert!(out.contains("FROM_BASE=yes"), "{out}");
    }

    // A fresh store: FROM pulls the base, its ENV feeds expansion, RUN uses its files.
    let env2 = Env::new();
    let app = format!("{}/test/app:1", reg.addr());
    let ctx2 = env2.context(
        "ctx",
        &[(
            "Dockerfile",
            &format!(
                "FROM {base}\nRUN echo \"base says $FROM_BASE\" > /msg\nENV MSG=${{FROM_BASE}}\n"
            ),
        )],
    );
    let out = env2.rbuild_ok(&[
        "build",
        "--push",
        "-t",
        &app,
        "--progress",
        "plain",
        ctx2.to_str().unwrap(),
    ]);
    assert!(stderr(&out).contains("pull"), "{}", stderr(&out));
    let inspect: serde_json::Value =
        serde_json::from_str(&stdout(&env2.rbuild_ok(&["inspect", &app]))).unwrap();
    let envs = inspect["Config"]["config"]["Env"].to_string();
    assert!(envs.contains("MSG=yes"), "{envs}");
    // The base's layers were mounted or skipped on push, not uploaded again:
    // the pushed app shares them.
    assert_eq!(
        inspect["Manifest"]["layers"].as_array().unwrap().len(),
        3,
        "two base layers and one RUN layer"
    );
    // --pull=never with an empty store fails clearly.
    let env3 = Env::new();
    let ctx3 = env3.context("ctx", &[("Dockerfile", &format!("FROM {base}\n"))]);
    let out = env3.rbuild(&["build", "--pull=never", ctx3.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--pull=never"), "{}", stderr(&out));
}

/// `--progress json` gives the internal pull step a real id, numbered with
/// the other steps (not a sentinel such as u64::MAX).
#[test]
fn json_progress_numbers_the_pull_step_like_the_others() {
    if tool("docker-registry", "docker-registry").is_none() {
        return;
    }
    let reg = RegistryGuard::start(RegistryConf::default());
    let base = format!("{}/test/jsonbase:1", reg.addr());
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM scratch\nCOPY a /a\n"), ("a", "a\n")],
    );
    env.rbuild_ok(&["build", "--push", "-t", &base, ctx.to_str().unwrap()]);

    let env2 = Env::new();
    let ctx2 = env2.context(
        "ctx",
        &[
            ("Dockerfile", &format!("FROM {base}\nCOPY b /b\n")),
            ("b", "b\n"),
        ],
    );
    let out = env2.rbuild_ok(&[
        "build",
        "--progress",
        "json",
        "-t",
        "app:1",
        ctx2.to_str().unwrap(),
    ]);
    let started: Vec<(u64, String)> = stderr(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "step_started")
        .map(|v| {
            (
                v["id"].as_u64().expect("numeric id"),
                v["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let pull = started
        .iter()
        .find(|(_, name)| name.starts_with("[internal] pull"))
        .unwrap_or_else(|| panic!("no pull step in {started:?}"));
    assert!(pull.0 <= started.len() as u64, "pull step id {pull:?}");
    let mut ids: Vec<u64> = started.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), started.len(), "ids are unique: {started:?}");
}
