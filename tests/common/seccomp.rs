//! The io_uring-refused run (issue 19, point 4): with
//! `PGTENANT_TEST_REFUSE_IO_URING=1` the harness installs a seccomp filter
//! on every thread of the test process, as Docker's default profile does,
//! so `io_uring_setup` fails with EPERM in the proxy (in-process or a
//! spawned binary: children inherit the filter) and its batched sends fall
//! back to plain sends. A flag in the config would only test the flag.

use std::sync::Once;

const VAR: &str = "PGTENANT_TEST_REFUSE_IO_URING";

/// Installs the filter once per process if the run asks for it, and
/// proves it holds.
pub fn refuse_io_uring_if_asked() {
    if std::env::var_os(VAR).is_none_or(|v| v != "1") {
        return;
    }
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        install().unwrap_or_else(|e| panic!("{VAR}=1 but the seccomp filter failed: {e}"));
        assert_eq!(
            io_uring_setup_errno(),
            Some(libc::EPERM),
            "the filter must refuse io_uring_setup"
        );
        eprintln!("seccomp: io_uring_setup refused (EPERM) for this test process");
    });
}

fn install() -> Result<(), Box<dyn std::error::Error>> {
    use seccompiler::{SeccompAction, SeccompFilter, TargetArch};
    let arch: TargetArch = std::env::consts::ARCH.try_into()?;
    let refused = [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ];
    let filter = SeccompFilter::new(
        refused.into_iter().map(|nr| (nr, vec![])).collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    let program: seccompiler::BpfProgram = filter.try_into()?;
    seccompiler::apply_filter_all_threads(&program)?;
    Ok(())
}

/// The errno of a raw `io_uring_setup(1, {0})`, None if it succeeded.
fn io_uring_setup_errno() -> Option<i32> {
    let mut params = [0u8; 120]; // struct io_uring_params
    // SAFETY: `params` is large enough for the kernel's struct; a ring it
    // might return is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: the fd was just returned to us and nothing else owns it.
        unsafe { libc::close(fd as i32) };
        return None;
    }
    std::io::Error::last_os_error().raw_os_error()
}
