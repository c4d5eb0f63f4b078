/* liburcu's rculfhash (cds_lfht) tied to the memb flavour, read side inlined (_LGPL_SOURCE):
 * u64 keys to u64 values, the same hash as the other maps of the benchmark. */
#define _LGPL_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <urcu/urcu-memb.h>
#include <urcu/rculfhash.h>

struct entry {
	struct cds_lfht_node node;
	uint64_t key;
	uint64_t value;
};

static uint64_t mix(uint64_t key)
{
	uint64_t x = key + 0x9E3779B97F4A7C15ull;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

static int match(struct cds_lfht_node *node, const void *key)
{
	return caa_container_of(node, struct entry, node)->key == *(const uint64_t *)key;
}

/* A table of keys 0..n with value key * 3 + 1, sized up front (no resize while measured).
 * The calling thread must be registered with memb. NULL when out of memory. */
struct cds_lfht *lfht_build(uint64_t n)
{
	unsigned long size = 1;
	while (size < n)
		size <<= 1;
	struct cds_lfht *ht = cds_lfht_new_flavor(size, size, size, 0, &urcu_memb_flavor, NULL);
	if (!ht)
		return NULL;
	for (uint64_t k = 0; k < n; k++) {
		struct entry *e = malloc(sizeof *e);
		if (!e)
			return NULL;
		cds_lfht_node_init(&e->node);
		e->key = k;
		e->value = k * 3 + 1;
		urcu_memb_read_lock();
		cds_lfht_add(ht, mix(k), &e->node);
		urcu_memb_read_unlock();
	}
	return ht;
}

/* As capi_map_lookups in misc.c: each lookup in its own read section. */
uint64_t lfht_lookups(struct cds_lfht *ht, uint64_t n, uint64_t iters)
{
	uint64_t sum = 0;
	for (uint64_t i = 0; i < iters; i++) {
		uint64_t key = (i * 2654435761u) % n;
		struct cds_lfht_iter it;
		urcu_memb_read_lock();
		cds_lfht_lookup(ht, mix(key), match, &key, &it);
		struct cds_lfht_node *node = cds_lfht_iter_get_node(&it);
		uint64_t v = node ? caa_container_of(node, struct entry, node)->value : UINT64_MAX;
		urcu_memb_read_unlock();
		if (v == UINT64_MAX)
			return UINT64_MAX;
		sum += v;
	}
	return sum;
}

/* This build has the liburcu peers (csrc/no_urcu.c is the build without them). */
int rcu_bench_have_urcu(void) { return 1; }
