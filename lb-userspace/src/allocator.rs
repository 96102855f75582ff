//! The daemon's allocator is mimalloc (set in `main.rs`). It purges freed pages only on later
//! allocator activity in the same thread, which an idle daemon has little of: the peak of a start
//! (aya's parse of the kernel's BTF, the loader, the plan's scratch tables) or of a reload stayed
//! resident, 31 MB of heap where 20 MB were live on a one-service config.

/// Hands what this thread's heap freed back to the kernel now, and purges what the arenas hold
/// for later. Called after start and after each reload, in the thread that did the work; never
/// on a per-packet or per-request path.
pub fn release_freed_memory() {
    // SAFETY: mi_collect has no preconditions; with another global allocator (the tests) it
    // collects mimalloc's own empty heap.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
