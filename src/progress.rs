//! Progress output: a live TTY view, BuildKit-style plain lines, JSON events.
