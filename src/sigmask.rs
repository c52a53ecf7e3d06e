//! The calling thread's signal mask: blocked around a fork (spawn), on
//! helper threads (the runtime's, interception's), and across an upgrade's
//! exec, where the mask before goes to the next image by number.

/// Blocks every signal; returns the ones blocked before, by number. Those
/// that arrive now stay pending (across execve too).
pub fn block_all() -> Vec<i32> {
    // SAFETY: plain signal-mask calls on initialised sets.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        (1..=libc::SIGRTMAX())
            .filter(|&s| libc::sigismember(&old, s) == 1)
            .collect()
    }
}

/// Sets the mask to exactly `blocked` (numbers).
pub fn set(blocked: &[i32]) {
    // SAFETY: plain signal-mask calls on an initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in blocked {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Every signal blocked until dropped, then the mask as it was.
pub struct Blocked(Vec<i32>);

impl Blocked {
    pub fn new() -> Self {
        Blocked(block_all())
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        set(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_blocked_before_comes_back_up_to_sigrtmax() {
        // A thread of its own: the mask is per thread.
        std::thread::spawn(|| {
            let wanted = [libc::SIGHUP, libc::SIGRTMIN(), libc::SIGRTMAX()];
            set(&wanted);
            let before = block_all();
            set(&before);
            assert_eq!(before, wanted);
        })
        .join()
        .unwrap();
    }
}
