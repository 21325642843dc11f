//! Giving freed heap memory back to the operating system.
//!
//! glibc's allocator keeps memory freed in the middle of its heaps for reuse and returns
//! only the top of a heap on its own. A server whose connections come in waves therefore
//! stays at the resident size of its largest wave: measured on the echo server, 2 000
//! connections took it from 9 MB to 27 MB, where it stayed after they closed; one
//! `malloc_trim` brought it back to 10 MB (BENCHMARKS.md, "Memory after connection
//! waves"). The server calls [`release`] after a wave of closes (see `server::Trim`);
//! it is a no-op on other platforms and allocators' own heaps are left alone.

/// Returns the allocator's free pages to the operating system (glibc's `malloc_trim`).
/// Costs about a millisecond per few tens of MB of heap; call it from a blocking thread.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: `malloc_trim` takes no pointer and reads no memory of ours; glibc documents it
    // as MT-Safe (it takes each arena's lock), so it may run on any thread while others
    // allocate. It only hands free pages of the allocator's own heaps back to the kernel.
    unsafe {
        malloc_trim(0);
    }
}

/// Returns the allocator's free pages to the operating system; nothing to do on this
/// platform.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release() {}
