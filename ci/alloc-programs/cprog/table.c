#include "table.h"

#include <stdlib.h>
#include <string.h>

static size_t hash(const char *s) {
    size_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

void table_init(struct table *t, size_t nbuckets) {
    t->buckets = calloc(nbuckets, sizeof *t->buckets);
    t->nbuckets = nbuckets;
    t->size = 0;
}

static void grow(struct table *t) {
    struct table bigger;
    table_init(&bigger, t->nbuckets * 2);
    for (size_t i = 0; i < t->nbuckets; i++) {
        for (struct entry *e = t->buckets[i], *next; e != NULL; e = next) {
            next = e->next;
            size_t b = hash(e->key) % bigger.nbuckets;
            e->next = bigger.buckets[b];
            bigger.buckets[b] = e;
        }
    }
    free(t->buckets);
    t->buckets = bigger.buckets;
    t->nbuckets = bigger.nbuckets;
}

void table_add(struct table *t, const char *key, long n) {
    size_t b = hash(key) % t->nbuckets;
    for (struct entry *e = t->buckets[b]; e != NULL; e = e->next) {
        if (strcmp(e->key, key) == 0) {
            e->count += n;
            return;
        }
    }
    struct entry *e = malloc(sizeof *e);
    e->key = strdup(key);
    e->count = n;
    e->next = t->buckets[b];
    t->buckets[b] = e;
    if (++t->size > t->nbuckets * 2) grow(t);
}

long table_get(const struct table *t, const char *key) {
    for (struct entry *e = t->buckets[hash(key) % t->nbuckets]; e != NULL; e = e->next)
        if (strcmp(e->key, key) == 0) return e->count;
    return 0;
}

static int by_count(const void *a, const void *b) {
    const struct entry *x = *(struct entry *const *)a, *y = *(struct entry *const *)b;
    if (x->count != y->count) return x->count < y->count ? 1 : -1;
    return strcmp(x->key, y->key);
}

struct entry **table_sorted(const struct table *t) {
    struct entry **all = malloc((t->size + 1) * sizeof *all);
    size_t n = 0;
    for (size_t i = 0; i < t->nbuckets; i++)
        for (struct entry *e = t->buckets[i]; e != NULL; e = e->next) all[n++] = e;
    qsort(all, n, sizeof *all, by_count);
    all[n] = NULL;
    return all;
}

void table_free(struct table *t) {
    for (size_t i = 0; i < t->nbuckets; i++) {
        for (struct entry *e = t->buckets[i], *next; e != NULL; e = next) {
            next = e->next;
            free(e->key);
            free(e);
        }
    }
    free(t->buckets);
}
