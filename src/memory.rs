//! How the process gets and frees memory (the binary's allocator is mimalloc).
//!
//! mimalloc returns freed pages to the OS after a delay (10 ms by default); a page asked
//! for again later is faulted in and zeroed by the kernel. On this project's machines
//! (virtual machines) a page fault is expensive: touching fresh memory is many times
//! slower than writing memory already mapped. A run allocates and frees large buffers
//! stage after stage (decoded batches, sort buffers, each bucket's work), so returning
//! them only to fault them in again costs seconds: on the 10M-event bench data in one
//! group, never returning memory beat the default delay, mostly in kernel time, at the
//! same peak. (Both measured by hand: benches/README.md, "Figures moved from source
//! comments (2026-12-05)".)
//!
//! So [`KeepFreed`] sets the purge delay to -1 while a run in one group computes: in
//! mimalloc v3 (the version `libmimalloc-sys` builds by default) an arena's pages freed
//! while the delay is negative are not scheduled for purging (`mi_arena_schedule_purge`
//! returns at once), so not even [`hand_back_freed`] returns them. Freed memory stays with
//! the process and is reused by the allocations that follow; it goes back to the OS when
//! the process exits.
//!
//! A split run keeps the 3 s delay ([`tune`]) throughout: its passes before the groups
//! (the spill pass) free large buffers that the groups would not reuse, and what they
//! freed is handed back ([`hand_back_freed`]) before the groups start; within the groups,
//! a group's buffers are mostly reused by the next one within the delay, and never
//! purging let the allocator's holdings grow group after group (fragmentation: a
//! 100M-event reconcile peaked higher than with a 1 s delay). The delay was 1 s until
//! 2026-12-04; 3 s covers a whole group at 100M events, and on the bench data it cut the
//! page faults for a slightly higher peak, outputs byte-identical; a 10 s delay cut them
//! further but raised the peak more. (Measured with alternating runs: benches/README.md,
//! "Profiles and experiments (2026-12-04, evening: the spill past the page cache)"; the
//! fragmentation, a group's length and the 3 s delay's peak set through the environment:
//! "Figures moved from source comments (2026-12-05)".)
//!
//! `MIMALLOC_PURGE_DELAY` in the environment overrides all of this (for measurements).
//!
//! Transparent huge pages are turned off for the process ([`tune`]). mimalloc asks for
//! them (`madvise`), and on this project's machines a huge page is the slow kind of fresh
//! memory. Our reading of why (not measured on the host): the VM's balloon device offers
//! free page reporting (feature bit 5 in `/sys/bus/virtio/devices/virtio0/features`), so
//! free 2 MiB blocks are handed back to the host and a huge page faulted in is likely one
//! the host must back again; the kernel's time then swings from run to run with what the
//! host holds. On the 10M-event bench data in one group, alternating runs with huge pages
//! off took away the slow runs and their kernel time at a slightly lower peak, with no
//! compaction stalls in either (measured: benches/README.md, "Profiles and experiments
//! (2026-12-03, night: transparent huge pages off)"). An earlier series (the same
//! morning's machine state) found the medians equal and only the spread narrower
//! ("Profiles and experiments (2026-12-03, this pass)"). `MIMALLOC_ALLOW_THP` in the
//! environment (mimalloc's own switch) overrides this: set to 1 it leaves huge pages to
//! the system's policy.

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

fn overridden() -> bool {
    std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
}

/// Keep freed memory this long before returning it (mimalloc's default is 10 ms).
const PURGE_DELAY_MS: std::ffi::c_long = 3000;

fn set_purge_delay(ms: std::ffi::c_long) {
    if !overridden() {
        // SAFETY: an unsynchronised store to one of mimalloc's integer options. It is made
        // at start-up and between the run's parallel stages (the rayon workers idle), and
        // a thread reading the option concurrently would see the old or the new value.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, ms) };
    }
}

/// The binary's defaults, made at start-up: freed memory is kept for three seconds, and
/// no transparent huge pages.
pub fn tune() {
    set_purge_delay(PURGE_DELAY_MS);
    disable_transparent_huge_pages();
}

/// Turn transparent huge pages off for this process (and what it starts), unless
/// `MIMALLOC_ALLOW_THP` decides (see the module doc). The flag is checked when a page is
/// faulted in, so it holds for memory mimalloc reserved before `main` too. A kernel
/// without the call (before 3.15) leaves huge pages as they were: only slower.
fn disable_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_THP_DISABLE reads no pointers; it only sets a flag of the
    // calling process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The process's huge-page flag: `Some(true)` when off, `None` when the kernel has no
    /// such call.
    fn huge_pages_disabled() -> Option<bool> {
        // SAFETY: the call only reads the process's flag.
        match unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) } {
            -1 => None,
            flag => Some(flag == 1),
        }
    }

    #[test]
    fn tune_turns_huge_pages_off() {
        // The flag is inherited: when the test's parent set it, the assertion holds
        // whatever tune does (cargo and CI do not set it).
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() || huge_pages_disabled().is_none() {
            return;
        }
        super::tune();
        assert_eq!(huge_pages_disabled(), Some(true));
    }
}

/// Return what has been freed to the OS now, rather than after the delay.
pub fn hand_back_freed() {
    if !overridden() {
        // SAFETY: the C library is linked (`extern crate mimalloc` above); collecting
        // only returns this thread's and abandoned free pages to the OS, and does
        // nothing when mimalloc is not the global allocator (its heap is not set up).
        unsafe { mi_collect(true) };
    }
}

/// While alive, freed memory is kept for reuse (see the module doc). Made when a run in
/// one group starts computing.
pub struct KeepFreed(());

impl KeepFreed {
    pub fn start() -> KeepFreed {
        hand_back_freed();
        set_purge_delay(-1);
        KeepFreed(())
    }
}

impl Drop for KeepFreed {
    fn drop(&mut self) {
        set_purge_delay(PURGE_DELAY_MS);
    }
}
