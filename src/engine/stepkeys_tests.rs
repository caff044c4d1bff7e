//! Snapshot tests of the key inputs of a few planned steps: a change to
//! what enters a key shows up here as a changed JSON line (and must come
//! with a schema bump in `cachekey::SCHEMA`).

use super::*;
use crate::plan::{plan_text, PlanOptions, StepKind};

fn steps(dockerfile: &str) -> Vec<Step> {
    let plan = plan_text(dockerfile, &PlanOptions::default()).expect("plans");
    plan.stages[plan.target].steps.clone()
}

fn json(inputs: &KeyInputs) -> String {
    serde_json::to_string(inputs).unwrap()
}

#[test]
fn config_step_inputs() {
    let s = steps("FROM scratch\nARG V=1\nENV A=$V\n");
    assert_eq!(
        json(&config_key("p", &s[1])),
        r#"{"parent":"p","instruction":"ENV ENV A=1","build_args":{"V":"1"},"files":{},"extra":{}}"#
    );
    // ARG and ONBUILD chain too (ONBUILD has no history text).
    let s = steps("FROM scratch\nONBUILD RUN x\n");
    assert_eq!(config_key("p", &s[0]).instruction, "ONBUILD ");
}

#[test]
fn workdir_step_inputs() {
    let s = steps("FROM scratch\nARG D=x\nWORKDIR /a/$D\n");
    assert_eq!(
        json(&workdir_key("p", &s[1], "/a/x")),
        r#"{"parent":"p","instruction":"WORKDIR /a/x","build_args":{"D":"x"},"files":{},"extra":{"workdir":"/a/x"}}"#
    );
}

#[test]
fn copy_step_inputs() {
    let s = steps(
        "FROM scratch\nWORKDIR /w\nCOPY --link --chmod=644 a b/ d/\nCOPY <<EOF /h\nhi\nEOF\n",
    );
    let StepKind::Copy(c) = &s[1].kind else {
        panic!("not a COPY")
    };
    let reads = CopyReads {
        context: Some((
            [("a".to_string(), FileDigest([1; 32]))].into(),
            "sel".into(),
        )),
        ..CopyReads::default()
    };
    assert_eq!(
        json(&copy_key("p", &s[1], c, "/w", reads)),
        r#"{"parent":"link","instruction":"COPY --chmod=644 a b/ d/ # buildkit","build_args":{},"files":{"a":"sha256:0101010101010101010101010101010101010101010101010101010101010101"},"extra":{"dest":"/w/d/","sources":"sel"}}"#
    );
    let StepKind::Copy(h) = &s[2].kind else {
        panic!("not a COPY")
    };
    assert_eq!(
        json(&copy_key("p", &s[2], h, "/w", CopyReads::default())),
        format!(
            r#"{{"parent":"p","instruction":"COPY <<EOF /h # buildkit","build_args":{{}},"files":{{}},"extra":{{"dest":"/h","heredoc EOF":"{}"}}}}"#,
            sha256_hex(b"hi\n")
        )
    );
    // A `--from` copy is keyed by its source's identity alone.
    let from = CopyReads {
        from: Some("stagekey".into()),
        urls: vec![("http://x".into(), "ignored".into())],
        ..CopyReads::default()
    };
    let k = copy_key("p", &s[2], h, "/", from);
    assert_eq!(k.extra.get("from").map(String::as_str), Some("stagekey"));
    assert!(!k.extra.contains_key("url http://x"));
}

#[test]
fn run_step_inputs() {
    let s = steps(
        "FROM scratch\nARG V=1\nRUN --network=none --mount=type=bind,source=x,target=/m --mount=type=cache,target=/c make\n",
    );
    let StepKind::Run(r) = &s[1].kind else {
        panic!("not a RUN")
    };
    let reads = RunReads {
        build_network: "host".into(),
        add_hosts: vec![("h".into(), "1.2.3.4".into())],
        workdir: "/".into(),
        mount_content: vec![Some("ctx".into()), Some("never for a cache mount".into())],
    };
    assert_eq!(
        json(&run_key("p", &s[1], r, reads.clone())),
        r#"{"parent":"p","instruction":"RUN |1 V=1 /bin/sh -c make # buildkit","build_args":{"V":"1"},"files":{},"extra":{"add-host":"h=1.2.3.4","mount 0":"type=bind,source=x,target=/m","mount 0 content":"ctx","mount 1":"type=cache,target=/c","network":"none","workdir":"/"}}"#
    );
    // Without --network the build's setting is the input.
    let s = steps("FROM scratch\nRUN make\n");
    let StepKind::Run(r) = &s[0].kind else {
        panic!("not a RUN")
    };
    let k = run_key("p", &s[0], r, reads);
    assert_eq!(k.extra.get("network").map(String::as_str), Some("host"));
}

/// Inputs a history text leaves out still change the key: a COPY
/// --from's `--exclude`, ADD's `--unpack=false`, a RUN heredoc's body.
#[test]
fn flags_and_bodies_outside_the_history_text_are_keyed() {
    let key_of = |df: &str, i: usize| {
        let s = steps(df);
        match &s[i].kind {
            StepKind::Copy(c) => {
                let reads = CopyReads {
                    from: Some("stage-key".into()),
                    ..CopyReads::default()
                };
                copy_key("p", &s[i], c, "/", reads).key()
            }
            StepKind::Run(r) => run_key("p", &s[i], r, RunReads::default()).key(),
            _ => panic!("not a layer step"),
        }
    };
    let from = "FROM scratch AS src\nFROM scratch\nCOPY --from=src";
    assert_ne!(
        key_of(&format!("{from} --exclude=*.md /s /d\n"), 0),
        key_of(&format!("{from} --exclude=*.txt /s /d\n"), 0)
    );
    assert_ne!(
        key_of("FROM scratch\nADD a.tar /d/\n", 0),
        key_of("FROM scratch\nADD --unpack=false a.tar /d/\n", 0)
    );
    assert_ne!(
        key_of(
            "FROM scratch\nRUN <<EOT\n#!/bin/sh\necho one > /out\nEOT\n",
            0
        ),
        key_of(
            "FROM scratch\nRUN <<EOT\n#!/bin/sh\necho two > /out\nEOT\n",
            0
        )
    );
}

/// A `--link` COPY's layer is keyed without its parent, but the chain
/// after it is not; a `--chown` name keeps the parent in the layer key.
#[test]
fn a_link_copy_keys_its_layer_alone_and_its_chain_with_the_parent() {
    let s = steps("FROM scratch\nCOPY --link a /a\nCOPY --link --chown=app a /b\nCOPY --link --chown=1:2 a /c\n");
    let copy = |i: usize| match &s[i].kind {
        StepKind::Copy(c) => c.clone(),
        _ => panic!("not a COPY"),
    };
    assert!(is_link(&copy(0)) && !is_link(&copy(1)) && is_link(&copy(2)));
    let layer = copy_key("p1", &s[0], &copy(0), "/", CopyReads::default()).key();
    assert_eq!(
        layer,
        copy_key("p2", &s[0], &copy(0), "/", CopyReads::default()).key()
    );
    assert_ne!(link_chain("p1", &layer), link_chain("p2", &layer));
    assert_ne!(
        copy_key("p1", &s[1], &copy(1), "/", CopyReads::default()).key(),
        copy_key("p2", &s[1], &copy(1), "/", CopyReads::default()).key()
    );
}
