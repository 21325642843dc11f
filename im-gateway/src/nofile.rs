//! Raising this process's open-file limit, which bounds how many connections it can hold.

use std::io;

/// Descriptors kept for other uses than client connections: listeners, service and bus
/// connections, log files.
pub(crate) const RESERVED: u64 = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the limit now in force.
///
/// # Errors
/// When the limit cannot be read or set.
#[cfg(unix)]
#[allow(unsafe_code)]
pub(crate) fn raise() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit`, which `limit` is, and keeps no pointer to it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads one `rlimit`, which `limit` is, and keeps no pointer to it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// Nothing to raise on this platform; the limit is unknown.
#[cfg(not(unix))]
pub(crate) fn raise() -> io::Result<u64> {
    Err(io::Error::other("open-file limits are not adjustable here"))
}
