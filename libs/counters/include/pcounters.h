/*
 * pcounters.h - named per-CPU statistics counters (libpcounters).
 *
 * Build:   cc prog.c $(pkg-config --cflags --libs pcounters)
 * Runtime: libpcounters.so.0 (Linux, x86_64 or aarch64, glibc).
 *
 * OVERVIEW
 *
 *   A counter is a named signed 64-bit sum. Adding to it is a handle check and one
 *   restartable-sequence (rseq) per-CPU add: no atomic instruction, no lock, no cache line
 *   shared between CPUs. Reading it sums one word pair per *possible* CPU, so a read costs
 *   the same with 10 or 10,000 threads, and threads cost no memory: there is no per-thread
 *   counter state to register or free.
 *
 *     pcounters_counter requests;
 *     if (pcounters_create("http_requests_total", PCOUNTERS_INDEX_CPU_ID, &requests) != PCOUNTERS_OK)
 *         ...;
 *     pcounters_add(requests, 1);            // from any thread, or a signal handler
 *     int64_t n;
 *     pcounters_get(requests, &n);           // exact once adders have stopped
 *
 *   There is one registry per loaded copy of the library (process-wide, no init call:
 *   what the library needs from the system - the rseq area, the CPU count, the membarrier
 *   commands - is looked up when it is loaded, so no first add has to).
 *
 *   No thread-local storage, no lazily initialised once-cell: an add from a signal handler
 *   that interrupted malloc, from a thread's very first instant, or from a forked child
 *   never allocates, locks, or waits for another thread.
 *
 * EXACTNESS
 *
 *   Once the threads that add have stopped (or their adds happen-before the read), a read
 *   returns exactly the sum of every add that returned PCOUNTERS_OK (wrapping like
 *   two's-complement int64_t) - including adds made in signal handlers, by threads that
 *   have exited, and on CPUs that have since gone offline. This holds in every rseq mode:
 *   when glibc registered rseq, when the library registered glibc's reserved area itself
 *   (e.g. GLIBC_TUNABLES=glibc.pthread.rseq=0), and when rseq is unavailable (old kernel,
 *   seccomp), where adds take an atomic fallback path that never shares a word with the
 *   rseq path. A read concurrent with adds includes each of those adds entirely or not at
 *   all (each add is a single store to one word).
 *
 * ERRORS
 *
 *   Every function that can fail returns PCOUNTERS_OK (0) or a negative PCOUNTERS_E*
 *   code; pcounters_strerror() describes a code. Bad input - NULL pointers, handles that
 *   were deleted, never issued or made up, bad names, buffers that are too small - is
 *   always reported as a code; the library never aborts the process for it and never
 *   touches memory other than its own and the buffers it is given.
 *
 * HANDLES AND DELETION
 *
 *   A pcounters_counter is a 64-bit value (slot and generation) that may be copied
 *   freely. After pcounters_delete(), every copy of the handle is refused with
 *   PCOUNTERS_ENOENT. An add that runs concurrently with the delete of its own counter
 *   either counts before the delete (its count disappears with the counter) or returns
 *   PCOUNTERS_ENOENT. No handle, stale or forged, ever reaches memory other than the
 *   library's table and counter words. A new counter starts at 0, always.
 *
 *   When pcounters_delete() returns, no add that saw the old handle can still land,
 *   however long its thread was suspended (a long signal handler, SIGSTOP, a frozen
 *   cgroup). On the rseq path the handle is checked inside the restartable critical
 *   section, and the delete issues membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ)
 *   (Linux 5.10+) after marking the counter deleted. On the fallback path an add raises an
 *   in-flight count of its CPU before checking the handle and lowers it after adding, and
 *   the delete waits until it has seen every CPU's count at zero - so a delete waits for
 *   such an add that is suspended half-way. The deleted counter's storage is reused by
 *   the next new counter as soon as its delete has completed; if the membarrier failed,
 *   only after a later delete's membarrier succeeded. On kernels without the rseq
 *   membarrier, every add takes the fallback path. pcounters_delete() therefore must not
 *   be called from a signal handler that interrupted an add of the same counter (it would
 *   wait for itself).
 *
 *   The kernel holds its CPU-hotplug lock during that membarrier, so pcounters_delete()
 *   waits for a CPU offline/online operation that is in progress (milliseconds on
 *   hardware; seconds in an emulated guest that is bringing a vCPU up). Nothing else
 *   waits with it: the delete makes the counter dead and its name free first, then issues
 *   the membarrier without holding the library's lock, so adds, reads, creates, lookups,
 *   exports and fork proceed meanwhile. Deletes that arrive while a membarrier is in
 *   progress share the next one instead of issuing one each.
 *
 * THREADS, SIGNALS
 *
 *   Every function is thread-safe. Functions marked "async-signal-safe" may be called
 *   from signal handlers (they neither lock nor allocate); the others take the
 *   registry's lock and may allocate.
 *
 * FORK
 *
 *   A child created by fork() sees every counter with the value it had at the fork and
 *   counts on from there; parent and child no longer affect each other. Handles stay
 *   valid in the child. The registry lock is held across fork() (pthread_atfork), so the
 *   child may call every function, including pcounters_create().
 *
 * DLOPEN / DLCLOSE
 *
 *   The library exports only pcounters_* symbols, loads with RTLD_LOCAL in any order next
 *   to other rseq users, and can be dlclose()d and loaded again (no thread-local
 *   destructors, no NODELETE). Handles do not survive an unload: each loaded copy has its
 *   own registry. Do not call into a copy while or after it is unloaded. At dlclose() a
 *   copy returns all its memory (table, names, per-CPU pages); at process exit it keeps it,
 *   so threads still counting while the process exits are safe. What stays per load is
 *   one exit-handler record and a 32-byte semaphore that tells exit from dlclose.
 *
 * NAMES
 *
 *   1 to PCOUNTERS_NAME_MAX (127) bytes matching [a-zA-Z_:][a-zA-Z0-9_:]* (a Prometheus
 *   metric name), unique among live counters. Names are case-sensitive.
 */
#ifndef PCOUNTERS_H
#define PCOUNTERS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this header; pcounters_version() gives the library's. */
#define PCOUNTERS_VERSION "0.2.0"

/* ---- Return codes ------------------------------------------------------------------ */

#define PCOUNTERS_OK 0            /* success */
#define PCOUNTERS_EINVAL (-1)     /* NULL pointer, malformed/forged handle, unknown index
                                     mode, or a name that is empty or has a character
                                     outside [a-zA-Z0-9_:] (or starts with a digit) */
#define PCOUNTERS_ENOENT (-2)     /* the handle's counter was deleted, or no counter has
                                     that name */
#define PCOUNTERS_EEXIST (-3)     /* a live counter already has that name */
#define PCOUNTERS_ENAMETOOLONG (-4) /* name longer than PCOUNTERS_NAME_MAX bytes */
#define PCOUNTERS_ENOMEM (-5)     /* out of memory */
#define PCOUNTERS_ENOSPC (-6)     /* PCOUNTERS_MAX_COUNTERS counters exist already */
#define PCOUNTERS_ERANGE (-7)     /* the caller's buffer is too small (the required size
                                     is reported, and what fits is written) */
#define PCOUNTERS_EINTERNAL (-8)  /* a bug in the library; never caused by the caller */

/* ---- Limits ------------------------------------------------------------------------- */

#define PCOUNTERS_NAME_MAX 127          /* longest name, in bytes, without the NUL */
#define PCOUNTERS_MAX_COUNTERS 1048576  /* most counters alive at once */

/* ---- Index modes (how a counter picks its per-CPU word) ----------------------------- */

/* By the CPU number the thread runs on (rseq cpu_id). */
#define PCOUNTERS_INDEX_CPU_ID 0
/* By the kernel's concurrency id (rseq mm_cid, Linux 6.3+): compact ids below the number
   of CPUs the process may use, so fewer per-CPU words are touched under affinity limits
   and cpusets. Becomes PCOUNTERS_INDEX_CPU_ID on older kernels (see pcounters_index). */
#define PCOUNTERS_INDEX_MM_CID 1

/* ---- rseq modes (diagnostics, see pcounters_rseq_mode) ------------------------------ */

#define PCOUNTERS_MODE_LIBC_OWNED 1         /* glibc registered rseq for every thread */
#define PCOUNTERS_MODE_REGISTERED 2         /* glibc only reserved the area; a library (this
                                               one or another) registered it for the
                                               calling thread: which one is not recorded,
                                               that would take thread-local state */
#define PCOUNTERS_MODE_REGISTERED_BY_US PCOUNTERS_MODE_REGISTERED /* 0.1 name */
#define PCOUNTERS_MODE_REGISTERED_BY_PEER 3 /* 0.1 only; no longer returned */
#define PCOUNTERS_MODE_UNAVAILABLE 4        /* no usable rseq area in this thread: adds
                                               use the atomic fallback path */
#define PCOUNTERS_MODE_DISABLED 5           /* pcounters_force_fallback(1) is in effect */

/* ---- Types -------------------------------------------------------------------------- */

/* A counter handle. Copy it freely; {0} is never a valid handle. */
typedef struct pcounters_counter {
    uint64_t id;
} pcounters_counter;

/* A handle value that every function refuses (PCOUNTERS_EINVAL). */
#define PCOUNTERS_COUNTER_NONE ((pcounters_counter){0})

/* One counter in a snapshot. */
typedef struct pcounters_value {
    pcounters_counter counter;          /* its handle */
    int64_t value;                      /* its value when the snapshot was taken */
    char name[PCOUNTERS_NAME_MAX + 1];  /* its name, NUL-terminated */
} pcounters_value;

/* Statistics of this library copy's rseq use, process-wide (see pcounters_rseq_stats). */
typedef struct pcounters_rseq_statistics {
    uint64_t aborts;                /* critical sections the kernel restarted
                                       (preemption, migration, signals) */
    uint64_t fallback_ops;          /* adds that took the atomic fallback path */
    uint64_t registered_by_us;      /* threads for which this copy registered rseq */
    uint64_t registered_by_peer;    /* registrations answered EBUSY (rare: a registered
                                       area is recognised without asking the kernel) */
    uint64_t registration_failures; /* threads whose registration failed (tried once per
                                       thread; the errno is kept in the area itself) */
} pcounters_rseq_statistics;

/* Callback of pcounters_foreach(): return 0 to continue, non-zero to stop. */
typedef int (*pcounters_visit_fn)(const char *name, int64_t value, pcounters_counter counter, void *arg);

/* ---- Counters ----------------------------------------------------------------------- */

/*
 * Creates a counter called `name` with value 0 and stores its handle in `*out`.
 * `index` is PCOUNTERS_INDEX_CPU_ID or PCOUNTERS_INDEX_MM_CID.
 * Returns PCOUNTERS_OK, or EINVAL (NULL name or out, bad name characters, empty name,
 * unknown index), ENAMETOOLONG, EEXIST (name in use; see pcounters_lookup), ENOMEM,
 * ENOSPC. On error `*out` is unchanged.
 * Thread-safe; not async-signal-safe.
 */
int pcounters_create(const char *name, int index, pcounters_counter *out);

/*
 * Stores in `*out` the handle of the live counter called `name`.
 * Returns PCOUNTERS_OK, ENOENT (no such counter), EINVAL, ENAMETOOLONG.
 * Thread-safe; not async-signal-safe.
 */
int pcounters_lookup(const char *name, pcounters_counter *out);

/*
 * Adds `amount` (may be negative) to the counter: one rseq per-CPU add, or one atomic
 * add on the fallback path.
 * Returns PCOUNTERS_OK, ENOENT (deleted counter) or EINVAL (invalid handle); nothing is
 * added on error.
 * Thread-safe, lock-free, async-signal-safe.
 */
int pcounters_add(pcounters_counter counter, int64_t amount);

/*
 * Stores the counter's exact value (sum of all adds over every possible CPU) in `*value`.
 * Cost: a few loads per possible CPU, independent of the number of threads.
 * Returns PCOUNTERS_OK, ENOENT, EINVAL (invalid handle or NULL value).
 * Thread-safe, lock-free, async-signal-safe.
 */
int pcounters_get(pcounters_counter counter, int64_t *value);

/*
 * Deletes the counter; its name becomes free and the handle (every copy of it) is
 * refused from now on. Returns PCOUNTERS_OK, ENOENT (already deleted), EINVAL.
 * Thread-safe; not async-signal-safe. May wait for a CPU hotplug operation in progress
 * (see HANDLES AND DELETION).
 */
int pcounters_delete(pcounters_counter counter);

/*
 * Stores the index mode the counter really uses in `*index` (PCOUNTERS_INDEX_CPU_ID or
 * PCOUNTERS_INDEX_MM_CID: MM_CID asked on a kernel without mm_cid reports CPU_ID).
 * Returns PCOUNTERS_OK, ENOENT, EINVAL (invalid handle or NULL index).
 * Thread-safe, async-signal-safe.
 */
int pcounters_index(pcounters_counter counter, int *index);

/*
 * Copies the counter's name, NUL-terminated, into `buf` of `size` bytes
 * (PCOUNTERS_NAME_MAX + 1 always suffices).
 * Returns PCOUNTERS_OK, ERANGE (truncated, still NUL-terminated), ENOENT, EINVAL (invalid
 * handle, NULL buf or size 0).
 * Thread-safe; not async-signal-safe.
 */
int pcounters_name(pcounters_counter counter, char *buf, size_t size);

/*
 * Number of live counters. Thread-safe; not async-signal-safe.
 */
size_t pcounters_count(void);

/* ---- All counters ------------------------------------------------------------------- */

/*
 * Snapshot: stores the number of live counters in `*count` and writes the first
 * min(capacity, *count) of them, sorted by name (byte order), into `out`.
 * `out` may be NULL when `capacity` is 0 (to ask for the count). Each value is read
 * exactly while creation and deletion wait; adds keep running meanwhile.
 * Returns PCOUNTERS_OK when all counters fit, ERANGE when `capacity` was too small (grow
 * the array to `*count` and call again: counters may have been created meanwhile),
 * EINVAL (NULL count, or NULL out with capacity > 0), ENOMEM.
 * Thread-safe; not async-signal-safe.
 */
int pcounters_snapshot(pcounters_value *out, size_t capacity, size_t *count);

/*
 * Iterates: takes a snapshot, then calls visit(name, value, counter, arg) for each
 * counter in name order, without holding any lock (the callback may call every pcounters
 * function, including create and delete; those do not change the ongoing iteration).
 * `name` is valid only during the call. The callback must not unwind or longjmp out.
 * Returns PCOUNTERS_OK after visiting all counters, the callback's non-zero return value
 * when it stopped early, or EINVAL (NULL visit) / ENOMEM before any call.
 * Thread-safe; not async-signal-safe.
 */
int pcounters_foreach(pcounters_visit_fn visit, void *arg);

/*
 * Prometheus text exposition (format 0.0.4) of every counter, sorted by name:
 *     # TYPE <name> counter       ("gauge" for a counter that ever received a negative
 *     <name> <value>               add: Prometheus counters never go down)
 * with <value> a signed 64-bit decimal and every line ending in '\n' (empty text when
 * there are no counters). Works like snprintf: stores the text's length (without the
 * NUL) in `*length`; when `size` > `*length` writes the whole text plus a NUL and returns
 * PCOUNTERS_OK, otherwise writes the first size - 1 bytes plus a NUL (nothing when `size`
 * is 0) and returns ERANGE - call again with a buffer of at least *length + 1 bytes
 * (counters may have been created meanwhile).
 * `buf` may be NULL when `size` is 0. Other errors: EINVAL (NULL length, or NULL buf with
 * size > 0), ENOMEM.
 * Thread-safe; not async-signal-safe.
 */
int pcounters_prometheus(char *buf, size_t size, size_t *length);

/* ---- Diagnostics -------------------------------------------------------------------- */

/*
 * How the calling thread reaches rseq, as one of PCOUNTERS_MODE_*. For
 * PCOUNTERS_MODE_UNAVAILABLE, `*err` (when `err` is not NULL) receives the errno of the
 * failed registration (ENOSYS, EINVAL, EPERM, ...) or 0 when libc offers no rseq area at
 * all; otherwise 0. May register rseq for the calling thread (glibc's reserved area, when
 * glibc did not register it). Thread-safe, async-signal-safe.
 */
int pcounters_rseq_mode(int *err);

/*
 * Stores this library copy's process-wide rseq statistics in `*out`.
 * Returns PCOUNTERS_OK or EINVAL (NULL out). Thread-safe, async-signal-safe.
 */
int pcounters_rseq_stats(pcounters_rseq_statistics *out);

/*
 * on != 0: every add of this library copy (all threads) takes the atomic fallback path;
 * on == 0: back to rseq where available (not on kernels without the rseq membarrier, where
 * the fallback stays on). Counts stay exact across the switch, also with adds in flight.
 * For tests and benchmarks. Returns PCOUNTERS_OK. Thread-safe.
 */
int pcounters_force_fallback(int on);

/*
 * The memory this library copy holds: `*resident` receives the bytes in memory now (the
 * per-CPU pages that were touched, plus the handle table), `*reserved` the address space
 * reserved (the per-CPU regions for every possible CPU, plus the handle table). Either
 * pointer may be NULL. Returns PCOUNTERS_OK. Thread-safe; not async-signal-safe.
 */
int pcounters_memory(uint64_t *resident, uint64_t *reserved);

/*
 * A static, NUL-terminated English description of a return code (also for unknown codes).
 * Thread-safe, async-signal-safe.
 */
const char *pcounters_strerror(int code);

/*
 * The library's version, e.g. "0.2.0" (static string). Thread-safe, async-signal-safe.
 */
const char *pcounters_version(void);

#ifdef __cplusplus
}
#endif

#endif /* PCOUNTERS_H */
