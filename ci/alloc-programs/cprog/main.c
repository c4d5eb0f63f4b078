/* Counts words of generated texts and prints a deterministic summary. Compiled under the
 * allocator being checked by ci/alloc-programs.sh. */
#include <stdio.h>
#include <stdlib.h>

#include "table.h"
#include "text.h"

static void count(const char *word, void *arg) { table_add(arg, word, 1); }

int main(void) {
    struct table t;
    table_init(&t, 8);
    long total = 0;
    for (unsigned seed = 1; seed <= 50; seed++) {
        char *s = text_generate(seed, 2000 + seed * 10);
        text_words(s, count, &t);
        free(s);
        total += 2000 + seed * 10;
    }
    struct entry **sorted = table_sorted(&t);
    printf("words %ld distinct %zu\n", total, t.size);
    for (size_t i = 0; sorted[i] != NULL; i++) printf("%-12s %ld\n", sorted[i]->key, sorted[i]->count);
    printf("fox=%ld slab=%ld missing=%ld\n", table_get(&t, "fox"), table_get(&t, "slab"), table_get(&t, "missing"));
    free(sorted);
    table_free(&t);
    return 0;
}
