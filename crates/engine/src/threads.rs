//! How many threads the kernels use. candle sizes its thread pools from the machine's physical
//! core count and ignores the CPU affinity of the process (`taskset`, cpusets), so a server pinned
//! to one core of a two-core machine ran two spinning kernel threads on that core: every matvec
//! barrier waited for a descheduled thread (measured with `taskset -c 0 lapsd generate`, 48
//! tokens: Qwen2.5-Coder-1.5B 4.2 -> 21.2 tokens/s, SmolLM2-135M 4.9 -> 156 tokens/s).
use std::num::NonZeroUsize;

/// The environment variables candle reads for its pool sizes (`CANDLE_NUM_THREADS` for the
/// barrier pool of the kernels, `RAYON_NUM_THREADS` for its rayon pool and as the fallback).
const THREAD_VARS: [&str; 2] = ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"];

/// The kernel thread count to impose, if any: the CPUs this process may run on, when that is
/// fewer than candle's own choice (`physical_cores`) and the user has not chosen.
pub fn thread_limit(physical_cores: usize, allowed_cpus: usize, user_chose: bool) -> Option<usize> {
    (!user_chose && allowed_cpus >= 1 && allowed_cpus < physical_cores).then_some(allowed_cpus)
}

/// Caps candle's thread pools at the CPUs this process may run on (`sched_getaffinity` and cgroup
/// quotas, as `std::thread::available_parallelism` reads them). Returns the cap it set, if any.
///
/// Call it at the start of `main`, before any other thread exists: it sets environment
/// variables, which candle reads when its pools are first used.
pub fn fit_threads_to_cpu_affinity() -> Option<usize> {
    let user_chose = THREAD_VARS
        .iter()
        .any(|var| std::env::var_os(var).is_some());
    let allowed = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let limit = thread_limit(num_cpus::get_physical(), allowed, user_chose)?;
    for var in THREAD_VARS {
        std::env::set_var(var, limit.to_string());
    }
    Some(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_pinned_to_fewer_cores_gets_that_many_threads() {
        assert_eq!(thread_limit(2, 1, false), Some(1));
        assert_eq!(thread_limit(16, 4, false), Some(4));
    }

    #[test]
    fn candle_keeps_its_choice_when_every_core_is_allowed_or_the_user_chose() {
        // All cores allowed, or more logical CPUs than physical cores (SMT): candle's own
        // physical-core count stands.
        assert_eq!(thread_limit(2, 2, false), None);
        assert_eq!(thread_limit(8, 16, false), None);
        // CANDLE_NUM_THREADS / RAYON_NUM_THREADS set: never overridden.
        assert_eq!(thread_limit(2, 1, true), None);
    }
}
