//! OCI distribution client: references, auth, pull and push.
