//! End-to-end builds of images that need no RUN, checked with independent
//! tools: skopeo and umoci read the store, runc runs the result.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{run_ok, stderr, stdout, tool, Env};
use serde_json::Value;

fn skopeo_config(env: &Env, tag: &str) -> Option<Value> {
    let skopeo = tool("skopeo", "skopeo")?;
    let out = run_ok(
        Command::new(skopeo)
            .arg("inspect")
            .arg("--config")
            .arg(format!("oci:{}:{tag}", env.root().display())),
    );
    Some(serde_json::from_str(&out).expect("skopeo prints JSON"))
}

fn umoci_unpack(env: &Env, tag: &str, bundle: &Path) -> Option<()> {
    let umoci = tool("umoci", "umoci")?;
    let mut cmd = Command::new(umoci);
    cmd.arg("unpack");
    if !nix::unistd::geteuid().is_root() {
        cmd.arg("--rootless");
    }
    run_ok(
        cmd.arg("--image")
            .arg(format!("{}:{tag}", env.root().display()))
            .arg(bundle),
    );
    Some(())
}

#[test]
fn scratch_image_is_read_by_skopeo_and_unpacked_by_umoci() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM scratch\nWORKDIR /app\nCOPY hello.txt sub/ ./\nENV GREETING=\"hi there\" A=1\n\
                 LABEL org.example=yes\nEXPOSE 8080/tcp\nUSER 1000:1000\nCMD [\"/app/hello.txt\"]\n",
            ),
            ("hello.txt", "hello\n"),
            ("sub/nested.txt", "nested\n"),
        ],
    );
    let out = env.rbuild_ok(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "app:v1",
        ctx.to_str().unwrap(),
    ]);
    assert!(stdout(&out).contains("app:v1") || stderr(&out).contains("app:v1"));

    let Some(cfg) = skopeo_config(&env, "app:v1") else {
        return;
    };
    let c = &cfg["config"];
    assert_eq!(c["Cmd"], serde_json::json!(["/app/hello.txt"]));
    assert_eq!(c["WorkingDir"], "/app");
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(c["Labels"]["org.example"], "yes");
    assert!(c["ExposedPorts"].get("8080/tcp").is_some());
    let env_list: Vec<&str> = c["Env"]
        .as_array()
        .expect("Env")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env_list.contains(&"GREETING=hi there"), "{env_list:?}");
    assert!(env_list.contains(&"A=1"), "{env_list:?}");
    // Two filesystem steps (WORKDIR creating /app, COPY): two layers.
    let history = cfg["history"].as_array().expect("history");
    let created_by: Vec<&str> = history
        .iter()
        .map(|h| h["created_by"].as_str().unwrap_or(""))
        .collect();
    assert!(created_by.contains(&"WORKDIR /app"), "{created_by:?}");
    assert!(
        created_by.contains(&"COPY hello.txt sub/ ./ # buildkit"),
        "{created_by:?}"
    );
    assert!(
        created_by.contains(&"ENV GREETING=hi there A=1"),
        "{created_by:?}"
    );
    let layers = history.iter().filter(|h| h["empty_layer"] != true).count();
    assert_eq!(layers, cfg["rootfs"]["diff_ids"].as_array().unwrap().len());

    let bundle = env.path("bundle");
    if umoci_unpack(&env, "app:v1", &bundle).is_none() {
        return;
    }
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("app/hello.txt")).unwrap(),
        "hello\n"
    );
    // A directory source contributes its contents.
    assert_eq!(
        std::fs::read_to_string(rootfs.join("app/nested.txt")).unwrap(),
        "nested\n"
    );
}

#[test]
fn busybox_image_runs_under_runc() {
    let Some(busybox) = tool("busybox", "busybox-static") else {
        return;
    };
    let Some(runc) = tool("runc", "runc") else {
        return;
    };
    if !common::require_root("runc on these machines") {
        return;
    }
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY busybox /bin/busybox\nCMD [\"/bin/busybox\", \"echo\", \"hello from rbuild\"]\n",
        )],
    );
    std::fs::copy(&busybox, ctx.join("busybox")).unwrap();
    env.rbuild_ok(&[
        "build",
        "-t",
        "bb:1",
        "--progress",
        "plain",
        ctx.to_str().unwrap(),
    ]);
    let bundle = env.path("bundle");
    if umoci_unpack(&env, "bb:1", &bundle).is_none() {
        return;
    }
    // These machines reject runc's default rlimits and have no terminal.
    let cfg_path = bundle.join("config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["process"]["terminal"] = Value::Bool(false);
    if let Some(p) = cfg["process"].as_object_mut() {
        p.remove("rlimits");
    }
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let id = format!("rbuild-test-{}", std::process::id());
    let out = run_ok(Command::new(runc).args(["run", "-b"]).arg(&bundle).arg(&id));
    assert_eq!(out.trim(), "hello from rbuild");
}

fn manifest_digest(env: &Env, tag: &str) -> String {
    let index: Value =
        serde_json::from_slice(&std::fs::read(env.root().join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag)
                || m["annotations"]["io.containerd.image.name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(tag))
        })
        .unwrap_or_else(|| panic!("tag {tag} in index.json: {index}"))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn same_inputs_give_the_same_digest_under_source_date_epoch() {
    let files: &[(&str, &str)] = &[
        ("Dockerfile", "FROM scratch\nCOPY . /src\nENV X=1\n"),
        ("a.txt", "a\n"),
        ("dir/b.txt", "b\n"),
    ];
    // Two checkouts made at different times, both after the commit the
    // epoch names: every mtime is clamped to the epoch.
    let mut digests = Vec::new();
    for (i, mtime) in [(0, 1_700_000_100i64), (1, 1_750_000_000)] {
        let env = Env::new();
        let ctx = env.context("ctx", files);
        for entry in walkdir::WalkDir::new(&ctx) {
            let entry = entry.unwrap();
            let t = filetime_from(mtime);
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                entry.path(),
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
        }
        env.rbuild_ok(&[
            "build",
            "--build-arg",
            "SOURCE_DATE_EPOCH=1700000000",
            "-t",
            &format!("r:{i}"),
            ctx.to_str().unwrap(),
        ]);
        digests.push(manifest_digest(&env, &format!("r:{i}")));
    }
    assert_eq!(digests[0], digests[1]);
}

fn filetime_from(secs: i64) -> nix::sys::time::TimeSpec {
    nix::sys::time::TimeSpec::new(secs, 0)
}

#[test]
fn rebuild_reuses_every_step_and_one_changed_file_rebuilds_only_its_copy() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY a.txt /a/\nCOPY b.txt /b/\nENV Z=1\n",
            ),
            ("a.txt", "a\n"),
            ("b.txt", "b\n"),
        ],
    );
    let c = ctx.to_str().unwrap();
    let first = env.rbuild_ok(&["build", "--progress", "plain", "-t", "c:1", c]);
    assert!(!stderr(&first).contains("CACHED"), "{}", stderr(&first));

    let second = env.rbuild_ok(&["build", "--progress", "plain", "-t", "c:2", c]);
    let log = stderr(&second);
    assert_eq!(log.matches("CACHED").count(), 2, "{log}");
    assert_eq!(manifest_digest(&env, "c:1"), manifest_digest(&env, "c:2"));

    std::fs::write(ctx.join("b.txt"), "changed\n").unwrap();
    let third = env.rbuild_ok(&["build", "--progress", "plain", "-t", "c:3", c]);
    let log = stderr(&third);
    assert_eq!(log.matches("CACHED").count(), 1, "{log}");
    assert!(
        log.contains("file b.txt changed"),
        "miss reason names the file: {log}"
    );

    let fourth = env.rbuild_ok(&["build", "--progress", "plain", "--no-cache", "-t", "c:4", c]);
    assert!(!stderr(&fourth).contains("CACHED"), "{}", stderr(&fourth));
}

#[test]
fn outputs_and_iidfile() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "x")],
    );
    let oci_dir = env.path("out-oci");
    let docker_tar = env.path("out.tar");
    let iid = env.path("iid");
    env.rbuild_ok(&[
        "build",
        "-t",
        "o:1",
        "--output",
        &format!("type=oci,dest={}", oci_dir.display()),
        "--output",
        &format!("type=docker,dest={}", docker_tar.display()),
        "--iidfile",
        iid.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    let id = std::fs::read_to_string(&iid).unwrap();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id:?}");
    let Some(skopeo) = tool("skopeo", "skopeo") else {
        return;
    };
    let out = run_ok(
        Command::new(&skopeo)
            .args(["inspect", "--config"])
            .arg(format!("docker-archive:{}", docker_tar.display())),
    );
    assert!(out.contains("COPY f /f"), "{out}");
    let out = run_ok(
        Command::new(&skopeo)
            .args(["inspect"])
            .arg(format!("oci:{}:o:1", oci_dir.display())),
    );
    assert!(out.contains("\"Layers\""), "{out}");
}

#[test]
fn history_lists_layers_newest_first() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            ("Dockerfile", "FROM scratch\nCOPY f /f\nCMD [\"/f\"]\n"),
            ("f", "x"),
        ],
    );
    env.rbuild_ok(&["build", "-t", "h:1", ctx.to_str().unwrap()]);
    let out = stdout(&env.rbuild_ok(&["history", "h:1"]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("IMAGE"), "{out}");
    assert!(lines[1].contains("CMD"), "{out}");
    assert!(lines[2].contains("COPY f /f"), "{out}");
}

#[test]
fn copy_from_stage_with_chown_and_chmod() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM scratch AS base\nCOPY passwd group /etc/\nCOPY tool.sh /opt/tool.sh\n\
                 FROM base\nCOPY --from=base --chown=app:staff --chmod=750 /opt/tool.sh /usr/local/bin/\n\
                 COPY --from=0 --chown=7 /etc/passwd /copy/\n",
            ),
            ("passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"),
            ("group", "root:x:0:\nstaff:x:50:app\n"),
            ("tool.sh", "#!/bin/sh\n"),
        ],
    );
    env.rbuild_ok(&["build", "-t", "m:1", ctx.to_str().unwrap()]);
    let bundle = env.path("bundle");
    if umoci_unpack(&env, "m:1", &bundle).is_none() {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(bundle.join("rootfs/usr/local/bin/tool.sh")).unwrap();
    if nix::unistd::geteuid().is_root() {
        assert_eq!((meta.uid(), meta.gid()), (1000, 50));
        let m2 = std::fs::metadata(bundle.join("rootfs/copy/passwd")).unwrap();
        assert_eq!((m2.uid(), m2.gid()), (7, 7));
    }
    assert_eq!(meta.mode() & 0o7777, 0o750);
}

#[test]
fn add_extracts_local_archives() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM scratch\nADD files.tar.gz /x/\nADD plain.txt /y\n",
            ),
            ("plain.txt", "p"),
        ],
    );
    // Build a small tar.gz with the tar tool.
    let src = env.context("src", &[("inner/one.txt", "1\n")]);
    run_ok(
        Command::new("tar")
            .arg("-czf")
            .arg(ctx.join("files.tar.gz"))
            .arg("-C")
            .arg(&src)
            .arg("inner"),
    );
    env.rbuild_ok(&["build", "-t", "add:1", ctx.to_str().unwrap()]);
    let bundle = env.path("bundle");
    if umoci_unpack(&env, "add:1", &bundle).is_none() {
        return;
    }
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/x/inner/one.txt")).unwrap(),
        "1\n"
    );
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/y")).unwrap(),
        "p"
    );
}

#[test]
fn bad_dockerfile_fails_with_location() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[("Dockerfile", "FROM scratch\nCOPY missing.txt /x\n")],
    );
    let out = env.rbuild(&["build", "-t", "bad:1", ctx.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("missing.txt"), "{err}");
    assert!(err.contains("Dockerfile:2"), "{err}");
    // Nothing was tagged.
    let index = std::fs::read_to_string(env.root().join("index.json")).unwrap_or_default();
    assert!(!index.contains("bad:1"), "{index}");
}

/// Every blob's name is its digest: nothing half-written was ever named.
fn assert_blobs_verified(root: &Path) {
    use sha2::Digest;
    let dir = root.join("blobs/sha256");
    for entry in std::fs::read_dir(&dir).expect("blobs dir") {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            name,
            "{}",
            path.display()
        );
    }
}

#[test]
fn concurrent_builds_into_one_store() {
    let env = Env::new();
    let mut children = Vec::new();
    for i in 0..4 {
        let ctx = env.context(
            &format!("ctx{i}"),
            &[
                (
                    "Dockerfile",
                    "FROM scratch\nCOPY . /data\nCOPY shared.txt /shared/\n",
                ),
                ("own.txt", &format!("build {i}\n")),
                ("shared.txt", "same in every build\n"),
            ],
        );
        children.push(
            Command::new(common::rbuild_bin())
                .arg("--root")
                .arg(env.root())
                .args(["build", "--progress", "plain", "-t", &format!("par:{i}")])
                .arg(&ctx)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let images = stdout(&env.rbuild_ok(&["images"]));
    for i in 0..4 {
        let listed = images.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 2 && cols[0] == "par" && cols[1] == i.to_string()
        });
        assert!(listed, "par:{i} listed by `rbuild images`: {images}");
        if let Some(cfg) = skopeo_config(&env, &format!("par:{i}")) {
            assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
        }
    }
    assert_blobs_verified(&env.root());
}

#[test]
fn interrupted_build_leaves_the_store_consistent() {
    let env = Env::new();
    let ctx = env.context("ctx", &[("Dockerfile", "FROM scratch\nCOPY big /big\n")]);
    // Incompressible data so the layer takes a while to write.
    let mut data = vec![0u8; 96 * 1024 * 1024];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(ctx.join("big"), &data).unwrap();
    drop(data);
    let mut child = Command::new(common::rbuild_bin())
        .arg("--root")
        .arg(env.root())
        .args(["build", "--progress", "plain", "-t", "int:1"])
        .arg(&ctx)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the layer is being written, then interrupt as Ctrl-C does.
    let tmp = env.root().join("rbuild/tmp");
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(20) {
        // A temp file over 1 MiB: the layer blob is being written.
        let busy = std::fs::read_dir(&tmp)
            .map(|d| {
                d.filter_map(Result::ok).any(|e| {
                    e.metadata()
                        .map(|m| m.is_file() && m.len() > 1 << 20)
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false);
        if busy {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the build was interrupted");
    let index = std::fs::read_to_string(env.root().join("index.json")).unwrap();
    let parsed: Value = serde_json::from_str(&index).expect("index.json stays valid JSON");
    assert!(
        !index.contains("int:1"),
        "no tag for an interrupted build: {parsed}"
    );
    assert_blobs_verified(&env.root());
    // The next command that opens the store sweeps the dead build's temps.
    env.rbuild_ok(&["images"]);
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
    // And a new build of the same context succeeds.
    env.rbuild_ok(&["build", "-t", "int:1", ctx.to_str().unwrap()]);
}

#[test]
fn add_downloads_urls_and_verifies_checksums() {
    use sha2::Digest;
    let body = b"downloaded over http\n".to_vec();
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body)));
    let server = common::FileServer::start(vec![("files/tool.txt".into(), body.clone())]);
    let url = format!("http://127.0.0.1:{}/files/tool.txt", server.port);
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[(
            "Dockerfile",
            &format!("FROM scratch\nADD --checksum={digest} {url} /opt/\nADD {url} /renamed.txt\n"),
        )],
    );
    env.rbuild_ok(&["build", "-t", "url:1", ctx.to_str().unwrap()]);
    let bundle = env.path("bundle");
    if umoci_unpack(&env, "url:1", &bundle).is_none() {
        return;
    }
    assert_eq!(
        std::fs::read(bundle.join("rootfs/opt/tool.txt")).unwrap(),
        body
    );
    assert_eq!(
        std::fs::read(bundle.join("rootfs/renamed.txt")).unwrap(),
        body
    );
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(bundle.join("rootfs/renamed.txt"))
        .unwrap()
        .mode()
        & 0o777;
    assert_eq!(
        mode, 0o600,
        "downloaded files are 0600 as docker makes them"
    );

    // A wrong checksum fails the build and names both digests.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let ctx2 = env.context(
        "ctx2",
        &[(
            "Dockerfile",
            &format!("FROM scratch\nADD --checksum={wrong} {url} /x\n"),
        )],
    );
    let out = env.rbuild(&["build", ctx2.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("checksum mismatch") && err.contains(&digest),
        "{err}"
    );
}

#[test]
fn copy_parents_and_exclude() {
    let env = Env::new();
    let ctx = env.context(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY --parents src/a/*.txt /keep/\nCOPY --parents ./src/./b/x.txt /pivot/\n\
                 COPY --exclude=*.log logs /logs/\n",
            ),
            ("src/a/one.txt", "1"),
            ("src/a/two.txt", "2"),
            ("src/a/skip.md", "no"),
            ("src/b/x.txt", "x"),
            ("logs/keep.txt", "k"),
            ("logs/drop.log", "d"),
        ],
    );
    env.rbuild_ok(&["build", "-t", "par:1", ctx.to_str().unwrap()]);
    let bundle = env.path("bundle");
    if umoci_unpack(&env, "par:1", &bundle).is_none() {
        return;
    }
    let r = bundle.join("rootfs");
    assert_eq!(
        std::fs::read_to_string(r.join("keep/src/a/one.txt")).unwrap(),
        "1"
    );
    assert_eq!(
        std::fs::read_to_string(r.join("keep/src/a/two.txt")).unwrap(),
        "2"
    );
    assert!(!r.join("keep/src/a/skip.md").exists());
    assert_eq!(
        std::fs::read_to_string(r.join("pivot/b/x.txt")).unwrap(),
        "x"
    );
    assert!(r.join("logs/keep.txt").exists());
    assert!(!r.join("logs/drop.log").exists(), "--exclude left it out");
}
