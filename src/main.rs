fn main() {
    tune_malloc();
    std::process::exit(rbuild::cli::main());
}

/// Fixed glibc malloc thresholds instead of its dynamic ones. By default
/// freeing a large mmap'd block (a 4 MiB chunk buffer, the context index)
/// raises the mmap threshold to that block's size (up to 32 MiB) and the
/// trim threshold to twice it: later large vectors then come from the heap
/// and up to 64 MiB of freed heap stays resident. At 200,000 files that
/// was ~30 MB of peak RSS above the live heap (docs/benchmarks.md, "Peak
/// memory at 200,000 files"). 4 and 8 MiB are where the dynamic thresholds
/// stand once the first 4 MiB chunk buffer is freed, so the layer writer's
/// buffers are handled as before; only the growth past that is stopped.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 2 << 20);
    }
}
