// What a page's first touch costs on this machine, against a second touch of the
// same amount in the same process (BENCHMARKS.md, "The first touch of memory").
//
//   gcc -O2 -o /tmp/first_touch benches/first_touch.c && /tmp/first_touch [GiB] [huge]
//
// Maps GiB (default 2) of anonymous memory three times in a row, writes one byte per
// 4 KiB page, times it and unmaps it. The first round takes pages the process never
// had; the later rounds mostly get back the pages the round before gave up. With a
// second argument the mapping is advised for transparent huge pages first
// (MADV_HUGEPAGE, as mimalloc does for its arenas).
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

int main(int argc, char **argv) {
    size_t gib = argc > 1 ? strtoul(argv[1], NULL, 10) : 2;
    int huge = argc > 2;
    size_t bytes = gib << 30;
    for (int round = 1; round <= 3; round++) {
        volatile char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            perror("mmap");
            return 1;
        }
        if (huge && madvise((void *)p, bytes, MADV_HUGEPAGE) != 0) perror("madvise");
        struct timespec start, end;
        clock_gettime(CLOCK_MONOTONIC, &start);
        for (size_t i = 0; i < bytes; i += 4096) p[i] = 1;
        clock_gettime(CLOCK_MONOTONIC, &end);
        double s = (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9;
        printf("round %d, %s pages: %zu GiB touched in %.3f s = %.2f GB/s\n", round,
               huge ? "huge" : "4 KiB", gib, s, (double)bytes / 1e9 / s);
        munmap((void *)p, bytes);
    }
    return 0;
}
