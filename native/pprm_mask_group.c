/*
 * The sealed profile's masking of a group of blocks in one call.
 *
 * Per block, the same three steps the Python path takes one call at a time:
 * the masks from the caller's random words (pprm_maskdraw.c), the masking
 * of the block's encrypted scores (pprm_mask.c), and the packing of the
 * result into one 64-bit word per coefficient pair, exactly as
 * encode_masked in pprm/crypto/masked_codec.py computes it (the same IEEE
 * operations: the residue converted to double, multiplied by the same
 * double constant, rounded half to even).
 *
 * Why one call: done block by block from Python, every step crossed back
 * into the interpreter, and two masking threads spent much of their time
 * waiting for each other's GIL (1.2-1.4 ms of thread time a block against
 * 0.9 alone). Here the blocks go to `threads` pthreads from a shared
 * counter, the GIL released for the whole group.
 *
 * Randomness: none is drawn here (the caller's words, from a CSPRNG); a
 * block whose words give masks over the cap is reported in `status` and
 * left for the caller to mask again with fresh words.
 */
#include "pprm_mask_group.h"

#include <math.h>
#include <stdlib.h>

#include "pprm_jobs.h"
#include "pprm_round.h"

typedef struct {
    size_t count, n;
    const uint64_t *cts, *tau, *words;
    const uint8_t *occupied;
    const pprm_mask_ctx *mc;
    const pprm_maskdraw_ctx *dc;
    const pprm_pack_params *pk;
    uint64_t *out;
    int *status;
    size_t *next;
    int rc; /* this job's first error */
} group_job_t;

static void pack(const uint64_t *coeffs, size_t n, const pprm_pack_params *pk, uint64_t *out) {
    const uint64_t m0 = pk->c0_bits >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << pk->c0_bits) - 1);
    const uint64_t m1 = pk->c1_bits >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << pk->c1_bits) - 1);
    for (size_t j = 0; j < n; ++j) {
        const uint64_t c0 = (uint64_t)pprm_rint((double)coeffs[j] * pk->scale0);
        const uint64_t c1 = (uint64_t)pprm_rint((double)coeffs[n + j] * pk->scale1);
        out[j] = ((c1 & m1) << pk->c0_bits) | (c0 & m0);
    }
}

static void *group_main(void *arg) {
    group_job_t *job = arg;
    const size_t n = job->n;
    /* Per thread: the two mask polynomials, the noise, the masked result. */
    uint64_t *buf = malloc(5 * n * sizeof *buf);
    if (!buf) {
        job->rc = PPRM_MASK_ENOMEM;
        return NULL;
    }
    int64_t *ma = (int64_t *)buf, *mb = (int64_t *)(buf + n);
    uint64_t *noise = buf + 2 * n, *res = buf + 3 * n;
    for (;;) {
        const size_t i = __atomic_fetch_add(job->next, 1, __ATOMIC_RELAXED);
        if (i >= job->count || job->rc != PPRM_MASK_OK)
            break;
        const int drawn = pprm_masks_from_words(job->words + i * 2 * n, job->occupied + i * n, job->dc, ma, mb, noise);
        if (drawn == PPRM_MD_OVER_CAP) {
            job->status[i] = PPRM_GROUP_REDRAW;
            continue;
        }
        if (drawn != PPRM_MD_OK) {
            job->rc = PPRM_MASK_EINVAL;
            break;
        }
        const int rc = pprm_mask_complex(job->cts + i * 2 * n, job->tau, ma, mb, noise, job->mc, res);
        if (rc != PPRM_MASK_OK) {
            job->rc = rc;
            break;
        }
        pack(res, n, job->pk, job->out + i * n);
        job->status[i] = PPRM_GROUP_DONE;
    }
    free(buf);
    return NULL;
}

int pprm_mask_group(size_t count, const uint64_t *cts, const uint64_t *tau, const uint64_t *words,
                    const uint8_t *occupied, const pprm_mask_ctx *mc, const pprm_maskdraw_ctx *dc,
                    const pprm_pack_params *pk, uint64_t *out, int *status, int threads) {
    const size_t n = mc->q0.n;
    if (n != 2 * dc->h || pk->c0_bits + pk->c1_bits != 64 || pk->c0_bits == 0 || pk->c1_bits == 0)
        return PPRM_MASK_EINVAL;
    if (count == 0)
        return PPRM_MASK_OK;
    long want = threads > 0 ? threads : online_cores();
    const size_t nthreads = (size_t)want < count ? (size_t)want : count;
    group_job_t *jobs = calloc(nthreads, sizeof *jobs);
    if (!jobs)
        return PPRM_MASK_ENOMEM;
    size_t next = 0;
    for (size_t t = 0; t < nthreads; ++t)
        jobs[t] = (group_job_t){count, n, cts, tau, words, occupied, mc, dc, pk, out, status, &next, PPRM_MASK_OK};
    int rc = run_jobs(group_main, jobs, sizeof *jobs, nthreads) ? PPRM_MASK_ENOMEM : PPRM_MASK_OK;
    for (size_t t = 0; t < nthreads && rc == PPRM_MASK_OK; ++t)
        rc = jobs[t].rc;
    free(jobs);
    return rc;
}
