//! Capabilities: reduce the command to docker's default set (moby
//! `oci/caps/defaults.go`), with an empty inheritable set and no ambient
//! capabilities, as docker does since 20.10.

use std::io;

use super::sys;

/// Docker's default capabilities (name, number from `linux/capability.h`).
pub const DOCKER_DEFAULT: &[(&str, u32)] = &[
    ("CAP_CHOWN", 0),
    ("CAP_DAC_OVERRIDE", 1),
    ("CAP_FOWNER", 3),
    ("CAP_FSETID", 4),
    ("CAP_KILL", 5),
    ("CAP_SETGID", 6),
    ("CAP_SETUID", 7),
    ("CAP_SETPCAP", 8),
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_NET_RAW", 13),
    ("CAP_SYS_CHROOT", 18),
    ("CAP_MKNOD", 27),
    ("CAP_AUDIT_WRITE", 29),
    ("CAP_SETFCAP", 31),
];

/// The highest capability number any kernel we drop from may know.
const CAP_LAST_GUESS: u32 = 63;

/// The default set as a bit mask.
pub fn default_mask() -> u64 {
    DOCKER_DEFAULT.iter().fold(0, |m, (_, n)| m | (1u64 << n))
}

/// Drops every capability outside the default set from the bounding set.
/// Must run while CAP_SETPCAP is still effective (before switching user).
pub fn limit_bounding_set() -> io::Result<()> {
    let keep = default_mask();
    for cap in 0..=CAP_LAST_GUESS {
        if keep & (1u64 << cap) == 0 {
            sys::capbset_drop(cap)?;
        }
    }
    Ok(())
}

/// Sets effective and permitted to the default set (for uid 0; a non-root
/// uid already lost them on `setresuid`), clears inheritable and ambient.
pub fn apply_process_sets(uid: u32) -> io::Result<()> {
    let mask = if uid == 0 { default_mask() } else { 0 };
    sys::capset(mask, mask, 0)?;
    sys::clear_ambient()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mask_matches_docker_list() {
        let mask = default_mask();
        assert_eq!(mask.count_ones(), 14);
        // CAP_SYS_ADMIN (21) and CAP_NET_ADMIN (12) must never be granted.
        assert_eq!(mask & (1 << 21), 0);
        assert_eq!(mask & (1 << 12), 0);
        assert_ne!(mask & (1 << 18), 0);
    }
}
