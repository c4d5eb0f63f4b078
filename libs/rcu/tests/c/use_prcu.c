/* Built against the installed header and library by tests/c_api.rs. */
#include <prcu.h>
#include <stdio.h>
#include <stdlib.h>

static int freed;
static void reclaim(void *p) { free(p); freed++; }

int main(void) {
    prcu_token_t t = prcu_read_lock();
    if (prcu_read_unlock(t) != PRCU_OK) return 1;
    if (prcu_read_unlock(12345) != PRCU_EINVAL) return 2;
    void *slot = NULL;
    prcu_ptr_publish(&slot, malloc(16));
    prcu_ptr_exchange_retire(&slot, malloc(16), reclaim);
    prcu_barrier();
    if (freed != 1) return 3;
    prcu_map *m = prcu_map_create(4);
    for (uint64_t k = 0; k < 1000; k++)
        if (prcu_map_insert(m, k, k * 2) != PRCU_OK) return 4;
    uint64_t v = 0;
    if (prcu_map_lookup(m, 777, &v) != 1 || v != 1554) return 5;
    if (prcu_map_insert(m, 5, 0) != PRCU_EEXIST) return 6;
    if (prcu_map_remove(m, 5000, NULL) != PRCU_ENOENT) return 7;
    if (prcu_map_lookup(NULL, 1, &v) != PRCU_EINVAL) return 8;
    if (prcu_map_len(m) != 1000) return 9;
    prcu_map_destroy(m);
    free(prcu_ptr_exchange(&slot, NULL));
    prcu_synchronize();
    puts("c api ok");
    return 0;
}
