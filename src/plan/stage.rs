//! The planning pass: split instructions into global ARGs and stages,
//! resolve each stage's base with the global ARGs, find the stages the
//! target needs, then walk each needed stage's instructions in order keeping
//! BuildKit's dispatch state (environment, ARGs in scope, SHELL, WORKDIR).

use std::collections::{BTreeMap, BTreeSet};

use super::dispatch::Dispatcher;
use super::expand;
use super::lints::{platform_lints, spend_suggestion, suggest, SUGGEST_BUDGET};
use super::state::{plan_too_big, Seen, State, MAX_ENV_BYTES, MAX_PLAN_BYTES};
use super::{
    normalize_reference, Base, Finding, Plan, PlanError, PlanOptions, PlannedStage, Platform,
    Problem, Span,
};
use crate::dockerfile::{Instruction, InstructionKind as DK};

pub(super) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
    platform_args(p, p, target_stage)
}

/// [`predefined_args`] with a target platform other than the build platform.
pub fn platform_args(
    build: &Platform,
    target: &Platform,
    target_stage: &str,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for (prefix, plat) in [("BUILD", build), ("TARGET", target)] {
        m.insert(format!("{prefix}PLATFORM"), plat.to_string());
        m.insert(format!("{prefix}OS"), plat.os.clone());
        m.insert(format!("{prefix}ARCH"), plat.arch.clone());
        m.insert(format!("{prefix}VARIANT"), plat.variant.clone());
    }
    m.insert("TARGETSTAGE".into(), target_stage.to_string());
    m
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

pub(super) fn problem(span: Span, message: impl Into<String>) -> Problem {
    Problem {
        span,
        message: message.into(),
    }
}

pub(super) struct RawStage<'a> {
    pub(super) from: &'a Instruction,
    pub(super) image: &'a str,
    pub(super) platform: Option<&'a str>,
    pub(super) name: Option<String>,
    pub(super) commands: Vec<&'a Instruction>,
}

/// A stage after its FROM line was expanded.
pub(super) struct Resolved {
    pub(super) base: RawBase,
    pub(super) name: String,
    pub(super) platform: Option<Platform>,
}

#[derive(Clone, Debug)]
pub(super) enum RawBase {
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
        &opts.replaced_stages,
        (&mut problems, &mut findings),
    );
    let all_names = stage_names(&stages);
    // References resolve past replaced stages (to the named context).
    let mut names = all_names.clone();
    names.retain(|n, _| !opts.replaced_stages.contains(n));

    let target = match &opts.target {
        None => stages.len() - 1,
        Some(t) => match all_names.get(&t.to_ascii_lowercase()) {
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
    let deps = stage_deps(&stages, &resolved, &names, opts);
    let keep = reachable(target, &resolved, &deps, opts.all_stages, stages.len());

    let mut remap = BTreeMap::new();
    for (new, old) in keep.iter().enumerate() {
        remap.insert(*old, new);
    }
    let implicit_images = stages
        .iter()
        .flat_map(|s| s.commands.iter())
        .filter_map(|c| match &c.kind {
            DK::Copy(c) => c.from.clone(),
            _ => None,
        })
        .filter(|f| f.parse::<usize>().is_err() && !names.contains_key(&f.to_ascii_lowercase()))
        .count();
    let single = stages.len() + implicit_images == 1;

    // How many kept stages start from each stage: the last one takes the
    // state instead of copying it, so a chain of N stages costs O(N), not
    // O(N²) copies of a growing environment.
    let mut walk = Walk::default();
    for &i in &keep {
        if let RawBase::Stage(j) = resolved[i].base {
            *walk.children.entry(j).or_default() += 1;
        }
    }
    let scope = StageScope {
        stages: &stages,
        resolved: &resolved,
        single,
        escape,
        opts,
        global: &global,
        names: &names,
        remap: &remap,
    };
    let mut planned = Vec::new();
    for &i in &keep {
        planned.push(plan_stage(
            i,
            &scope,
            &mut walk,
            &mut problems,
            &mut findings,
        ));
    }
    let images = walk.images;
    findings.sort_by_key(|f| (f.span.start_line, f.span.column));
    if !problems.is_empty() {
        problems.sort_by_key(|p| (p.span.start_line, p.span.column));
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

/// What every stage's walk reads: the stages, their resolved bases and the
/// names and options they are planned with.
struct StageScope<'s, 'a> {
    stages: &'s [RawStage<'a>],
    resolved: &'s [Resolved],
    single: bool,
    escape: char,
    opts: &'s PlanOptions,
    global: &'s BTreeMap<String, String>,
    names: &'s BTreeMap<String, usize>,
    remap: &'s BTreeMap<usize, usize>,
}

/// What carries from one stage's walk to the next.
#[derive(Default)]
struct Walk {
    /// Final dispatch state of each walked stage, for stages built on it.
    finals: BTreeMap<usize, State>,
    /// How many kept stages still have to start from each stage.
    children: BTreeMap<usize, usize>,
    images: BTreeSet<String>,
    plan_bytes: usize,
    suggest_budget: Option<usize>,
}

/// Walk stage `i`: its base's state, its inherited triggers, its steps.
fn plan_stage(
    i: usize,
    sc: &StageScope,
    walk: &mut Walk,
    problems: &mut Vec<Problem>,
    findings: &mut Vec<Finding>,
) -> PlannedStage {
    let (st, res) = (&sc.stages[i], &sc.resolved[i]);
    let mut d = Dispatcher::new(
        i, st, res, sc.single, sc.escape, sc.opts, sc.global, sc.names,
    );
    d.total_stages = sc.stages.len();
    let base = match &res.base {
        RawBase::Scratch => Base::Scratch,
        RawBase::Stage(j) => {
            let before = walk.plan_bytes;
            let inherited = inherit(
                &mut walk.finals,
                &mut walk.children,
                *j,
                &mut walk.plan_bytes,
            );
            if walk.plan_bytes > MAX_PLAN_BYTES && before <= MAX_PLAN_BYTES {
                problems.push(plan_too_big(st.from.span));
            }
            if let Some(s) = inherited {
                d.state = s;
                d.state.seen = Seen::default();
                d.state.onbuild.clear();
            }
            Base::Stage(sc.remap.get(j).copied().unwrap_or(*j))
        }
        RawBase::Image(raw) => match normalize_reference(raw) {
            Some(r) => {
                if let Some(cfg) = sc.opts.base_configs.get(&r) {
                    d.state.apply_config(cfg);
                }
                walk.images.insert(r.clone());
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
    d.plan_bytes = walk.plan_bytes;
    d.suggest_budget = walk.suggest_budget.unwrap_or(SUGGEST_BUDGET);
    d.state.ensure_path();
    let triggers = triggers_for(sc.stages, res, sc.opts, st.from.span, problems);
    d.total = count_steps(&st.commands, &res.base) + triggers.len();
    let from_display = match &base {
        Base::Image(r) => d.prefix(false).map(|p| format!("{p}FROM {r}")),
        _ => None,
    };
    let mut steps = Vec::new();
    for t in &triggers {
        let mut t = t.clone();
        t.span = st.from.span;
        d.step(&t, true, sc.remap, &mut steps, problems);
    }
    for c in &st.commands {
        d.step(c, false, sc.remap, &mut steps, problems);
    }
    for s in &steps {
        for b in s.sources() {
            if let Base::Image(r) = b {
                walk.images.insert(r.clone());
            }
        }
    }
    findings.append(&mut d.findings);
    walk.plan_bytes = d.plan_bytes;
    walk.suggest_budget = Some(d.suggest_budget);
    let planned = PlannedStage {
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
    };
    walk.finals.insert(i, d.state);
    planned
}

/// The final state of stage `j` for a stage built on it: moved out for the
/// last such stage, copied (and counted in the plan's size) for the others.
fn inherit(
    finals: &mut BTreeMap<usize, State>,
    children: &mut BTreeMap<usize, usize>,
    j: usize,
    plan_bytes: &mut usize,
) -> Option<State> {
    let left = children.get_mut(&j).map(|n| {
        *n = n.saturating_sub(1);
        *n
    });
    match left {
        Some(0) => finals.remove(&j),
        _ => finals.get(&j).map(|s| {
            *plan_bytes += s.bytes();
            s.clone()
        }),
    }
}

fn split_stages<'a>(
    insts: &'a [Instruction],
    problems: &mut Vec<Problem>,
) -> (Vec<&'a Instruction>, Vec<RawStage<'a>>) {
    let mut meta = Vec::new();
    let mut stages: Vec<RawStage> = Vec::new();
    for inst in insts {
        if let DK::From(f) = &inst.kind {
            stages.push(RawStage {
                from: inst,
                image: &f.image,
                platform: f.platform.as_deref(),
                name: f.stage_name(),
                commands: Vec::new(),
            });
            continue;
        }
        match stages.last_mut() {
            Some(s) => s.commands.push(inst),
            None if matches!(inst.kind, DK::Arg(_)) => meta.push(inst),
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
    let target = opts.target_platform.as_ref().unwrap_or(&opts.platform);
    let mut global = platform_args(&opts.platform, target, target_name);
    let mut keys = BTreeSet::new();
    let mut bytes = 0;
    for m in meta {
        let DK::Arg(args) = &m.kind else { continue };
        for a in args {
            let (k, def) = (&a.name, &a.default);
            keys.insert(k.clone());
            let value = if let Some(v) = opts.build_args.get(k) {
                v.clone()
            } else if let Some(d) = def {
                match expand::word(d, &global, escape) {
                    Ok((v, _)) => v,
                    Err(e) => {
                        problems.push(problem(m.span, e.0));
                        continue;
                    }
                }
            } else {
                continue;
            };
            // Same bound as a stage's ENV and ARG values (see MAX_ENV_BYTES).
            bytes += k.len() + value.len();
            if bytes > MAX_ENV_BYTES {
                problems.push(problem(
                    m.span,
                    format!(
                        "the global ARG values exceed {} MiB (setting {k})",
                        MAX_ENV_BYTES >> 20
                    ),
                ));
                return (global, keys);
            }
            global.insert(k.clone(), value);
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
    replaced: &BTreeSet<String>,
    (problems, findings): (&mut Vec<Problem>, &mut Vec<Finding>),
) -> Vec<Resolved> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    let mut budget = SUGGEST_BUDGET;
    for (i, st) in stages.iter().enumerate() {
        let span = st.from.span;
        let mut report = |m: &expand::Matches, findings: &mut Vec<Finding>| {
            for u in &m.unmatched {
                if !global.contains_key(u) && !meta_keys.contains(u) {
                    let mut message = format!("FROM argument '{u}' is not declared");
                    if spend_suggestion(&mut budget, global.len() + meta_keys.len()) {
                        let options: Vec<&String> = global.keys().chain(meta_keys.iter()).collect();
                        if let Some(s) = suggest(u, &options) {
                            message.push_str(&format!(" (did you mean {s}?)"));
                        }
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
        if let Some(v) = st.platform {
            match expand::word(v, global, escape) {
                Ok((p, m)) => {
                    report(&m, findings);
                    platform_lints(v, &p, &m, st.name.as_deref(), global, span, findings);
                    if p.is_empty() {
                        problems.push(problem(
                            span,
                            format!("empty platform value from expression {v}"),
                        ));
                    } else {
                        match Platform::parse(&p).ok() {
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
        if let Some(n) = st.name.as_ref().filter(|n| !replaced.contains(*n)) {
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
pub(super) struct FromScope<'a> {
    pub(super) names: &'a BTreeMap<String, usize>,
    pub(super) total: usize,
    pub(super) current: usize,
    pub(super) current_name: &'a str,
}

/// The source a `--from=` value names: a stage (defined before the current
/// one) or an image.
pub(super) fn resolve_from(value: &str, scope: FromScope, span: Span) -> Result<RawBase, Problem> {
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
    let mut out = Vec::new();
    match &inst.kind {
        DK::Copy(c) => {
            if let Some(v) = &c.from {
                out.push(resolve_from(v, scope, inst.span));
            }
        }
        DK::Run(r) => {
            for m in &r.mounts {
                if let Some(v) = mount_from(m) {
                    if !v.contains('$') {
                        out.push(resolve_from(&v, scope, inst.span));
                    }
                }
            }
        }
        _ => {}
    }
    out
}

fn stage_deps(
    stages: &[RawStage],
    resolved: &[Resolved],
    names: &BTreeMap<String, usize>,
    opts: &PlanOptions,
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
                // A bad `--from` (e.g. a stage defined later) is an error
                // only in a stage the target needs: dispatching that stage
                // reports it. BuildKit skips the others.
                if let Ok(RawBase::Stage(j)) = r {
                    d.push(j);
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
                    DK::Onbuild { trigger: Ok(t), .. } => out.push((**t).clone()),
                    DK::Onbuild {
                        trigger: Err(p), ..
                    } => problems.push(problem(at, p.message.clone())),
                    _ => {}
                }
            }
            out
        }
        RawBase::Image(raw) => {
            let cfg = normalize_reference(raw).and_then(|r| opts.base_configs.get(&r));
            let mut out = Vec::new();
            for t in cfg.map(|c| c.onbuild.clone()).unwrap_or_default() {
                match super::read::parse_trigger(t.trim()) {
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
                DK::Add(_) | DK::Copy(_) | DK::Run(_) | DK::Workdir(_)
            )
        })
        .count()
}
