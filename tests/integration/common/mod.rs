//! Shared helpers for integration tests: run the rbuild binary against a
//! temporary store, write build contexts, and find the independent tools
//! (skopeo, umoci, runc) the tests check results with.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A part of the external corpus copied into the repository:
/// `CARGO_MANIFEST_DIR/testdata/corpus/<sub>` (or under `$RBUILD_CORPUS`).
/// A fresh clone has it, so a missing part is a broken checkout: always a failure.
pub fn corpus(sub: &str) -> Option<PathBuf> {
    let base = std::env::var_os("RBUILD_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/corpus"));
    let dir = base.join(sub);
    assert!(
        dir.is_dir(),
        "corpus missing at {} (testdata/corpus is part of the repository)",
        dir.display()
    );
    Some(dir)
}

/// The rbuild binary under test.
pub fn rbuild_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rbuild")
}

/// A tool from Debian's packages. Under `CI=true` a missing tool fails the
/// test; elsewhere the test is skipped with a message naming the package.
pub fn tool(name: &str, package: &str) -> Option<PathBuf> {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Some(p);
        }
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{name} is required under CI: apt-get install {package}");
    }
    eprintln!("skipping: {name} not found (apt-get install {package})");
    None
}

/// A temp dir holding a store (`root/`) and any number of contexts.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Write `files` (relative path, contents) under `rel`; returns its path.
    pub fn context(&self, rel: &str, files: &[(&str, &str)]) -> PathBuf {
        let ctx = self.path(rel);
        for (name, body) in files {
            let p = ctx.join(name);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, body).expect("write context file");
        }
        std::fs::create_dir_all(&ctx).expect("mkdir context");
        ctx
    }

    /// `rbuild --root ROOT ARGS…`
    pub fn rbuild(&self, args: &[&str]) -> Output {
        Command::new(rbuild_bin())
            .arg("--root")
            .arg(self.root())
            .args(args)
            .env_remove("SOURCE_DATE_EPOCH")
            .output()
            .expect("running rbuild")
    }

    /// Like [`Env::rbuild`], but the command must succeed.
    pub fn rbuild_ok(&self, args: &[&str]) -> Output {
        let out = self.rbuild(args);
        assert!(
            out.status.success(),
            "rbuild {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// Run a command that must succeed; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// All integration tests share one process and so one mount table: tests
/// that mount something in it hold this for reading while the mount
/// exists, tests that compare the whole table before and after hold it for
/// writing (else `build_limits`'s tmpfs store shows up in `sandbox_run`'s
/// "no mount leaked" check).
static HOST_MOUNTS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Held while this test has a mount of its own in the host's table.
pub fn host_mounts_shared() -> std::sync::RwLockReadGuard<'static, ()> {
    // A test that panicked holding it leaves nothing to protect.
    HOST_MOUNTS.read().unwrap_or_else(|e| e.into_inner())
}

/// Held while this test compares the host's mount table before and after.
pub fn host_mounts_exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    HOST_MOUNTS.write().unwrap_or_else(|e| e.into_inner())
}

/// The unprivileged user the rootless test runs use.
pub const TEST_USER: &str = "rbuild-sbx";

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether a test that needs root can run. Not root: a failure under
/// `CI=true` (CI runs as root, so a skip there would hide a broken runner),
/// else `false` after saying why, and the test returns.
pub fn require_root(what: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{what} needs root, and CI=true forbids skipping it");
    }
    eprintln!("skipping: {what} needs root");
    false
}

fn user_id(flag: &str) -> String {
    let out = Command::new("id")
        .args([flag, TEST_USER])
        .output()
        .expect("id");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Create [`TEST_USER`] (with a subuid/subgid range) when it is missing.
/// Once per test binary: rootless tests may run in parallel.
pub fn ensure_test_user() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(create_test_user);
}

fn create_test_user() {
    let exists = Command::new("id")
        .arg(TEST_USER)
        .output()
        .expect("id")
        .status
        .success();
    if !exists {
        let st = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                TEST_USER,
            ])
            .status()
            .expect("useradd");
        assert!(st.success(), "useradd {TEST_USER}");
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if !text
            .lines()
            .any(|l| l.starts_with(&format!("{TEST_USER}:")))
        {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(file)
                .expect(file);
            std::io::Write::write_all(&mut f, format!("{TEST_USER}:300000:65536\n").as_bytes())
                .expect("write subid range");
        }
    }
}

/// As root: run the tests of `module` (the caller's `module_path!()`)
/// again as [`TEST_USER`] (skipping the `rootless_` tests), so the same
/// assertions cover rootless mode. `idmap` is passed as `RBUILD_TEST_IDMAP`
/// ("subid" or "single").
pub fn rerun_as_test_user(module: &str, idmap: &str) {
    rerun_as_test_user_via(module, idmap, &[]);
}

/// The test-name filter for a `module_path!()`: test names leave out the
/// crate (`integration::build_run` → `build_run::`).
fn module_filter(module: &str) -> String {
    let path = module.split_once("::").map_or(module, |(_, rest)| rest);
    format!("{path}::")
}

/// [`TEST_USER`]'s range in `file` (`/etc/subuid` or `/etc/subgid`) as
/// (start, count).
pub fn test_user_range(file: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(file).expect(file);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{TEST_USER}:")))
        .expect("a subid range for the test user");
    let (start, count) = line.split_once(':').expect("start:count");
    (start.parse().expect("start"), count.parse().expect("count"))
}

/// Like [`rerun_as_test_user`], with the test binary started through
/// `wrapper` (a command and its arguments, e.g. util-linux `unshare`).
pub fn rerun_as_test_user_via(module: &str, idmap: &str, wrapper: &[String]) {
    if !require_root("re-running the tests as the rootless test user") {
        return;
    }
    ensure_test_user();
    let exe = std::env::current_exe().expect("test binary");
    let (uid, gid) = (user_id("-u"), user_id("-g"));
    let tmp = tempfile::tempdir().expect("temp dir");
    let st = Command::new("chown")
        .arg(format!("{uid}:{gid}"))
        .arg(tmp.path())
        .status()
        .expect("chown");
    assert!(st.success());
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "--reset-env",
        ])
        .arg("env")
        .arg(format!("RBUILD_TEST_IDMAP={idmap}"))
        .arg(format!("TMPDIR={}", tmp.path().display()))
        .arg(format!("HOME={}", tmp.path().display()))
        .arg("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .arg(format!("CI={}", std::env::var("CI").unwrap_or_default()))
        .args(wrapper)
        .arg(&exe)
        // The binary holds every integration test: only the caller's module.
        .arg(module_filter(module))
        .args(["--skip", "rootless_", "--test-threads=2"])
        .current_dir(tmp.path())
        .output()
        .expect("setpriv (util-linux) must be installed");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "rootless run ({idmap}) failed:\n{text}"
    );
    assert!(text.contains("test result: ok"), "{text}");
    // A filter that matched nothing would pass without testing anything.
    assert!(!text.contains("test result: ok. 0 passed"), "{text}");
}

/// A real `docker-registry` for tests (plain HTTP on 127.0.0.1 unless TLS is configured).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct RegistryGuard {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for RegistryGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a test registry is configured.
#[derive(Default)]
pub struct RegistryConf {
    pub tls: Option<(PathBuf, PathBuf)>,
    pub htpasswd: Option<PathBuf>,
}

impl RegistryGuard {
    /// Start `docker-registry` on a free loopback port; stopped on drop.
    pub fn start(conf: RegistryConf) -> RegistryGuard {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut yml = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((cert, key)) = &conf.tls {
            yml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if let Some(h) = &conf.htpasswd {
            yml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: rbuild-test\n    path: {}\n",
                h.display()
            ));
        }
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, yml).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let g = RegistryGuard {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        g
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A tiny HTTP/1.0 file server on 127.0.0.1 for ADD-from-URL tests: GET
/// `/NAME` answers the bytes of `files[NAME]`, anything else 404. Stops
/// when dropped.
pub struct FileServer {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FileServer {
    pub fn start(files: Vec<(String, Vec<u8>)>) -> FileServer {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let mut line = String::new();
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                // Drain the headers.
                let mut h = String::new();
                while reader.read_line(&mut h).map(|n| n > 2).unwrap_or(false) {
                    h.clear();
                }
                let path = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/');
                match files.iter().find(|(n, _)| n == path) {
                    Some((_, body)) => {
                        let _ = write!(
                            conn,
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        let _ = conn.write_all(body);
                    }
                    None => {
                        let _ =
                            conn.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    }
                }
            }
        });
        FileServer {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
