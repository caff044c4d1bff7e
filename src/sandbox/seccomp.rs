//! A small seccomp filter for the command, written as classic BPF so no C
//! library (libseccomp) is needed. It is a deny list of what docker's
//! default profile blocks and the dropped capabilities do not already stop:
//! the kernel keyring, new namespaces (so no nested user namespace with
//! fresh capabilities), the mount API, module and kexec loading, bpf,
//! perf and userfaultfd. Syscalls of a foreign ABI (i386, x32) get ENOSYS,
//! because their numbers differ and would bypass the list.

/// seccomp_data offsets: nr (u32), arch (u32), ip (u64), args ([u64; 6]).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0_LOW: u32 = 16; // little-endian: low 32 bits of args[0]

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_00B7;

/// x32 syscalls share the x86_64 audit arch but set this bit.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const RET_ALLOW: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW

const NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWCGROUP) as u32;

/// Denied with EPERM.
const DENIED: &[libc::c_long] = &[
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_userfaultfd,
    libc::SYS_perf_event_open,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_open_by_handle_at,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_setns,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_acct,
    libc::SYS_quotactl,
];

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

fn ret_errno(errno: i32) -> libc::sock_filter {
    stmt(
        libc::BPF_RET | libc::BPF_K,
        libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA),
    )
}

fn load(offset: u32) -> libc::sock_filter {
    stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset)
}

fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, k, jt, jf)
}

/// The filter program.
pub fn program() -> Vec<libc::sock_filter> {
    let mut p = vec![
        load(OFF_ARCH),
        jeq(AUDIT_ARCH_NATIVE, 1, 0),
        ret_errno(libc::ENOSYS),
        load(OFF_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        let jge = libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K;
        p.push(jump(jge, X32_SYSCALL_BIT, 0, 1));
        p.push(ret_errno(libc::ENOSYS));
    }
    for nr in DENIED {
        p.push(jeq(*nr as u32, 0, 1));
        p.push(ret_errno(libc::EPERM));
    }
    // clone3 passes its flags in memory BPF cannot read: ENOSYS makes libc
    // fall back to clone, whose flags we can check.
    p.push(jeq(libc::SYS_clone3 as u32, 0, 1));
    p.push(ret_errno(libc::ENOSYS));
    p.push(jeq(libc::SYS_clone as u32, 1, 0));
    p.push(jeq(libc::SYS_unshare as u32, 0, 3));
    p.push(load(OFF_ARG0_LOW));
    p.push(jump(
        libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K,
        NAMESPACE_FLAGS,
        0,
        1,
    ));
    p.push(ret_errno(libc::EPERM));
    p.push(stmt(libc::BPF_RET | libc::BPF_K, RET_ALLOW));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_ends_in_allow_and_every_jump_stays_inside() {
        let p = program();
        let last = p.last().unwrap();
        assert_eq!(last.k, RET_ALLOW);
        assert!(
            p.len() < 4096,
            "BPF programs are limited to 4096 instructions"
        );
        for (i, ins) in p.iter().enumerate() {
            if u32::from(ins.code) & 0x07 == libc::BPF_JMP {
                assert!(
                    i + 1 + usize::from(ins.jt.max(ins.jf)) < p.len(),
                    "jump at {i}"
                );
            }
        }
        // Every denied syscall is followed by an EPERM return.
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        for nr in DENIED {
            let at = p
                .iter()
                .position(|ins| ins.k == *nr as u32 && ins.jt == 0)
                .unwrap();
            assert_eq!(p[at + 1].k, eperm);
        }
    }
}
