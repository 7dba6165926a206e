/* tests/fuzz/replay.c: a main() for the fuzz targets without libFuzzer: feeds every regular file
 * of the folders (or files) given to LLVMFuzzerTestOneInput, one after another, in sorted name
 * order, so `make test` (and `make SANITIZE=1 test`) replays the seed corpus and the fixed
 * crashes. Prints one line per folder; a crash is the process' own signal, with the file named
 * on stderr just before it runs. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Runs one file; -1 when it cannot be read. */
static int run_file(const char *path, int verbose) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            fprintf(stderr, "replay: out of memory reading %s\n", path);
            fclose(f);
            return -1;
        }
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        uint8_t *nb = realloc(buf, cap *= 2);
        if (!nb) free(buf);
        buf = nb;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        fprintf(stderr, "replay: read error on %s\n", path);
        free(buf);
        return -1;
    }
    if (verbose) fprintf(stderr, "replay: %s (%zu bytes)\n", path, n);
    /* an exact-size copy, so ASan sees a read one past the input's end */
    uint8_t *exact = malloc(n ? n : 1);
    if (!exact) {
        free(buf);
        return -1;
    }
    memcpy(exact, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(exact, n);
    free(exact);
    return 0;
}

int main(int argc, char **argv) {
    int verbose = getenv("LQ_REPLAY_VERBOSE") != NULL, failed = 0;
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR_OR_FILE...  (set LQ_REPLAY_VERBOSE=1 to name each file)\n", argv[0]);
        return 2;
    }
    for (int a = 1; a < argc; a++) {
        struct stat sb;
        if (stat(argv[a], &sb) != 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[a], strerror(errno));
            failed = 1;
            continue;
        }
        if (!S_ISDIR(sb.st_mode)) {
            if (run_file(argv[a], verbose) != 0) failed = 1;
            continue;
        }
        DIR *d = opendir(argv[a]);
        if (!d) {
            fprintf(stderr, "replay: cannot open folder %s: %s\n", argv[a], strerror(errno));
            failed = 1;
            continue;
        }
        char **names = NULL;
        size_t n = 0, cap = 0;
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.') continue;
            if (n == cap) {
                cap = cap ? 2 * cap : 64;
                char **nn = realloc(names, cap * sizeof *nn);
                if (!nn) abort();
                names = nn;
            }
            size_t l = strlen(argv[a]) + strlen(e->d_name) + 2;
            if (!(names[n] = malloc(l))) abort();
            snprintf(names[n++], l, "%s/%s", argv[a], e->d_name);
        }
        closedir(d);
        qsort(names, n, sizeof *names, cmp_str);
        size_t ran = 0;
        for (size_t i = 0; i < n; i++) {
            if (stat(names[i], &sb) == 0 && S_ISREG(sb.st_mode)) {
                if (run_file(names[i], verbose) != 0) failed = 1;
                else ran++;
            }
            free(names[i]);
        }
        free(names);
        printf("replay %s: %zu inputs\n", argv[a], ran);
    }
    return failed;
}
