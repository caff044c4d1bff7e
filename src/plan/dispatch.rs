//! Walking one stage's instructions in order with BuildKit's dispatch
//! state (environment, ARGs in scope, SHELL, WORKDIR, once-per-stage
//! instructions): expanding words, recording the build args each step uses,
//! and producing its progress name and history text.

use std::collections::{BTreeMap, HashMap};

use crate::dockerfile::instructions::{self as di, SourceContent};
use crate::dockerfile::{Heredoc, Instruction, InstructionKind as DK};

use super::checks::{self, approx_size, clean_path, form, is_heredoc_word, summarize};
use super::expand;
use super::history as h;
use super::lints::{is_abs, looks_secret, spend_suggestion, suggest, SUGGEST_BUDGET};
use super::stage::{problem, resolve_from, FromScope, RawBase, RawStage, Resolved, PROXY_ARGS};
use super::state::{plan_too_big, State, MAX_ENV_BYTES, MAX_PLAN_BYTES};
use super::step::{ConfigEdit, CopyStep, Form, RunMount, RunStep, StepKind};
use super::{normalize_reference, Base, Finding, PlanOptions, Problem, Span, Step};

/// What a step's handler learns besides its kind: the ARGs its words used,
/// its texts, and where it came from.
struct Draft {
    used: BTreeMap<String, String>,
    /// RUN: every ARG in scope (else the ones in `used`).
    build_args: Option<BTreeMap<String, String>>,
    display_name: Option<String>,
    created_by: Option<String>,
    empty_layer: bool,
    span: Span,
    onbuild: bool,
}

pub(super) struct Dispatcher<'a> {
    pub(super) index: usize,
    pub(super) stage_name: String,
    pub(super) escape: char,
    pub(super) opts: &'a PlanOptions,
    pub(super) global: &'a BTreeMap<String, String>,
    pub(super) names: &'a BTreeMap<String, usize>,
    pub(super) total_stages: usize,
    pub(super) state: State,
    pub(super) total: usize,
    pub(super) counter: usize,
    pub(super) findings: Vec<Finding>,
    /// Bytes held by the steps planned so far, this stage and earlier ones
    /// (see [`MAX_PLAN_BYTES`]).
    pub(super) plan_bytes: usize,
    /// What is left of [`SUGGEST_BUDGET`], carried from stage to stage.
    pub(super) suggest_budget: usize,
}

impl<'a> Dispatcher<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        index: usize,
        st: &RawStage,
        res: &Resolved,
        single: bool,
        escape: char,
        opts: &'a PlanOptions,
        global: &'a BTreeMap<String, String>,
        names: &'a BTreeMap<String, usize>,
    ) -> Self {
        let stage_name = if single {
            String::new()
        } else {
            st.name.clone().unwrap_or_else(|| format!("stage-{index}"))
        };
        Dispatcher {
            index,
            stage_name,
            escape,
            opts,
            global,
            names,
            total_stages: names.len(),
            state: State::new(matches!(res.base, RawBase::Scratch)),
            total: 0,
            counter: 0,
            findings: Vec::new(),
            plan_bytes: 0,
            suggest_budget: SUGGEST_BUDGET,
        }
    }

    pub(super) fn prefix(&mut self, onbuild: bool) -> Option<String> {
        if self.total == 0 {
            return None;
        }
        self.counter += 1;
        h::progress_prefix(&self.stage_name, self.counter, self.total, onbuild)
    }

    fn secret_lint(&mut self, instruction: &str, key: &str, span: Span) {
        if looks_secret(key) {
            self.lint(
                "SecretsUsedInArgOrEnv",
                span,
                format!(
                    "Do not use ARG or ENV instructions for sensitive data ({instruction} {})",
                    h::go_quote(key)
                ),
            );
        }
    }

    fn lint(&mut self, rule: &'static str, span: Span, message: String) {
        self.findings.push(Finding {
            rule,
            span,
            message,
        });
    }

    /// Expand one word with the state's environment, recording the ARGs it
    /// used and reporting undefined variables.
    fn expand(
        &mut self,
        word: &str,
        span: Span,
        used: &mut BTreeMap<String, String>,
    ) -> Result<String, Problem> {
        let (out, m) =
            expand::word(word, &self.state, self.escape).map_err(|e| problem(span, e.0))?;
        self.note_matches(&m, span, used);
        Ok(out)
    }

    fn note_matches(
        &mut self,
        m: &expand::Matches,
        span: Span,
        used: &mut BTreeMap<String, String>,
    ) {
        for k in &m.matched {
            if self.state.is_arg(k) {
                if let Some(v) = self.state.get(k) {
                    used.insert(k.clone(), v.clone());
                }
            }
        }
        if !self.state.env_known {
            return;
        }
        for u in &m.unmatched {
            if self.state.is_arg(u) {
                continue;
            }
            let mut message = format!("Usage of undefined variable '${u}'");
            if spend_suggestion(&mut self.suggest_budget, self.state.env_len()) {
                if let Some(s) = suggest(u, &self.state.env_names()) {
                    message.push_str(&format!(" (did you mean ${s}?)"));
                }
            }
            self.lint("UndefinedVar", span, message);
        }
    }

    /// The progress name: BuildKit expands the instruction's source text
    /// with the current environment and upper-cases the keyword.
    fn display(&mut self, inst: &Instruction, onbuild: bool, raw: bool) -> Option<String> {
        let text = format!("{} {}", inst.keyword, inst.args_text());
        let shown = if raw {
            expand::display_raw(&text, &self.state, self.escape)
        } else {
            expand::word(&text, &self.state, self.escape)
                .map(|(w, _)| w)
                .unwrap_or_else(|_| text.clone())
        };
        let shown = h::uppercase_cmd(shown.trim_end());
        self.prefix(onbuild).map(|p| format!("{p}{shown}"))
    }

    pub(super) fn step(
        &mut self,
        inst: &Instruction,
        onbuild: bool,
        remap: &BTreeMap<usize, usize>,
        steps: &mut Vec<Step>,
        problems: &mut Vec<Problem>,
    ) {
        if self.plan_bytes > MAX_PLAN_BYTES || self.state.bytes() > MAX_ENV_BYTES {
            // Reported once, where the limit was crossed.
            return;
        }
        match self.dispatch(inst, onbuild, remap) {
            Ok(s) => {
                self.plan_bytes += approx_size(&s);
                if self.plan_bytes > MAX_PLAN_BYTES {
                    problems.push(plan_too_big(inst.span));
                    return;
                }
                steps.push(s)
            }
            Err(p) => problems.push(p),
        }
    }

    fn dispatch(
        &mut self,
        inst: &Instruction,
        onbuild: bool,
        remap: &BTreeMap<usize, usize>,
    ) -> Result<Step, Problem> {
        let span = inst.span;
        let mut d = Draft {
            used: BTreeMap::new(),
            build_args: None,
            display_name: None,
            created_by: None,
            empty_layer: true,
            span,
            onbuild,
        };
        let kw = inst.keyword.clone();
        let kind = match &inst.kind {
            DK::From(_) => return Err(problem(span, "unexpected FROM inside a stage")),
            DK::Env(kv) => self.env_label(&kw, true, kv, &mut d)?,
            DK::Label(kv) => self.env_label(&kw, false, kv, &mut d)?,
            DK::Arg(args) => self.arg(args, &mut d)?,
            DK::Run(r) => self.run(inst, r, remap, &mut d)?,
            DK::Cmd(c) => self.cmd_entrypoint(&kw, true, c, &mut d),
            DK::Entrypoint(c) => self.cmd_entrypoint(&kw, false, c, &mut d),
            DK::Shell(v) => {
                self.state.shell = v.clone();
                d.created_by = Some(format!("SHELL {}", h::go_slice(v)));
                StepKind::Config(ConfigEdit::Shell(v.clone()))
            }
            DK::Copy(c) => self.copy_add(inst, c, false, remap, &mut d)?,
            DK::Add(c) => self.copy_add(inst, c, true, remap, &mut d)?,
            DK::Workdir(p) => self.workdir(inst, p, &mut d)?,
            DK::User(u) => {
                let u = self.expand(u, span, &mut d.used)?;
                d.created_by = Some(format!("USER {u}"));
                StepKind::Config(ConfigEdit::User(u))
            }
            DK::Volume { paths, .. } => {
                let mut v2 = Vec::new();
                for v in paths {
                    let v = self.expand(v, span, &mut d.used)?;
                    if v.is_empty() {
                        return Err(problem(span, "VOLUME specified can not be an empty string"));
                    }
                    v2.push(v);
                }
                d.created_by = Some(format!("VOLUME {}", h::go_slice(&v2)));
                StepKind::Config(ConfigEdit::Volume(v2))
            }
            DK::Expose(ps) => self.expose(ps, &mut d)?,
            DK::StopSignal(s) => {
                let s = self.expand(s, span, &mut d.used)?;
                if !checks::valid_signal(&s) {
                    return Err(problem(span, format!("Invalid signal: {s}")));
                }
                d.created_by = Some(format!("STOPSIGNAL {s}"));
                StepKind::Config(ConfigEdit::StopSignal(s))
            }
            DK::Healthcheck(hc) => {
                if let Some(p) = self.state.seen.healthcheck.replace(span) {
                    self.lint(
                        "MultipleInstructionsDisallowed",
                        p,
                        format!("Multiple {kw} instructions should not be used in the same stage because only the last one will be used"),
                    );
                }
                let health = checks::health(hc);
                d.created_by = Some(h::healthcheck_created_by(&health));
                StepKind::Config(ConfigEdit::Healthcheck(health))
            }
            DK::Onbuild { expression, .. } => {
                self.state.onbuild.push(expression.clone());
                StepKind::Config(ConfigEdit::Onbuild(expression.clone()))
            }
            DK::Maintainer(m) => {
                d.created_by = Some(format!("MAINTAINER {m}"));
                StepKind::Config(ConfigEdit::Maintainer(m.clone()))
            }
        };
        let build_args = match d.build_args {
            Some(b) if !b.is_empty() => b,
            _ => d.used,
        };
        Ok(Step {
            kind,
            keyword: kw,
            original: inst.args_text(),
            span,
            build_args,
            display_name: d.display_name,
            created_by: d.created_by,
            empty_layer: d.empty_layer,
            from_onbuild: onbuild,
        })
    }

    /// ENV and LABEL: both sides expanded with the environment from before
    /// the instruction; ENV then updates it.
    fn env_label(
        &mut self,
        kw: &str,
        is_env: bool,
        kv: &di::KeyValues,
        d: &mut Draft,
    ) -> Result<StepKind, Problem> {
        let span = d.span;
        if kv.legacy {
            self.lint(
                "LegacyKeyValueFormat",
                span,
                format!(
                    "\"{kw} key=value\" should be used instead of legacy \"{kw} key value\" format"
                ),
            );
        }
        let mut expanded = Vec::new();
        for p in &kv.pairs {
            let k = self.expand(&p.key, span, &mut d.used)?;
            let v = self.expand(&p.value, span, &mut d.used)?;
            expanded.push((k, v));
        }
        if is_env {
            for (k, _) in &expanded {
                self.secret_lint("ENV", k, span);
            }
        }
        let mut msg = String::from(if is_env { "ENV" } else { "LABEL" });
        for (k, v) in &expanded {
            msg.push_str(&format!(" {k}={v}"));
            if is_env {
                self.state.set_checked(k, v, span)?;
            }
        }
        d.created_by = Some(msg);
        Ok(StepKind::Config(if is_env {
            ConfigEdit::Env(expanded)
        } else {
            ConfigEdit::Label(expanded)
        }))
    }

    /// ARG: a build arg beats the default; with neither, a redeclared
    /// global ARG brings its value in.
    fn arg(&mut self, args: &[di::ArgDecl], d: &mut Draft) -> Result<StepKind, Problem> {
        let span = d.span;
        let mut parts = Vec::new();
        let mut expanded = Vec::new();
        for a in args {
            let (k, def) = (&a.name, &a.default);
            self.secret_lint("ARG", k, span);
            let build = self.opts.build_args.get(k).cloned();
            let mut value = def.clone();
            if value.is_none() && build.is_none() {
                value = self.global.get(k).cloned();
            }
            if let Some(b) = build {
                value = Some(b);
            } else if let Some(default) = def {
                value = Some(self.expand(default, span, &mut d.used)?);
            }
            if let Some(v) = &value {
                self.state.set_checked(k, v, span)?;
            }
            self.state.push_arg(k, value.clone());
            parts.push(match &value {
                Some(v) => format!("{k}={v}"),
                None => k.clone(),
            });
            if let Some(v) = &value {
                d.used.insert(k.clone(), v.clone());
            }
            expanded.push((k.clone(), value));
        }
        d.created_by = Some(format!("ARG {}", parts.join(" ")));
        Ok(StepKind::Config(ConfigEdit::Arg(expanded)))
    }

    /// RUN: mounts expanded and parsed, `--network`/`--security` checked;
    /// every ARG in scope is in its environment, history and cache key.
    fn run(
        &mut self,
        inst: &Instruction,
        r: &di::Run,
        remap: &BTreeMap<usize, usize>,
        d: &mut Draft,
    ) -> Result<StepKind, Problem> {
        let span = d.span;
        let mut mounts = Vec::new();
        for raw in &r.mounts {
            let spec = self.expand(raw, span, &mut d.used)?;
            let mount = crate::dockerfile::parse_mount(&spec)
                .map_err(|e| problem(span, format!("--mount={spec}: {e}")))?;
            let from = match &mount.from {
                Some(src) => Some(self.source(src, span, remap)?),
                None => None,
            };
            mounts.push(RunMount { spec, mount, from });
        }
        let network = checks::network(r.network.as_deref(), span)?;
        checks::security(r.security.as_deref(), span)?;
        let cmd = form(&r.command);
        let (args, summary) = self.run_args(&cmd, &r.heredocs);
        let in_scope = self.args_in_scope();
        d.build_args = Some(in_scope.iter().cloned().collect());
        // Only ARGs with a value reach the environment (BuildKit adds them
        // to the state's env in dispatchArg).
        let arg_env = in_scope
            .iter()
            .filter(|(k, _)| self.state.get(k).is_some())
            .cloned()
            .collect();
        let proxy_env = self
            .opts
            .build_args
            .iter()
            .filter(|(k, _)| PROXY_ARGS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        d.display_name = self.display(inst, d.onbuild, true).map(|d| match &summary {
            Some(s) => format!("{d} ({s})"),
            None => d,
        });
        d.created_by = Some(format!(
            "RUN {} # buildkit",
            h::run_command_string(&args, &in_scope)
        ));
        d.empty_layer = false;
        Ok(StepKind::Run(RunStep {
            cmd,
            heredocs: r.heredocs.clone(),
            mounts,
            network,
            arg_env,
            proxy_env,
        }))
    }

    /// CMD and ENTRYPOINT (no expansion; the shell form gets the SHELL).
    fn cmd_entrypoint(
        &mut self,
        kw: &str,
        is_cmd: bool,
        c: &di::CommandLine,
        d: &mut Draft,
    ) -> StepKind {
        let span = d.span;
        let prev = if is_cmd {
            self.state.seen.cmd.replace(span)
        } else {
            self.state.seen.entrypoint.replace(span)
        };
        if let Some(p) = prev {
            self.lint(
                "MultipleInstructionsDisallowed",
                p,
                format!("Multiple {kw} instructions should not be used in the same stage because only the last one will be used"),
            );
        }
        let form = form(c);
        if matches!(form, Form::Shell(_)) && self.state.shell.is_empty() {
            self.lint(
                "JSONArgsRecommended",
                span,
                format!("JSON arguments recommended for {kw} to prevent unintended behavior related to OS signals"),
            );
        }
        let args = self.with_shell(&form);
        let name = if is_cmd { "CMD" } else { "ENTRYPOINT" };
        d.created_by = Some(format!("{name} {}", h::go_quote_slice(&args)));
        StepKind::Config(if is_cmd {
            ConfigEdit::Cmd(form)
        } else {
            ConfigEdit::Entrypoint(form)
        })
    }

    /// COPY and ADD: sources, destination, --chown/--chmod and unquoted
    /// heredoc bodies expanded; --chmod and --checksum checked.
    fn copy_add(
        &mut self,
        inst: &Instruction,
        c: &di::Copy,
        is_add: bool,
        remap: &BTreeMap<usize, usize>,
        d: &mut Draft,
    ) -> Result<StepKind, Problem> {
        let span = d.span;
        let from = match (&c.from, is_add) {
            (Some(v), false) => Some(self.source(v, span, remap)?),
            _ => None,
        };
        let chown = match &c.chown {
            Some(v) => Some(self.expand(v, span, &mut d.used)?),
            None => None,
        };
        let chmod_text = match &c.chmod {
            Some(v) => Some(self.expand(v, span, &mut d.used)?),
            None => None,
        };
        let mut srcs = Vec::new();
        for s in &c.sources {
            let s = self.expand(s, span, &mut d.used)?;
            if !is_add && (s.starts_with("http://") || s.starts_with("https://")) {
                return Err(problem(span, "source can't be a URL for COPY"));
            }
            srcs.push(s);
        }
        let dest = self.expand(&c.dest, span, &mut d.used)?;
        let mut contents = Vec::new();
        for doc in &c.contents {
            let mut doc: SourceContent = doc.clone();
            if doc.expand {
                doc.data =
                    expand::heredoc_body(&doc.data, &self.state).map_err(|e| problem(span, e.0))?;
            }
            contents.push(doc);
        }
        let mut msg = String::from(if is_add { "ADD" } else { "COPY" });
        if c.parents {
            msg.push_str(" --parents");
        }
        if let Some(v) = &chown {
            msg.push_str(&format!(" --chown={v}"));
        }
        let chmod = match &chmod_text {
            Some(v) => {
                msg.push_str(&format!(" --chmod={v}"));
                Some(checks::parse_chmod(v, span)?)
            }
            None => None,
        };
        if let Some(sum) = &c.checksum {
            checks::check_checksum(sum, span)?;
        }
        for s in &srcs {
            msg.push_str(&format!(" {s}"));
        }
        for doc in &contents {
            msg.push_str(&format!(" <<{}", doc.path));
        }
        msg.push_str(&format!(" {dest} # buildkit"));
        d.created_by = Some(msg);
        d.empty_layer = false;
        d.display_name = self.display(inst, d.onbuild, false);
        Ok(StepKind::Copy(CopyStep {
            is_add,
            sources: srcs,
            contents,
            dest,
            from,
            chown,
            chmod,
            link: c.link,
            parents: c.parents,
            excludes: c.excludes.clone(),
            checksum: c.checksum.clone(),
            unpack: c.unpack.unwrap_or(true),
        }))
    }

    /// WORKDIR: relative paths join the current one; `/` adds no layer.
    fn workdir(&mut self, inst: &Instruction, p: &str, d: &mut Draft) -> Result<StepKind, Problem> {
        let span = d.span;
        let p = self.expand(p, span, &mut d.used)?;
        if !self.state.workdir_set && !is_abs(&p) {
            self.lint(
                "WorkdirRelativePath",
                span,
                format!(
                    "Relative workdir {} can have unexpected results if the base image changes",
                    h::go_quote(&p)
                ),
            );
        }
        self.state.workdir_set = true;
        // BuildKit's NormalizeWorkdir joins (and so cleans) only a relative
        // path; an absolute one is kept as written, trailing slash included.
        let wd = if p.starts_with('/') {
            p.clone()
        } else {
            clean_path(&format!("/{}/{}", self.state.workdir, p))
        };
        self.state.workdir = wd.clone();
        if wd != "/" {
            d.display_name = self.display(inst, d.onbuild, false);
            d.empty_layer = false;
        }
        d.created_by = Some(format!("WORKDIR {wd}"));
        Ok(StepKind::Workdir(p))
    }

    /// EXPOSE: each word expanded and split, then parsed as port specs.
    fn expose(&mut self, ps: &[String], d: &mut Draft) -> Result<StepKind, Problem> {
        let span = d.span;
        let mut words = Vec::new();
        for p in ps {
            let (_, m) =
                expand::word(p, &self.state, self.escape).map_err(|e| problem(span, e.0))?;
            self.note_matches(&m, span, &mut d.used);
            words.extend(
                expand::words(p, &self.state, self.escape).map_err(|e| problem(span, e.0))?,
            );
        }
        // Ranges are merged before they are expanded, as BuildKit's port
        // map dedupes: `EXPOSE 0-65535` 8,000 times on one line would
        // otherwise make 500 million entries.
        let mut ranges: BTreeMap<String, Vec<(u16, u16)>> = BTreeMap::new();
        for w in &words {
            let (lo, hi, proto) = h::parse_port_range(w).map_err(|e| problem(span, e))?;
            ranges.entry(proto).or_default().push((lo, hi));
        }
        let mut specs = Vec::new();
        for (proto, mut rs) in ranges {
            rs.sort_unstable();
            let mut next = 0u32; // first port not yet listed for this proto
            for (lo, hi) in rs {
                for p in u32::from(lo).max(next)..=u32::from(hi) {
                    specs.push(format!("{p}/{proto}"));
                }
                next = next.max(u32::from(hi) + 1);
            }
        }
        d.created_by = Some(h::expose_created_by(&specs));
        Ok(StepKind::Config(ConfigEdit::Expose(specs)))
    }

    /// The ARGs in scope with their current values, de-duplicated like
    /// BuildKit's `runCommandString` (first position, last value).
    fn args_in_scope(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut at: HashMap<&str, usize> = HashMap::new();
        for (k, v) in &self.state.args {
            let val = self
                .state
                .get(k)
                .cloned()
                .or_else(|| v.clone())
                .unwrap_or_default();
            match at.get(k.as_str()) {
                Some(&i) => out[i].1 = val,
                None => {
                    at.insert(k, out.len());
                    out.push((k.clone(), val));
                }
            }
        }
        out
    }

    fn with_shell(&self, form: &Form) -> Vec<String> {
        match form {
            Form::Exec(v) => v.clone(),
            Form::Shell(s) => {
                let mut v = if self.state.shell.is_empty() {
                    vec!["/bin/sh".to_string(), "-c".to_string()]
                } else {
                    self.state.shell.clone()
                };
                v.push(s.clone());
                v
            }
        }
    }

    /// RUN's argv as BuildKit records it, and the heredoc summary for its
    /// progress name.
    fn run_args(&self, cmd: &Form, heredocs: &[Heredoc]) -> (Vec<String>, Option<String>) {
        let Form::Shell(line) = cmd else {
            return (self.with_shell(cmd), None);
        };
        let Some(first) = heredocs.first() else {
            return (self.with_shell(cmd), None);
        };
        let single = heredocs.len() == 1 && is_heredoc_word(line.trim());
        if single {
            let body = first.chomped();
            let summary = summarize(&body);
            if body.starts_with("#!") {
                let path = format!("/dev/pipes/{}", first.name);
                return (self.with_shell(&Form::Shell(path)), Some(summary));
            }
            return (self.with_shell(&Form::Shell(body)), Some(summary));
        }
        let mut full = line.clone();
        for d in heredocs {
            full.push('\n');
            full.push_str(&d.chomped());
            full.push_str(&d.name);
        }
        (self.with_shell(&Form::Shell(full)), None)
    }

    fn source(
        &self,
        value: &str,
        span: Span,
        remap: &BTreeMap<usize, usize>,
    ) -> Result<Base, Problem> {
        let scope = FromScope {
            names: self.names,
            total: self.total_stages,
            current: self.index,
            current_name: &self.stage_name,
        };
        Ok(match resolve_from(value, scope, span)? {
            RawBase::Scratch => Base::Scratch,
            RawBase::Stage(j) => Base::Stage(remap.get(&j).copied().unwrap_or(j)),
            RawBase::Image(r) => Base::Image(normalize_reference(&r).ok_or_else(|| {
                problem(
                    span,
                    format!("failed to parse stage name \"{r}\": invalid reference format"),
                )
            })?),
        })
    }
}
