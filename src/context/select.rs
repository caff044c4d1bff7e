//! COPY/ADD source selection over a scanned context, following BuildKit:
//! a path names a file or a directory (whose contents are copied); a source
//! with an unescaped `*`, `?` or `[` is split at its first wildcard element
//! and the rest is matched with Go's `filepath.Match` against paths below
//! the literal prefix (so `**` is just `*`: one element, no recursion); a
//! matched directory is not searched further. `..` and absolute sources are
//! cleaned so they stay inside the context.
//!
//! Symlinks: a symlink named by the source (directly or as a wildcard
//! match) is followed, inside the context, as BuildKit's COPY does
//! (`FollowSymlinks`); symlinks found while copying a directory are kept as
//! symlinks. `--exclude` patterns use the `.dockerignore` matcher on paths
//! relative to each source (a file source: its base name).

use std::collections::HashMap;

use super::gopath::{self, glob_match, has_wildcards, unescape};
use super::pattern::PatternMatcher;
use super::scan::{ContextIndex, Entry, EntryKind};
use super::ContextError;

/// Symlink hops allowed while resolving one source (Linux uses 40).
const MAX_HOPS: usize = 40;

/// Options of one COPY/ADD source.
#[derive(Debug, Clone, Default)]
pub struct SelectOptions {
    /// `--exclude` patterns, in order.
    pub excludes: Vec<String>,
    /// A wildcard that matches nothing selects nothing instead of failing.
    /// BuildKit's Dockerfile frontend sets this for COPY/ADD; the classic
    /// builder (and buildah) fail instead.
    pub allow_empty_wildcard: bool,
}

/// One entry to copy and where it goes, relative to the destination.
/// `dest_rel` is the base name for a file source, and for a directory
/// source `""` (the directory itself, whose metadata the engine may apply
/// to the destination) followed by its contents.
#[derive(Debug, Clone)]
pub struct Selected<'a> {
    pub entry: &'a Entry,
    pub dest_rel: String,
}

/// One matched source (a literal path, or one match of a wildcard) and
/// what it contributes.
#[derive(Debug, Clone)]
pub struct SelectedSource<'a> {
    /// The matched path relative to the context root, as named.
    pub name: String,
    pub is_dir: bool,
    pub items: Vec<Selected<'a>>,
}

/// The proper ancestors of a relative path: `a`, `a/b` for `a/b/c`.
fn ancestors(rel: &str) -> impl Iterator<Item = &str> {
    rel.match_indices('/').map(move |(i, _)| &rel[..i])
}

impl ContextIndex {
    /// Resolves one COPY source; see the module doc.
    pub fn select(&self, src: &str) -> Result<Vec<Selected<'_>>, ContextError> {
        self.select_with(src, &SelectOptions::default())
    }

    /// [`ContextIndex::select`] with `--exclude` patterns.
    pub fn select_with(
        &self,
        src: &str,
        opts: &SelectOptions,
    ) -> Result<Vec<Selected<'_>>, ContextError> {
        Ok(self
            .select_sources(src, opts)?
            .into_iter()
            .flat_map(|s| s.items)
            .collect())
    }

    /// Like [`ContextIndex::select_with`], grouped by matched source: COPY
    /// needs the number of matches to decide whether its destination is a
    /// directory.
    pub fn select_sources(
        &self,
        src: &str,
        opts: &SelectOptions,
    ) -> Result<Vec<SelectedSource<'_>>, ContextError> {
        let cleaned = gopath::clean_in_root(src);
        let sources = if has_wildcards(&cleaned) {
            self.expand_wildcard(src, &cleaned, opts.allow_empty_wildcard)?
        } else {
            vec![self.resolve_literal(src, &cleaned)?]
        };
        let excludes = PatternMatcher::new(&opts.excludes)?;
        let mut out = Vec::new();
        for (name, entry) in sources {
            let mut items = self.expand_source(&name, entry);
            if !excludes.is_empty() {
                items = apply_excludes(items, &excludes)?;
            }
            out.push(SelectedSource {
                name,
                is_dir: entry.is_dir(),
                items,
            });
        }
        Ok(out)
    }

    fn resolve_literal<'a>(
        &'a self,
        src: &str,
        cleaned: &str,
    ) -> Result<(String, &'a Entry), ContextError> {
        if let Some(e) = self.resolve(cleaned, src)? {
            return Ok((cleaned.to_string(), e));
        }
        // `n\?pe` has no live wildcard but its escapes still mean `n?pe`.
        if cleaned.contains('\\') {
            let plain = unescape(cleaned);
            if let Some(e) = self.resolve(&plain, src)? {
                return Ok((plain, e));
            }
        }
        Err(ContextError::NotFound {
            src: src.to_string(),
        })
    }

    /// Splits at the first wildcard element and matches the rest below the
    /// literal prefix.
    fn expand_wildcard<'a>(
        &'a self,
        src: &str,
        cleaned: &str,
        allow_empty: bool,
    ) -> Result<Vec<(String, &'a Entry)>, ContextError> {
        let parts: Vec<&str> = cleaned.split('/').collect();
        let split = parts.iter().position(|p| has_wildcards(p)).unwrap_or(0);
        let base = unescape(&parts[..split].join("/"));
        let rest = parts[split..].join("/");
        if glob_match(&rest, "").is_none() {
            return Err(ContextError::BadPattern {
                pattern: src.to_string(),
            });
        }
        let no_match = || ContextError::NoMatch {
            src: src.to_string(),
        };
        let base_entry = match self.resolve(&base, src)? {
            Some(e) if e.is_dir() => e,
            _ if allow_empty => return Ok(Vec::new()),
            _ => return Err(no_match()),
        };
        let base_rel = base_entry.rel.clone();
        // Looked up by each ancestor of an entry: checked against every
        // matched dir, `COPY d* /x/` over 20,000 dirs took 22 s.
        let mut matched_dirs: std::collections::HashSet<String> = Default::default();
        let mut found = Vec::new();
        for e in self.subtree(&base_rel) {
            let rel = strip_base(&e.rel, &base_rel);
            if ancestors(rel).any(|a| matched_dirs.contains(a)) {
                continue;
            }
            if glob_match(&rest, rel) != Some(true) {
                continue;
            }
            if e.is_dir() {
                matched_dirs.insert(rel.to_string());
            }
            let entry = match e.kind {
                EntryKind::Symlink { .. } => match self.resolve(&e.rel, src)? {
                    Some(t) => t,
                    None => continue,
                },
                _ => e,
            };
            found.push((e.rel.clone(), entry));
        }
        if found.is_empty() && !allow_empty {
            return Err(no_match());
        }
        Ok(found)
    }

    /// A resolved source: a directory yields itself (`""`) and its
    /// contents; anything else yields itself under its source base name.
    fn expand_source<'a>(&'a self, name: &str, entry: &'a Entry) -> Vec<Selected<'a>> {
        if !entry.is_dir() {
            let base = name.rsplit('/').next().unwrap_or(name).to_string();
            return vec![Selected {
                entry,
                dest_rel: base,
            }];
        }
        let mut out = vec![Selected {
            entry,
            dest_rel: String::new(),
        }];
        out.extend(self.subtree(&entry.rel).map(|e| Selected {
            entry: e,
            dest_rel: strip_base(&e.rel, &entry.rel).to_string(),
        }));
        out
    }

    /// Entries strictly below `dir` (`""` = everything), parents first.
    fn subtree<'a>(&'a self, dir: &str) -> Box<dyn Iterator<Item = &'a Entry> + 'a> {
        if dir.is_empty() {
            return Box::new(self.entries.iter());
        }
        // '0' follows '/' in byte order, so this range is exactly `dir/…`.
        let lo = format!("{dir}/");
        let hi = format!("{dir}0");
        let start = self.entries.partition_point(|e| e.rel < lo);
        let end = self.entries.partition_point(|e| e.rel < hi);
        Box::new(self.entries[start..end.max(start)].iter())
    }

    /// Follows symlinks in every element of `rel`, resolving absolute
    /// targets and `..` against the context root so nothing escapes it.
    /// `None` when some element is missing or ignored.
    fn resolve(&self, rel: &str, src: &str) -> Result<Option<&Entry>, ContextError> {
        let mut pending: Vec<String> = rel
            .split('/')
            .filter(|p| !p.is_empty())
            .rev()
            .map(String::from)
            .collect();
        let mut cur: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "." => continue,
                ".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            cur.push(part);
            let Some(e) = self.find(&cur.join("/")) else {
                return Ok(None);
            };
            if let EntryKind::Symlink { target } = &e.kind {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(ContextError::SymlinkLoop {
                        src: src.to_string(),
                    });
                }
                cur.pop();
                if target.starts_with('/') {
                    cur.clear();
                }
                pending.extend(
                    target
                        .split('/')
                        .filter(|p| !p.is_empty())
                        .rev()
                        .map(String::from),
                );
            }
        }
        Ok(self.get(&cur.join("/")))
    }
}

fn strip_base<'a>(rel: &'a str, base: &str) -> &'a str {
    if base.is_empty() {
        rel
    } else {
        rel.strip_prefix(base)
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(rel)
    }
}

/// Applies `--exclude` with the same pruning as the context walk: an
/// excluded directory hides its subtree unless an exception may reach into
/// it, and such a directory stays only if something below it stays.
fn apply_excludes<'a>(
    items: Vec<Selected<'a>>,
    m: &PatternMatcher,
) -> Result<Vec<Selected<'a>>, ContextError> {
    let mut verdict: HashMap<String, bool> = HashMap::new();
    for it in &items {
        if !it.dest_rel.is_empty() {
            verdict.insert(it.dest_rel.clone(), m.matches(&it.dest_rel)?);
        }
    }
    let pruned = |path: &str| {
        path.match_indices('/').any(|(i, _)| {
            let dir = &path[..i];
            verdict.get(dir) == Some(&true) && !m.may_reinclude_below(dir)
        })
    };
    let mut kept = Vec::new();
    let mut pending_dirs = Vec::new();
    for it in items {
        if it.dest_rel.is_empty() {
            kept.push(it);
            continue;
        }
        if pruned(&it.dest_rel) {
            continue;
        }
        if verdict.get(&it.dest_rel) == Some(&true) {
            if it.entry.is_dir() && m.may_reinclude_below(&it.dest_rel) {
                pending_dirs.push(it);
            }
            continue;
        }
        kept.push(it);
    }
    // A re-included path keeps its excluded parent dirs: each kept path's
    // ancestors, once (a scan of `kept` per pending dir was quadratic).
    if !pending_dirs.is_empty() {
        let below: std::collections::HashSet<&str> =
            kept.iter().flat_map(|k| ancestors(&k.dest_rel)).collect();
        let pending_dirs: Vec<_> = pending_dirs
            .into_iter()
            .filter(|d| below.contains(d.dest_rel.as_str()))
            .collect();
        kept.extend(pending_dirs);
    }
    kept.sort_by(|a, b| a.dest_rel.cmp(&b.dest_rel));
    Ok(kept)
}
