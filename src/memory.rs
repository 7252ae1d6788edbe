//! How freed memory goes back to the OS (the binary's allocator is mimalloc).
//!
//! mimalloc returns freed pages to the OS after a delay; a page asked for again later is
//! faulted in and zeroed by the kernel. A split run frees one group's rows and allocates
//! the next group's straight after, so returning them only to fault them in again cost
//! about 10% of a run (100M events: 107.6 s with the 1 s delay below for the whole run,
//! 97.1 s never returning anything). Never returning anything for the whole run raised
//! the 100M peak from 2.6 to 4.9 GB: the light pass and the spill pass free large buffers
//! the groups never reuse. So memory is kept only while groups are processed
//! ([`GroupPhase`]): what the passes before freed is handed back first, and the kept
//! memory is handed back when the groups are done.
//!
//! `MIMALLOC_PURGE_DELAY` in the environment overrides all of this (for measurements).

extern "C" {
    /// mimalloc's option setter (in the linked C library; `libmimalloc-sys` exposes it
    /// only with its `extended` feature).
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
        // SAFETY: sets a process-wide integer option; valid at any time.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, ms) };
    }
}

/// The binary's default: keep freed memory for a second.
pub fn tune() {
    set_purge_delay(PURGE_DELAY_MS);
}

/// While alive, freed memory is kept for reuse by the next group; made after the passes
/// that precede the groups, dropped when the groups are done.
pub struct GroupPhase(());

impl GroupPhase {
    pub fn start() -> GroupPhase {
        if !overridden() {
            // SAFETY: mimalloc is linked (a dependency of this crate); collecting only
            // returns free pages and is valid at any time, whichever allocator is global.
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
