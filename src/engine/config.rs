//! What metadata instructions do to the image config, as BuildKit's
//! `dispatch*` functions do it. The planner has already expanded every
//! word; this module only applies the result.

use std::collections::BTreeMap;

use anyhow::Context;

use crate::image::{Empty, HealthConfig, ImageConfig};
use crate::plan::{Form, Instruction, Kind};

/// PATH that BuildKit puts in a stage's environment when the base has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Per-stage state the config alone does not hold.
#[derive(Debug, Clone, Default)]
pub struct StageMeta {
    /// CMD was set in this stage (ENTRYPOINT then keeps it).
    pub cmd_set: bool,
}

/// Prepare a base config for a new stage: ONBUILD triggers do not carry
/// over, and PATH is always set.
pub fn start_stage(config: &mut ImageConfig) {
    config.config.on_build = None;
    if !config.config.env.iter().any(|e| e.starts_with("PATH=")) {
        config.config.env.push(format!("PATH={DEFAULT_PATH}"));
    }
}

/// `args` run through the stage's SHELL when in shell form.
pub fn with_shell(config: &ImageConfig, form: &Form) -> Vec<String> {
    match form {
        Form::Exec(v) => v.clone(),
        Form::Shell(s) => {
            let mut sh = config
                .config
                .shell
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
            sh.push(s.clone());
            sh
        }
    }
}

/// Apply a metadata-only instruction. Returns false for instructions that
/// are not metadata-only (COPY, ADD, RUN, WORKDIR are the engine's).
pub fn apply(
    config: &mut ImageConfig,
    meta: &mut StageMeta,
    inst: &Instruction,
) -> anyhow::Result<bool> {
    let c = &mut config.config;
    match &inst.kind {
        Kind::Env { pairs, .. } => {
            for (k, v) in pairs {
                c.set_env(k, v);
            }
        }
        Kind::Label { pairs, .. } => {
            for (k, v) in pairs {
                c.labels.insert(k.clone(), v.clone());
            }
        }
        Kind::Cmd(form) => {
            let args = with_shell(config, form);
            config.config.cmd = Some(args);
            config.config.args_escaped = Some(true);
            meta.cmd_set = true;
        }
        Kind::Entrypoint(form) => {
            let args = with_shell(config, form);
            config.config.entrypoint = Some(args);
            if !meta.cmd_set {
                config.config.cmd = None;
            }
        }
        Kind::Shell(v) => c.shell = Some(v.clone()),
        Kind::User(u) => c.user = Some(u.clone()),
        Kind::Volume(paths) => {
            for p in paths {
                anyhow::ensure!(!p.is_empty(), "VOLUME specified can not be an empty string");
                c.volumes.insert(p.clone(), Empty {});
            }
        }
        Kind::Expose(ports) => {
            for p in ports {
                for spec in expose_specs(p)? {
                    c.exposed_ports.insert(spec, Empty {});
                }
            }
        }
        Kind::StopSignal(s) => c.stop_signal = Some(s.clone()),
        Kind::Healthcheck(h) => c.healthcheck = Some(health_config(inst, h.as_ref())?),
        Kind::Onbuild { expression, .. } => {
            c.on_build
                .get_or_insert_with(Vec::new)
                .push(expression.clone());
        }
        Kind::Maintainer(m) => config.author = Some(m.clone()),
        Kind::Arg(_) => {}
        Kind::From { .. }
        | Kind::Run { .. }
        | Kind::Copy { .. }
        | Kind::Add { .. }
        | Kind::Workdir(_) => return Ok(false),
    }
    Ok(true)
}

/// `80`, `80/udp`, `8000-8002/tcp` → `["80/tcp"]`, … (docker's nat.ParsePortSpecs).
fn expose_specs(spec: &str) -> anyhow::Result<Vec<String>> {
    let (ports, proto) = match spec.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    let bad = || format!("invalid containerPort: {spec}");
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (
            a.parse::<u16>().with_context(bad)?,
            b.parse::<u16>().with_context(bad)?,
        ),
        None => {
            let p = ports.parse::<u16>().with_context(bad)?;
            (p, p)
        }
    };
    anyhow::ensure!(
        lo <= hi,
        "invalid range specified for container port: {spec}"
    );
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// HEALTHCHECK → docker's Healthcheck (durations in nanoseconds).
fn health_config(inst: &Instruction, form: Option<&Form>) -> anyhow::Result<HealthConfig> {
    let Some(form) = form else {
        return Ok(HealthConfig {
            test: vec!["NONE".into()],
            ..HealthConfig::default()
        });
    };
    let test = match form {
        Form::Exec(v) => std::iter::once("CMD".to_string())
            .chain(v.iter().cloned())
            .collect(),
        Form::Shell(s) => vec!["CMD-SHELL".into(), s.clone()],
    };
    let dur = |name: &str| -> anyhow::Result<i64> {
        match inst.flag(name).and_then(|f| f.value.as_deref()) {
            None => Ok(0),
            Some(v) => {
                let d = crate::plan::history::parse_go_duration(v)
                    .with_context(|| format!("invalid --{name} duration {v:?}"))?;
                Ok(d.as_nanos() as i64)
            }
        }
    };
    let retries = match inst.flag("retries").and_then(|f| f.value.as_deref()) {
        None => 0,
        Some(v) => v
            .parse::<i64>()
            .with_context(|| format!("invalid --retries {v:?}"))?,
    };
    Ok(HealthConfig {
        test,
        interval: dur("interval")?,
        timeout: dur("timeout")?,
        start_period: dur("start-period")?,
        start_interval: dur("start-interval")?,
        retries,
    })
}

/// Environment for expansion-free consumers (RUN): config env as pairs.
pub fn env_map(config: &ImageConfig) -> BTreeMap<String, String> {
    config
        .config
        .env
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e.clone(), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expose_forms() {
        assert_eq!(expose_specs("80").unwrap(), vec!["80/tcp"]);
        assert_eq!(expose_specs("53/UDP").unwrap(), vec!["53/udp"]);
        assert_eq!(
            expose_specs("8000-8002/tcp").unwrap(),
            vec!["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert!(expose_specs("http").is_err());
        assert!(expose_specs("9-8").is_err());
    }

    #[test]
    fn shell_form_uses_stage_shell() {
        let mut c = ImageConfig::for_host();
        assert_eq!(
            with_shell(&c, &Form::Shell("echo hi".into())),
            vec!["/bin/sh", "-c", "echo hi"]
        );
        c.config.shell = Some(vec!["/bin/bash".into(), "-eo".into()]);
        assert_eq!(
            with_shell(&c, &Form::Shell("x".into())),
            vec!["/bin/bash", "-eo", "x"]
        );
        assert_eq!(with_shell(&c, &Form::Exec(vec!["a".into()])), vec!["a"]);
    }

    #[test]
    fn path_is_always_set() {
        let mut c = ImageConfig::for_host();
        start_stage(&mut c);
        assert_eq!(c.config.env, vec![format!("PATH={DEFAULT_PATH}")]);
        c.config.env = vec!["PATH=/x".into()];
        start_stage(&mut c);
        assert_eq!(c.config.env, vec!["PATH=/x"]);
    }
}
