/* DevLoop benchmark recorder: the "check" every tool runs.
 *
 * The very first thing it does is read CLOCK_REALTIME, so the recorded time is
 * the moment the check's process started running user code. It then writes one
 * file per run into $BENCH_LOGDIR named <ns>.<pid> holding:
 *   A<TAB>arg            one line per argv element (file names passed as args)
 *   W<TAB>json           $WATCHFILES_CHANGES when set (watchfiles CLI)
 *   S<TAB>line           stdin lines when $BENCH_STDIN is set (watchman trigger)
 * The file is written under a ".tmp" name and renamed, so a reader never sees
 * a half-written record.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    const char *dir = getenv("BENCH_LOGDIR");
    if (dir == NULL) {
        return 0;
    }
    char final[4096];
    char tmp[4200];
    snprintf(final, sizeof final, "%s/%lld%09ld.%d", dir, (long long)ts.tv_sec,
             ts.tv_nsec, (int)getpid());
    snprintf(tmp, sizeof tmp, "%s.tmp", final);
    FILE *f = fopen(tmp, "w");
    if (f == NULL) {
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        fprintf(f, "A\t%s\n", argv[i]);
    }
    const char *w = getenv("WATCHFILES_CHANGES");
    if (w != NULL) {
        fprintf(f, "W\t%s\n", w);
    }
    if (getenv("BENCH_STDIN") != NULL) {
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        while ((n = getline(&line, &cap, stdin)) > 0) {
            fputs("S\t", f);
            fwrite(line, 1, (size_t)n, f);
            if (line[n - 1] != '\n') {
                fputc('\n', f);
            }
        }
        free(line);
    }
    fclose(f);
    rename(tmp, final);
    return 0;
}
