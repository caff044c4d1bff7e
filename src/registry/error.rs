//! The mark of a failure that happened talking to a registry.

use std::fmt;

/// An error from a pull, push or login: it reads exactly as the error it
/// wraps (which already names the registry and what was being done), and
/// lets a caller tell "the registry or the network failed" (worth a retry,
/// or a `rbuild login`) from a failure of the build itself.
#[derive(Debug)]
pub struct RegistryError(pub anyhow::Error);

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The wrapped error's own message; its causes follow in the chain.
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for RegistryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl RegistryError {
    /// Wrap `err` unless it is one already.
    pub fn wrap(err: anyhow::Error) -> anyhow::Error {
        if err.is::<RegistryError>() {
            return err;
        }
        anyhow::Error::new(RegistryError(err))
    }

    /// The HTTP status of a registry's error answer in the chain, if any.
    pub fn status(err: &anyhow::Error) -> Option<u16> {
        err.chain()
            .find_map(|c| c.downcast_ref::<super::ApiError>())
            .map(|a| a.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn reads_as_the_wrapped_error_and_keeps_its_causes() {
        let inner = Err::<(), _>(std::io::Error::other("connection refused"))
            .context("pulling r.io/a")
            .unwrap_err();
        let err = RegistryError::wrap(inner);
        assert_eq!(format!("{err:#}"), "pulling r.io/a: connection refused");
        assert!(err.chain().any(|c| c.is::<std::io::Error>()));
        assert!(err.is::<RegistryError>());
        assert_eq!(
            format!("{:#}", RegistryError::wrap(err)),
            "pulling r.io/a: connection refused"
        );
    }
}
