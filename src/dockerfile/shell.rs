//! Word expansion with BuildKit's rules: `$V`, `${V:-w}`, quotes, escapes.
