/* A string-keyed hash table with chaining, and a word counter built on it. */
#ifndef TABLE_H
#define TABLE_H
#include <stddef.h>

struct entry {
    char *key;
    long count;
    struct entry *next;
};

struct table {
    struct entry **buckets;
    size_t nbuckets;
    size_t size;
};

void table_init(struct table *t, size_t nbuckets);
void table_add(struct table *t, const char *key, long n);
long table_get(const struct table *t, const char *key);
/* Entries sorted by count (descending), then key; the array is the caller's to free. */
struct entry **table_sorted(const struct table *t);
void table_free(struct table *t);
#endif
