/* Built in place of the liburcu peers when liburcu's headers are missing (a machine without
 * Debian's liburcu-dev): the benchmark then refuses to run, with a message, before it calls
 * any of these. Each one exits the same way in case a future caller forgets the check. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int rcu_bench_have_urcu(void) { return 0; }

static void missing(const char *fn)
{
	fprintf(stderr, "rcu-bench: %s: built without liburcu (install liburcu-dev and rebuild)\n", fn);
	exit(2);
}

#define MISSING_VOID(name, ...) \
	void name(__VA_ARGS__) { missing(#name); }
MISSING_VOID(memb_so_register_thread, void)
MISSING_VOID(memb_so_unregister_thread, void)
MISSING_VOID(memb_so_synchronize, void)
MISSING_VOID(memb_so_pairs, uint64_t iters __attribute__((unused)))
MISSING_VOID(memb_so_read_until, const volatile int *stop __attribute__((unused)))
MISSING_VOID(memb_so_idle_begin, void)
MISSING_VOID(memb_so_idle_end, void)
MISSING_VOID(memb_inline_pairs, uint64_t iters __attribute__((unused)))
MISSING_VOID(qsbr_so_register_thread, void)
MISSING_VOID(qsbr_so_unregister_thread, void)
MISSING_VOID(qsbr_so_synchronize, void)
MISSING_VOID(qsbr_so_pairs, uint64_t iters __attribute__((unused)))
MISSING_VOID(qsbr_so_read_until, const volatile int *stop __attribute__((unused)))
MISSING_VOID(qsbr_so_idle_begin, void)
MISSING_VOID(qsbr_so_idle_end, void)
MISSING_VOID(qsbr_inline_pairs, uint64_t iters __attribute__((unused)))

void *lfht_build(uint64_t n)
{
	(void)n;
	missing("lfht_build");
	return NULL;
}

uint64_t lfht_lookups(void *ht, uint64_t n, uint64_t iters __attribute__((unused)))
{
	(void)ht, (void)n, (void)iters;
	missing("lfht_lookups");
	return 0;
}
