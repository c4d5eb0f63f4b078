// C++ allocation under LD_PRELOAD=libpalloc_preload.so: operator new/delete reach malloc.
#include <dlfcn.h>
#include <malloc.h>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

extern "C" int palloc_cpu_stats(unsigned, void *);

int main() {
    std::map<std::string, std::vector<int>> m;
    for (int i = 0; i < 20000; i++) m[std::to_string(i)].assign(i % 50, i);
    long sum = 0;
    for (auto &kv : m)
        for (int v : kv.second) sum += v;
    int *big = new int[1 << 20];
    big[12345] = 7;
    // Blocks from new are palloc's: malloc_usable_size answers for them.
    if (malloc_usable_size(big) < (4u << 20)) return 1;
    delete[] big;
    m.clear();
    std::printf("new_delete: ok %ld\n", sum);
    return 0;
}
