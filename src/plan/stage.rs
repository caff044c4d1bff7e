//! The planning pass: split instructions into global ARGs and stages,
//! resolve each stage's base with the global ARGs, find the stages the
//! target needs, then walk each needed stage's instructions in order keeping
//! BuildKit's dispatch state (environment, ARGs in scope, SHELL, WORKDIR).

use std::collections::{BTreeMap, BTreeSet};

use super::expand;
use super::history as h;
use super::ir::{Flag, Form, Instruction, Kind, Span};
use super::{
    normalize_reference, Base, BaseConfig, Finding, Plan, PlanError, PlanOptions, PlannedStage,
    Platform, Problem, Step,
};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Build args that reach RUN without an ARG declaration and stay out of
/// history and cache keys.
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The platform ARGs BuildKit defines globally (usable in FROM; inside a
/// stage only after `ARG NAME`).
pub fn predefined_args(p: &Platform, target_stage: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for (prefix, plat) in [("BUILD", p), ("TARGET", p)] {
        m.insert(format!("{prefix}PLATFORM"), plat.to_string());
        m.insert(format!("{prefix}OS"), plat.os.clone());
        m.insert(format!("{prefix}ARCH"), plat.arch.clone());
        m.insert(format!("{prefix}VARIANT"), plat.variant.clone());
    }
    m.insert("TARGETSTAGE".into(), target_stage.to_string());
    m
}

/// RedundantTargetPlatform and FromPlatformFlagConstDisallowed.
fn platform_lints(
    raw: &str,
    value: &str,
    m: &expand::Matches,
    stage: Option<&str>,
    global: &BTreeMap<String, String>,
    span: Span,
    findings: &mut Vec<Finding>,
) {
    let only_target = m.matched.len() == 1
        && m.unmatched.is_empty()
        && m.matched.contains("TARGETPLATFORM")
        && global.get("TARGETPLATFORM").map(String::as_str) == Some(value);
    if only_target {
        findings.push(Finding {
            rule: "RedundantTargetPlatform",
            span,
            message: format!("Setting platform to predefined {raw} in FROM is redundant as this is the default behavior"),
        });
    }
    if !m.matched.is_empty() || !m.unmatched.is_empty() {
        return;
    }
    let Some(p) = Platform::parse(value) else {
        return;
    };
    let stage = stage.unwrap_or_default();
    if stage.contains(&p.os) || stage.contains(&p.arch) {
        return;
    }
    findings.push(Finding {
        rule: "FromPlatformFlagConstDisallowed",
        span,
        message: format!("FROM --platform flag should not use constant value \"{value}\""),
    });
}

/// InvalidDefaultArgInFrom: with only the ARG defaults (no build args),
/// every FROM must still name a valid image or stage.
fn default_arg_lints(
    stages: &[RawStage],
    meta: &[&Instruction],
    escape: char,
    opts: &PlanOptions,
    target_name: &str,
    findings: &mut Vec<Finding>,
) {
    let defaults_only = PlanOptions {
        build_args: BTreeMap::new(),
        ..opts.clone()
    };
    let mut scratch = Vec::new();
    let (defaults, _) = global_args(meta, escape, &defaults_only, target_name, &mut scratch);
    if !scratch.is_empty() {
        return;
    }
    for st in stages {
        let Ok((name, _)) = expand::word(st.image, &defaults, escape) else {
            return;
        };
        if normalize_reference(&name).is_none() {
            findings.push(Finding {
                rule: "InvalidDefaultArgInFrom",
                span: st.from.span,
                message: format!(
                    "Default value for ARG {} results in empty or invalid base image name",
                    st.image
                ),
            });
        }
    }
}

/// SecretsUsedInArgOrEnv: ARG/ENV names that look like credentials.
fn looks_secret(key: &str) -> bool {
    const DENY: &[&str] = &[
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    // BuildKit's `(?i)(?:_|^)(?:token|…)(?:_|$)`: a whole `_`-separated word.
    let lower = key.to_ascii_lowercase();
    let words: Vec<&str> = lower.split('_').collect();
    words.iter().any(|w| DENY.contains(w)) && !words.contains(&"public")
}

fn problem(span: Span, message: impl Into<String>) -> Problem {
    Problem {
        span,
        message: message.into(),
    }
}

struct RawStage<'a> {
    from: &'a Instruction,
    image: &'a str,
    name: Option<String>,
    commands: Vec<&'a Instruction>,
}

/// A stage after its FROM line was expanded.
struct Resolved {
    base: RawBase,
    name: String,
    platform: Option<Platform>,
}

#[derive(Clone, Debug)]
enum RawBase {
    Scratch,
    Stage(usize),
    Image(String),
}

pub(super) fn plan(
    insts: &[Instruction],
    escape: char,
    opts: &PlanOptions,
) -> Result<Plan, PlanError> {
    let mut problems = Vec::new();
    let mut findings = Vec::new();
    let (meta, stages) = split_stages(insts, &mut problems);
    if stages.is_empty() && problems.is_empty() {
        problems.push(problem(
            Span::default(),
            "dockerfile contains no stages to build",
        ));
    }
    if !problems.is_empty() {
        return Err(PlanError { problems, findings });
    }

    let target_name = match &opts.target {
        Some(t) => t.to_ascii_lowercase(),
        None => stages
            .last()
            .and_then(|s| s.name.clone())
            .unwrap_or_default(),
    };
    let (global, meta_keys) = global_args(&meta, escape, opts, &target_name, &mut problems);
    default_arg_lints(&stages, &meta, escape, opts, &target_name, &mut findings);
    let resolved = resolve_bases(
        &stages,
        &global,
        &meta_keys,
        escape,
        &mut problems,
        &mut findings,
    );
    let names = stage_names(&stages);

    let target = match &opts.target {
        None => stages.len() - 1,
        Some(t) => match names.get(&t.to_ascii_lowercase()) {
            Some(i) => *i,
            None => {
                problems.push(problem(
                    Span::default(),
                    format!("target stage \"{t}\" could not be found"),
                ));
                return Err(PlanError { problems, findings });
            }
        },
    };
    let deps = stage_deps(&stages, &resolved, &names, opts, &mut problems);
    let keep = reachable(target, &resolved, &deps, opts.all_stages, stages.len());

    let mut remap = BTreeMap::new();
    for (new, old) in keep.iter().enumerate() {
        remap.insert(*old, new);
    }
    let implicit_images = stages
        .iter()
        .flat_map(|s| s.commands.iter())
        .filter(|c| matches!(&c.kind, Kind::Copy { .. }))
        .filter_map(|c| c.flag("from").and_then(|f| f.value.clone()))
        .filter(|f| f.parse::<usize>().is_err() && !names.contains_key(&f.to_ascii_lowercase()))
        .count();
    let single = stages.len() + implicit_images == 1;

    let mut finals: BTreeMap<usize, State> = BTreeMap::new();
    let mut planned = Vec::new();
    let mut images = BTreeSet::new();
    for &i in &keep {
        let st = &stages[i];
        let res = &resolved[i];
        let mut d = Dispatcher::new(i, st, res, single, escape, opts, &global, &names);
        d.total_stages = stages.len();
        let base = match &res.base {
            RawBase::Scratch => Base::Scratch,
            RawBase::Stage(j) => {
                if let Some(s) = finals.get(j) {
                    d.state = s.clone();
                    d.state.seen = Seen::default();
                    d.state.onbuild.clear();
                }
                Base::Stage(remap.get(j).copied().unwrap_or(*j))
            }
            RawBase::Image(raw) => match normalize_reference(raw) {
                Some(r) => {
                    if let Some(cfg) = opts.base_configs.get(&r) {
                        d.state.apply_config(cfg);
                    }
                    images.insert(r.clone());
                    Base::Image(r)
                }
                None => {
                    problems.push(problem(
                        st.from.span,
                        format!("failed to parse stage name \"{raw}\": invalid reference format"),
                    ));
                    Base::Image(raw.clone())
                }
            },
        };
        d.state.ensure_path();
        let triggers = triggers_for(&stages, res, opts, st.from.span, &mut problems);
        d.total = count_steps(&st.commands, &res.base) + triggers.len();
        let from_display = match &base {
            Base::Image(r) => d.prefix(false).map(|p| format!("{p}FROM {r}")),
            _ => None,
        };
        let mut steps = Vec::new();
        for t in &triggers {
            let mut t = t.clone();
            t.span = st.from.span;
            d.step(&t, true, &remap, &mut steps, &mut problems);
        }
        for c in &st.commands {
            d.step(c, false, &remap, &mut steps, &mut problems);
        }
        for s in &steps {
            for b in &s.sources {
                if let Base::Image(r) = b {
                    images.insert(r.clone());
                }
            }
        }
        findings.append(&mut d.findings);
        planned.push(PlannedStage {
            index: i,
            name: st.name.clone(),
            progress_name: d.stage_name.clone(),
            base,
            base_name: res.name.clone(),
            platform: res.platform.clone(),
            span: st.from.span,
            from_display,
            steps,
            onbuild: d.state.onbuild.clone(),
        });
        finals.insert(i, d.state);
    }
    findings.sort_by_key(|f| (f.span.line, f.span.col));
    if !problems.is_empty() {
        problems.sort_by_key(|p| (p.span.line, p.span.col));
        problems.dedup();
        return Err(PlanError { problems, findings });
    }
    Ok(Plan {
        target: remap.get(&target).copied().unwrap_or(0),
        stages: planned,
        findings,
        images: images.into_iter().collect(),
    })
}

fn split_stages<'a>(
    insts: &'a [Instruction],
    problems: &mut Vec<Problem>,
) -> (Vec<&'a Instruction>, Vec<RawStage<'a>>) {
    let mut meta = Vec::new();
    let mut stages: Vec<RawStage> = Vec::new();
    for inst in insts {
        if let Kind::From { image, name, .. } = &inst.kind {
            stages.push(RawStage {
                from: inst,
                image,
                name: name.as_ref().map(|n| n.to_ascii_lowercase()),
                commands: Vec::new(),
            });
            continue;
        }
        match stages.last_mut() {
            Some(s) => s.commands.push(inst),
            None if matches!(inst.kind, Kind::Arg(_)) => meta.push(inst),
            None => problems.push(problem(inst.span, "no build stage in current context")),
        }
    }
    (meta, stages)
}

fn global_args(
    meta: &[&Instruction],
    escape: char,
    opts: &PlanOptions,
    target_name: &str,
    problems: &mut Vec<Problem>,
) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut global = predefined_args(&opts.platform, target_name);
    let mut keys = BTreeSet::new();
    for m in meta {
        let Kind::Arg(args) = &m.kind else { continue };
        for (k, def) in args {
            keys.insert(k.clone());
            if let Some(v) = opts.build_args.get(k) {
                global.insert(k.clone(), v.clone());
            } else if let Some(d) = def {
                match expand::word(d, &global, escape) {
                    Ok((v, _)) => {
                        global.insert(k.clone(), v);
                    }
                    Err(e) => problems.push(problem(m.span, e.0)),
                }
            }
        }
    }
    (global, keys)
}

/// Stage names to indexes; with duplicates the last one wins, as in
/// BuildKit's `statesByName` map.
fn stage_names(stages: &[RawStage]) -> BTreeMap<String, usize> {
    let mut names = BTreeMap::new();
    for (i, s) in stages.iter().enumerate() {
        if let Some(n) = &s.name {
            names.insert(n.clone(), i);
        }
    }
    names
}

fn resolve_bases(
    stages: &[RawStage],
    global: &BTreeMap<String, String>,
    meta_keys: &BTreeSet<String>,
    escape: char,
    problems: &mut Vec<Problem>,
    findings: &mut Vec<Finding>,
) -> Vec<Resolved> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, st) in stages.iter().enumerate() {
        let span = st.from.span;
        let report = |m: &expand::Matches, findings: &mut Vec<Finding>| {
            for u in &m.unmatched {
                if !global.contains_key(u) && !meta_keys.contains(u) {
                    let options: Vec<&String> = global.keys().chain(meta_keys.iter()).collect();
                    let mut message = format!("FROM argument '{u}' is not declared");
                    if let Some(s) = suggest(u, &options) {
                        message.push_str(&format!(" (did you mean {s}?)"));
                    }
                    findings.push(Finding {
                        rule: "UndefinedArgInFrom",
                        span,
                        message,
                    });
                }
            }
        };
        let mut base_name = st.image.to_string();
        let base = match expand::word(st.image, global, escape) {
            Ok((name, m)) => {
                base_name = name.clone();
                report(&m, findings);
                if name.is_empty() {
                    problems.push(problem(
                        span,
                        format!("base name ({}) should not be blank", st.image),
                    ));
                    RawBase::Scratch
                } else if let Some(j) = seen.get(&name) {
                    RawBase::Stage(*j)
                } else if name == "scratch" {
                    RawBase::Scratch
                } else {
                    RawBase::Image(name)
                }
            }
            Err(e) => {
                problems.push(problem(span, e.0));
                RawBase::Scratch
            }
        };
        let mut platform = None;
        if let Some(v) = st.from.flag("platform").and_then(|f| f.value.clone()) {
            match expand::word(&v, global, escape) {
                Ok((p, m)) => {
                    report(&m, findings);
                    platform_lints(&v, &p, &m, st.name.as_deref(), global, span, findings);
                    if p.is_empty() {
                        problems.push(problem(
                            span,
                            format!("empty platform value from expression {v}"),
                        ));
                    } else {
                        match Platform::parse(&p) {
                            Some(p) => platform = Some(p),
                            None => problems.push(problem(
                                span,
                                format!("failed to parse platform {v}: \"{p}\": unknown operating system or architecture: invalid argument"),
                            )),
                        }
                    }
                }
                Err(e) => problems.push(problem(
                    span,
                    format!("failed to process arguments for platform {v}: {}", e.0),
                )),
            }
        }
        if let Some(n) = &st.name {
            seen.insert(n.clone(), i);
        }
        out.push(Resolved {
            base,
            name: base_name,
            platform,
        });
    }
    out
}

/// Where `--from=` values are resolved: the stage names, how many stages
/// there are, and the stage being planned.
#[derive(Clone, Copy)]
struct FromScope<'a> {
    names: &'a BTreeMap<String, usize>,
    total: usize,
    current: usize,
    current_name: &'a str,
}

/// The source a `--from=` value names: a stage (defined before the current
/// one) or an image.
fn resolve_from(value: &str, scope: FromScope, span: Span) -> Result<RawBase, Problem> {
    if value.contains('$') {
        return Err(problem(
            span,
            format!("COPY --from does not support variables: \"{value}\""),
        ));
    }
    let idx = match value.parse::<usize>() {
        Ok(n) if n >= scope.total => {
            return Err(problem(span, format!("invalid stage index {n}")));
        }
        Ok(n) => Some(n),
        Err(_) => scope.names.get(&value.to_ascii_lowercase()).copied(),
    };
    match idx {
        Some(j) if j >= scope.current => Err(problem(
            span,
            format!(
                "cannot copy from stage \"{value}\", it needs to be defined before current stage \"{}\"",
                scope.current_name
            ),
        )),
        Some(j) => Ok(RawBase::Stage(j)),
        None if value == "scratch" => Ok(RawBase::Scratch),
        None => Ok(RawBase::Image(value.to_string())),
    }
}

/// `from=` of a `--mount` spec, if any.
fn mount_from(spec: &str) -> Option<String> {
    spec.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("from")).then(|| v.trim().to_string())
    })
}

fn inst_sources(inst: &Instruction, scope: FromScope) -> Vec<Result<RawBase, Problem>> {
    let inner = match &inst.kind {
        Kind::Onbuild { .. } => return Vec::new(),
        _ => inst,
    };
    let mut out = Vec::new();
    if matches!(inner.kind, Kind::Copy { .. }) {
        if let Some(v) = inner.flag("from").and_then(|f| f.value.clone()) {
            out.push(resolve_from(&v, scope, inner.span));
        }
    }
    if matches!(inner.kind, Kind::Run { .. }) {
        for m in inner.flag_values("mount") {
            if let Some(v) = mount_from(&m) {
                if !v.contains('$') {
                    out.push(resolve_from(&v, scope, inner.span));
                }
            }
        }
    }
    out
}

fn stage_deps(
    stages: &[RawStage],
    resolved: &[Resolved],
    names: &BTreeMap<String, usize>,
    opts: &PlanOptions,
    problems: &mut Vec<Problem>,
) -> Vec<Vec<usize>> {
    let mut deps = Vec::new();
    for (i, st) in stages.iter().enumerate() {
        let mut d = Vec::new();
        let mut scratch = Vec::new();
        let triggers = triggers_for(stages, &resolved[i], opts, st.from.span, &mut scratch);
        let all = st.commands.iter().copied().chain(triggers.iter());
        for c in all {
            let name = st.name.clone().unwrap_or_else(|| format!("stage-{i}"));
            let scope = FromScope {
                names,
                total: stages.len(),
                current: i,
                current_name: &name,
            };
            for r in inst_sources(c, scope) {
                match r {
                    Ok(RawBase::Stage(j)) => d.push(j),
                    Ok(_) => {}
                    Err(p) => problems.push(p),
                }
            }
        }
        deps.push(d);
    }
    deps
}

fn reachable(
    target: usize,
    resolved: &[Resolved],
    deps: &[Vec<usize>],
    all: bool,
    n: usize,
) -> Vec<usize> {
    if all {
        return (0..n).collect();
    }
    let mut seen = BTreeSet::new();
    let mut todo = vec![target];
    while let Some(i) = todo.pop() {
        if !seen.insert(i) {
            continue;
        }
        if let RawBase::Stage(j) = resolved[i].base {
            todo.push(j);
        }
        todo.extend(deps[i].iter().copied());
    }
    seen.into_iter().collect()
}

/// ONBUILD triggers a stage inherits from its base stage or base image.
fn triggers_for(
    stages: &[RawStage],
    res: &Resolved,
    opts: &PlanOptions,
    at: Span,
    problems: &mut Vec<Problem>,
) -> Vec<Instruction> {
    match &res.base {
        RawBase::Stage(j) => {
            let mut out = Vec::new();
            for c in &stages[*j].commands {
                match &c.kind {
                    Kind::Onbuild { inner: Ok(t), .. } => out.push((**t).clone()),
                    Kind::Onbuild { inner: Err(p), .. } => {
                        problems.push(problem(at, p.message.clone()))
                    }
                    _ => {}
                }
            }
            out
        }
        RawBase::Image(raw) => {
            let cfg = normalize_reference(raw).and_then(|r| opts.base_configs.get(&r));
            let mut out = Vec::new();
            for t in cfg.map(|c| c.onbuild.clone()).unwrap_or_default() {
                match super::from_parser::parse_trigger(t.trim()) {
                    Ok(i) => out.push(i),
                    Err(p) => problems.push(problem(at, p.message)),
                }
            }
            out
        }
        RawBase::Scratch => Vec::new(),
    }
}

fn count_steps(commands: &[&Instruction], base: &RawBase) -> usize {
    let from = usize::from(matches!(base, RawBase::Image(_)));
    from + commands
        .iter()
        .filter(|c| {
            matches!(
                c.kind,
                Kind::Add { .. } | Kind::Copy { .. } | Kind::Run { .. } | Kind::Workdir(_)
            )
        })
        .count()
}

/// Which once-per-stage instructions were seen, and where.
#[derive(Clone, Debug, Default)]
struct Seen {
    cmd: Option<Span>,
    entrypoint: Option<Span>,
    healthcheck: Option<Span>,
}

/// BuildKit's dispatch state for one stage.
#[derive(Clone, Debug)]
struct State {
    /// The state's environment: ENV and ARG values, in order.
    env: Vec<(String, String)>,
    /// ARGs in scope (`d.buildArgs`), with their values.
    args: Vec<(String, Option<String>)>,
    shell: Vec<String>,
    workdir: String,
    /// Whether every variable of the base is known (scratch, a stage, or a
    /// base image whose config was given) — UndefinedVar needs this.
    env_known: bool,
    onbuild: Vec<String>,
    seen: Seen,
    /// A WORKDIR was set in this Dockerfile (WorkdirRelativePath).
    workdir_set: bool,
}

impl State {
    fn get(&self, k: &str) -> Option<&String> {
        self.env.iter().find(|(n, _)| n == k).map(|(_, v)| v)
    }

    fn set(&mut self, k: &str, v: &str) {
        match self.env.iter_mut().find(|(n, _)| n == k) {
            Some(e) => e.1 = v.to_string(),
            None => self.env.push((k.to_string(), v.to_string())),
        }
    }

    fn map(&self) -> BTreeMap<String, String> {
        self.env.iter().cloned().collect()
    }

    fn apply_config(&mut self, cfg: &BaseConfig) {
        for (k, v) in &cfg.env {
            self.set(k, v);
        }
        self.shell = cfg.shell.clone();
        self.workdir = cfg.workdir.clone();
        self.env_known = true;
    }

    fn ensure_path(&mut self) {
        if self.get("PATH").is_none() {
            self.set("PATH", DEFAULT_PATH);
        }
    }
}

struct Dispatcher<'a> {
    index: usize,
    stage_name: String,
    escape: char,
    opts: &'a PlanOptions,
    global: &'a BTreeMap<String, String>,
    names: &'a BTreeMap<String, usize>,
    total_stages: usize,
    state: State,
    total: usize,
    counter: usize,
    findings: Vec<Finding>,
}

impl<'a> Dispatcher<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
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
            state: State {
                env: Vec::new(),
                args: Vec::new(),
                shell: Vec::new(),
                workdir: String::new(),
                env_known: matches!(res.base, RawBase::Scratch),
                onbuild: Vec::new(),
                seen: Seen::default(),
                workdir_set: false,
            },
            total: 0,
            counter: 0,
            findings: Vec::new(),
        }
    }

    fn prefix(&mut self, onbuild: bool) -> Option<String> {
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
        let env = self.state.map();
        let (out, m) = expand::word(word, &env, self.escape).map_err(|e| problem(span, e.0))?;
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
            if self.state.args.iter().any(|(a, _)| a == k) {
                if let Some(v) = self.state.get(k) {
                    used.insert(k.clone(), v.clone());
                }
            }
        }
        if !self.state.env_known {
            return;
        }
        for u in &m.unmatched {
            if self.state.args.iter().any(|(a, _)| a == u) {
                continue;
            }
            let options: Vec<&String> = self.state.env.iter().map(|(k, _)| k).collect();
            let mut message = format!("Usage of undefined variable '${u}'");
            if let Some(s) = suggest(u, &options) {
                message.push_str(&format!(" (did you mean ${s}?)"));
            }
            self.lint("UndefinedVar", span, message);
        }
    }

    /// The progress name: BuildKit expands the instruction's source text
    /// with the current environment and upper-cases the keyword.
    fn display(&mut self, inst: &Instruction, onbuild: bool, raw: bool) -> Option<String> {
        let text = format!("{} {}", inst.keyword, inst.original);
        let env = self.state.map();
        let shown = if raw {
            expand::display_raw(&text, &env, self.escape)
        } else {
            expand::word(&text, &env, self.escape)
                .map(|(w, _)| w)
                .unwrap_or_else(|_| text.clone())
        };
        let shown = h::uppercase_cmd(shown.trim_end());
        self.prefix(onbuild).map(|p| format!("{p}{shown}"))
    }

    fn step(
        &mut self,
        inst: &Instruction,
        onbuild: bool,
        remap: &BTreeMap<usize, usize>,
        steps: &mut Vec<Step>,
        problems: &mut Vec<Problem>,
    ) {
        match self.dispatch(inst, onbuild, remap) {
            Ok(s) => steps.push(s),
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
        let mut used = BTreeMap::new();
        let mut out = inst.clone();
        let mut step = Step {
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
        };
        let kw = inst.keyword.clone();
        match &inst.kind {
            Kind::From { .. } => return Err(problem(span, "unexpected FROM inside a stage")),
            Kind::Env { pairs, legacy } | Kind::Label { pairs, legacy } => {
                let is_env = matches!(inst.kind, Kind::Env { .. });
                if *legacy {
                    self.lint(
                        "LegacyKeyValueFormat",
                        span,
                        format!("\"{kw} key=value\" should be used instead of legacy \"{kw} key value\" format"),
                    );
                }
                let mut expanded = Vec::new();
                for (k, v) in pairs {
                    let k = self.expand(k, span, &mut used)?;
                    let v = self.expand(v, span, &mut used)?;
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
                        self.state.set(k, v);
                    }
                }
                step.created_by = Some(msg);
                out.kind = if is_env {
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
            }
            Kind::Arg(args) => {
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
                    } else if let Some(d) = def {
                        value = Some(self.expand(d, span, &mut used)?);
                    }
                    if let Some(v) = &value {
                        self.state.set(k, v);
                    }
                    self.state.args.push((k.clone(), value.clone()));
                    parts.push(match &value {
                        Some(v) => format!("{k}={v}"),
                        None => k.clone(),
                    });
                    if let Some(v) = &value {
                        used.insert(k.clone(), v.clone());
                    }
                    expanded.push((k.clone(), value));
                }
                step.created_by = Some(format!("ARG {}", parts.join(" ")));
                out.kind = Kind::Arg(expanded);
            }
            Kind::Run { cmd, heredocs } => {
                let mut flags = Vec::new();
                for f in &inst.flags {
                    let value = match (&f.name[..], &f.value) {
                        ("mount", Some(v)) => {
                            let v = self.expand(v, span, &mut used)?;
                            let m = crate::dockerfile::parse_mount(&v)
                                .map_err(|e| problem(span, format!("--mount={v}: {e}")))?;
                            if let Some(src) = &m.from {
                                step.sources.push(self.source(src, span, remap)?);
                            }
                            step.mounts.push(m);
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
                out.flags = flags;
                let (args, summary) = self.run_args(cmd, heredocs);
                let in_scope = self.args_in_scope();
                step.build_args = in_scope.iter().cloned().collect();
                // Only ARGs with a value reach the environment (BuildKit adds them
                // to the state's env in dispatchArg).
                step.arg_env = in_scope
                    .iter()
                    .filter(|(k, _)| self.state.get(k).is_some())
                    .cloned()
                    .collect();
                step.proxy_env = self
                    .opts
                    .build_args
                    .iter()
                    .filter(|(k, _)| PROXY_ARGS.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                step.display_name = self.display(inst, onbuild, true).map(|d| match &summary {
                    Some(s) => format!("{d} ({s})"),
                    None => d,
                });
                step.created_by = Some(format!(
                    "RUN {} # buildkit",
                    h::run_command_string(&args, &in_scope)
                ));
                step.empty_layer = false;
            }
            Kind::Cmd(form) | Kind::Entrypoint(form) => {
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
                step.created_by = Some(format!("{name} {}", h::go_quote_slice(&args)));
            }
            Kind::Shell(v) => {
                self.state.shell = v.clone();
                step.created_by = Some(format!("SHELL {}", h::go_slice(v)));
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
            } => {
                let is_add = matches!(inst.kind, Kind::Add { .. });
                if !is_add {
                    if let Some(v) = inst.flag("from").and_then(|f| f.value.clone()) {
                        step.sources.push(self.source(&v, span, remap)?);
                    }
                }
                let mut flags = Vec::new();
                for f in &inst.flags {
                    let value = match (&f.name[..], &f.value) {
                        ("chown" | "chmod", Some(v)) => Some(self.expand(v, span, &mut used)?),
                        (_, v) => v.clone(),
                    };
                    flags.push(Flag {
                        name: f.name.clone(),
                        value,
                        col: f.col,
                    });
                }
                out.flags = flags;
                let mut srcs = Vec::new();
                for s in sources {
                    let s = self.expand(s, span, &mut used)?;
                    if !is_add && (s.starts_with("http://") || s.starts_with("https://")) {
                        return Err(problem(span, "source can't be a URL for COPY"));
                    }
                    srcs.push(s);
                }
                let dest = self.expand(dest, span, &mut used)?;
                let env = self.state.map();
                let mut docs = Vec::new();
                for d in heredocs {
                    let mut d = d.clone();
                    if d.expand {
                        d.body =
                            expand::heredoc_body(&d.body, &env).map_err(|e| problem(span, e.0))?;
                    }
                    docs.push(d);
                }
                let mut msg = String::from(if is_add { "ADD" } else { "COPY" });
                if out.flag("parents").is_some() {
                    msg.push_str(" --parents");
                }
                if let Some(v) = out.flag("chown").and_then(|f| f.value.clone()) {
                    msg.push_str(&format!(" --chown={v}"));
                }
                if let Some(v) = out.flag("chmod").and_then(|f| f.value.clone()) {
                    check_chmod(&v, span)?;
                    msg.push_str(&format!(" --chmod={v}"));
                }
                for s in &srcs {
                    msg.push_str(&format!(" {s}"));
                }
                for d in &docs {
                    msg.push_str(&format!(" <<{}", d.name));
                }
                msg.push_str(&format!(" {dest} # buildkit"));
                step.created_by = Some(msg);
                step.empty_layer = false;
                step.display_name = self.display(inst, onbuild, false);
                out.kind = if is_add {
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
            }
            Kind::Workdir(p) => {
                let p = self.expand(p, span, &mut used)?;
                if !self.state.workdir_set && !is_abs(&p) {
                    self.lint(
                        "WorkdirRelativePath",
                        span,
                        format!("Relative workdir {} can have unexpected results if the base image changes", h::go_quote(&p)),
                    );
                }
                self.state.workdir_set = true;
                let wd = clean_path(&if p.starts_with('/') {
                    p.clone()
                } else {
                    format!("/{}/{}", self.state.workdir, p)
                });
                self.state.workdir = wd.clone();
                if wd != "/" {
                    step.display_name = self.display(inst, onbuild, false);
                    step.empty_layer = false;
                }
                step.created_by = Some(format!("WORKDIR {wd}"));
                out.kind = Kind::Workdir(p);
            }
            Kind::User(u) => {
                let u = self.expand(u, span, &mut used)?;
                step.created_by = Some(format!("USER {u}"));
                out.kind = Kind::User(u);
            }
            Kind::Volume(vs) => {
                let mut v2 = Vec::new();
                for v in vs {
                    let v = self.expand(v, span, &mut used)?;
                    if v.is_empty() {
                        return Err(problem(span, "VOLUME specified can not be an empty string"));
                    }
                    v2.push(v);
                }
                step.created_by = Some(format!("VOLUME {}", h::go_slice(&v2)));
                out.kind = Kind::Volume(v2);
            }
            Kind::Expose(ps) => {
                let env = self.state.map();
                let mut words = Vec::new();
                for p in ps {
                    let (_, m) =
                        expand::word(p, &env, self.escape).map_err(|e| problem(span, e.0))?;
                    self.note_matches(&m, span, &mut used);
                    words.extend(
                        expand::words(p, &env, self.escape).map_err(|e| problem(span, e.0))?,
                    );
                }
                let mut specs = Vec::new();
                for w in &words {
                    specs.extend(h::parse_port_spec(w).map_err(|e| problem(span, e))?);
                }
                step.created_by = Some(h::expose_created_by(&specs));
                out.kind = Kind::Expose(words);
            }
            Kind::StopSignal(s) => {
                let s = self.expand(s, span, &mut used)?;
                if !valid_signal(&s) {
                    return Err(problem(span, format!("Invalid signal: {s}")));
                }
                step.created_by = Some(format!("STOPSIGNAL {s}"));
                out.kind = Kind::StopSignal(s);
            }
            Kind::Healthcheck(form) => {
                if let Some(p) = self.state.seen.healthcheck.replace(span) {
                    self.lint(
                        "MultipleInstructionsDisallowed",
                        p,
                        format!("Multiple {kw} instructions should not be used in the same stage because only the last one will be used"),
                    );
                }
                step.created_by = Some(h::healthcheck_created_by(&health(inst, form)?));
            }
            Kind::Onbuild { expression, .. } => {
                self.state.onbuild.push(expression.clone());
            }
            Kind::Maintainer(m) => {
                step.created_by = Some(format!("MAINTAINER {m}"));
            }
        }
        step.instruction = out;
        if step.build_args.is_empty() {
            step.build_args = used;
        }
        Ok(step)
    }

    /// The ARGs in scope with their current values, de-duplicated like
    /// BuildKit's `runCommandString` (first position, last value).
    fn args_in_scope(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in &self.state.args {
            let val = self
                .state
                .get(k)
                .cloned()
                .or_else(|| v.clone())
                .unwrap_or_default();
            match out.iter_mut().find(|(n, _)| n == k) {
                Some(e) => e.1 = val,
                None => out.push((k.clone(), val)),
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

/// Absolute for WorkdirRelativePath: `/x`, or a Windows drive path (`C:\x`)
/// since the base image may be a Windows one.
fn is_abs(p: &str) -> bool {
    let b = p.as_bytes();
    p.starts_with('/')
        || p.starts_with('\\')
        || (b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && (b[2] == b'\\' || b[2] == b'/'))
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

/// BuildKit's "did you mean": the closest name by edit distance, if close.
pub fn suggest(v: &str, options: &[&String]) -> Option<String> {
    let mut best: Option<(usize, &String)> = None;
    for o in options {
        if o.as_str() == v {
            continue;
        }
        let d = levenshtein(v, o);
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, o));
        }
    }
    let (d, o) = best?;
    let limit = (v.chars().count() / 3).max(1);
    (d <= limit || o.eq_ignore_ascii_case(v)).then(|| o.to_string())
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}
