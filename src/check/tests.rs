//! Lint rules (each positive and negative), `# check=` handling and the
//! exact rendering of errors with carets.

use super::*;

fn lint(text: &str) -> Report {
    check(text, &PlanOptions::default())
}

fn rules(text: &str) -> Vec<(&'static str, usize, String)> {
    lint(text)
        .warnings
        .into_iter()
        .map(|w| (w.rule, w.span.start_line, w.message))
        .collect()
}

fn has(text: &str, rule: &str) -> bool {
    rules(text).iter().any(|(r, _, _)| *r == rule)
}

#[test]
fn json_args_recommended() {
    assert_eq!(
        rules("FROM scratch\nCMD echo hi\n"),
        vec![(
            "JSONArgsRecommended",
            2,
            "JSON arguments recommended for CMD to prevent unintended behavior related to OS signals".to_string()
        )]
    );
    assert!(has("FROM scratch\nENTRYPOINT run\n", "JSONArgsRecommended"));
    assert!(!has(
        "FROM scratch\nCMD [\"echo\", \"hi\"]\n",
        "JSONArgsRecommended"
    ));
    assert!(!has(
        "FROM scratch\nSHELL [\"/bin/bash\", \"-c\"]\nCMD echo hi\n",
        "JSONArgsRecommended"
    ));
}

#[test]
fn stage_name_casing_and_from_as_casing() {
    let r = rules("FROM scratch AS Builder\n");
    assert!(r.contains(&(
        "StageNameCasing",
        1,
        "Stage name 'Builder' should be lowercase".into()
    )));
    assert!(!has("FROM scratch AS builder\n", "StageNameCasing"));
    assert_eq!(
        rules("FROM scratch as b\n"),
        vec![(
            "FromAsCasing",
            1,
            "'as' and 'FROM' keywords' casing do not match".into()
        )]
    );
    assert!(!has("FROM scratch AS b\n", "FromAsCasing"));
    assert!(has("from scratch AS b\n", "FromAsCasing"));
    assert!(!has("from scratch as b\n", "FromAsCasing"));
}

#[test]
fn duplicate_stage_name() {
    assert!(rules("FROM scratch AS a\nFROM scratch AS A\n").contains(&(
        "DuplicateStageName",
        2,
        "Duplicate stage name \"a\", stage names should be unique".into()
    )));
    assert!(!has(
        "FROM scratch AS a\nFROM scratch AS b\n",
        "DuplicateStageName"
    ));
}

#[test]
fn undefined_var_and_undefined_arg_in_from() {
    assert_eq!(
        rules("FROM scratch\nARG FOO=1\nENV A=$FOO B=$FOOO\n"),
        vec![(
            "UndefinedVar",
            3,
            "Usage of undefined variable '$FOOO' (did you mean $FOO?)".into()
        )]
    );
    assert!(!has("FROM scratch\nARG FOO\nENV A=$FOO\n", "UndefinedVar"));
    // RUN is expanded by the shell, not BuildKit.
    assert!(!has("FROM scratch\nRUN echo $NOPE\n", "UndefinedVar"));
    assert_eq!(
        rules("FROM alpine:$VERSION\n"),
        vec![
            (
                "InvalidDefaultArgInFrom",
                1,
                "Default value for ARG alpine:$VERSION results in empty or invalid base image name"
                    .into()
            ),
            (
                "UndefinedArgInFrom",
                1,
                "FROM argument 'VERSION' is not declared".into()
            )
        ]
    );
    assert!(!has(
        "ARG VERSION=3\nFROM alpine:$VERSION\n",
        "UndefinedArgInFrom"
    ));
    assert!(!has(
        "FROM --platform=$BUILDPLATFORM alpine\n",
        "UndefinedArgInFrom"
    ));
}

#[test]
fn maintainer_casing_multiple_legacy_continuation() {
    assert!(has("FROM scratch\nMAINTAINER me\n", "MaintainerDeprecated"));
    assert!(!has(
        "FROM scratch\nLABEL maintainer=me\n",
        "MaintainerDeprecated"
    ));
    assert_eq!(
        rules("FROM scratch\nrun true\nCOPY a b\n")
            .into_iter()
            .filter(|r| r.0 == "ConsistentInstructionCasing")
            .collect::<Vec<_>>(),
        vec![(
            "ConsistentInstructionCasing",
            2,
            "Command 'run' should match the case of the command majority (uppercase)".into()
        )]
    );
    assert!(!has(
        "from scratch\nrun true\n",
        "ConsistentInstructionCasing"
    ));
    assert_eq!(
        rules("FROM scratch\nCMD [\"a\"]\nCMD [\"b\"]\n"),
        vec![(
            "MultipleInstructionsDisallowed",
            2,
            "Multiple CMD instructions should not be used in the same stage because only the last one will be used".into()
        )]
    );
    assert!(!has(
        "FROM scratch\nCMD [\"a\"]\nFROM scratch\nCMD [\"b\"]\n",
        "MultipleInstructionsDisallowed"
    ));
    assert_eq!(
        rules("FROM scratch\nENV A 1\n"),
        vec![(
            "LegacyKeyValueFormat",
            2,
            "\"ENV key=value\" should be used instead of legacy \"ENV key value\" format".into()
        )]
    );
    assert!(!has("FROM scratch\nENV A=1\n", "LegacyKeyValueFormat"));
    assert!(has("FROM scratch\nRUN a \\\n\n b\n", "NoEmptyContinuation"));
    assert!(!has("FROM scratch\nRUN a \\\n b\n", "NoEmptyContinuation"));
}

#[test]
fn check_directive_skips_and_errors() {
    assert!(
        lint("# check=skip=JSONArgsRecommended\nFROM scratch\nCMD x\n")
            .warnings
            .is_empty()
    );
    assert!(
        lint("# check=skip=all\nFROM scratch\nCMD x\nMAINTAINER m\n")
            .warnings
            .is_empty()
    );
    let r = lint("# check=error=true\nFROM scratch\nCMD x\n");
    assert_eq!(r.exit_code(), 1);
    assert_eq!(
        r.errors[0].message,
        "lint violation found for rules: JSONArgsRecommended"
    );
    assert_eq!(lint("FROM scratch\nCMD x\n").exit_code(), 0);
    assert_eq!(
        parse_lint_config("skip=A, B;error=true").unwrap(),
        LintConfig {
            skip: ["A".to_string(), "B".to_string()].into_iter().collect(),
            skip_all: false,
            error: true
        }
    );
    assert!(parse_lint_config("bogus").is_err());
}

#[test]
fn three_bad_lines_give_three_errors_with_carets() {
    let text = "FROM scratch\nCOPY --bogus=1 a b\nFROB x\n  FROM a b c d\n";
    let r = lint(text);
    assert_eq!(r.exit_code(), 1);
    assert_eq!(
        render_report("Dockerfile", &r),
        "Dockerfile:2:6: error: unknown flag: --bogus\n  2 | COPY --bogus=1 a b\n    |      ^\n\
         Dockerfile:3:1: error: unknown instruction: FROB (did you mean FROM?)\n  3 | FROB x\n    | ^\n\
         Dockerfile:4:3: error: FROM requires either one or three arguments\n  4 |   FROM a b c d\n    |   ^\n"
    );
}

#[test]
fn plan_errors_are_reported_with_location() {
    let r = lint("FROM scratch AS a\nCOPY --from=b x y\nFROM scratch AS b\n");
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.errors[0].span.start_line, 2);
    assert!(
        r.errors[0].message.contains("needs to be defined before"),
        "{}",
        r.errors[0].message
    );
    let r = check(
        "FROM scratch\n",
        &PlanOptions {
            target: Some("nope".into()),
            ..PlanOptions::default()
        },
    );
    assert_eq!(
        render_report("df", &r),
        "df: error: target stage \"nope\" could not be found\n"
    );
}

#[test]
fn summary_lists_stages_and_steps() {
    let r = lint("FROM golang:1.22 AS builder\nWORKDIR /src\nCOPY . .\nRUN go build\nFROM scratch\nCOPY --from=builder /src/app /app\n");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let s = summary(r.plan.as_ref().unwrap());
    assert_eq!(
        s,
        "stage 0 \"builder\" FROM golang:1.22 (3 steps)\n  [builder 1/4] FROM docker.io/library/golang:1.22\n  [builder 2/4] WORKDIR /src\n  [builder 3/4] COPY . .\n  [builder 4/4] RUN go build\n\
         stage 1 FROM scratch (1 step) [target]\n  [stage-1 1/1] COPY --from=builder /src/app /app\n"
    );
}

#[test]
fn more_build_free_rules() {
    assert_eq!(
        rules("FROM scratch\nWORKDIR app\nWORKDIR sub\n"),
        vec![(
            "WorkdirRelativePath",
            2,
            "Relative workdir \"app\" can have unexpected results if the base image changes".into()
        )]
    );
    assert!(!has(
        "FROM scratch\nWORKDIR /app\nWORKDIR sub\n",
        "WorkdirRelativePath"
    ));
    assert_eq!(
        rules("FROM scratch\nARG GITHUB_TOKEN\nENV public_key=1 keys=2\n"),
        vec![(
            "SecretsUsedInArgOrEnv",
            2,
            "Do not use ARG or ENV instructions for sensitive data (ARG \"GITHUB_TOKEN\")".into()
        )]
    );
    assert_eq!(
        rules("FROM --platform=$TARGETPLATFORM scratch\n"),
        vec![(
            "RedundantTargetPlatform",
            1,
            "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior".into()
        )]
    );
    assert_eq!(
        rules("FROM --platform=linux/amd64 scratch AS b\n"),
        vec![(
            "FromPlatformFlagConstDisallowed",
            1,
            "FROM --platform flag should not use constant value \"linux/amd64\"".into()
        )]
    );
    assert!(!has(
        "FROM --platform=linux/amd64 scratch AS build-amd64\n",
        "FromPlatformFlagConstDisallowed"
    ));
    assert_eq!(
        rules("ARG IMG\nFROM $IMG\n"),
        vec![(
            "InvalidDefaultArgInFrom",
            2,
            "Default value for ARG $IMG results in empty or invalid base image name".into()
        )]
    );
    assert!(!has(
        "ARG IMG=alpine\nFROM $IMG\n",
        "InvalidDefaultArgInFrom"
    ));
    assert!(!has(
        "FROM --platform=$BUILDPLATFORM scratch\n",
        "RedundantTargetPlatform"
    ));
}
