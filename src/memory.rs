//! Giving freed heap memory back to the system.
//!
//! glibc's allocator hands memory back to the system only from the top of a heap. What a burst
//! frees in the middle (watch events still carrying managed fields, list pages, request and
//! answer bodies, reconciles' working copies), between objects the cache keeps, stays resident
//! for good: at 10,000 objects the operator sat at its peak of about 147 MiB, 60 to 80 MiB
//! above what it had allocated. `malloc_trim` returns the whole free pages inside the heaps.
//! It walks the allocator's free lists (milliseconds on a heap of tens of MiB), so it runs
//! only when resident memory has grown by a step since the last trim, and once more when that
//! growth has stopped: never while the process is steady or idle.

use std::time::{Duration, Instant};

/// How often resident memory is looked at.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// How long after the last trim for growth one more trim is made: what a burst frees as it
/// ends (reconciles' working copies, connection buffers) comes after its growth.
const SETTLE: Duration = Duration::from_secs(5);

/// When to trim: each time resident memory has grown by a step over what it was after the last
/// trim, and once more when growth has stopped for [`SETTLE`].
#[derive(Debug)]
pub struct Trimming {
    step: u64,
    after_last: u64,
    settle_at: Option<Instant>,
}

impl Trimming {
    /// `step` bytes of growth make a trim due (0: never); `resident` is the starting mark.
    pub fn new(step: u64, resident: u64) -> Self {
        Trimming {
            step,
            after_last: resident,
            settle_at: None,
        }
    }

    /// Whether a trim is due, resident memory being `resident` at `now`.
    pub fn due(&mut self, resident: u64, now: Instant) -> bool {
        if self.step == 0 {
            return false;
        }
        if resident >= self.after_last.saturating_add(self.step) {
            self.settle_at = now.checked_add(SETTLE);
            return true;
        }
        if self.settle_at.is_some_and(|at| now >= at) {
            self.settle_at = None;
            return true;
        }
        // Memory given back by other means lowers the mark too.
        self.after_last = self.after_last.min(resident);
        false
    }

    /// A trim left `resident` bytes resident.
    pub fn trimmed(&mut self, resident: u64) {
        self.after_last = resident;
    }
}

/// Resident memory of this process in bytes (`/proc/self/statm`), `None` where unknown.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(page_size())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn page_size() -> u64 {
    4096
}

/// Returns the free pages of the allocator's heaps to the system. `false` where the allocator
/// has no such call (not glibc) or nothing could be returned.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers; it locks each arena while it walks it, so it
        // is safe to call while other threads allocate.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Makes every thread allocate from one heap (glibc's `M_ARENA_MAX` of 1). glibc gives a
/// thread that finds the heap busy an arena of its own, and each arena keeps its own free
/// memory: with the runtime's workers, the trimming thread and blocking threads, the
/// operator's freed memory was spread over several. Contention on the one arena is small:
/// glibc serves most small allocations from each thread's own cache (tcache) without its lock,
/// the runtime has a worker per CPU the pod may use, and the operator's work is mostly waiting
/// (2.7 CPU seconds per 1,000 deployments at 10,000 objects, as before the change). 10,000
/// objects: peak RSS 70.5 → 67.7 MiB. Must run before any other thread starts.
pub fn one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt takes no pointers; called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Starts a thread that trims the heap as [`Trimming`] says, `step_bytes` of growth apart.
/// Does nothing when `step_bytes` is 0 or resident memory cannot be read.
pub fn start_trimming(step_bytes: u64) {
    let Some(resident) = resident_bytes().filter(|_| step_bytes > 0) else {
        return;
    };
    let mut trimming = Trimming::new(step_bytes, resident);
    let spawned = std::thread::Builder::new()
        .name("gitdev-heap-trim".into())
        .spawn(move || {
            loop {
                std::thread::sleep(LOOK_EVERY);
                let Some(before) = resident_bytes() else {
                    return;
                };
                if trimming.due(before, Instant::now()) {
                    trim();
                    let after = resident_bytes().unwrap_or(before);
                    trimming.trimmed(after);
                    tracing::debug!(
                        before_mib = before >> 20,
                        after_mib = after >> 20,
                        "returned free heap pages to the system"
                    );
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the heap trimming thread; memory freed after a burst stays resident");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_trim_is_due_only_once_resident_memory_grew_by_a_step() {
        let cases = [
            ("steady", 100 * MIB, 4 * MIB, false),
            ("grew less than a step", 103 * MIB, 4 * MIB, false),
            ("grew by a step", 104 * MIB, 4 * MIB, true),
            ("shrank", 90 * MIB, 4 * MIB, false),
            ("trimming off", 500 * MIB, 0, false),
        ];
        for (name, resident, step, due) in cases {
            let mut t = Trimming::new(step, 100 * MIB);
            assert_eq!(t.due(resident, Instant::now()), due, "{name}");
        }
        let mut top = Trimming::new(4 * MIB, u64::MAX - 1);
        assert!(
            !top.due(u64::MAX - 1, Instant::now()),
            "no overflow near the top"
        );
    }

    #[test]
    fn growth_that_stopped_gets_one_more_trim_after_it_settled() {
        let start = Instant::now();
        let mut t = Trimming::new(4 * MIB, 100 * MIB);
        assert!(t.due(110 * MIB, start));
        t.trimmed(108 * MIB);
        assert!(
            !t.due(108 * MIB, start + Duration::from_secs(1)),
            "settling"
        );
        assert!(t.due(108 * MIB, start + SETTLE), "settled: one more trim");
        t.trimmed(95 * MIB);
        assert!(
            !t.due(95 * MIB, start + SETTLE * 3),
            "no further trim while steady"
        );
        assert!(
            !t.due(98 * MIB, start + SETTLE * 4),
            "the mark is where the trim left it"
        );
    }

    #[test]
    fn memory_given_back_otherwise_lowers_the_mark() {
        let mut t = Trimming::new(4 * MIB, 100 * MIB);
        assert!(!t.due(80 * MIB, Instant::now()));
        assert!(t.due(84 * MIB, Instant::now()));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_trim_returns_memory_freed_below_a_live_allocation() {
        // Many small blocks (below the mmap threshold, so inside a heap), then one kept above
        // them: freeing the blocks leaves 64 MiB free in the middle, which free() alone keeps.
        let blocks: Vec<Box<[u8; 1024]>> = (0..64 * 1024).map(|_| Box::new([7u8; 1024])).collect();
        let pin = Box::new([1u8; 1024]);
        drop(blocks);
        let before = resident_bytes().expect("statm");
        trim();
        let after = resident_bytes().expect("statm");
        std::hint::black_box(&pin);
        // Other tests allocate meanwhile: ask for half of what was freed.
        assert!(
            before.saturating_sub(after) >= 32 * MIB,
            "resident {} MiB before the trim, {} MiB after",
            before / MIB,
            after / MIB
        );
    }
}
