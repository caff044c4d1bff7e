//! rbuild's integration tests, built and linked as one binary (ripgrep's
//! layout): each former `tests/NAME.rs` is the module `NAME` here, so
//! `cargo test --test integration NAME::` runs one of them. The helpers
//! below are shared by several modules and declared once.

mod common;
mod conformance_support;
mod hostile;
mod layer_common;
mod store_support;

mod build_ci;
mod build_composite;
mod build_contexts;
mod build_history;
mod build_images;
mod build_limits;
mod build_outputs;
mod build_pinned;
mod build_registry;
mod build_run;
mod build_small;
mod build_snapshots;
mod build_upper_snapshots;
mod cache_ci_job;
mod cache_mounts;
mod cache_seed;
mod cache_seed_overlap;
mod cache_travel;
mod check_corpus;
mod cli;
mod cli_errors;
mod conformance;
mod context_scan;
mod dockerignore_cases;
mod fuzz_inputs;
mod image_export;
mod input_limits;
mod layer_bench;
mod layer_changeset;
mod layer_chunks;
mod layer_roundtrip;
mod layer_unpack;
mod load_save;
mod oci_flags;
mod parser_corpus;
mod registry_e2e;
mod registry_hostile;
mod sandbox_bench;
mod sandbox_hardening;
mod sandbox_run;
mod shell_corpus;
mod store_concurrency;
mod store_hardening;
mod store_layout;
mod suite_layout;
