//! From the typed Dockerfile to a build plan: stages, steps, ARG scoping,
//! build args, `--target` pruning and ONBUILD triggers.
