/*
 * rseq_harness_plugin.h - the ABI through which any shared library joins a harness run.
 *
 * A plugin is a shared object (.so) that uses restartable sequences (or anything per-CPU)
 * on its own, and exports the functions below with C linkage. The harness loads it with
 * dlopen (RTLD_LOCAL | RTLD_NOW by default), in an order drawn from the run's seed, calls
 * rhp_setup once, then calls rhp_work from many threads at once, next to the project's own
 * libraries and under every disturbance of the run (thread churn, affinity and cpuset
 * changes, CPU hotplug, signal storms, fork, unload/reload). It calls rhp_check whenever
 * this plugin is quiescent, and reports rhp_report's counts in its summary.
 *
 * No link-time dependency either way: the plugin must not link against the harness, and
 * the harness finds these symbols with dlsym. Build a plugin with, for example:
 *
 *     cc -shared -fPIC -O2 -Wall -Wextra -Werror -I harness/include my_plugin.c -o libmy_plugin.so
 *
 * and add it to a run with `harness --plugin ./libmy_plugin.so`.
 *
 * Contract (ABI version 1):
 *
 * - rhp_plugin_abi_version() returns RHP_ABI_VERSION; it is called first, before
 *   rhp_setup, and a plugin with another version is refused with a clear error.
 * - rhp_plugin_name() returns a short, constant, NUL-terminated name for reports.
 * - rhp_setup(config) is called once after each load. `config` is a NUL-terminated string
 *   of comma-separated `key=value` pairs (never NULL; may be empty). The harness always
 *   passes `index=cpu_id` or `index=mm_cid` (which per-CPU index the run asks for) and
 *   `seed=<decimal>`, then the plugin's own configuration from the scenario. Unknown keys
 *   must be ignored. Returns 0 on success; anything else aborts the run with a clear error.
 * - rhp_work(seed) does one unit of work (a few hundred operations at most) on the calling
 *   thread. It is called from many threads at once, including threads created just before
 *   the call and exiting just after it, threads that receive signals (the harness's
 *   handlers never call into the plugin), threads whose affinity or cpuset changes, and
 *   while CPUs go offline and come back. `seed` varies from call to call. Returns 0; a
 *   non-zero value says the plugin detected a broken invariant right there (the harness
 *   then calls rhp_check for the message).
 * - rhp_check(msg, len) checks the plugin's invariants. The harness calls it only while no
 *   rhp_work call of this plugin is running anywhere in the process. Returns 0 when every
 *   invariant holds; otherwise writes a NUL-terminated explanation (at most len bytes,
 *   including the NUL) into msg and returns non-zero.
 * - rhp_report(out) fills the counts below. It may be called at any time from any thread,
 *   also concurrently with rhp_work; `thread_mode` is the mode of the *calling* thread.
 * - rhp_teardown() is called before the plugin is unloaded (mid-run, to reload it, and at
 *   the end), while none of its other functions is running. After a reload, rhp_setup is
 *   called again; a plugin whose static data really went away starts from zero.
 * - fork: the harness forks mid-run while no rhp_work call of this plugin is running. In the
 *   child, which has only the forking thread, it calls rhp_work a few times and then
 *   rhp_check, and expects the plugin to work there.
 * - Optional entries (ABI version 1, minor version 1; RHP_ABI_MINOR). The harness looks them
 *   up with dlsym and does without them when they are absent; their signatures never change
 *   within ABI version 1 (a changed one would get a new name):
 *   - rhp_thread_start() is called first thing in every thread the harness creates while
 *     the plugin is loaded (workers, churn and burst threads, and the threads that create
 *     them), before any library runs in that thread. It must not block for long, and it
 *     runs with no rhp_work of any library active on the calling thread. Threads that
 *     existed before the load (the loading thread: see rhp_setup) do not get it.
 *   - rhp_memory(resident, reserved) writes the bytes the plugin holds: resident (pages in
 *     memory) and reserved (address space), either pointer may be NULL. Returns 0, or a
 *     negative value when it cannot tell. Called at any time from the harness's own threads.
 * - The plugin follows the project's coexistence contract (harness/README.md): it finds
 *   libc's rseq area through `__rseq_offset` / `__rseq_size` looked up at run time, never
 *   registers an area in its own TLS (only libc's reserved one, see
 *   RHP_FLAG_REGISTERS_RESERVED_AREA), clears `rseq_cs` after every critical section, and
 *   has a fallback path that never writes the words its critical sections write.
 */
#ifndef RSEQ_HARNESS_PLUGIN_H
#define RSEQ_HARNESS_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this ABI. */
#define RHP_ABI_VERSION 1u
/* Its minor version: 1 adds the optional entries rhp_thread_start and rhp_memory and the
 * flags RHP_FLAG_FOREIGN_AREA and RHP_FLAG_NEVER_UNLOAD; a plugin of minor version 0 works
 * unchanged. */
#define RHP_ABI_MINOR 1u

/* How the calling thread reaches an rseq area (rhp_counts.thread_mode). */
enum rhp_mode {
    /* The plugin does not say. */
    RHP_MODE_UNKNOWN = 0,
    /* libc registered the area (__rseq_size > 0); critical sections run. */
    RHP_MODE_LIBC_OWNED = 1,
    /* libc only reserved the area; the plugin registered it for this thread. */
    RHP_MODE_REGISTERED_BY_US = 2,
    /* libc only reserved the area; another library had registered it (EBUSY). */
    RHP_MODE_REGISTERED_BY_PEER = 3,
    /* No usable area for this thread: the fallback path runs. */
    RHP_MODE_UNAVAILABLE = 4,
    /* The fallback path was forced on purpose. */
    RHP_MODE_DISABLED = 5,
};

/* rhp_counts.flags: the plugin registers libc's reserved area itself when libc did not
 * (docs/DESIGN.md §2, coexistence contract step 3). Without this flag, a plugin that reports
 * RHP_MODE_UNAVAILABLE in a process where libc only reserved the area is doing what it
 * promised (its fallback path), and the harness reports it rather than failing the run. */
#define RHP_FLAG_REGISTERS_RESERVED_AREA (1u << 0)

/* rhp_counts.flags: the plugin breaks the coexistence contract on purpose, as older rseq users
 * (tcmalloc, librseq before glibc 2.35) do: it registers an rseq area of its own in threads
 * where nobody registered one, so that libraries that follow the contract get EINVAL there.
 * Its own modes: RHP_MODE_REGISTERED_BY_US (its own area), RHP_MODE_LIBC_OWNED or
 * RHP_MODE_REGISTERED_BY_PEER (it found glibc's area registered and uses it), or
 * RHP_MODE_UNAVAILABLE with the errno. A run expects it with `--foreign-rseq`. */
#define RHP_FLAG_FOREIGN_AREA (1u << 1)

/* rhp_counts.flags: the plugin must never be unloaded (e.g. threads keep rseq areas or a
 * rseq_cs pointer into it). The harness leaves it out of the reload disturbance and never
 * dlcloses it; rhp_teardown is still called at the end of the run. */
#define RHP_FLAG_NEVER_UNLOAD (1u << 2)

/* Counts since the plugin was loaded (process-wide), plus the calling thread's mode. */
struct rhp_counts {
    /* Operations completed (by either path). */
    uint64_t ops;
    /* Critical sections restarted by the kernel. */
    uint64_t aborts;
    /* Operations that took the fallback path. */
    uint64_t fallback_ops;
    /* Individual invariant checks performed by rhp_check so far. */
    uint64_t checks;
    /* enum rhp_mode of the calling thread. */
    uint32_t thread_mode;
    /* RHP_FLAG_* bits. */
    uint32_t flags;
    /* With thread_mode RHP_MODE_UNAVAILABLE: the errno with which registering libc's
     * reserved area failed for the calling thread (e.g. ENOSYS under a seccomp filter), or 0
     * when the plugin did not try. (Was reserved space: plugins that zero it say "did not
     * try".) */
    int32_t unavailable_errno;
    uint32_t pad;
    /* Zero; room for later versions. */
    uint64_t reserved[3];
};

uint32_t rhp_plugin_abi_version(void);
const char *rhp_plugin_name(void);
int rhp_setup(const char *config);
int rhp_work(uint64_t seed);
int rhp_check(char *msg, size_t len);
void rhp_report(struct rhp_counts *out);
void rhp_teardown(void);

/* Optional (minor version 1). */
void rhp_thread_start(void);
int rhp_memory(uint64_t *resident_bytes, uint64_t *reserved_bytes);

#ifdef __cplusplus
}
#endif

#endif /* RSEQ_HARNESS_PLUGIN_H */
