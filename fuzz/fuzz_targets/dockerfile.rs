//! Dockerfile text → parser → typed instructions → plan (every stage).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rbuild::plan::{plan_text, PlanOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let opts = PlanOptions {
        all_stages: true,
        ..PlanOptions::default()
    };
    if let Err(e) = plan_text(text, &opts) {
        let lines = text.lines().count().max(1);
        for p in &e.problems {
            assert!(
                p.span.line <= lines + 1,
                "problem on line {} of {lines}",
                p.span.line
            );
        }
    }
});
