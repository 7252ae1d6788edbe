//! How the process gets and frees memory (the binary's allocator is mimalloc).
//!
//! mimalloc returns freed pages to the OS after a delay (10 ms by default); a page asked
//! for again later is faulted in and zeroed by the kernel. On this project's machines
//! (virtual machines) a page fault is expensive: touching fresh memory runs at about
//! 1.3 GB/s with 4 KiB pages, against 18 GB/s for writing memory already mapped (a C
//! program timing both, by hand). A run allocates and frees large buffers stage after
//! stage (decoded batches, sort buffers, each bucket's work), so returning them only to
//! fault them in again costs seconds: on the 10M-event bench data in one group, 4
//! alternating runs each, the default delay took 10.5–12.7 s (3.2–4.4 s of it in the
//! kernel) and never returning memory 9.4–9.7 s (1.4–1.7 s in the kernel), at the same
//! peak (2.8 GiB).
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
//! 100M-event reconcile in 16 groups peaked at 5.6 GB, against 4.6 GB with a 1 s delay;
//! never purging for the whole split run, 4.7 GB in 256 groups). The delay was 1 s until
//! 2026-12-04; 3 s covers a whole group at 100M events (26 groups of about 1.5 s), and on
//! the bench data, alternating runs, outputs byte-identical: 100M reconcile 2.31-2.37M
//! page faults against 3.33-3.48M, 58.2 / 57.4 s against 58.2 / 59.0 s, peak 3.21-3.24
//! GiB against 3.16-3.17; 20M 0.80-0.86M faults against 0.98-1.06M, 11.10-11.33 s against
//! 11.27-11.61 s, peak 2.59-2.64 GiB against 2.51-2.56. A 10 s delay cut the 100M faults
//! to 1.65M but peaked at up to 3.49 GiB (`MIMALLOC_PURGE_DELAY=10000`, which also skips
//! the hand-back before the groups; 3000 so: 3.23-3.31 GiB).
//!
//! `MIMALLOC_PURGE_DELAY` in the environment overrides all of this (for measurements).
//!
//! Transparent huge pages are turned off for the process ([`tune`]). mimalloc asks for
//! them (`madvise`), and on this project's machines a huge page is the slow kind of fresh
//! memory. Our reading of why (not measured on the host): the VM's balloon device offers
//! free page reporting (feature bit 5 in `/sys/bus/virtio/devices/virtio0/features`), so
//! free 2 MiB blocks are handed back to the host and a huge page faulted in is likely one
//! the host must back again; the kernel's time then swings from run to run with what the
//! host holds. On the 10M-event bench data in one group, 8 alternating runs each
//! (2026-12-03, about 18:10 UTC): 4.42–5.12 s with huge pages off (1.4–2.5 s in the kernel)
//! against 4.33–7.81 s with them (1.4–8.2 s in the kernel), peak 2.47–2.50 GiB against
//! 2.54–2.56; no compaction stalls in either (`compact_stall` in `/proc/vmstat`). An
//! earlier series (the same morning's machine state) found the medians equal and only the
//! spread narrower. `MIMALLOC_ALLOW_THP` in the environment (mimalloc's own switch)
//! overrides this: set to 1 it leaves huge pages to the system's policy.

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
