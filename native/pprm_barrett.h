/* Barrett reduction of a 128-bit value by a word modulus, shared by the kernels. */
#ifndef PPRM_BARRETT_H
#define PPRM_BARRETT_H

#include <stdint.h>

typedef unsigned __int128 u128;

/* A modulus q with floor(2**128 / q) as two words, for barrett_reduce. */
typedef struct {
    uint64_t q, r0, r1;
} barrett_t;

/* q must be in [2, 2**63) (barrett_reduce's range). */
static inline barrett_t barrett_make(uint64_t q) {
    const u128 all = ~(u128)0;
    u128 m = all / q;
    /* all / q is floor((2**128 - 1) / q): one less than floor(2**128 / q) when q divides 2**128. */
    if (all % q == q - 1)
        m += 1;
    return (barrett_t){q, (uint64_t)m, (uint64_t)(m >> 64)};
}

/* x mod q for any 128-bit x and q in [2, 2**63). With m = floor(2**128 / q),
   the estimate floor(x * m / 2**128) is floor(x / q) or one less, so
   x - estimate * q lies in [0, 2q) and fits a word: computing it modulo 2**64
   needs only the low word of the estimate, and one subtraction finishes.
   The estimate is computed exactly: the one product word it drops, the low
   word of x0 * r0, has nothing added to it and so cannot carry. */
static inline uint64_t barrett_reduce(u128 x, const barrett_t *br) {
    const uint64_t x0 = (uint64_t)x, x1 = (uint64_t)(x >> 64);
    /* Neither sum overflows: (2**64 - 1)**2 + 2**64 - 1 < 2**128. */
    const u128 a = (u128)x0 * br->r1 + (uint64_t)(((u128)x0 * br->r0) >> 64);
    const u128 b = (u128)x1 * br->r0 + (uint64_t)a;
    const uint64_t est = x1 * br->r1 + (uint64_t)(a >> 64) + (uint64_t)(b >> 64);
    const uint64_t r = x0 - est * br->q;
    return r >= br->q ? r - br->q : r;
}

#endif
