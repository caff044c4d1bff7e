//! `.dockerignore` text → patterns → matching; without `!` exceptions the
//! from-scratch and the incremental (tree walk) answers must agree. (With
//! exceptions they may not, in moby's patternmatcher too: the walk skips an
//! exception while nothing is excluded, so `*/m` + `!*` re-includes
//! `n/m/o/p` from scratch but not in the walk. Found by this target.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use rbuild::context::{parse_ignore, MatchInfo, PatternMatcher};

const PATHS: &[&str] = &[
    "a",
    "a/b",
    "a/b/c.md",
    "README.md",
    "x/keep",
    "n/m/o/p",
    "abs*",
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(pm) = PatternMatcher::new(&parse_ignore(&text)) else {
        return;
    };
    if pm.has_exclusions() {
        for path in PATHS {
            let _ = pm.matches(path);
            let _ = pm.matches_with_parent(path, &MatchInfo::default());
        }
        return;
    }
    for path in PATHS {
        let Ok(scratch) = pm.matches(path) else {
            continue;
        };
        let mut info = MatchInfo::default();
        let mut verdict = false;
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..=parts.len() {
            let Ok((v, next)) = pm.matches_with_parent(&parts[..i].join("/"), &info) else {
                return;
            };
            verdict = v;
            info = next;
        }
        assert_eq!(scratch, verdict, "{path}");
    }
});
