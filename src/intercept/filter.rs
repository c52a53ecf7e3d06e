//! The seccomp filter a child runs under, installed between fork and exec.
//!
//! Everything here runs in the forked child: raw syscalls on memory that is
//! static or on the stack, no allocation, no locks, no logging (see the
//! safety argument in `supervise::spawn`).

use std::os::fd::RawFd;

use libc::sock_filter;

#[cfg(target_arch = "x86_64")]
const ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64
#[cfg(target_arch = "riscv64")]
const ARCH: u32 = 0xc000_00f3; // AUDIT_ARCH_RISCV64

const fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

const LD_W_ABS: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
const JEQ_K: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
const RET_K: u32 = libc::BPF_RET | libc::BPF_K;
/// offsetof(struct seccomp_data, nr) and (…, arch).
const NR: u32 = 0;
const ARCH_AT: u32 = 4;

/// offsetof(struct seccomp_data, args[1]) and (…, args[2]), their low 32
/// bits: shutdown's `int how`, setsockopt's `int level` and `int optname`.
#[cfg(target_endian = "little")]
const ARG1_LOW: u32 = 24;
#[cfg(target_endian = "big")]
const ARG1_LOW: u32 = 28;
const ARG2_LOW: u32 = ARG1_LOW + 8;

#[cfg(target_arch = "x86_64")]
const UNLINK: u32 = libc::SYS_unlink as u32;
// No unlink(2) here: unlinkat alone.
#[cfg(not(target_arch = "x86_64"))]
const UNLINK: u32 = libc::SYS_unlinkat as u32;

const LEN: usize = 21;
const ALLOW: usize = LEN - 1;
const NOTIFY: usize = ALLOW - 1;

/// A comparison that falls through either way (a trap left out).
const fn never(k: u32) -> sock_filter {
    jump(JEQ_K, k, 0, 0)
}

/// A jump from instruction `at` to `to` when the accumulator equals `k`.
const fn to(at: usize, k: u32, to: usize) -> sock_filter {
    jump(JEQ_K, k, (to - at - 1) as u8, 0)
}

/// bind, listen and shutdown go to relaunch, except shutdown(SHUT_WR), the
/// half-close of a connection that servers make on every request (on a
/// listener it changes nothing). So do the setsockopt options that would
/// let another socket share a held port or steer its connections
/// (SO_REUSEPORT, the reuseport BPF programs), matched by level and name;
/// every other option, and everything else, runs. With `probes`, every
/// connect goes to relaunch too (BPF cannot read the address), which
/// refuses a port probe of a held address. With `files`, so do unlink and
/// unlinkat (BPF cannot read the path either), so that a held socket file
/// stays. A call made in another ABI (x32, i386 on x86_64) has other
/// numbers and runs: such a bind gets what it would get without relaunch.
const fn program(t: Traps) -> [sock_filter; LEN] {
    [
        stmt(LD_W_ABS, ARCH_AT),
        jump(JEQ_K, ARCH, 0, (ALLOW - 2) as u8),
        stmt(LD_W_ABS, NR),
        to(3, libc::SYS_bind as u32, NOTIFY),
        to(4, libc::SYS_listen as u32, NOTIFY),
        if t.probes {
            to(5, libc::SYS_connect as u32, NOTIFY)
        } else {
            never(libc::SYS_connect as u32)
        },
        if t.files {
            to(6, UNLINK, NOTIFY)
        } else {
            never(UNLINK)
        },
        if t.files {
            to(7, libc::SYS_unlinkat as u32, NOTIFY)
        } else {
            never(libc::SYS_unlinkat as u32)
        },
        to(8, libc::SYS_setsockopt as u32, 12),
        jump(JEQ_K, libc::SYS_shutdown as u32, 0, (ALLOW - 10) as u8),
        stmt(LD_W_ABS, ARG1_LOW),
        jump(
            JEQ_K,
            libc::SHUT_WR as u32,
            (ALLOW - 12) as u8,
            (NOTIFY - 12) as u8,
        ),
        // setsockopt
        stmt(LD_W_ABS, ARG1_LOW),
        jump(JEQ_K, libc::SOL_SOCKET as u32, 0, (ALLOW - 14) as u8),
        stmt(LD_W_ABS, ARG2_LOW),
        to(15, libc::SO_REUSEPORT as u32, NOTIFY),
        to(16, libc::SO_ATTACH_REUSEPORT_CBPF as u32, NOTIFY),
        to(17, libc::SO_ATTACH_REUSEPORT_EBPF as u32, NOTIFY),
        jump(
            JEQ_K,
            libc::SO_DETACH_REUSEPORT_BPF as u32,
            0,
            (ALLOW - 19) as u8,
        ),
        stmt(RET_K, libc::SECCOMP_RET_USER_NOTIF),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
    ]
}

/// What the filter traps besides bind, listen, shutdown and the port's
/// socket options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traps {
    /// connect (`--refuse-probes`).
    pub probes: bool,
    /// unlink and unlinkat (a held Unix socket file).
    pub files: bool,
}

/// Each combination, indexed by `probes + 2 * files`: built at compile
/// time, so the forked child only picks one.
static PROGRAMS: [[sock_filter; LEN]; 4] = [
    program(Traps {
        probes: false,
        files: false,
    }),
    program(Traps {
        probes: true,
        files: false,
    }),
    program(Traps {
        probes: false,
        files: true,
    }),
    program(Traps {
        probes: true,
        files: true,
    }),
];

const fn of(t: Traps) -> &'static [sock_filter; LEN] {
    &PROGRAMS[t.probes as usize + 2 * t.files as usize]
}

/// A notification fd, and SPEC_ALLOW (4.17, older than user notification):
/// the filter is no sandbox, so the kernels whose speculation mitigations
/// default to `seccomp` (before 5.16) must not force SSBD and STIBP on the
/// app and everything it runs.
const FLAGS: libc::c_ulong =
    libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW;

/// What the child writes when there is no fd to send: 0 with the fd, else
/// the errno of the refused seccomp() call.
pub type Report = i32;

/// Installs the filter and sends its notification fd over `sock` (one end
/// of a SOCK_SEQPACKET pair), then closes both, so the program sees neither.
/// When the kernel refuses the filter the errno goes instead and the child
/// runs without interception. Err(errno): the filter is in place but its fd
/// did not reach relaunch; nobody would answer, and every trapped call
/// would fail with ENOSYS: the child must not run.
///
/// `traps`: what it traps besides the socket calls.
///
/// # Safety
/// Only between fork and exec, in the child; `sock` is the child's end.
pub unsafe fn install(sock: RawFd, traps: Traps) -> Result<(), i32> {
    unsafe {
        let program = of(traps);
        let prog = libc::sock_fprog {
            len: LEN as u16,
            filter: program.as_ptr() as *mut sock_filter,
        };
        let seccomp = |prog: &libc::sock_fprog| {
            let with = |flags: libc::c_ulong| {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    flags,
                    prog as *const libc::sock_fprog,
                ) as RawFd
            };
            // WAIT_KILLABLE_RECV (6.0): once relaunch has received a call,
            // only a fatal signal interrupts the caller's wait, so a signal
            // after ADDFD cannot end its bind in EINTR (an app without
            // SA_RESTART would take that as a failure). Before 6.0: EINVAL,
            // and the filter goes on without it.
            let fd = with(FLAGS | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV);
            if fd < 0 && *libc::__errno_location() == libc::EINVAL {
                return with(FLAGS);
            }
            fd
        };
        let mut fd = seccomp(&prog);
        // Without CAP_SYS_ADMIN (not root, or after --user) the kernel wants
        // no_new_privs first; root keeps setuid programs working.
        if fd < 0 && *libc::__errno_location() == libc::EACCES {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            fd = seccomp(&prog);
        }
        let report: Report = if fd < 0 { *libc::__errno_location() } else { 0 };
        let mut iov = libc::iovec {
            iov_base: (&report as *const Report).cast_mut().cast(),
            iov_len: size_of::<Report>(),
        };
        // CMSG_SPACE(sizeof(int)), aligned as a cmsghdr.
        #[repr(C, align(8))]
        struct Control([u8; 24]);
        let mut control = Control([0; 24]);
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if fd >= 0 {
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        }
        // relaunch's end is read by a thread started before the fork; the
        // send can still fail (no memory, that thread gone).
        let sent = libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
        let errno = *libc::__errno_location();
        if fd >= 0 {
            libc::close(fd);
        }
        libc::close(sock);
        match sent {
            n if n == size_of::<Report>() as isize || fd < 0 => Ok(()),
            n if n < 0 => Err(errno),
            _ => Err(libc::EMSGSIZE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the program ends for a call: true for relaunch, false to run.
    fn trapped(nr: i64, args: [u64; 6]) -> bool {
        let data = libc::seccomp_data {
            nr: nr as i32,
            arch: ARCH,
            instruction_pointer: 0,
            args,
        };
        // Only connect differs with --refuse-probes, only the unlinks
        // with a held socket file.
        let plain = run(of(Traps::default()), data);
        let unlink = nr == UNLINK as i64 || nr == libc::SYS_unlinkat;
        for (probes, files) in [(true, false), (false, true), (true, true)] {
            let expect = plain || (probes && nr == libc::SYS_connect) || (files && unlink);
            assert_eq!(run(of(Traps { probes, files }), data), expect, "{nr}");
        }
        run(
            of(Traps {
                probes: true,
                files: true,
            }),
            data,
        )
    }

    fn run(program: &[sock_filter], data: libc::seccomp_data) -> bool {
        // SAFETY: seccomp_data is plain data.
        let bytes: &[u8] = unsafe {
            std::slice::from_raw_parts(
                (&data as *const libc::seccomp_data).cast(),
                size_of::<libc::seccomp_data>(),
            )
        };
        let word = |at: u32| {
            let at = at as usize;
            u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap())
        };
        let mut acc = 0;
        let mut pc = 0;
        loop {
            let insn = &program[pc];
            match u32::from(insn.code) {
                LD_W_ABS => acc = word(insn.k),
                JEQ_K => pc += if acc == insn.k { insn.jt } else { insn.jf } as usize,
                RET_K => {
                    assert!(
                        insn.k == libc::SECCOMP_RET_USER_NOTIF || insn.k == libc::SECCOMP_RET_ALLOW
                    );
                    return insn.k == libc::SECCOMP_RET_USER_NOTIF;
                }
                other => panic!("unexpected instruction {other:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn the_program_traps_exactly_what_relaunch_answers() {
        let fd = 3;
        assert!(trapped(libc::SYS_bind, [fd, 0, 16, 0, 0, 0]));
        assert!(trapped(libc::SYS_listen, [fd, 5, 0, 0, 0, 0]));
        // shutdown: SHUT_WR runs, SHUT_RD and SHUT_RDWR go to relaunch.
        assert!(!trapped(
            libc::SYS_shutdown,
            [fd, libc::SHUT_WR as u64, 0, 0, 0, 0]
        ));
        assert!(trapped(
            libc::SYS_shutdown,
            [fd, libc::SHUT_RD as u64, 0, 0, 0, 0]
        ));
        assert!(trapped(
            libc::SYS_shutdown,
            [fd, libc::SHUT_RDWR as u64, 0, 0, 0, 0]
        ));
        // setsockopt: only the options that share or steer a port.
        let sol = libc::SOL_SOCKET as u64;
        for opt in [
            libc::SO_REUSEPORT,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            libc::SO_ATTACH_REUSEPORT_EBPF,
            libc::SO_DETACH_REUSEPORT_BPF,
        ] {
            assert!(trapped(
                libc::SYS_setsockopt,
                [fd, sol, opt as u64, 0, 4, 0]
            ));
            // Garbage above an int is ignored, as the kernel ignores it.
            let high = 1 << 32;
            assert!(trapped(
                libc::SYS_setsockopt,
                [fd, sol | high, opt as u64 | high, 0, 4, 0]
            ));
        }
        for opt in [
            libc::SO_REUSEADDR,
            libc::SO_KEEPALIVE,
            libc::SO_RCVBUF,
            libc::SO_ATTACH_FILTER,
        ] {
            assert!(!trapped(
                libc::SYS_setsockopt,
                [fd, sol, opt as u64, 0, 4, 0]
            ));
        }
        // The same numbers at another level are other options.
        let tcp = libc::IPPROTO_TCP as u64;
        assert!(!trapped(
            libc::SYS_setsockopt,
            [fd, tcp, libc::SO_REUSEPORT as u64, 0, 4, 0]
        ));
        assert!(!trapped(
            libc::SYS_getsockopt,
            [fd, sol, libc::SO_REUSEPORT as u64, 0, 0, 0]
        ));
        assert!(!trapped(libc::SYS_accept4, [fd, 0, 0, 0, 0, 0]));
        // connect: only with --refuse-probes.
        assert!(trapped(libc::SYS_connect, [fd, 0, 16, 0, 0, 0]));
        let data = libc::seccomp_data {
            nr: libc::SYS_connect as i32,
            arch: ARCH,
            instruction_pointer: 0,
            args: [fd, 0, 16, 0, 0, 0],
        };
        assert!(!run(of(Traps::default()), data));
        // unlink: only with a held socket file.
        assert!(trapped(UNLINK as i64, [0, 0, 0, 0, 0, 0]));
        assert!(trapped(libc::SYS_unlinkat, [0, 0, 0, 0, 0, 0]));
        assert!(!trapped(libc::SYS_renameat2, [0, 0, 0, 0, 0, 0]));
        assert!(!trapped(libc::SYS_read, [fd, 0, 0, 0, 0, 0]));
    }

    #[test]
    fn another_abi_runs() {
        // x32's bind, say.
        let other = libc::seccomp_data {
            nr: libc::SYS_bind as i32,
            arch: ARCH ^ 1,
            instruction_pointer: 0,
            args: [3, 0, 16, 0, 0, 0],
        };
        for p in &PROGRAMS {
            assert!(!run(p, other));
        }
        let args1 = std::mem::offset_of!(libc::seccomp_data, args) as u32 + 8;
        let low = if cfg!(target_endian = "little") { 0 } else { 4 };
        assert_eq!(ARG1_LOW, args1 + low);
    }
}
