//! Thread calls: the kernel's id of a thread, idle scheduling priority, and
//! whether a thread is asleep (blocked) or running, as the kernel says.

use super::syscall;
use std::io;

/// The CPUs the process may run on (its affinity mask), or 1 if unknown.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The calling thread's kernel id (what `/proc/self/task/` lists).
pub fn current_tid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// Puts the calling thread in the SCHED_IDLE class: it runs only on a CPU
/// that would otherwise be idle, and never preempts another thread. Any
/// thread may lower its own priority, so this needs no privilege.
pub fn set_idle_priority() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a live sched_param; pid 0 is the calling thread.
    syscall!(sched_setscheduler(0, libc::SCHED_IDLE, &param)).map(|_| ())
}

/// True while thread `tid` of this process sleeps in the kernel (state S
/// or D in `/proc/self/task/<tid>/stat`: blocked in a read, a lock, a
/// sleep), false while it runs or waits for a CPU (R), or if its state
/// cannot be read. Opens and closes the file each time, so the process
/// holds no descriptor for it: it is asked rarely.
pub fn is_asleep(tid: i32) -> bool {
    let path = format!("/proc/self/task/{tid}/stat\0");
    // SAFETY: `path` is NUL-terminated and outlives the call.
    let Ok(fd) = syscall!(open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC)) else {
        return false;
    };
    let mut buf = [0u8; 256];
    // SAFETY: reads at most `buf.len()` bytes into `buf`.
    let n = syscall!(read(fd, buf.as_mut_ptr().cast(), buf.len()));
    super::close(fd);
    let Ok(n) = n else { return false };
    // "tid (comm) S ...": the state follows the last ')', as comm may
    // itself hold parentheses.
    let stat = &buf[..n as usize];
    match stat.iter().rposition(|&b| b == b')') {
        Some(end) => matches!(stat.get(end + 2), Some(b'S' | b'D')),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// A thread blocked in a read is seen asleep; a spinning one is not.
    #[test]
    fn a_blocked_thread_is_asleep_and_a_running_one_is_not() {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let sleeper = std::thread::spawn(move || {
            tid_tx.send(current_tid()).unwrap();
            go_rx.recv().unwrap();
        });
        let tid = tid_rx.recv().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_asleep(tid) {
            assert!(Instant::now() < deadline, "never seen asleep");
            std::thread::sleep(Duration::from_millis(1));
        }
        go_tx.send(()).unwrap();
        sleeper.join().unwrap();

        assert!(!is_asleep(current_tid()), "the calling thread runs");
    }
}
