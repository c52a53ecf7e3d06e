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

/// offsetof(struct seccomp_data, args[1]), its low 32 bits: shutdown's
/// `int how`.
#[cfg(target_endian = "little")]
const ARG1_LOW: u32 = 24;
#[cfg(target_endian = "big")]
const ARG1_LOW: u32 = 28;

/// bind, listen and shutdown go to relaunch, except shutdown(SHUT_WR), the
/// half-close of a connection that servers make on every request (on a
/// listener it changes nothing); everything else runs. A call made in
/// another ABI (x32, i386 on x86_64) has other numbers and runs: such a bind
/// gets what it would get without relaunch.
static PROGRAM: [sock_filter; 10] = [
    stmt(LD_W_ABS, ARCH_AT),
    jump(JEQ_K, ARCH, 0, 7),
    stmt(LD_W_ABS, NR),
    jump(JEQ_K, libc::SYS_bind as u32, 4, 0),
    jump(JEQ_K, libc::SYS_listen as u32, 3, 0),
    jump(JEQ_K, libc::SYS_shutdown as u32, 0, 3),
    stmt(LD_W_ABS, ARG1_LOW),
    jump(JEQ_K, libc::SHUT_WR as u32, 1, 0),
    stmt(RET_K, libc::SECCOMP_RET_USER_NOTIF),
    stmt(RET_K, libc::SECCOMP_RET_ALLOW),
];

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
/// # Safety
/// Only between fork and exec, in the child; `sock` is the child's end.
pub unsafe fn install(sock: RawFd) -> Result<(), i32> {
    unsafe {
        let prog = libc::sock_fprog {
            len: PROGRAM.len() as u16,
            filter: PROGRAM.as_ptr() as *mut sock_filter,
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

    #[test]
    fn the_jumps_land_on_the_returns() {
        // From instruction i, a jump of n lands on i + 1 + n.
        let to = |i: usize, taken: bool| {
            let insn = &PROGRAM[i];
            i + 1 + if taken { insn.jt } else { insn.jf } as usize
        };
        let allow = PROGRAM.len() - 1;
        let notify = allow - 1;
        assert_eq!(PROGRAM[notify].k, libc::SECCOMP_RET_USER_NOTIF);
        assert_eq!(PROGRAM[allow].k, libc::SECCOMP_RET_ALLOW);
        // Another ABI: allowed.
        assert_eq!(to(1, false), allow);
        assert_eq!(to(1, true), 2);
        // bind, listen: to relaunch.
        assert_eq!(to(3, true), notify);
        assert_eq!(to(4, true), notify);
        // shutdown: SHUT_WR runs, SHUT_RD and SHUT_RDWR go to relaunch.
        assert_eq!(to(5, true), 6);
        assert_eq!(to(5, false), allow);
        let args1 = std::mem::offset_of!(libc::seccomp_data, args) as u32 + 8;
        let low = if cfg!(target_endian = "little") { 0 } else { 4 };
        assert_eq!(PROGRAM[6].k, args1 + low);
        assert_eq!(PROGRAM[7].k, libc::SHUT_WR as u32);
        assert_eq!(to(7, true), allow);
        assert_eq!(to(7, false), notify);
    }
}
