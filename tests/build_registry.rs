//! Builds and registries together: `build --push` to a real registry, then
//! a build in an empty store `FROM` the pushed image pulls it by itself.

mod common;

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
