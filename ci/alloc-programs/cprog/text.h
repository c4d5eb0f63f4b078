/* Deterministic text generation and tokenising. */
#ifndef TEXT_H
#define TEXT_H
#include <stddef.h>

/* A pseudo-random text of about `words` words from a fixed vocabulary; caller frees. */
char *text_generate(unsigned seed, size_t words);
/* Calls fn for each lower-cased word of s. */
void text_words(const char *s, void (*fn)(const char *word, void *arg), void *arg);
#endif
