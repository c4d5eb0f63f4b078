/* plocks: per-CPU mutexes and big-reader rwlocks on restartable sequences.
 *
 * Link with -lplocks (pkg-config plocks); SONAME libplocks.so.0.
 *
 * Every function returning int returns 0 (or a non-negative value where stated) on
 * success and a negative PLOCK_E* code on failure; a failed call changes nothing.
 * NULL or destroyed handles give PLOCK_EINVAL (a destroyed handle is recognised as long as
 * its memory has not been reused).
 *
 * Fork: the child keeps every lock in the state it had. A lock held by another thread of
 * the parent stays held in the child forever (trylock gives PLOCK_EBUSY, destroy
 * PLOCK_EBUSY): the child must not wait for it. Locks the forking thread held are held by
 * the child's thread and can be released there.
 *
 * Signals: a handler that takes a lock the interrupted code holds gets PLOCK_EDEADLK
 * (mutex index, write lock); a read lock taken in a handler while the interrupted thread
 * holds the write lock also gives PLOCK_EDEADLK.
 */
#ifndef PLOCKS_H
#define PLOCKS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PLOCK_EINVAL   (-1) /* NULL or destroyed lock, index out of range */
#define PLOCK_EBUSY    (-2) /* held (trylock, destroy) */
#define PLOCK_EPERM    (-3) /* unlocking a lock the caller does not hold */
#define PLOCK_EDEADLK  (-4) /* taking a lock the caller already holds */
#define PLOCK_ENOMEM   (-5) /* out of memory */
#define PLOCK_EINTERNAL (-6) /* a system call the lock needs failed */

typedef struct plock_mutex_t plock_mutex_t;
typedef struct plock_rwlock_t plock_rwlock_t;

/* ---- Per-CPU mutex array: one lock per possible CPU --------------------------------- */

/* A new array with every lock free. Aborts with a message when out of memory. */
plock_mutex_t *plock_mutex_create(void);
/* Flags for the *_create_flags functions. PLOCK_SLICE_EXTENSION: a holder (for the rwlock:
 * the writer) asks the kernel's scheduler time-slice extension (Linux 7.x, rseq slice_ctrl)
 * not to preempt it while it holds the lock, and yields at unlock when the kernel granted
 * it. Where the kernel lacks it (plock_slice_supported() == 0) the flag changes nothing.
 * Nested holds leave an outer hold's request alone. */
#define PLOCK_SLICE_EXTENSION 1u
/* Like plock_mutex_create with flags; NULL for unknown flag bits. */
plock_mutex_t *plock_mutex_create_flags(uint32_t flags);
/* Frees m. PLOCK_EBUSY (nothing freed) while any of its locks is held. No other thread
 * may use m during or after the call. */
int plock_mutex_destroy(plock_mutex_t *m);
/* Number of locks (valid indexes are 0 .. count-1): the number of possible CPUs. */
int plock_mutex_count(const plock_mutex_t *m);
/* Takes the lock of the CPU the caller runs on, waiting (spin, then futex sleep) while it
 * is held, and returns its index (>= 0). The caller may migrate while holding it and
 * release it from any CPU with plock_mutex_unlock(m, index). If the caller already holds
 * that CPU's lock, another free lock is taken; PLOCK_EDEADLK if it holds them all. */
int plock_mutex_lock(const plock_mutex_t *m);
/* Takes lock `index`, waiting while it is held. PLOCK_EDEADLK if the caller holds it. */
int plock_mutex_lock_index(const plock_mutex_t *m, int index);
/* Takes lock `index` if free, else PLOCK_EBUSY. */
int plock_mutex_trylock_index(const plock_mutex_t *m, int index);
/* Releases lock `index` from any CPU. PLOCK_EPERM if the caller does not hold it. */
int plock_mutex_unlock(const plock_mutex_t *m, int index);

/* ---- Big-reader lock ---------------------------------------------------------------- */

/* A new free lock. Aborts with a message when out of memory. */
plock_rwlock_t *plock_rwlock_create(void);
/* Like plock_rwlock_create with flags (PLOCK_SLICE_EXTENSION: the writer requests the
 * time-slice extension); NULL for unknown flag bits. */
plock_rwlock_t *plock_rwlock_create_flags(uint32_t flags);
/* Frees l. PLOCK_EBUSY (nothing freed) while a writer holds it or a reader is inside. */
int plock_rwlock_destroy(plock_rwlock_t *l);
/* Shared lock: touches only the current CPU's words. Waits while a writer holds it. */
int plock_rwlock_read_lock(const plock_rwlock_t *l);
/* Releases a read lock, on any CPU. A read unlock without a read lock is NOT detected: it
 * leaves writers waiting forever. */
int plock_rwlock_read_unlock(const plock_rwlock_t *l);
/* Exclusive lock: waits for other writers, then for every reader on every CPU to leave. */
int plock_rwlock_write_lock(const plock_rwlock_t *l);
/* Releases the write lock. PLOCK_EPERM if the caller does not hold it. */
int plock_rwlock_write_unlock(const plock_rwlock_t *l);

/* ---- Misc --------------------------------------------------------------------------- */

/* A static description of an error code. */
const char *plock_strerror(int code);
/* "0.1.0" */
const char *plock_version(void);
/* Non-zero: every later operation of this library copy takes the atomic fallback path. */
void plock_force_fallback(int on);

/* The calling thread's rseq mode as this copy sees it (registering libc's reserved area on
 * the way where the process needs that); *err (when not NULL) gets the errno of a refused
 * registration, else 0. */
#define PLOCK_MODE_LIBC_OWNED  1 /* libc registered the area */
#define PLOCK_MODE_REGISTERED  2 /* libc reserved it, a library registered it */
#define PLOCK_MODE_UNAVAILABLE 4 /* no usable area: atomic fallback paths */
#define PLOCK_MODE_DISABLED    5 /* plock_force_fallback(1) */
int plock_rseq_mode(int *err);
/* This copy's counts since it was loaded (process-wide). fallback_ops counts the
 * big-reader lock's atomic adds; a mutex take without rseq is a compare-and-swap on the
 * lock word and is not counted. PLOCK_EINVAL for NULL. */
struct plock_rseq_statistics {
    uint64_t aborts;
    uint64_t fallback_ops;
    uint64_t registered_by_us;
    uint64_t registered_by_peer;
    uint64_t registration_failures;
};
int plock_rseq_stats(struct plock_rseq_statistics *out);

/* ---- Time-slice extension ----------------------------------------------------------- */

/* 1 when the kernel offers the time-slice extension to this process's threads, else 0. */
int plock_slice_supported(void);
struct plock_slice_statistics {
    uint64_t requests; /* holds that set the request */
    uint64_t nested;   /* holds inside an active request, which left it alone */
    uint64_t grants;   /* releases that found an extension granted (rseq_slice_yield called) */
    uint64_t yielded;  /* of those, yields that gave the CPU up within the grant */
};
/* Counters of this library since it was loaded. PLOCK_EINVAL for NULL. */
int plock_slice_stats(struct plock_slice_statistics *out);

#ifdef __cplusplus
}
#endif
#endif /* PLOCKS_H */
