//! How freed memory goes back to the OS (the binary's allocator is mimalloc).
//!
//! mimalloc returns freed pages to the OS after a delay; a page asked for again later is
//! faulted in and zeroed by the kernel. A split run frees one group's rows and allocates
//! the next group's straight after, so returning them only to fault them in again costs
//! time: on the 100M-event bench data (single runs), the 1 s delay below for the whole run
//! took 107.6 s (44 s of it in the kernel), never returning anything 97.1 s, but never returning
//! anything for the whole run raised the peak from 2.6 to 4.9 GB (the light pass and the
//! spill pass free large buffers the groups never reuse).
//!
//! So [`GroupPhase`], made once those passes are done, first hands back what they freed
//! (`mi_collect`), then sets the purge delay to -1 while the groups run. In mimalloc v2 a
//! segment (its unit of memory from the OS) made while the delay is negative is never
//! purged: the memory the groups obtain stays with the process, is reused by group after
//! group and by the write that follows, and goes back to the OS when the process exits.
//! The reconcile's peak is unchanged (2.6 GiB at 100M, still set by the light pass; a
//! close's grows by about 0.13 GiB, 2.82 → 2.95 GiB, its results accumulating in memory
//! the groups keep) and the run is faster (single 100M runs of one binary each: 98.9 s
//! with a 60 s delay instead of -1, 91.4 s with -1; at 10M the two are within noise). Segments made before keep purging
//! (with a negative delay their freed pages go back at once). Dropping the phase restores
//! the 1 s delay for what the write allocates.
//!
//! `MIMALLOC_PURGE_DELAY` in the environment overrides all of this (for measurements).

// The C library these functions live in comes with the `mimalloc` crate; naming the crate
// here links it into every binary of this library (the tally binary also makes it the
// global allocator), so the symbols below always resolve.
extern crate mimalloc as _;

extern "C" {
    /// mimalloc's option setter (`libmimalloc-sys` declares it only with its `extended`
    /// feature, without a constant for the purge delay).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    /// Return freed memory to the OS now (`force`: also what the delay still holds).
    fn mi_collect(force: bool);
}

/// `mi_option_purge_delay` in mimalloc's `mi_option_e`.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Keep freed memory this long before returning it (mimalloc's default is 10 ms).
const PURGE_DELAY_MS: std::ffi::c_long = 1000;

fn overridden() -> bool {
    std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
}

fn set_purge_delay(ms: std::ffi::c_long) {
    if !overridden() {
        // SAFETY: an unsynchronised store to one of mimalloc's integer options. It is made
        // at start-up and between the run's parallel stages (the rayon workers idle), and
        // a thread reading the option concurrently would see the old or the new value.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, ms) };
    }
}

/// The binary's default: keep freed memory for a second.
pub fn tune() {
    set_purge_delay(PURGE_DELAY_MS);
}

/// While alive, memory the groups obtain is kept for reuse (see the module doc); made after
/// the passes that precede the groups, dropped when the groups are done.
pub struct GroupPhase(());

impl GroupPhase {
    pub fn start() -> GroupPhase {
        if !overridden() {
            // SAFETY: the C library is linked (`extern crate mimalloc` above); collecting
            // only returns this thread's and abandoned free pages to the OS, and does
            // nothing when mimalloc is not the global allocator (its heap is not set up).
            unsafe { mi_collect(true) };
        }
        set_purge_delay(-1);
        GroupPhase(())
    }
}

impl Drop for GroupPhase {
    fn drop(&mut self) {
        set_purge_delay(PURGE_DELAY_MS);
        if !overridden() {
            // SAFETY: as in `start`.
            unsafe { mi_collect(true) };
        }
    }
}
