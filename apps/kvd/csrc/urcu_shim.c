/* The server's `strong` stack: a u64 -> u64 map on liburcu's lock-free resizable hash
 * table (rculfhash), with the memory-barrier flavour (urcu-memb), and deferred reclamation
 * through the flavour's call_rcu. The Rust side calls only the kvd_urcu_* functions below.
 *
 * Every thread that calls any function except kvd_urcu_create must first have called
 * kvd_urcu_register_thread (rculfhash lookups and updates run inside read-side sections). */
#define _LGPL_SOURCE 1
#include <stdint.h>
#include <stdlib.h>

#include <urcu/urcu-memb.h>
#include <urcu/rculfhash.h>

struct kvd_node {
    struct cds_lfht_node node;
    uint64_t key;
    uint64_t value;
    struct rcu_head rcu;
};

struct kvd_retire {
    struct rcu_head rcu;
    void (*func)(void *);
    void *arg;
};

static int match_key(struct cds_lfht_node *node, const void *key)
{
    const struct kvd_node *n = caa_container_of(node, struct kvd_node, node);
    return n->key == *(const uint64_t *)key;
}

static void free_node(struct rcu_head *head)
{
    free(caa_container_of(head, struct kvd_node, rcu));
}

static void run_retire(struct rcu_head *head)
{
    struct kvd_retire *r = caa_container_of(head, struct kvd_retire, rcu);
    r->func(r->arg);
    free(r);
}

void *kvd_urcu_create(unsigned long initial)
{
    unsigned long size = 1;
    while (size < initial)
        size <<= 1;
    return cds_lfht_new_flavor(size, size, 0, CDS_LFHT_AUTO_RESIZE | CDS_LFHT_ACCOUNTING,
                               &urcu_memb_flavor, NULL);
}

void kvd_urcu_register_thread(void) { urcu_memb_register_thread(); }
void kvd_urcu_unregister_thread(void) { urcu_memb_unregister_thread(); }
void kvd_urcu_read_lock(void) { urcu_memb_read_lock(); }
void kvd_urcu_read_unlock(void) { urcu_memb_read_unlock(); }

/* Inside a read section: the value stored under key, or 0 when absent. */
uint64_t kvd_urcu_lookup(void *ht, uint64_t key)
{
    struct cds_lfht_iter iter;
    cds_lfht_lookup(ht, key, match_key, &key, &iter);
    struct cds_lfht_node *node = cds_lfht_iter_get_node(&iter);
    if (!node)
        return 0;
    return caa_container_of(node, struct kvd_node, node)->value;
}

/* Sets key to value (value != 0). Returns the value it replaced, or 0 when the key was new.
 * The caller serialises updates of one key. */
uint64_t kvd_urcu_put(void *ht, uint64_t key, uint64_t value)
{
    struct kvd_node *n = malloc(sizeof *n);
    if (!n)
        abort();
    n->key = key;
    n->value = value;
    uint64_t old = 0;
    urcu_memb_read_lock();
    struct cds_lfht_node *prev = cds_lfht_add_replace(ht, key, match_key, &key, &n->node);
    if (prev) {
        struct kvd_node *p = caa_container_of(prev, struct kvd_node, node);
        old = p->value;
        urcu_memb_call_rcu(&p->rcu, free_node);
    }
    urcu_memb_read_unlock();
    return old;
}

/* Removes key. Returns its value, or 0 when absent. */
uint64_t kvd_urcu_remove(void *ht, uint64_t key)
{
    uint64_t old = 0;
    struct cds_lfht_iter iter;
    urcu_memb_read_lock();
    cds_lfht_lookup(ht, key, match_key, &key, &iter);
    struct cds_lfht_node *node = cds_lfht_iter_get_node(&iter);
    if (node && cds_lfht_del(ht, node) == 0) {
        struct kvd_node *p = caa_container_of(node, struct kvd_node, node);
        old = p->value;
        urcu_memb_call_rcu(&p->rcu, free_node);
    }
    urcu_memb_read_unlock();
    return old;
}

/* Runs func(arg) after a grace period (on liburcu's call_rcu thread). */
void kvd_urcu_retire(void (*func)(void *), void *arg)
{
    struct kvd_retire *r = malloc(sizeof *r);
    if (!r)
        abort();
    r->func = func;
    r->arg = arg;
    urcu_memb_call_rcu(&r->rcu, run_retire);
}
