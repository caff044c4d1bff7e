//! Reading Dockerfiles as BuildKit reads them: parser directives, line
//! continuations, heredocs, JSON-vs-shell form, word expansion, and typed
//! instructions with source spans for error messages.

pub mod shell;
