/* libprcu: per-CPU read-copy-update on restartable sequences, without thread
 * registration, with an RCU-protected pointer and an RCU hash map (u64 -> u64).
 * SONAME libprcu.so.0; pkg-config name prcu. Design: libs/rcu/README.md. */
#ifndef PRCU_H
#define PRCU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PRCU_VERSION "0.1.0"

#define PRCU_OK 0
#define PRCU_EINVAL (-1)   /* NULL or foreign pointer, forged token, bad argument */
#define PRCU_EALREADY (-2) /* token already unlocked (checking mode); index fixed */
#define PRCU_EEXIST (-3)   /* map insert: key present */
#define PRCU_ENOENT (-4)   /* map replace/remove: key absent */

#define PRCU_INDEX_CPU_ID 0
#define PRCU_INDEX_MM_CID 1

typedef uint64_t prcu_token_t;

/* Read side: async-signal-safe, no allocation, no per-thread state (outside checking
 * mode). Sections nest by holding several tokens; a token may be unlocked on another
 * CPU or thread. prcu_read_unlock refuses a value prcu_read_lock never returned
 * (PRCU_EINVAL) and, in checking mode, a second unlock (PRCU_EALREADY). */
prcu_token_t prcu_read_lock(void);
int prcu_read_unlock(prcu_token_t token);

/* Waits until every read section begun before the call has ended. Concurrent callers
 * share grace periods. Never call it inside a read section (checking mode aborts). */
void prcu_synchronize(void);

/* Runs func(arg) once, on the library's worker thread, after a grace period. Not
 * async-signal-safe. PRCU_EINVAL for a NULL func. */
int prcu_call(void (*func)(void *), void *arg);
/* Waits until every callback queued before the call has run. */
void prcu_barrier(void);

/* Polling: a cookie for the next grace period (prcu_start_poll also asks the worker to
 * run one); prcu_poll returns 1 once it has elapsed, never blocking. */
uint64_t prcu_poll_cookie(void);
uint64_t prcu_start_poll(void);
int prcu_poll(uint64_t cookie);
void prcu_poll_wait(uint64_t cookie);

/* Configuration: the index of the per-CPU counts, before the first read lock
 * (env PRCU_INDEX=cpu_id|mm_cid); checking mode (env PRCU_CHECK=1); the stall watchdog's
 * limit in ms (env PRCU_STALL_MS, default 21000): a grace period waiting longer writes
 * the per-CPU counts that hold it up to stderr. */
int prcu_set_index(int index);
int prcu_index(void);
void prcu_set_checking(int on);
void prcu_set_stall_ms(uint64_t ms);
/* 1 when readers use rseq with compiler barriers and writers membarrier. */
int prcu_fast_path(void);

struct prcu_stats {
    uint64_t grace_periods;
    uint64_t callbacks_queued;
    uint64_t callbacks_run;
    uint64_t callback_batches;
    uint64_t stalls;
};
int prcu_get_stats(struct prcu_stats *out);

/* RCU-protected pointer in a `void *` slot. Dereference inside a read section. */
int prcu_ptr_publish(void **slot, void *value);
void *prcu_ptr_deref(void **slot);
void *prcu_ptr_exchange(void **slot, void *value); /* old value: reclaim after a grace period */
int prcu_ptr_exchange_retire(void **slot, void *value, void (*reclaim)(void *));

/* Hash map u64 -> u64. Lookups are lock-free (they open their own read section);
 * writers serialise; a replace stores the value in place (release; lookups acquire);
 * removed nodes are freed after a grace period; the map grows. */
typedef struct prcu_map prcu_map;
prcu_map *prcu_map_create(size_t capacity);
int prcu_map_destroy(prcu_map *map);
int prcu_map_lookup(const prcu_map *map, uint64_t key, uint64_t *value); /* 1 found, 0 absent */
int prcu_map_insert(prcu_map *map, uint64_t key, uint64_t value);
int prcu_map_replace(prcu_map *map, uint64_t key, uint64_t value, uint64_t *old);
int prcu_map_remove(prcu_map *map, uint64_t key, uint64_t *old);
size_t prcu_map_len(const prcu_map *map);

/* The calling thread's rseq mode as this copy sees it; *err gets the errno of a refused
 * registration. Statistics of this copy's rseq sections. Forcing the fallback path. */
#define PRCU_MODE_LIBC_OWNED 1
#define PRCU_MODE_REGISTERED 2
#define PRCU_MODE_UNAVAILABLE 4
#define PRCU_MODE_DISABLED 5
int prcu_rseq_mode(int *err);
struct prcu_rseq_statistics {
    uint64_t aborts;
    uint64_t fallback_ops;
    uint64_t registered_by_us;
    uint64_t registered_by_peer;
    uint64_t registration_failures;
};
int prcu_rseq_stats(struct prcu_rseq_statistics *out);
int prcu_force_fallback(int on);

#ifdef __cplusplus
}
#endif
#endif
