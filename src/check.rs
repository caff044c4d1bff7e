//! `rbuild check`: parse, plan and lint a Dockerfile without building,
//! reporting every error with file, line and column.
