#include "text.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

static const char *const vocabulary[] = {
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "per", "cpu",
    "restartable", "sequence", "allocator", "thread", "cache", "slab", "page", "span",
};

static unsigned next(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return (*s >> 16) & 0x7fff;
}

char *text_generate(unsigned seed, size_t words) {
    size_t cap = 64, len = 0;
    char *out = malloc(cap);
    for (size_t i = 0; i < words; i++) {
        const char *w = vocabulary[next(&seed) % (sizeof vocabulary / sizeof vocabulary[0])];
        size_t n = strlen(w);
        while (len + n + 3 > cap) {
            cap *= 2;
            out = realloc(out, cap);
        }
        memcpy(out + len, w, n);
        len += n;
        out[len++] = next(&seed) % 11 == 0 ? '.' : ' ';
        if (out[len - 1] == '.') out[0] = (char)toupper((unsigned char)out[0]);
    }
    out[len] = '\0';
    return out;
}

void text_words(const char *s, void (*fn)(const char *word, void *arg), void *arg) {
    char word[64];
    size_t n = 0;
    for (;; s++) {
        if (isalpha((unsigned char)*s) && n + 1 < sizeof word) {
            word[n++] = (char)tolower((unsigned char)*s);
        } else if (n > 0) {
            word[n] = '\0';
            fn(word, arg);
            n = 0;
        }
        if (*s == '\0') break;
    }
}
