//! The planner's view of one Dockerfile instruction: the keyword as written,
//! its flags, its typed arguments (still raw, before expansion) and where it
//! came from. `reader` produces these today; an adapter from the `dockerfile`
//! parser's typed instructions can produce the same shape.

/// Where an instruction (or a part of it) is in the Dockerfile. Lines and
/// columns are 1-based; `col` points at what an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub line: usize,
    pub end_line: usize,
    pub col: usize,
}

impl Span {
    pub fn at(line: usize, col: usize) -> Self {
        Span {
            line,
            end_line: line,
            col,
        }
    }
}

/// RUN/CMD/ENTRYPOINT/HEALTHCHECK CMD argument form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Form {
    /// Shell form: one command line, run through the stage's SHELL.
    Shell(String),
    /// Exec (JSON) form.
    Exec(Vec<String>),
}

/// One here-document attached to RUN/COPY/ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    pub name: String,
    pub body: String,
    /// False when the delimiter was quoted: the body is taken literally.
    pub expand: bool,
    /// `<<-`: leading tabs were stripped.
    pub chomp: bool,
}

/// A `--name[=value]` flag as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub name: String,
    pub value: Option<String>,
    pub col: usize,
}

/// The typed arguments of an instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    From {
        image: String,
        /// The stage name as written (BuildKit stores it lowercased).
        name: Option<String>,
        /// The `AS` keyword as written, for FromAsCasing.
        as_keyword: Option<String>,
    },
    Arg(Vec<(String, Option<String>)>),
    Env {
        pairs: Vec<(String, String)>,
        legacy: bool,
    },
    Label {
        pairs: Vec<(String, String)>,
        legacy: bool,
    },
    Run {
        cmd: Form,
        heredocs: Vec<Heredoc>,
    },
    Cmd(Form),
    Entrypoint(Form),
    Shell(Vec<String>),
    Copy {
        sources: Vec<String>,
        dest: String,
        heredocs: Vec<Heredoc>,
    },
    Add {
        sources: Vec<String>,
        dest: String,
        heredocs: Vec<Heredoc>,
    },
    Workdir(String),
    User(String),
    Volume(Vec<String>),
    Expose(Vec<String>),
    StopSignal(String),
    /// `None` is `HEALTHCHECK NONE`.
    Healthcheck(Option<Form>),
    Onbuild {
        /// The trigger text as written after ONBUILD (stored in the config).
        expression: String,
        /// The trigger typed; errors surface only when a stage inherits it
        /// (as in BuildKit).
        inner: Result<Box<Instruction>, super::Problem>,
    },
    Maintainer(String),
}

/// One instruction with its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// The keyword as written (`run`, `Run`, `RUN`).
    pub keyword: String,
    /// The instruction's text as written after the keyword, continuations
    /// joined (BuildKit's `node.Original` minus the keyword).
    pub original: String,
    pub span: Span,
    pub flags: Vec<Flag>,
    pub kind: Kind,
}

impl Instruction {
    /// The upper-case instruction name (`RUN`).
    pub fn name(&self) -> String {
        self.keyword.to_ascii_uppercase()
    }

    /// The value of flag `--name`, if given (last one wins).
    pub fn flag(&self, name: &str) -> Option<&Flag> {
        self.flags.iter().rev().find(|f| f.name == name)
    }

    /// Every value of a repeatable flag (`--mount`, `--exclude`).
    pub fn flag_values(&self, name: &str) -> Vec<String> {
        self.flags
            .iter()
            .filter(|f| f.name == name)
            .filter_map(|f| f.value.clone())
            .collect()
    }
}
