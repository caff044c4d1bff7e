//! Planner tests: ARG scoping and stage resolution with the cases of the
//! Dockerfile reference (#arg, #scope, "Using ARG variables", "Predefined
//! ARGs", "Impact on build caching", "Understand how ARG and FROM
//! interact"), `--target` pruning, ONBUILD, progress names and history.

use super::*;

fn opts(args: &[(&str, &str)]) -> PlanOptions {
    PlanOptions {
        build_args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        platform: Platform {
            os: "linux".into(),
            arch: "amd64".into(),
            variant: String::new(),
        },
        ..PlanOptions::default()
    }
}

fn plan_ok(text: &str, o: &PlanOptions) -> Plan {
    match plan_text(text, o) {
        Ok(p) => p,
        Err(e) => panic!("plan failed: {e}"),
    }
}

fn created(p: &Plan, stage: usize) -> Vec<String> {
    p.stages[stage]
        .steps
        .iter()
        .filter_map(|s| s.created_by.clone())
        .collect()
}

fn kinds(p: &Plan, stage: usize) -> Vec<StepKind> {
    p.stages[stage]
        .steps
        .iter()
        .map(|s| s.kind.clone())
        .collect()
}

fn run_step(s: &Step) -> &RunStep {
    match &s.kind {
        StepKind::Run(r) => r,
        k => panic!("not a RUN: {k:?}"),
    }
}

#[test]
fn arg_scope_starts_at_its_declaration() {
    // docs.docker.com/reference/dockerfile/#scope
    let text = "FROM busybox\nUSER ${username:-some_user}\nARG username\nUSER $username\n";
    let p = plan_ok(text, &opts(&[("username", "what_user")]));
    let k = kinds(&p, 0);
    assert_eq!(k[0], StepKind::Config(ConfigEdit::User("some_user".into())));
    assert_eq!(k[2], StepKind::Config(ConfigEdit::User("what_user".into())));
    assert_eq!(
        created(&p, 0),
        vec!["USER some_user", "ARG username=what_user", "USER what_user"]
    );
    // The ARG's value is not part of the image config, only of its history.
    assert_eq!(
        p.stages[0].steps[2]
            .build_args
            .get("username")
            .map(String::as_str),
        Some("what_user")
    );
    assert!(p.stages[0].steps[0].build_args.is_empty());
}

#[test]
fn env_overrides_arg_of_the_same_name() {
    // "Using ARG variables"
    let text = "FROM ubuntu\nARG CONT_IMG_VER\nENV CONT_IMG_VER=v1.0.0\nRUN echo $CONT_IMG_VER\n";
    let p = plan_ok(text, &opts(&[("CONT_IMG_VER", "v2.0.1")]));
    assert_eq!(
        created(&p, 0)[2],
        "RUN |1 CONT_IMG_VER=v1.0.0 /bin/sh -c echo $CONT_IMG_VER # buildkit"
    );
    let text = "FROM ubuntu\nARG CONT_IMG_VER\nENV CONT_IMG_VER=${CONT_IMG_VER:-v1.0.0}\n";
    assert_eq!(
        created(&plan_ok(text, &opts(&[])), 0)[1],
        "ENV CONT_IMG_VER=v1.0.0"
    );
    assert_eq!(
        created(&plan_ok(text, &opts(&[("CONT_IMG_VER", "v2.0.1")])), 0)[1],
        "ENV CONT_IMG_VER=v2.0.1"
    );
}

#[test]
fn env_sees_values_from_before_the_instruction() {
    let p = plan_ok("FROM scratch\nENV A=1 B=$A\nENV C=$A\n", &opts(&[]));
    assert_eq!(created(&p, 0), vec!["ENV A=1 B=", "ENV C=1"]);
}

#[test]
fn global_args_only_reach_from_lines_unless_redeclared() {
    // "Understand how ARG and FROM interact"
    let text = "ARG CODE_VERSION=latest\nFROM base:${CODE_VERSION}\nCMD  /code/run-app\nFROM extras:${CODE_VERSION}\nCMD  /code/run-extras\n";
    let p = plan_ok(
        text,
        &PlanOptions {
            all_stages: true,
            ..opts(&[])
        },
    );
    assert_eq!(
        p.stages[0].base,
        Base::Image("docker.io/library/base:latest".into())
    );
    assert_eq!(
        p.stages[1].base,
        Base::Image("docker.io/library/extras:latest".into())
    );
    assert_eq!(
        p.images,
        vec![
            "docker.io/library/base:latest",
            "docker.io/library/extras:latest"
        ]
    );

    let text = "ARG VERSION=latest\nFROM busybox:$VERSION\nARG VERSION\nRUN echo $VERSION > image_version\nENV V=$VERSION\n";
    let p = plan_ok(text, &opts(&[]));
    assert_eq!(
        created(&p, 0),
        vec![
            "ARG VERSION=latest",
            "RUN |1 VERSION=latest /bin/sh -c echo $VERSION > image_version # buildkit",
            "ENV V=latest"
        ]
    );
    let p = plan_ok(
        "ARG VERSION=latest\nFROM busybox:$VERSION\nENV V=$VERSION\n",
        &opts(&[]),
    );
    assert_eq!(created(&p, 0), vec!["ENV V="]);
    // A build arg overrides a global default, and defaults see earlier args.
    let text = "ARG A=1\nARG B=${A}0\nFROM img:$B\n";
    assert_eq!(plan_ok(text, &opts(&[])).stages[0].base_name, "img:10");
    assert_eq!(
        plan_ok(text, &opts(&[("A", "2")])).stages[0].base_name,
        "img:20"
    );
    assert_eq!(
        plan_ok(text, &opts(&[("B", "x")])).stages[0].base_name,
        "img:x"
    );
}

#[test]
fn predefined_platform_args_need_a_declaration_inside_stages() {
    let text = "FROM --platform=$BUILDPLATFORM alpine AS b\nARG TARGETARCH\nENV A=$TARGETARCH B=$TARGETOS\n";
    let p = plan_ok(text, &opts(&[]));
    assert_eq!(created(&p, 0)[1], "ENV A=amd64 B=");
    assert_eq!(
        p.stages[0]
            .platform
            .as_ref()
            .map(|p| p.to_string())
            .as_deref(),
        Some("linux/amd64")
    );
    assert_eq!(
        p.stages[0].steps[1].build_args,
        [("TARGETARCH".to_string(), "amd64".to_string())]
            .into_iter()
            .collect()
    );
}

#[test]
fn proxy_args_reach_run_but_not_history() {
    let p = plan_ok(
        "FROM alpine\nRUN wget x\n",
        &opts(&[("HTTP_PROXY", "http://p:3128")]),
    );
    let run = &p.stages[0].steps[0];
    assert_eq!(
        run_step(run)
            .proxy_env
            .get("HTTP_PROXY")
            .map(String::as_str),
        Some("http://p:3128")
    );
    assert_eq!(
        run.created_by.as_deref(),
        Some("RUN /bin/sh -c wget x # buildkit")
    );
    assert!(run.build_args.is_empty());
}

#[test]
fn build_args_a_step_used_are_recorded() {
    // "Impact on build caching": only steps that use an ARG depend on it.
    let text = "FROM scratch\nARG A=1\nARG B=2\nARG C\nCOPY $A /x\nLABEL l=x\nRUN true\n";
    let p = plan_ok(text, &opts(&[]));
    let steps = &p.stages[0].steps;
    let a: BTreeMap<String, String> = [("A".to_string(), "1".to_string())].into_iter().collect();
    assert_eq!(steps[3].build_args, a);
    assert!(steps[4].build_args.is_empty());
    assert_eq!(steps[5].build_args.len(), 3);
    // An ARG without a value is in history (`C=`) but not in the environment.
    assert_eq!(
        run_step(&steps[5]).arg_env,
        vec![("A".into(), "1".into()), ("B".into(), "2".into())]
    );
    assert_eq!(
        steps[5].created_by.as_deref(),
        Some("RUN |3 A=1 B=2 C= /bin/sh -c true # buildkit")
    );
}

const MULTI: &str = "FROM alpine AS base\nRUN apk add make\nFROM base AS build\nRUN make\nFROM alpine AS unrelated\nRUN x\nFROM scratch AS final\nCOPY --from=build /out /out\n";

#[test]
fn target_prunes_to_needed_stages() {
    let p = plan_ok(MULTI, &opts(&[]));
    let names: Vec<_> = p
        .stages
        .iter()
        .map(|s| s.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(names, vec!["base", "build", "final"]);
    assert_eq!(p.target, 2);
    assert_eq!(p.stages[1].base, Base::Stage(0));
    assert_eq!(p.stages[2].base, Base::Scratch);
    assert_eq!(p.stages[2].steps[0].sources(), vec![&Base::Stage(1)]);

    let p = plan_ok(
        MULTI,
        &PlanOptions {
            target: Some("BUILD".into()),
            ..opts(&[])
        },
    );
    assert_eq!(p.stages.len(), 2);
    assert_eq!(p.target, 1);

    let p = plan_ok(
        MULTI,
        &PlanOptions {
            target: Some("unrelated".into()),
            ..opts(&[])
        },
    );
    assert_eq!(p.stages.len(), 1);
    assert_eq!(p.stages[0].index, 2);

    let e = plan_text(
        MULTI,
        &PlanOptions {
            target: Some("nope".into()),
            ..opts(&[])
        },
    )
    .unwrap_err();
    assert_eq!(
        e.problems[0].message,
        "target stage \"nope\" could not be found"
    );
}

#[test]
fn copy_from_index_image_and_errors() {
    let p = plan_ok(
        "FROM alpine\nFROM scratch\nCOPY --from=0 /a /a\nCOPY --from=busybox:1 /b /b\n",
        &opts(&[]),
    );
    assert_eq!(p.stages.len(), 2);
    assert_eq!(p.stages[1].steps[0].sources(), vec![&Base::Stage(0)]);
    assert_eq!(
        p.stages[1].steps[1].sources(),
        vec![&Base::Image("docker.io/library/busybox:1".into())]
    );
    assert!(p
        .images
        .contains(&"docker.io/library/busybox:1".to_string()));

    let e = plan_text("ARG S=a\nFROM scratch\nCOPY --from=$S /a /a\n", &opts(&[])).unwrap_err();
    assert_eq!(e.problems[0].span.start_line, 3);
    assert!(e.problems[0].message.contains("variables"));
    let e = plan_text("FROM scratch AS a\nCOPY --from=a /x /x\n", &opts(&[])).unwrap_err();
    assert!(e.problems[0].message.contains("needs to be defined before"));
    let e = plan_text("FROM Alpine\n", &opts(&[])).unwrap_err();
    assert!(e.problems[0].message.contains("invalid reference format"));
}

#[test]
fn run_mount_from_is_a_dependency() {
    let text = "FROM alpine AS deps\nFROM alpine AS x\nFROM alpine\nRUN --mount=type=bind,from=deps,target=/d ls /d\n";
    let p = plan_ok(text, &opts(&[]));
    assert_eq!(p.stages.len(), 2);
    assert_eq!(p.stages[1].steps[0].sources(), vec![&Base::Stage(0)]);
    let m = &run_step(&p.stages[1].steps[0]).mounts[0].mount;
    assert_eq!(m.target.as_deref(), Some("/d"));
    assert_eq!(m.from.as_deref(), Some("deps"));
    // Mount specs are expanded before they are parsed.
    let p = plan_ok(
        "FROM alpine
ARG D=/cache
RUN --mount=type=cache,target=$D make
",
        &opts(&[]),
    );
    assert_eq!(
        run_step(&p.stages[0].steps[1]).mounts[0]
            .mount
            .target
            .as_deref(),
        Some("/cache")
    );
    let e = plan_text(
        "FROM alpine
RUN --mount=type=bogus ls
",
        &opts(&[]),
    )
    .unwrap_err();
    assert_eq!(e.problems[0].span.start_line, 2);
}

#[test]
fn progress_names_like_buildkit() {
    let p = plan_ok(
        "FROM alpine\nENV D=/data\nRUN echo \"$D\" $X\nCOPY x $D\nWORKDIR /\nWORKDIR app\n",
        &opts(&[]),
    );
    let st = &p.stages[0];
    assert_eq!(st.progress_name, "");
    assert_eq!(
        st.from_display.as_deref(),
        Some("[1/5] FROM docker.io/library/alpine:latest")
    );
    let names: Vec<_> = st.steps.iter().map(|s| s.display_name.clone()).collect();
    assert_eq!(
        names,
        vec![
            None,
            Some("[2/5] RUN echo \"/data\" $X".into()),
            Some("[3/5] COPY x /data".into()),
            None,
            Some("[4/5] WORKDIR app".into()),
        ]
    );
    let mut text = String::from("FROM alpine AS b\n");
    for i in 0..10 {
        text.push_str(&format!("run echo {i}\n"));
    }
    text.push_str("FROM b\n");
    let p = plan_ok(&text, &opts(&[]));
    assert_eq!(
        p.stages[0].from_display.as_deref(),
        Some("[b  1/11] FROM docker.io/library/alpine:latest")
    );
    assert_eq!(
        p.stages[0].steps[9].display_name.as_deref(),
        Some("[b 11/11] RUN echo 9")
    );
    assert_eq!(p.stages[1].progress_name, "stage-1");
}

#[test]
fn created_by_like_buildkit() {
    let text = "FROM alpine\nARG K=V\nENV A=1 B=2\nLABEL k=v\nRUN echo hi\nRUN [\"a\", \"b c\"]\nCOPY --chown=1:1 --chmod=644 a b /dst/\nADD x.tar /\nWORKDIR /app\nWORKDIR sub\nUSER u\nVOLUME /a /b\nEXPOSE 80 53/udp\nSHELL [\"/bin/bash\", \"-c\"]\nCMD echo \"q\"\nENTRYPOINT [\"/e\"]\nSTOPSIGNAL SIGTERM\nHEALTHCHECK --interval=30s --retries=3 CMD curl -f http://x/\nMAINTAINER me\nONBUILD RUN x\n";
    let p = plan_ok(text, &opts(&[]));
    assert_eq!(
        created(&p, 0),
        vec![
            "ARG K=V",
            "ENV A=1 B=2",
            "LABEL k=v",
            "RUN |1 K=V /bin/sh -c echo hi # buildkit",
            "RUN |1 K=V a b c # buildkit",
            "COPY --chown=1:1 --chmod=644 a b /dst/ # buildkit",
            "ADD x.tar / # buildkit",
            "WORKDIR /app",
            "WORKDIR /app/sub",
            "USER u",
            "VOLUME [/a /b]",
            "EXPOSE map[53/udp:{} 80/tcp:{}]",
            "SHELL [/bin/bash -c]",
            "CMD [\"/bin/bash\" \"-c\" \"echo \\\"q\\\"\"]",
            "ENTRYPOINT [\"/e\"]",
            "STOPSIGNAL SIGTERM",
            "HEALTHCHECK &{[\"CMD-SHELL\" \"curl -f http://x/\"] \"30s\" \"0s\" \"0s\" \"0s\" '\\x03'}",
            "MAINTAINER me",
        ]
    );
    let empty: Vec<bool> = p.stages[0].steps.iter().map(|s| s.empty_layer).collect();
    assert_eq!(
        &empty[..9],
        &[true, true, true, false, false, false, false, false, false]
    );
    assert_eq!(p.stages[0].onbuild, vec!["RUN x"]);
    assert_eq!(p.stages[0].steps.last().unwrap().created_by, None);
}

#[test]
fn onbuild_triggers_run_first_in_child_stages() {
    let text = "FROM alpine AS base\nONBUILD RUN echo trig\nFROM base\nRUN main\n";
    let p = plan_ok(text, &opts(&[]));
    let child = &p.stages[1];
    assert!(child.steps[0].from_onbuild);
    assert_eq!(
        child.steps[0].display_name.as_deref(),
        Some("[stage-1 1/2] ONBUILD RUN echo trig")
    );
    assert_eq!(child.steps[0].span.start_line, 3);
    assert_eq!(
        child.steps[1].display_name.as_deref(),
        Some("[stage-1 2/2] RUN main")
    );
    assert!(child.onbuild.is_empty());

    // Triggers of an external base image come from its config.
    let mut o = opts(&[]);
    o.base_configs.insert(
        "docker.io/library/node:8-onbuild".into(),
        BaseConfig {
            onbuild: vec!["COPY . /usr/src/app".into()],
            env: vec![("NODE_VERSION".into(), "8".into())],
            ..BaseConfig::default()
        },
    );
    let p = plan_ok("FROM node:8-onbuild\nENV V=$NODE_VERSION\n", &o);
    let st = &p.stages[0];
    assert_eq!(
        st.steps[0].display_name.as_deref(),
        Some("[2/2] ONBUILD COPY . /usr/src/app")
    );
    assert_eq!(st.steps[1].created_by.as_deref(), Some("ENV V=8"));
}

#[test]
fn heredoc_run_history() {
    let p = plan_ok("FROM alpine\nRUN <<EOF\necho a\necho b\nEOF\n", &opts(&[]));
    let s = &p.stages[0].steps[0];
    assert_eq!(
        s.created_by.as_deref(),
        Some("RUN /bin/sh -c echo a\necho b\n # buildkit")
    );
    assert_eq!(
        s.display_name.as_deref(),
        Some("[2/2] RUN <<EOF (echo a...)")
    );
}

#[test]
fn reference_normalization() {
    assert_eq!(
        normalize_reference("alpine").as_deref(),
        Some("docker.io/library/alpine:latest")
    );
    assert_eq!(
        normalize_reference("user/app:1").as_deref(),
        Some("docker.io/user/app:1")
    );
    assert_eq!(
        normalize_reference("localhost:5000/a/b").as_deref(),
        Some("localhost:5000/a/b:latest")
    );
    let digest = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(
        normalize_reference(&format!("quay.io/x/y@{digest}")),
        Some(format!("quay.io/x/y@{digest}"))
    );
    // Docker refuses a digest that is not 64 hex digits.
    assert_eq!(normalize_reference("quay.io/x/y@sha256:abc"), None);
    assert_eq!(normalize_reference("Alpine"), None);
    assert_eq!(normalize_reference(""), None);
}

#[test]
fn a_bad_from_in_a_stage_the_target_does_not_need_is_no_error() {
    // BuildKit only dispatches the stages the target needs.
    plan_ok(
        "FROM scratch AS a\nCOPY --from=b /x /x\nFROM scratch AS b\n",
        &opts(&[]),
    );
}

#[test]
fn copy_from_stage_index_bounds_and_order() {
    let e = plan_text("FROM scratch\nCOPY --from=5 /a /a\n", &opts(&[])).unwrap_err();
    assert_eq!(e.problems[0].message, "invalid stage index 5");
    let e = plan_text(
        "FROM scratch AS a\nCOPY --from=b /x /x\nFROM scratch AS b\nFROM a\n",
        &opts(&[]),
    )
    .unwrap_err();
    assert_eq!(
        e.problems[0].message,
        "cannot copy from stage \"b\", it needs to be defined before current stage \"a\""
    );
}

#[test]
fn copy_heredoc_bodies_expand_only_with_unquoted_delimiters() {
    let text = "FROM scratch\nARG V=1\nCOPY <<EOF /a\nv='$V'\nEOF\nCOPY <<'EOF' /b\nv=$V\nEOF\n";
    let p = plan_ok(text, &opts(&[]));
    let bodies: Vec<String> = p.stages[0]
        .steps
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::Copy(c) => Some(c.contents[0].data.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(bodies, vec!["v='1'\n", "v=$V\n"]);
    assert_eq!(created(&p, 0)[1], "COPY <<EOF /a # buildkit");
}

#[test]
fn base_image_config_env_feeds_expansion() {
    let mut o = opts(&[]);
    o.base_configs.insert(
        "docker.io/library/golang:1.22".into(),
        BaseConfig {
            env: vec![("GOPATH".into(), "/go".into())],
            workdir: "/go".into(),
            ..BaseConfig::default()
        },
    );
    let p = plan_ok(
        "FROM golang:1.22\nWORKDIR src\nENV P=$GOPATH/bin:$PATH\n",
        &o,
    );
    assert_eq!(
        created(&p, 0),
        vec![
            "WORKDIR /go/src",
            "ENV P=/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ]
    );
    // With the base config known, unknown variables are reported.
    let p = plan_ok("FROM golang:1.22\nENV P=$GOPTAH\n", &o);
    assert_eq!(p.findings[0].rule, "UndefinedVar");
    assert_eq!(
        p.findings[0].message,
        "Usage of undefined variable '$GOPTAH' (did you mean $GOPATH?)"
    );
}

#[test]
fn bad_onbuild_trigger_fails_only_where_it_is_inherited() {
    let base = "FROM alpine AS base\nONBUILD COPY --nope a b\n";
    let p = plan_ok(base, &opts(&[]));
    assert_eq!(p.stages[0].onbuild, vec!["COPY --nope a b"]);
    let e = plan_text(&format!("{base}FROM base\n"), &opts(&[])).unwrap_err();
    assert_eq!(e.problems[0].span.start_line, 3);
    assert!(
        e.problems[0].message.contains("nope"),
        "{}",
        e.problems[0].message
    );
}

#[test]
fn duplicate_names_resolve_to_the_last_stage_and_empty_files_fail() {
    let text = "FROM scratch AS a\nFROM busybox AS a\nFROM scratch\nCOPY --from=a /x /x\n";
    let p = plan_ok(text, &opts(&[]));
    assert_eq!(p.stages.len(), 2);
    assert_eq!(p.stages[0].index, 1);
    let e = plan_text("", &opts(&[])).unwrap_err();
    assert_eq!(e.problems[0].message, "the Dockerfile cannot be empty");
    let e = plan_text("# only a comment\n", &opts(&[])).unwrap_err();
    assert_eq!(e.problems[0].message, "file with no instructions");
}
