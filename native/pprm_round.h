/* Rounding to the nearest integer without a library call, shared by the masking files. */
#ifndef PPRM_ROUND_H
#define PPRM_ROUND_H

#include <math.h>

/* nearbyint, inlined. The baseline x86-64 build has no SSE4.1 round
   instruction, so nearbyint is a call into libm per coefficient (measured at
   1% of a block's masking). Below 2**51 in magnitude, adding and subtracting
   1.5 * 2**52 rounds to the nearest integer, ties to even, in the default
   rounding mode, exactly as nearbyint does (1.5 * 2**52 + x lies in
   [2**52, 2**53), where the spacing of doubles is 1); anything larger, and
   NaN, goes to nearbyint itself. Never build with -ffast-math, which would
   fold the two operations away. */
static inline double pprm_rint(double x) {
    return fabs(x) < 0x1p51 ? (x + 0x1.8p52) - 0x1.8p52 : nearbyint(x);
}

#endif
