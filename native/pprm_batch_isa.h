/*
 * The hot loops of pprm_batch.c, written once and included once per
 * instruction set. The includer defines ISA (a name suffix), VL (doubles per
 * vector register), NV (vectors per micro-kernel row, so NR = NV * VL
 * columns) and MR (probes per micro-kernel call), and sets the target
 * (#pragma GCC target) around the include; SW, VC, KC, PACK_AHEAD, LIMB_BITS,
 * LIMB_MASK, STREAM_MAX_NB and STREAM_KU come from pprm_batch.c. The GCC
 * vector types below take the width of whatever the target allows, so the
 * same source gives zmm, ymm or xmm code.
 *
 * Register budget (16 vector registers for AVX2 and SSE2, 32 for AVX-512):
 * MR * NV accumulators + NV panel vectors + one broadcast weight.
 */
#define PPRM_CAT2(a, b) a##_##b
#define PPRM_CAT(a, b) PPRM_CAT2(a, b)
#define FN(name) PPRM_CAT(name, ISA)
#define NR (NV * VL)

#if MR < 3 || MR > 6
#error "FN(micro) handles 3 <= MR <= 6"
#endif
#if SW % NR != 0
#error "a strip must be a whole number of slivers"
#endif

typedef double FN(vd) __attribute__((vector_size(VL * 8)));
typedef uint64_t FN(vu) __attribute__((vector_size(VL * 8)));
/* The same vector as an lvalue at any 8-byte boundary (block rows, accumulator rows). */
typedef double FN(vdu) __attribute__((vector_size(VL * 8), aligned(8)));
typedef uint64_t FN(vuu) __attribute__((vector_size(VL * 8), aligned(8)));

/* Split kc rows of one strip into limbs, as doubles, in sliver order.

   src points at block[k0][j0]; consecutive rows are rn words apart; len <= SW
   columns are real and the rest of the strip is padded with zeros.
   Virtual column vc < SW is the low limb (bits 0..29) of column vc, vc >= SW
   the high limb (bits 30..59) of column vc - SW; virtual columns are cut into
   slivers of NR, and element (k, vc) goes to
   panel[(vc / NR) * KC * NR + k * NR + vc % NR], so that the micro-kernel
   reads each sliver front to back.

   A limb l < 2**30 becomes a double exactly: the bits 0x433 << 52 | l are the
   double 2**52 + l (l fills the low mantissa bits), and subtracting 2**52 is
   exact. This is one OR and one subtraction on every instruction set (there
   is no 64-bit integer -> double conversion before AVX-512DQ).

   rows_left (= d - k0) says which rows exist for the prefetch, PACK_AHEAD rows
   ahead: each row of a strip is on a page of its own (rn * 8 bytes apart), so
   the hardware prefetcher has no stream to follow.

   Returns the OR of every word read: a word >= 2**60 has a bit above 59 set,
   and its high limb would not fit 30 bits. */
static uint64_t FN(pack)(double *restrict panel, const uint64_t *src, size_t rn, size_t kc, size_t len,
                         size_t rows_left) {
    const FN(vu) mask = (FN(vu)){0} + LIMB_MASK;
    const FN(vu) magic = (FN(vu)){0} + 0x4330000000000000ULL;
    const FN(vd) two52 = (FN(vd)){0} + 0x1p52;
    FN(vu) seen = (FN(vu)){0};
    uint64_t seen1 = 0;
    for (size_t k = 0; k < kc; ++k) {
        const uint64_t *row = src + k * rn;
        if (k + PACK_AHEAD < rows_left)
            for (size_t i = 0; i < len; i += 8)
                __builtin_prefetch(row + PACK_AHEAD * rn + i, 0, 0);
        double *dst = panel + k * NR;
        if (len == SW) {
            for (size_t c = 0; c < SW; c += VL) {
                const FN(vu) x = *(const FN(vuu) *)(row + c); /* rows are 8-byte aligned only */
                seen |= x;
                const FN(vd) lo = (FN(vd))((x & mask) | magic) - two52;
                const FN(vd) hi = (FN(vd))((x >> LIMB_BITS) | magic) - two52;
                *(FN(vdu) *)(dst + (c / NR) * KC * NR + c % NR) = lo;
                *(FN(vdu) *)(dst + ((SW + c) / NR) * KC * NR + (SW + c) % NR) = hi;
            }
        } else {
            /* The last strip of the block: len real columns, zeros after. */
            for (size_t c = 0; c < SW; ++c) {
                const uint64_t x = c < len ? row[c] : 0;
                seen1 |= x;
                dst[(c / NR) * KC * NR + c % NR] = (double)(x & LIMB_MASK);
                dst[((SW + c) / NR) * KC * NR + (SW + c) % NR] = (double)(x >> LIMB_BITS);
            }
        }
    }
    for (size_t i = 0; i < VL; ++i)
        seen1 |= seen[i];
    return seen1;
}

/* c[p * VC + i] += sum_k wt[k * ldw + p] * sliver[k * NR + i] for p < mr, i < NR.

   mr is a constant at every call site (FN(micro)'s switch), so the loops
   unroll and the MR * NV accumulators live in registers for all kc rows.
   Every product and partial sum is an integer below 2**53 in magnitude (the
   weight row bound, see pprm_batch.c), so it is exact whether or not the
   compiler fuses the multiply and the add. */
static inline __attribute__((always_inline)) void FN(micro_body)(const double *restrict sliver,
                                                                const double *restrict wt, size_t ldw, size_t kc,
                                                                double *restrict c, const int mr) {
    FN(vd) acc[MR][NV];
#pragma GCC unroll 8
    for (int p = 0; p < mr; ++p)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v)
            acc[p][v] = *(const FN(vdu) *)(c + p * VC + v * VL);
    for (size_t k = 0; k < kc; ++k) {
        FN(vd) x[NV];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v)
            x[v] = *(const FN(vd) *)(sliver + k * NR + v * VL); /* the panel is 64-byte aligned */
#pragma GCC unroll 8
        for (int p = 0; p < mr; ++p) {
            /* w - 0 is w exactly (also for -0.0), so this is a plain broadcast. */
            const FN(vd) w = wt[k * ldw + p] - (FN(vd)){0};
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v)
                acc[p][v] += w * x[v];
        }
    }
#pragma GCC unroll 8
    for (int p = 0; p < mr; ++p)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v)
            *(FN(vdu) *)(c + p * VC + v * VL) = acc[p][v];
}

/* FN(micro_body) for 1 <= mr <= MR probes. */
static void FN(micro)(const double *restrict sliver, const double *restrict wt, size_t ldw, size_t kc,
                      double *restrict c, size_t mr) {
    switch (mr) {
    case 1: FN(micro_body)(sliver, wt, ldw, kc, c, 1); break;
    case 2: FN(micro_body)(sliver, wt, ldw, kc, c, 2); break;
    case 3: FN(micro_body)(sliver, wt, ldw, kc, c, 3); break;
#if MR >= 4
    case 4: FN(micro_body)(sliver, wt, ldw, kc, c, 4); break;
#endif
#if MR >= 5
    case 5: FN(micro_body)(sliver, wt, ldw, kc, c, 5); break;
#endif
#if MR >= 6
    case 6: FN(micro_body)(sliver, wt, ldw, kc, c, 6); break;
#endif
    default: break;
    }
}

/* The streaming path for a few probes (pprm_batch.c, "Few probes"):

     acc[b * 2 * len + c]       += sum_{k < kc} wt[k * nb + b] * lo(src[k * rn + c])
     acc[b * 2 * len + len + c] += sum_{k < kc} wt[k * nb + b] * hi(src[k * rn + c])

   for b < nb = NB, c < len, lo and hi the 30-bit limbs, made doubles as in
   FN(pack). The rows are read front to back, STREAM_KU of them at a time (so
   the accumulators are loaded and stored once per STREAM_KU rows), each as
   one contiguous run of len words that the hardware prefetcher follows. NB is
   a constant at every call site (FN(stream)'s switch), so the 2 * NB
   accumulator vectors stay in registers across the rows of a group. Returns
   the OR of every word read, as FN(pack). */
static inline __attribute__((always_inline)) uint64_t FN(stream_body)(const uint64_t *src, size_t rn, size_t kc,
                                                                     size_t len, const double *restrict wt,
                                                                     double *restrict acc, const int NB) {
    const FN(vu) mask = (FN(vu)){0} + LIMB_MASK;
    const FN(vu) magic = (FN(vu)){0} + 0x4330000000000000ULL;
    const FN(vd) two52 = (FN(vd)){0} + 0x1p52;
    FN(vu) seen = (FN(vu)){0};
    uint64_t seen1 = 0;
    /* Vectors over columns [c0, c1): c0 puts src (and, when rn * 8 is a
       multiple of 64, every row) on a 64-byte line boundary, so no vector
       load straddles two lines; the columns outside go one word at a time. */
    size_t c0 = (64 - ((uintptr_t)src & 63)) % 64 / 8;
    if (c0 > len)
        c0 = len;
    const size_t c1 = c0 + (len - c0) / VL * VL;
    size_t k = 0;
    for (; k + STREAM_KU <= kc; k += STREAM_KU) {
        const uint64_t *row = src + k * rn;
        const double *w = wt + k * NB;
        for (size_t c = c0; c < c1; c += VL) {
            FN(vd) alo[STREAM_MAX_NB], ahi[STREAM_MAX_NB];
#pragma GCC unroll 8
            for (int b = 0; b < NB; ++b) {
                alo[b] = *(const FN(vdu) *)(acc + b * 2 * len + c);
                ahi[b] = *(const FN(vdu) *)(acc + b * 2 * len + len + c);
            }
#pragma GCC unroll 8
            for (int r = 0; r < STREAM_KU; ++r) {
                __builtin_prefetch(row + r * rn + c + STREAM_PREFETCH, 0, 3);
                const FN(vu) x = *(const FN(vuu) *)(row + r * rn + c);
                seen |= x;
                const FN(vd) lo = (FN(vd))((x & mask) | magic) - two52;
                const FN(vd) hi = (FN(vd))((x >> LIMB_BITS) | magic) - two52;
#pragma GCC unroll 8
                for (int b = 0; b < NB; ++b) {
                    const FN(vd) wb = w[r * NB + b] - (FN(vd)){0};
                    alo[b] += wb * lo;
                    ahi[b] += wb * hi;
                }
            }
#pragma GCC unroll 8
            for (int b = 0; b < NB; ++b) {
                *(FN(vdu) *)(acc + b * 2 * len + c) = alo[b];
                *(FN(vdu) *)(acc + b * 2 * len + len + c) = ahi[b];
            }
        }
    }
    for (; k < kc; ++k) {
        const uint64_t *row = src + k * rn;
        const double *w = wt + k * NB;
        for (size_t c = c0; c < c1; c += VL) {
            const FN(vu) x = *(const FN(vuu) *)(row + c);
            seen |= x;
            const FN(vd) lo = (FN(vd))((x & mask) | magic) - two52;
            const FN(vd) hi = (FN(vd))((x >> LIMB_BITS) | magic) - two52;
#pragma GCC unroll 8
            for (int b = 0; b < NB; ++b) {
                const FN(vd) wb = w[b] - (FN(vd)){0};
                *(FN(vdu) *)(acc + b * 2 * len + c) += wb * lo;
                *(FN(vdu) *)(acc + b * 2 * len + len + c) += wb * hi;
            }
        }
    }
    /* The columns before c0 and from c1 on, one word at a time. */
    for (k = 0; k < kc && (c0 > 0 || c1 < len); ++k) {
        const uint64_t *row = src + k * rn;
        for (size_t c = c0 > 0 ? 0 : c1; c < len; c = c + 1 == c0 ? c1 : c + 1) {
            const uint64_t x = row[c];
            seen1 |= x;
            const double lo = (double)(x & LIMB_MASK), hi = (double)(x >> LIMB_BITS);
            for (int b = 0; b < NB; ++b) {
                acc[b * 2 * len + c] += wt[k * NB + b] * lo;
                acc[b * 2 * len + len + c] += wt[k * NB + b] * hi;
            }
        }
    }
    for (size_t i = 0; i < VL; ++i)
        seen1 |= seen[i];
    return seen1;
}

#if STREAM_MAX_NB < 2 || STREAM_MAX_NB > 5
#error "FN(stream) handles 2 <= STREAM_MAX_NB <= 5"
#endif

/* FN(stream_body) for 1 <= nb <= STREAM_MAX_NB probes; wt is wt[k * nb + b]. */
static uint64_t FN(stream)(const uint64_t *src, size_t rn, size_t kc, size_t len, const double *restrict wt,
                           size_t nb, double *restrict acc) {
    switch (nb) {
    case 1: return FN(stream_body)(src, rn, kc, len, wt, acc, 1);
    case 2: return FN(stream_body)(src, rn, kc, len, wt, acc, 2);
#if STREAM_MAX_NB >= 3
    case 3: return FN(stream_body)(src, rn, kc, len, wt, acc, 3);
#endif
#if STREAM_MAX_NB >= 4
    case 4: return FN(stream_body)(src, rn, kc, len, wt, acc, 4);
#endif
#if STREAM_MAX_NB >= 5
    case 5: return FN(stream_body)(src, rn, kc, len, wt, acc, 5);
#endif
    default: return 0;
    }
}

static const isa_t FN(isa) = {FN(pack), FN(micro), FN(stream), MR, NR};

#undef NR
#undef FN
#undef PPRM_CAT
#undef PPRM_CAT2
