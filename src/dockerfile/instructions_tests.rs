//! Unit tests of `dockerfile::instructions`.

use super::super::mount::MountType;
use super::*;

fn one(src: &str) -> Instruction {
    let df =
        parse_dockerfile(&format!("FROM base\n{src}\n")).unwrap_or_else(|e| panic!("{src}: {e:?}"));
    df.instructions.into_iter().nth(1).unwrap()
}

fn fail(src: &str) -> ParseError {
    parse_dockerfile(&format!("FROM base\n{src}\n"))
        .unwrap_err()
        .remove(0)
}

#[test]
fn from_forms() {
    let df = parse_dockerfile("FROM --platform=$BUILDPLATFORM golang:1 as Build\n").unwrap();
    let InstructionKind::From(f) = &df.instructions[0].kind else {
        panic!()
    };
    assert_eq!(f.platform.as_deref(), Some("$BUILDPLATFORM"));
    assert_eq!(f.name.as_deref(), Some("Build"));
    assert_eq!(f.as_keyword.as_deref(), Some("as"));
    assert_eq!(f.image, "golang:1");
    assert!(parse_dockerfile("FROM a b c\n").is_err());
    assert!(parse_dockerfile("FROM a AS 1x\n").is_err());
    assert!(parse_dockerfile("FROM a AS $N\n").is_err());
    assert_eq!(f.stage_name().as_deref(), Some("build"));
    assert!(parse_dockerfile("FROM\n").is_err());
}

#[test]
fn run_forms_and_flags() {
    let InstructionKind::Run(r) =
        one("RUN --mount=type=cache,target=/c --network=none --security=insecure make").kind
    else {
        panic!()
    };
    assert_eq!(
        r.command,
        CommandLine {
            args: vec!["make".into()],
            json: false
        }
    );
    assert_eq!(r.mounts, vec!["type=cache,target=/c"]);
    assert_eq!(parse_mount(&r.mounts[0]).unwrap().kind, MountType::Cache);
    assert_eq!(r.network.as_deref(), Some("none"));
    assert_eq!(r.security.as_deref(), Some("insecure"));
    let InstructionKind::Run(r) = one("RUN [\"a\", \"b\"]").kind else {
        panic!()
    };
    assert!(r.command.json);
    let InstructionKind::Run(r) = one("RUN <<EOF\necho hi\nEOF").kind else {
        panic!()
    };
    assert_eq!(r.heredocs[0].content, "echo hi\n");
    assert!(fail("RUN --network=bridge x")
        .message
        .contains("unsupported network mode"));
    assert!(fail("RUN --security=x y")
        .message
        .contains("unsupported security"));
    let e = fail("RUN --mount=type=bogus,target=/x make");
    assert_eq!((e.line, e.column), (2, 5));
    assert!(fail("RUN").message.contains("at least one argument"));
}

#[test]
fn unknown_flag_has_line_and_column() {
    let e = fail("COPY --foo=bar a b");
    assert_eq!(e.message, "unknown flag: --foo");
    assert_eq!((e.line, e.column), (2, 6));
    let e = fail("ENV --x=1 a=b");
    assert_eq!(e.message, "unknown flag: --x");
    assert_eq!(e.to_string(), "line 2:5: unknown flag: --x");
}

#[test]
fn cmd_entrypoint_shell() {
    let InstructionKind::Cmd(c) = one("CMD echo hi").kind else {
        panic!()
    };
    assert!(!c.json);
    let InstructionKind::Entrypoint(c) = one("ENTRYPOINT [\"/bin/x\"]").kind else {
        panic!()
    };
    assert_eq!((c.args, c.json), (vec!["/bin/x".to_string()], true));
    let InstructionKind::Shell(s) = one("SHELL [\"bash\", \"-o\", \"pipefail\", \"-c\"]").kind
    else {
        panic!()
    };
    assert_eq!(s.len(), 4);
    assert!(fail("SHELL bash -c").message.contains("JSON form"));
}

#[test]
fn env_label_legacy_and_new() {
    let InstructionKind::Env(e) = one("ENV A 1 2").kind else {
        panic!()
    };
    assert!(e.legacy);
    assert_eq!(
        e.pairs,
        vec![KeyValue {
            key: "A".into(),
            value: "1 2".into()
        }]
    );
    let InstructionKind::Env(e) = one("ENV A=1 B=\"x y\"").kind else {
        panic!()
    };
    assert!(!e.legacy);
    assert_eq!(e.pairs[1].value, "\"x y\"");
    let InstructionKind::Label(l) = one("LABEL a=b").kind else {
        panic!()
    };
    assert_eq!(l.pairs[0].key, "a");
}

#[test]
fn arg_forms() {
    let InstructionKind::Arg(a) = one("ARG A B=2 C=").kind else {
        panic!()
    };
    assert_eq!(
        a[0],
        ArgDecl {
            name: "A".into(),
            default: None
        }
    );
    assert_eq!(a[1].default.as_deref(), Some("2"));
    assert_eq!(a[2].default.as_deref(), Some(""));
    assert!(fail("ARG").message.contains("at least one"));
}

#[test]
fn simple_ones() {
    assert_eq!(
        one("EXPOSE 80 443/udp").kind,
        InstructionKind::Expose(vec!["80".into(), "443/udp".into()])
    );
    assert_eq!(one("USER a:b").kind, InstructionKind::User("a:b".into()));
    assert_eq!(
        one("WORKDIR /a b").kind,
        InstructionKind::Workdir("/a b".into())
    );
    assert_eq!(
        one("STOPSIGNAL SIGTERM").kind,
        InstructionKind::StopSignal("SIGTERM".into())
    );
    assert_eq!(
        one("MAINTAINER me").kind,
        InstructionKind::Maintainer("me".into())
    );
    assert_eq!(
        one("VOLUME /a /b").kind,
        InstructionKind::Volume {
            paths: vec!["/a".into(), "/b".into()],
            json: false
        }
    );
    assert_eq!(
        one("VOLUME [\"/a\"]").kind,
        InstructionKind::Volume {
            paths: vec!["/a".into()],
            json: true
        }
    );
    assert!(fail("VOLUME [\"\"]").message.contains("empty string"));
    assert!(fail("USER").message.contains("exactly one"));
    assert_eq!(fail("BOGUS x").message, "unknown instruction: BOGUS");
    assert_eq!(
        fail("FRM x").message,
        "unknown instruction: FRM (did you mean FROM?)"
    );
}

#[test]
fn healthcheck_forms() {
    let InstructionKind::Healthcheck(h) = one("HEALTHCHECK --interval=5s --timeout=1m30s --start-period=0s --start-interval=500ms --retries=3 CMD curl x").kind else { panic!() };
    let Healthcheck::Cmd {
        command,
        interval,
        timeout,
        start_period,
        start_interval,
        retries,
    } = h
    else {
        panic!()
    };
    assert_eq!(command.args, vec!["curl x"]);
    assert_eq!(interval, Some(Duration::from_secs(5)));
    assert_eq!(timeout, Some(Duration::from_secs(90)));
    assert_eq!(start_period, Some(Duration::ZERO));
    assert_eq!(start_interval, Some(Duration::from_millis(500)));
    assert_eq!(retries, Some(3));
    assert_eq!(
        one("HEALTHCHECK NONE").kind,
        InstructionKind::Healthcheck(Healthcheck::None)
    );
    assert!(fail("HEALTHCHECK CMD").message.contains("Missing command"));
    assert!(fail("HEALTHCHECK CONNECT x")
        .message
        .contains("Unknown type"));
    assert!(fail("HEALTHCHECK --interval=5 CMD x")
        .message
        .contains("invalid duration"));
    assert!(fail("HEALTHCHECK --retries=-1 CMD x")
        .message
        .contains("retries"));
    assert!(fail("HEALTHCHECK NONE x").message.contains("no arguments"));
    assert_eq!(
        one("HEALTHCHECK --interval=5s NONE").kind,
        InstructionKind::Healthcheck(Healthcheck::None)
    );
}

fn trigger(src: &str) -> (String, Result<Box<Instruction>, ParseError>) {
    match one(src).kind {
        InstructionKind::Onbuild {
            expression,
            trigger,
        } => (expression, trigger),
        other => panic!("{other:?}"),
    }
}

#[test]
fn onbuild_wraps_allowed_instructions() {
    let (expr, t) = trigger("onbuild  RUN echo");
    assert_eq!(expr, "RUN echo");
    assert!(matches!(t.unwrap().kind, InstructionKind::Run(_)));
    let (expr, t) = trigger("ONBUILD COPY <<E /x\nbody\nE");
    assert_eq!(expr, "COPY <<E /x\nbody\nE");
    let InstructionKind::Copy(c) = t.unwrap().kind else {
        panic!()
    };
    assert_eq!(c.contents[0].data, "body\n");
    assert!(fail("ONBUILD ONBUILD RUN x").message.contains("Chaining"));
    assert!(fail("ONBUILD FROM x").message.contains("isn't allowed"));
    assert!(fail("ONBUILD MAINTAINER x")
        .message
        .contains("isn't allowed"));
    assert!(fail("ONBUILD").message.contains("at least one argument"));
    // A bad trigger is only an error when a child build runs it.
    let (_, t) = trigger("ONBUILD COPY --bad a b");
    let e = t.unwrap_err();
    assert_eq!((e.message.as_str(), e.column), ("unknown flag: --bad", 14));
}

#[test]
fn copy_and_add_flags() {
    let InstructionKind::Copy(c) = one(
        "COPY --from=b --chown=1:2 --chmod=755 --link --exclude=*.md --exclude=x --parents a b /d/",
    )
    .kind
    else {
        panic!()
    };
    assert_eq!(c.sources, vec!["a", "b"]);
    assert_eq!(c.dest, "/d/");
    assert_eq!(c.from.as_deref(), Some("b"));
    assert_eq!(c.chown.as_deref(), Some("1:2"));
    assert_eq!(c.chmod.as_deref(), Some("755"));
    assert!(c.link && c.parents);
    assert_eq!(c.excludes, vec!["*.md", "x"]);
    let InstructionKind::Add(a) =
        one("ADD --checksum=sha256:ab --keep-git-dir --unpack=false --link https://x/y.tgz /d")
            .kind
    else {
        panic!()
    };
    assert_eq!(a.checksum.as_deref(), Some("sha256:ab"));
    assert!(a.keep_git_dir && a.link);
    assert_eq!(a.unpack, Some(false));
    let InstructionKind::Copy(c) = one("COPY [\"a b\", \"/c d/\"]").kind else {
        panic!()
    };
    assert!(c.json);
    assert_eq!(c.sources, vec!["a b"]);
    assert!(fail("COPY a").message.contains("at least two"));
    assert!(fail("ADD --from=x a b")
        .message
        .contains("unknown flag: --from"));
    assert!(fail("COPY --checksum=x a b")
        .message
        .contains("unknown flag: --checksum"));
}

#[test]
fn blank_env_names_are_errors() {
    assert!(fail("ENV =x")
        .message
        .contains("ENV names can not be blank"));
    assert!(fail("LABEL =x")
        .message
        .contains("LABEL names can not be blank"));
}

#[test]
fn report_keeps_good_instructions_warnings_and_errors() {
    let r = parse_dockerfile_report("FROM a\nRUN a \\\n\n b\nUSER\nCOPY --x a b\n");
    assert_eq!(r.instructions.len(), 2);
    assert_eq!(r.warnings.len(), 1);
    let at: Vec<(usize, usize)> = r.errors.iter().map(|e| (e.line, e.column)).collect();
    assert_eq!(at, vec![(5, 1), (6, 6)]);
}

#[test]
fn copy_heredoc_sources_become_contents() {
    let src = "COPY <<robots.txt <<-'humans.txt' file /test/\nUser-agent: *\nrobots.txt\n\tme\n\thumans.txt";
    let InstructionKind::Copy(c) = one(src).kind else {
        panic!()
    };
    assert_eq!(c.sources, vec!["file"]);
    assert_eq!(c.dest, "/test/");
    let got: Vec<(&str, &str, bool)> = c
        .contents
        .iter()
        .map(|s| (s.path.as_str(), s.data.as_str(), s.expand))
        .collect();
    assert_eq!(
        got,
        vec![
            ("robots.txt", "User-agent: *\n", true),
            ("humans.txt", "me\n", false)
        ]
    );
    let InstructionKind::Copy(c) = one("COPY [\"<<EOF\", \"/d\"]").kind else {
        panic!()
    };
    assert_eq!((c.sources.len(), c.contents.len()), (1, 0));
    assert!(fail("COPY a <<EOF\nx\nEOF").message.contains("destination"));
}

#[test]
fn all_errors_are_collected_in_order() {
    let errs = parse_dockerfile("FROM a\nENV X\nCOPY --nope a b\nRUN [1]\nUSER\n").unwrap_err();
    let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![2, 3, 4, 5]);
}

#[test]
fn go_durations() {
    assert_eq!(
        parse_go_duration("1h2m3s").unwrap(),
        Duration::from_secs(3723)
    );
    assert_eq!(
        parse_go_duration("1.5s").unwrap(),
        Duration::from_millis(1500)
    );
    assert!(parse_go_duration("5").is_err());
    assert!(parse_go_duration("5x").is_err());
    assert!(parse_go_duration("99999999999999999999999h").is_err());
}
