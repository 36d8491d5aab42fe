/* Symmetric CKKS encryption of a sealed gallery block, at one data prime q.
 *
 * SEAL 4.1's Encryptor::encrypt_symmetric of an NTT-form CKKS plaintext m
 * (encrypt_zero_symmetric, then add_poly_coeffmod of the plaintext) computes
 *
 *     c1 = a                        sample_poly_uniform, directly in NTT form
 *     c0 = -(a * s + NTT(e)) + m    s the secret key (NTT form), e from sample_poly_cbd
 *
 * Through SEAL's Python binding every ciphertext must also pass through a
 * temporary file to reach numpy, which made enrolment cost ~3.5 ms per
 * ciphertext. Here a whole block is encrypted in one call, on arrays the
 * caller owns. The NTT is linear and every word is a canonical residue in
 * [0, q), so c0 is computed as NTT(m - e) - a * s: the same words as SEAL's
 * order of operations, with one transform per ciphertext instead of two.
 *
 * Randomness: none is drawn here. The caller passes bytes from a CSPRNG (a
 * ChaCha20 keystream under a seed fresh from os.urandom), so this file is
 * deterministic given its inputs and easy to audit:
 *   - a: each 64-bit word of `pool` is masked to bitlen(q) bits and kept if
 *     below q (rejection sampling), which makes every kept word exactly
 *     uniform on [0, q); the acceptance rate is q / 2**bitlen(q) (above 1/2
 *     for any q, 1 - 2**-43 for the 60-bit primes of pprm's sets). If the
 *     pool runs out, PPRM_ENC_EAGAIN asks the caller for a fresh, larger one.
 *   - e: six bytes per coefficient, exactly as SEAL's sample_poly_cbd:
 *     x[2] and x[5] masked to 5 bits, value = popcount(x0, x1, x2) -
 *     popcount(x3, x4, x5), a centered binomial on [-21, 21] of variance 10.5.
 *
 * Secrets: the Shoup quotients of s are wiped before they are freed; c0 holds
 * NTT(m - e) only between two steps of a row, and every plaintext coefficient
 * is range-checked before any row is computed, so no error path leaves a
 * half-built row (which would expose m - e) in `out`.
 */
#include "pprm_encrypt.h"

#include <stdlib.h>
#include <string.h>

#include "pprm_jobs.h"

typedef unsigned __int128 u128;

/* Valid for r < 2q, q < 2**63; branch-free because the operands are random. */
static inline uint64_t reduce_once(uint64_t r, uint64_t q) {
    uint64_t d = r - q;
    return d + (q & (uint64_t)-(int64_t)(d >> 63));
}

static inline uint64_t sub_mod(uint64_t a, uint64_t b, uint64_t q) {
    return reduce_once(a + q - b, q);
}

/* x * w mod q for any 64-bit x, w < q, with wq = floor(w * 2**64 / q) (Shoup). */
static inline uint64_t mul_shoup(uint64_t x, uint64_t w, uint64_t wq, uint64_t q) {
    uint64_t hi = (uint64_t)(((u128)x * wq) >> 64);
    return reduce_once(x * w - hi * q, q);
}

/* Bits set in a word below 2**24, without relying on a POPCNT instruction
 * (the build targets plain x86-64); SWAR, so the noise loop vectorises. */
static inline uint32_t popcount24(uint32_t x) {
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    x = (x + (x >> 4)) & 0x0F0F0F0Fu;
    return (x * 0x01010101u) >> 24;
}

/* Zero memory that held secret-derived words; the barrier keeps the
 * compiler from dropping a memset whose buffer is freed right after. */
static void wipe(void *p, size_t n) {
    memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
}

/* The Shoup quotients of the key's words (secret-derived: the caller wipes
 * and frees them), or NULL when memory runs out. */
static uint64_t *key_shoup(const uint64_t *s, size_t n, uint64_t q) {
    uint64_t *out = malloc(n * sizeof *out);
    if (out)
        for (size_t j = 0; j < n; ++j) out[j] = (uint64_t)(((u128)s[j] << 64) / q);
    return out;
}

/* Threads for `rows` rows: `threads`, or every online core when <= 0; never more than rows. */
static size_t threads_for(int threads, size_t rows) {
    const long cores = threads > 0 ? threads : online_cores();
    const size_t nt = cores > 0 ? (size_t)cores : 1;
    return nt < rows ? nt : rows;
}

typedef struct {
    const int64_t *m;
    const uint8_t *noise;
    const uint64_t *s, *s_shoup;
    const pprm_ntt_table *t;
    uint64_t *out;
    size_t first, last; /* rows [first, last) */
    int rc;
} job;

static void *run(void *arg) {
    job *jb = arg;
    const pprm_ntt_table *t = jb->t;
    const uint64_t q = t->q;
    const size_t n = t->n;
    for (size_t r = jb->first; r < jb->last; ++r) {
        const int64_t *m = jb->m + r * n;
        const uint8_t *x = jb->noise + r * n * PPRM_ENC_NOISE_BYTES;
        uint64_t *c0 = jb->out + 2 * r * n;
        const uint64_t *c1 = c0 + n;
        /* c0 <- m - e in coefficient form (|m| < q was checked by the caller of run). */
        for (size_t j = 0; j < n; ++j, x += PPRM_ENC_NOISE_BYTES) {
            uint32_t pos = (uint32_t)x[0] | (uint32_t)x[1] << 8 | (uint32_t)(x[2] & 0x1F) << 16;
            uint32_t neg = (uint32_t)x[3] | (uint32_t)x[4] << 8 | (uint32_t)(x[5] & 0x1F) << 16;
            int64_t e = (int64_t)popcount24(pos) - (int64_t)popcount24(neg);
            uint64_t mr = (uint64_t)m[j] + (q & (uint64_t)(m[j] >> 63));
            uint64_t er = (uint64_t)e + (q & (uint64_t)(e >> 63));
            c0[j] = sub_mod(mr, er, q);
        }
        if (pprm_ntt(c0, t, 0) != PPRM_MASK_OK) { /* cannot happen: every word is reduced */
            wipe(c0, n * sizeof *c0);
            jb->rc = PPRM_ENC_EINVAL;
            return NULL;
        }
        /* c0 <- NTT(m - e) - a * s = -(a * s + NTT(e)) + NTT(m). */
        for (size_t j = 0; j < n; ++j)
            c0[j] = sub_mod(c0[j], mul_shoup(c1[j], jb->s[j], jb->s_shoup[j], q), q);
    }
    jb->rc = PPRM_ENC_OK;
    return NULL;
}

int pprm_encrypt_block(const int64_t *m, const uint64_t *pool, size_t pool_words, const uint8_t *noise,
                       const uint64_t *s, const pprm_ntt_table *t, uint64_t *out, size_t rows, int threads) {
    const uint64_t q = t->q;
    const size_t n = t->n;
    if (q < 2 || q >= (UINT64_C(1) << 61) || n < 2 || (n & (n - 1))) return PPRM_ENC_EINVAL;
    if (rows == 0) return PPRM_ENC_OK;
    /* Range checks first, so that no row is half computed when one fails. */
    uint64_t bad = 0;
    for (size_t j = 0; j < n; ++j) bad |= s[j] >= q;
    const int64_t sq = (int64_t)q;
    for (size_t j = 0; j < rows * n; ++j) bad |= (m[j] <= -sq) | (m[j] >= sq);
    if (bad) return PPRM_ENC_EINVAL;

    /* c1: rejection sampling of bitlen(q)-bit words, in order through the pool. */
    const uint64_t mask = (UINT64_C(1) << (64 - __builtin_clzll(q))) - 1; /* q >= 2, so no shift by 64 */
    size_t used = 0;
    for (size_t r = 0; r < rows; ++r) {
        uint64_t *c1 = out + (2 * r + 1) * n;
        for (size_t j = 0; j < n; ++j) {
            uint64_t w;
            do {
                if (used == pool_words) return PPRM_ENC_EAGAIN;
                w = pool[used++] & mask;
            } while (w >= q);
            c1[j] = w;
        }
    }

    uint64_t *s_shoup = key_shoup(s, n, q);
    if (!s_shoup) return PPRM_ENC_ENOMEM;

    const size_t nt = threads_for(threads, rows);
    job *jobs = calloc(nt, sizeof *jobs);
    int rc = PPRM_ENC_OK;
    if (!jobs) {
        rc = PPRM_ENC_ENOMEM;
        goto done;
    }
    for (size_t i = 0; i < nt; ++i)
        jobs[i] = (job){m, noise, s, s_shoup, t, out, rows * i / nt, rows * (i + 1) / nt, PPRM_ENC_OK};
    /* The calling thread takes the first share; a thread that cannot be
     * created has its share done there, so the work always completes. */
    if (run_jobs(run, jobs, sizeof *jobs, nt)) rc = PPRM_ENC_ENOMEM;
    for (size_t i = 0; i < nt && rc == PPRM_ENC_OK; ++i)
        if (jobs[i].rc != PPRM_ENC_OK) rc = jobs[i].rc;
done:
    wipe(s_shoup, n * sizeof *s_shoup);
    free(s_shoup);
    free(jobs);
    return rc;
}

/* Decryption, the inverse at the same prime: m = INTT(c0 + c1 * s), centred
 * into (-q/2, q/2]. SEAL's Decryptor::decrypt for a size-2 NTT-form
 * ciphertext at one data prime computes the same words (dot product with
 * (1, s) in NTT form, then the inverse NTT); the key service uses it to
 * export the gallery for the blind database, where going through SEAL's
 * binding cost a file round trip per ciphertext. m holds the plaintext
 * (the enrolled values plus noise), so a row's words are wiped if its
 * transform fails. */
typedef struct {
    const uint64_t *ct, *s, *s_shoup;
    const pprm_ntt_table *t;
    int64_t *out;
    size_t first, last;
    int rc;
} djob;

static void *run_decrypt(void *arg) {
    djob *jb = arg;
    const pprm_ntt_table *t = jb->t;
    const uint64_t q = t->q, half = q >> 1;
    const size_t n = t->n;
    for (size_t r = jb->first; r < jb->last; ++r) {
        const uint64_t *c0 = jb->ct + 2 * r * n, *c1 = c0 + n;
        uint64_t *m = (uint64_t *)(jb->out + r * n);
        for (size_t j = 0; j < n; ++j) {
            const uint64_t p = mul_shoup(c1[j], jb->s[j], jb->s_shoup[j], q);
            m[j] = reduce_once(c0[j] + p, q); /* c0, p < q < 2**61: the sum fits */
        }
        if (pprm_ntt(m, t, 1) != PPRM_MASK_OK) { /* cannot happen: every word is reduced */
            wipe(m, n * sizeof *m);
            jb->rc = PPRM_ENC_EINVAL;
            return NULL;
        }
        for (size_t j = 0; j < n; ++j)
            jb->out[r * n + j] = m[j] > half ? (int64_t)m[j] - (int64_t)q : (int64_t)m[j];
    }
    jb->rc = PPRM_ENC_OK;
    return NULL;
}

int pprm_decrypt_block(const uint64_t *ct, const uint64_t *s, const pprm_ntt_table *t, int64_t *out, size_t rows,
                       int threads) {
    const uint64_t q = t->q;
    const size_t n = t->n;
    if (q < 2 || q >= (UINT64_C(1) << 61) || n < 2 || (n & (n - 1))) return PPRM_ENC_EINVAL;
    if (rows == 0) return PPRM_ENC_OK;
    uint64_t bad = 0;
    for (size_t j = 0; j < n; ++j) bad |= s[j] >= q;
    for (size_t j = 0; j < 2 * rows * n; ++j) bad |= ct[j] >= q;
    if (bad) return PPRM_ENC_EINVAL;
    uint64_t *s_shoup = key_shoup(s, n, q);
    if (!s_shoup) return PPRM_ENC_ENOMEM;
    const size_t nt = threads_for(threads, rows);
    djob *jobs = calloc(nt, sizeof *jobs);
    int rc = PPRM_ENC_OK;
    if (!jobs) {
        rc = PPRM_ENC_ENOMEM;
        goto done;
    }
    for (size_t i = 0; i < nt; ++i)
        jobs[i] = (djob){ct, s, s_shoup, t, out, rows * i / nt, rows * (i + 1) / nt, PPRM_ENC_OK};
    if (run_jobs(run_decrypt, jobs, sizeof *jobs, nt)) rc = PPRM_ENC_ENOMEM;
    for (size_t i = 0; i < nt && rc == PPRM_ENC_OK; ++i)
        if (jobs[i].rc != PPRM_ENC_OK) rc = jobs[i].rc;
done:
    wipe(s_shoup, n * sizeof *s_shoup);
    free(s_shoup);
    free(jobs);
    return rc;
}
