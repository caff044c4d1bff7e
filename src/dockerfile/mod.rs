//! Reading Dockerfiles as BuildKit reads them: parser directives, line
//! continuations, heredocs, JSON-vs-shell form, word expansion, and typed
//! instructions with source spans for error messages.
//!
//! Entry points: [`parse`] (text → raw [`Ast`], warnings, every error),
//! [`Ast::dump`] (BuildKit's test dump format), [`parse_dockerfile`] and
//! [`parse_dockerfile_report`] (text → typed [`Instruction`]s) and
//! [`parse_mount`]. Word expansion is [`shell`]'s. `docs/parser.md` has the design.

pub mod ast;
pub mod directives;
pub mod flags;
pub mod heredoc;
pub mod instructions;
mod line_parsers;
pub mod mount;
pub mod parser;
pub mod shell;
pub mod suggest;

pub use ast::{Ast, Heredoc, Node, ParseError, Span, Warning};
pub use directives::{detect_syntax, Directive, Directives};
pub use instructions::{
    parse_dockerfile, parse_dockerfile_report, Dockerfile, Instruction, InstructionKind, Report,
};
pub use mount::{parse_mount, Mount};
pub use parser::{parse, parse_bytes, ParseOutput};
