//! What metadata instructions do to the image config, as BuildKit's
//! `dispatch*` functions do it. The planner has already expanded every
//! word; this module only applies the result.

use std::collections::BTreeMap;

use crate::image::{Empty, HealthConfig, ImageConfig};
use crate::plan::{ConfigEdit, Form, Health};

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

/// Apply a config edit: every value was expanded and checked by the plan.
pub fn apply(config: &mut ImageConfig, meta: &mut StageMeta, edit: &ConfigEdit) {
    let c = &mut config.config;
    match edit {
        ConfigEdit::Env(pairs) => {
            for (k, v) in pairs {
                c.set_env(k, v);
            }
        }
        ConfigEdit::Label(pairs) => {
            for (k, v) in pairs {
                c.labels.insert(k.clone(), v.clone());
            }
        }
        ConfigEdit::Cmd(form) => {
            let args = with_shell(config, form);
            config.config.cmd = Some(args);
            config.config.args_escaped = Some(true);
            meta.cmd_set = true;
        }
        ConfigEdit::Entrypoint(form) => {
            let args = with_shell(config, form);
            config.config.entrypoint = Some(args);
            if !meta.cmd_set {
                config.config.cmd = None;
            }
        }
        ConfigEdit::Shell(v) => c.shell = Some(v.clone()),
        ConfigEdit::User(u) => c.user = Some(u.clone()),
        ConfigEdit::Volume(paths) => {
            for p in paths {
                c.volumes.insert(p.clone(), Empty {});
            }
        }
        ConfigEdit::Expose(specs) => {
            for spec in specs {
                c.exposed_ports.insert(spec.clone(), Empty {});
            }
        }
        ConfigEdit::StopSignal(s) => c.stop_signal = Some(s.clone()),
        ConfigEdit::Healthcheck(h) => c.healthcheck = Some(health_config(h)),
        ConfigEdit::Onbuild(expression) => {
            c.on_build
                .get_or_insert_with(Vec::new)
                .push(expression.clone());
        }
        ConfigEdit::Maintainer(m) => config.author = Some(m.clone()),
        ConfigEdit::Arg(_) => {}
    }
}

/// HEALTHCHECK → docker's Healthcheck (durations in nanoseconds).
fn health_config(h: &Health) -> HealthConfig {
    let ns = |d: std::time::Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    HealthConfig {
        test: h.test.clone(),
        interval: ns(h.interval),
        timeout: ns(h.timeout),
        start_period: ns(h.start_period),
        start_interval: ns(h.start_interval),
        retries: h.retries,
    }
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
    fn healthcheck_durations_are_nanoseconds() {
        let h = Health {
            test: vec!["CMD".into(), "x".into()],
            interval: std::time::Duration::from_secs(30),
            retries: 3,
            ..Health::default()
        };
        let got = health_config(&h);
        assert_eq!(got.interval, 30_000_000_000);
        assert_eq!(got.timeout, 0);
        assert_eq!(got.retries, 3);
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
