#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay`: its position in `mi_option_t` (libmimalloc-sys builds
/// mimalloc v3; see its mimalloc.h), for which the crate exports no constant. The test below
/// checks that this index reads v3's default purge delay (1000 ms).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // Return freed pages to the OS at once rather than 1 s later: commit batches are large and
    // short-lived. On the 2M-event file job (scripts/flink-compare.sh), against a 10 ms delay: peak
    // RSS 203 → 195 MB for ~4 % more CPU (2 runs each; run-to-run variance is about that size). Kept for the
    // margin on the RSS target; MIMALLOC_PURGE_DELAY in the environment still wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    admetrics::cli::main()
}

#[cfg(test)]
mod tests {
    /// The option index is right if it reads mimalloc v3's default purge delay (1000 ms).
    #[test]
    fn the_purge_delay_option_index_is_mimallocs() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(
                unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) },
                1000
            );
        }
    }
}
