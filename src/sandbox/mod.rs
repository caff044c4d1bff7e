//! The RUN sandbox: Linux namespaces over an overlay of the parent layers.
