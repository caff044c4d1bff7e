//! Per-step cost of the RUN sandbox: N trivial `run()` calls (`true`) on a
//! busybox overlay rootfs, each with a fresh upper dir, as the engine would
//! do. Ignored by default; `bench/run-steps/run.sh` runs it in release mode.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rbuild::sandbox::{
    run_with, ExtraFiles, NetworkMode, RootfsSpec, RunSpec, SandboxOptions, UserSpec,
};

fn spec(rootfs: RootfsSpec, argv: &[&str], network: NetworkMode) -> RunSpec {
    RunSpec {
        rootfs,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
        cwd: "/".into(),
        user: UserSpec::default(),
        hostname: "bench".into(),
        network,
        mounts: vec![],
        extra_files: ExtraFiles {
            resolv_conf: Some("nameserver 127.0.0.53\n".into()),
            hosts: Some("127.0.0.1 localhost\n".into()),
            hostname: Some("bench\n".into()),
        },
        limits: Default::default(),
    }
}

fn overlay(tmp: &std::path::Path, lowers: &[PathBuf], n: usize) -> RootfsSpec {
    let (upper, work) = (tmp.join(format!("u{n}")), tmp.join(format!("w{n}")));
    fs::create_dir(&upper).unwrap();
    fs::create_dir(&work).unwrap();
    RootfsSpec::Overlay {
        lowers: lowers.to_vec(),
        upper,
        work,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
#[ignore]
fn bench_trivial_run_steps() {
    let steps: usize = std::env::var("BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let network = match std::env::var("BENCH_NETWORK").as_deref() {
        Ok("host") => NetworkMode::Host,
        _ => NetworkMode::None,
    };
    let opts = SandboxOptions {
        init_exe: PathBuf::from(env!("CARGO_BIN_EXE_rbuild")),
        ..Default::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    fs::create_dir_all(base.join("bin")).unwrap();
    fs::copy("/bin/busybox", base.join("bin/busybox")).unwrap();
    fs::set_permissions(base.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    let install = spec(
        overlay(tmp.path(), std::slice::from_ref(&base), 0),
        &["/bin/busybox", "--install", "-s", "/bin"],
        network,
    );
    let out = run_with(&opts, &install, &mut |_, _| {}).unwrap();
    assert_eq!(out.exit_code, 0);
    let lowers = vec![tmp.path().join("u0"), base];

    let mut times = Vec::with_capacity(steps);
    for n in 1..=steps {
        let s = spec(overlay(tmp.path(), &lowers, n), &["true"], network);
        let start = Instant::now();
        let out = run_with(&opts, &s, &mut |_, _| {}).unwrap();
        times.push(start.elapsed());
        assert_eq!(out.exit_code, 0);
    }
    times.sort();
    let total: Duration = times.iter().sum();
    let mean = total / steps as u32;
    let line = format!(
        "{{\"steps\":{steps},\"network\":\"{network:?}\",\"rootless\":{},\"min_ms\":{:.2},\"median_ms\":{:.2},\"mean_ms\":{:.2},\"max_ms\":{:.2},\"total_ms\":{:.1}}}",
        !nix::unistd::geteuid().is_root(),
        ms(times[0]),
        ms(times[steps / 2]),
        ms(mean),
        ms(times[steps - 1]),
        ms(total)
    );
    println!("BENCH {line}");
}
