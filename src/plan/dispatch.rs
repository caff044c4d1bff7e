//! Walking one stage's instructions in order with BuildKit's dispatch
//! state (environment, ARGs in scope, SHELL, WORKDIR, once-per-stage
//! instructions): expanding words, recording the build args each step uses,
//! and producing its progress name and history text.

use std::collections::{BTreeMap, HashMap};

use super::expand;
use super::history as h;
use super::ir::{Flag, Form, Heredoc, Instruction, Kind, Span};
use super::lints::{is_abs, looks_secret, spend_suggestion, suggest, SUGGEST_BUDGET};
use super::stage::{problem, resolve_from, FromScope, RawBase, RawStage, Resolved, PROXY_ARGS};
use super::state::{plan_too_big, State, MAX_ENV_BYTES, MAX_PLAN_BYTES};
use super::{normalize_reference, Base, Finding, PlanOptions, Problem, Step};

/// One step being built: the step, the ARGs its words used so far, and
/// where it came from.
struct Draft {
    step: Step,
    used: BTreeMap<String, String>,
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
        let text = format!("{} {}", inst.keyword, inst.original);
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
            step: Step {
                instruction: inst.clone(),
                build_args: BTreeMap::new(),
                arg_env: Vec::new(),
                proxy_env: BTreeMap::new(),
                sources: Vec::new(),
                mounts: Vec::new(),
                display_name: None,
                created_by: None,
                empty_layer: true,
                from_onbuild: onbuild,
            },
            used: BTreeMap::new(),
            span,
            onbuild,
        };
        let kw = inst.keyword.clone();
        match &inst.kind {
            Kind::From { .. } => return Err(problem(span, "unexpected FROM inside a stage")),
            Kind::Env { pairs, legacy } | Kind::Label { pairs, legacy } => {
                self.env_label(inst, pairs, legacy, &mut d)?
            }
            Kind::Arg(args) => self.arg(args, &mut d)?,
            Kind::Run { cmd, heredocs } => self.run(inst, cmd, heredocs, remap, &mut d)?,
            Kind::Cmd(form) | Kind::Entrypoint(form) => self.cmd_entrypoint(inst, form, &mut d),
            Kind::Shell(v) => {
                self.state.shell = v.clone();
                d.step.created_by = Some(format!("SHELL {}", h::go_slice(v)));
            }
            Kind::Copy {
                sources,
                dest,
                heredocs,
            }
            | Kind::Add {
                sources,
                dest,
                heredocs,
            } => self.copy_add(inst, sources, dest, heredocs, remap, &mut d)?,
            Kind::Workdir(p) => self.workdir(inst, p, &mut d)?,
            Kind::User(u) => {
                let u = self.expand(u, span, &mut d.used)?;
                d.step.created_by = Some(format!("USER {u}"));
                d.step.instruction.kind = Kind::User(u);
            }
            Kind::Volume(vs) => {
                let mut v2 = Vec::new();
                for v in vs {
                    let v = self.expand(v, span, &mut d.used)?;
                    if v.is_empty() {
                        return Err(problem(span, "VOLUME specified can not be an empty string"));
                    }
                    v2.push(v);
                }
                d.step.created_by = Some(format!("VOLUME {}", h::go_slice(&v2)));
                d.step.instruction.kind = Kind::Volume(v2);
            }
            Kind::Expose(ps) => self.expose(ps, &mut d)?,
            Kind::StopSignal(s) => {
                let s = self.expand(s, span, &mut d.used)?;
                if !valid_signal(&s) {
                    return Err(problem(span, format!("Invalid signal: {s}")));
                }
                d.step.created_by = Some(format!("STOPSIGNAL {s}"));
                d.step.instruction.kind = Kind::StopSignal(s);
            }
            Kind::Healthcheck(form) => {
                if let Some(p) = self.state.seen.healthcheck.replace(span) {
                    self.lint(
                        "MultipleInstructionsDisallowed",
                        p,
                        format!("Multiple {kw} instructions should not be used in the same stage because only the last one will be used"),
                    );
                }
                d.step.created_by = Some(h::healthcheck_created_by(&health(inst, form)?));
            }
            Kind::Onbuild { expression, .. } => {
                self.state.onbuild.push(expression.clone());
            }
            Kind::Maintainer(m) => {
                d.step.created_by = Some(format!("MAINTAINER {m}"));
            }
        }
        if d.step.build_args.is_empty() {
            d.step.build_args = d.used;
        }
        Ok(d.step)
    }

    /// ENV and LABEL: both sides expanded with the environment from before
    /// the instruction; ENV then updates it.
    fn env_label(
        &mut self,
        inst: &Instruction,
        pairs: &[(String, String)],
        legacy: &bool,
        d: &mut Draft,
    ) -> Result<(), Problem> {
        let (span, kw) = (d.span, inst.keyword.clone());
        let is_env = matches!(inst.kind, Kind::Env { .. });
        if *legacy {
            self.lint(
                "LegacyKeyValueFormat",
                span,
                format!(
                    "\"{kw} key=value\" should be used instead of legacy \"{kw} key value\" format"
                ),
            );
        }
        let mut expanded = Vec::new();
        for (k, v) in pairs {
            let k = self.expand(k, span, &mut d.used)?;
            let v = self.expand(v, span, &mut d.used)?;
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
        d.step.created_by = Some(msg);
        d.step.instruction.kind = if is_env {
            Kind::Env {
                pairs: expanded,
                legacy: *legacy,
            }
        } else {
            Kind::Label {
                pairs: expanded,
                legacy: *legacy,
            }
        };
        Ok(())
    }

    /// ARG: a build arg beats the default; with neither, a redeclared
    /// global ARG brings its value in.
    fn arg(&mut self, args: &[(String, Option<String>)], d: &mut Draft) -> Result<(), Problem> {
        let span = d.span;
        let mut parts = Vec::new();
        let mut expanded = Vec::new();
        for (k, def) in args {
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
        d.step.created_by = Some(format!("ARG {}", parts.join(" ")));
        d.step.instruction.kind = Kind::Arg(expanded);
        Ok(())
    }

    /// RUN: mounts expanded and parsed; every ARG in scope is in its
    /// environment, history and cache key.
    fn run(
        &mut self,
        inst: &Instruction,
        cmd: &Form,
        heredocs: &[Heredoc],
        remap: &BTreeMap<usize, usize>,
        d: &mut Draft,
    ) -> Result<(), Problem> {
        let span = d.span;
        let mut flags = Vec::new();
        for f in &inst.flags {
            let value = match (&f.name[..], &f.value) {
                ("mount", Some(v)) => {
                    let v = self.expand(v, span, &mut d.used)?;
                    let m = crate::dockerfile::parse_mount(&v)
                        .map_err(|e| problem(span, format!("--mount={v}: {e}")))?;
                    if let Some(src) = &m.from {
                        d.step.sources.push(self.source(src, span, remap)?);
                    }
                    d.step.mounts.push(m);
                    Some(v)
                }
                (_, v) => v.clone(),
            };
            flags.push(Flag {
                name: f.name.clone(),
                value,
                col: f.col,
            });
        }
        d.step.instruction.flags = flags;
        let (args, summary) = self.run_args(cmd, heredocs);
        let in_scope = self.args_in_scope();
        d.step.build_args = in_scope.iter().cloned().collect();
        // Only ARGs with a value reach the environment (BuildKit adds them
        // to the state's env in dispatchArg).
        d.step.arg_env = in_scope
            .iter()
            .filter(|(k, _)| self.state.get(k).is_some())
            .cloned()
            .collect();
        d.step.proxy_env = self
            .opts
            .build_args
            .iter()
            .filter(|(k, _)| PROXY_ARGS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        d.step.display_name = self.display(inst, d.onbuild, true).map(|d| match &summary {
            Some(s) => format!("{d} ({s})"),
            None => d,
        });
        d.step.created_by = Some(format!(
            "RUN {} # buildkit",
            h::run_command_string(&args, &in_scope)
        ));
        d.step.empty_layer = false;
        Ok(())
    }

    /// CMD and ENTRYPOINT (no expansion; the shell form gets the SHELL).
    fn cmd_entrypoint(&mut self, inst: &Instruction, form: &Form, d: &mut Draft) {
        let (span, kw) = (d.span, inst.keyword.clone());
        let is_cmd = matches!(inst.kind, Kind::Cmd(_));
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
        if matches!(form, Form::Shell(_)) && self.state.shell.is_empty() {
            self.lint(
                "JSONArgsRecommended",
                span,
                format!("JSON arguments recommended for {kw} to prevent unintended behavior related to OS signals"),
            );
        }
        let args = self.with_shell(form);
        let name = if is_cmd { "CMD" } else { "ENTRYPOINT" };
        d.step.created_by = Some(format!("{name} {}", h::go_quote_slice(&args)));
    }

    /// COPY and ADD: sources, destination, --chown/--chmod and unquoted
    /// heredoc bodies expanded.
    fn copy_add(
        &mut self,
        inst: &Instruction,
        sources: &[String],
        dest: &str,
        heredocs: &[Heredoc],
        remap: &BTreeMap<usize, usize>,
        d: &mut Draft,
    ) -> Result<(), Problem> {
        let span = d.span;
        let is_add = matches!(inst.kind, Kind::Add { .. });
        if !is_add {
            if let Some(v) = inst.flag("from").and_then(|f| f.value.clone()) {
                d.step.sources.push(self.source(&v, span, remap)?);
            }
        }
        let mut flags = Vec::new();
        for f in &inst.flags {
            let value = match (&f.name[..], &f.value) {
                ("chown" | "chmod", Some(v)) => Some(self.expand(v, span, &mut d.used)?),
                (_, v) => v.clone(),
            };
            flags.push(Flag {
                name: f.name.clone(),
                value,
                col: f.col,
            });
        }
        d.step.instruction.flags = flags;
        let mut srcs = Vec::new();
        for s in sources {
            let s = self.expand(s, span, &mut d.used)?;
            if !is_add && (s.starts_with("http://") || s.starts_with("https://")) {
                return Err(problem(span, "source can't be a URL for COPY"));
            }
            srcs.push(s);
        }
        let dest = self.expand(dest, span, &mut d.used)?;
        let mut docs = Vec::new();
        for doc in heredocs {
            let mut doc = doc.clone();
            if doc.expand {
                doc.body =
                    expand::heredoc_body(&doc.body, &self.state).map_err(|e| problem(span, e.0))?;
            }
            docs.push(doc);
        }
        let mut msg = String::from(if is_add { "ADD" } else { "COPY" });
        if d.step.instruction.flag("parents").is_some() {
            msg.push_str(" --parents");
        }
        if let Some(v) = d
            .step
            .instruction
            .flag("chown")
            .and_then(|f| f.value.clone())
        {
            msg.push_str(&format!(" --chown={v}"));
        }
        if let Some(v) = d
            .step
            .instruction
            .flag("chmod")
            .and_then(|f| f.value.clone())
        {
            check_chmod(&v, span)?;
            msg.push_str(&format!(" --chmod={v}"));
        }
        for s in &srcs {
            msg.push_str(&format!(" {s}"));
        }
        for doc in &docs {
            msg.push_str(&format!(" <<{}", doc.name));
        }
        msg.push_str(&format!(" {dest} # buildkit"));
        d.step.created_by = Some(msg);
        d.step.empty_layer = false;
        d.step.display_name = self.display(inst, d.onbuild, false);
        d.step.instruction.kind = if is_add {
            Kind::Add {
                sources: srcs,
                dest,
                heredocs: docs,
            }
        } else {
            Kind::Copy {
                sources: srcs,
                dest,
                heredocs: docs,
            }
        };
        Ok(())
    }

    /// WORKDIR: relative paths join the current one; `/` adds no layer.
    fn workdir(&mut self, inst: &Instruction, p: &str, d: &mut Draft) -> Result<(), Problem> {
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
            d.step.display_name = self.display(inst, d.onbuild, false);
            d.step.empty_layer = false;
        }
        d.step.created_by = Some(format!("WORKDIR {wd}"));
        d.step.instruction.kind = Kind::Workdir(p);
        Ok(())
    }

    /// EXPOSE: each word expanded and split, then parsed as port specs.
    fn expose(&mut self, ps: &[String], d: &mut Draft) -> Result<(), Problem> {
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
        d.step.created_by = Some(h::expose_created_by(&specs));
        d.step.instruction.kind = Kind::Expose(words);
        Ok(())
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
    fn run_args(
        &self,
        cmd: &Form,
        heredocs: &[super::ir::Heredoc],
    ) -> (Vec<String>, Option<String>) {
        let Form::Shell(line) = cmd else {
            return (self.with_shell(cmd), None);
        };
        let Some(first) = heredocs.first() else {
            return (self.with_shell(cmd), None);
        };
        let single = heredocs.len() == 1 && is_heredoc_word(line.trim());
        if single {
            let summary = summarize(&first.body);
            if first.body.starts_with("#!") {
                let path = format!("/dev/pipes/{}", first.name);
                return (self.with_shell(&Form::Shell(path)), Some(summary));
            }
            return (
                self.with_shell(&Form::Shell(first.body.clone())),
                Some(summary),
            );
        }
        let mut full = line.clone();
        for d in heredocs {
            full.push('\n');
            full.push_str(&d.body);
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

/// Roughly the heap bytes a planned step holds: its history text (which
/// repeats its expanded words), progress name, heredoc bodies and build args.
fn approx_size(s: &Step) -> usize {
    let pairs = |m: &mut dyn Iterator<Item = (&String, &String)>| {
        m.map(|(k, v)| k.len() + v.len()).sum::<usize>()
    };
    let heredocs = match &s.instruction.kind {
        Kind::Run { heredocs, .. } | Kind::Copy { heredocs, .. } | Kind::Add { heredocs, .. } => {
            heredocs.iter().map(|d| d.body.len()).sum()
        }
        _ => 0,
    };
    2 * s.created_by.as_ref().map_or(0, String::len)
        + s.display_name.as_ref().map_or(0, String::len)
        + s.instruction.original.len()
        + heredocs
        + pairs(&mut s.build_args.iter())
        + pairs(&mut s.arg_env.iter().map(|(k, v)| (k, v)))
}

fn is_heredoc_word(s: &str) -> bool {
    let s = s.trim_start_matches(|c: char| c.is_ascii_digit());
    s.starts_with("<<") && !s.contains(char::is_whitespace)
}

fn summarize(doc: &str) -> String {
    let doc = doc.trim();
    let mut lines = doc.split('\n');
    let first = lines.next().unwrap_or_default().to_string();
    if lines.next().is_some() {
        format!("{first}...")
    } else {
        first
    }
}

/// `path.Clean` for absolute paths.
fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn check_chmod(v: &str, span: Span) -> Result<(), Problem> {
    if let Ok(n) = u32::from_str_radix(v, 8) {
        if n > 0o7777 {
            return Err(problem(
                span,
                format!("invalid chmod parameter: '{v}'. it should be octal string and between 0 and 07777"),
            ));
        }
    }
    Ok(())
}

fn valid_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<u32>() {
        return n > 0 && n < 65;
    }
    let name = s.strip_prefix("SIG").unwrap_or(s);
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
        "UNUSED",
    ];
    NAMES.contains(&name)
        || name
            .strip_prefix("RTMIN")
            .or_else(|| name.strip_prefix("RTMAX"))
            .is_some_and(|r| {
                r.is_empty() || r.trim_start_matches(['+', '-']).parse::<u32>().is_ok()
            })
}

fn health(inst: &Instruction, form: &Option<Form>) -> Result<h::Health, Problem> {
    let test = match form {
        None => vec!["NONE".to_string()],
        Some(Form::Shell(s)) => vec!["CMD-SHELL".to_string(), s.clone()],
        Some(Form::Exec(v)) => {
            let mut t = vec!["CMD".to_string()];
            t.extend(v.iter().cloned());
            t
        }
    };
    let mut out = h::Health {
        test,
        ..h::Health::default()
    };
    for f in &inst.flags {
        let v = f.value.clone().unwrap_or_default();
        if f.name == "retries" {
            out.retries = v
                .parse()
                .map_err(|_| problem(inst.span, format!("invalid retries value: {v}")))?;
            continue;
        }
        let d = h::parse_go_duration(&v)
            .ok_or_else(|| problem(inst.span, format!("time: invalid duration \"{v}\"")))?;
        match f.name.as_str() {
            "interval" => out.interval = d,
            "timeout" => out.timeout = d,
            "start-period" => out.start_period = d,
            "start-interval" => out.start_interval = d,
            _ => {}
        }
    }
    Ok(out)
}
