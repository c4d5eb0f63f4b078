/* Peers without liburcu: pthread_rwlock read pairs, and libprcu's C API called through
 * function pointers that the benchmark took from the dlopened libprcu.so (the same cost as
 * a call through the PLT of a program linked against it). */
#include <pthread.h>
#include <stdint.h>

static pthread_rwlock_t rw = PTHREAD_RWLOCK_INITIALIZER;

void rwlock_pairs(uint64_t iters)
{
	for (uint64_t i = 0; i < iters; i++) {
		pthread_rwlock_rdlock(&rw);
		__asm__ __volatile__("" ::: "memory");
		pthread_rwlock_unlock(&rw);
	}
}

typedef uint64_t (*lock_fn)(void);
typedef int (*unlock_fn)(uint64_t);

/* Returns the number of refused unlocks (0 unless the library is broken). */
uint64_t capi_pairs(lock_fn lock, unlock_fn unlock, uint64_t iters)
{
	uint64_t bad = 0;
	for (uint64_t i = 0; i < iters; i++) {
		uint64_t t = lock();
		__asm__ __volatile__("" ::: "memory");
		bad += unlock(t) != 0;
	}
	return bad;
}

typedef int (*lookup_fn)(const void *map, uint64_t key, uint64_t *value);

/* `iters` lookups of keys 0..n in a fixed scattered order; returns the sum of the values
 * found (the caller checks it), or UINT64_MAX when a key is missing. */
uint64_t capi_map_lookups(lookup_fn lookup, const void *map, uint64_t n, uint64_t iters)
{
	uint64_t sum = 0;
	for (uint64_t i = 0; i < iters; i++) {
		uint64_t key = (i * 2654435761u) % n, v;
		if (lookup(map, key, &v) != 1)
			return UINT64_MAX;
		sum += v;
	}
	return sum;
}
