/* Running a kernel's jobs on pthreads, shared by the kernels (each file keeps its own copy). */
#ifndef PPRM_JOBS_H
#define PPRM_JOBS_H

#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

static long pprm_cores = 1;
static pthread_once_t pprm_cores_once = PTHREAD_ONCE_INIT;

static void pprm_count_cores(void) {
    /* sysconf reads /sys on every call (microseconds); the answer does not change. */
    const long c = sysconf(_SC_NPROCESSORS_ONLN);
    pprm_cores = c > 0 ? c : 1;
}

/* The number of online cores, counted once per process. */
static inline long online_cores(void) {
    pthread_once(&pprm_cores_once, pprm_count_cores);
    return pprm_cores;
}

/* Run jobs[0 .. count) (each `size` bytes) with `body`: one pthread per job
   but the first, which the calling thread does itself. A job whose thread
   could not be created is done here instead, so the work always completes.
   Returns 0, or -1 (nothing run) if the thread table cannot be allocated. */
static inline int run_jobs(void *(*body)(void *), void *jobs, size_t size, size_t count) {
    pthread_t *tids = calloc(count, sizeof *tids);
    int *started = calloc(count, sizeof *started);
    if (!tids || !started) {
        free(tids);
        free(started);
        return -1;
    }
    char *base = jobs;
    for (size_t i = 1; i < count; ++i)
        started[i] = pthread_create(&tids[i], NULL, body, base + i * size) == 0;
    body(base);
    for (size_t i = 1; i < count; ++i) {
        if (started[i])
            pthread_join(tids[i], NULL);
        else
            body(base + i * size);
    }
    free(tids);
    free(started);
    return 0;
}

#endif
