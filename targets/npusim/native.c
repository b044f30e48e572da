/* Native kernels of the npusim simulator: the per-element work numpy cannot fuse.
 *
 * Loaded through ctypes by targets/npusim/native.py (no Python headers needed); built by
 * setup.py as an optional extension. Every kernel computes exactly what the numpy path
 * computes (docs/fixed-point.md), in plain C integer arithmetic:
 *
 * - npu_requant_t: the §3 requantization `clamp((a*M0 + 2^(s-1)) >> s, lo, hi)` with
 *   `a = acc + bias`, in int64 that wraps like numpy's, of an int32 GEMM result [rows, n]
 *   (channels last), stored transposed into the [n, rows] output (channels first);
 * - npu_requant_rows: the same of the float GEMM's exact sums, one channel per row;
 * - npu_fill_hwc: a [C, H, W] 8-bit tensor into a padded channels-last uint8 buffer,
 *   with the sign bit flipped for int8 input (x + 128) and the border at the zero point;
 * - npu_patches: the [OH*OW, kh*kw*cb] window matrix of a channels-last buffer;
 * - npu_lookup2: y[i] = table[(a[i] << 8) | b[i]] over 8-bit operands.
 */
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && defined(__linux__)
#define NPU_CLONES_ON
#define NPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define NPU_CLONES
#endif

/* int64 arithmetic wraps like numpy's (signed overflow is undefined in C, unsigned is not) */
static inline int64_t wrap(uint64_t u)
{
    int64_t v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* Byte transpose: dst[c * ld_dst + r] = src[r * ld_src + c] ^ flip, for r < rows, c < cols.
 * In 8x8 blocks of SSE2 unpacks where the machine has them (every x86-64), with scalar
 * edges; the plain loop elsewhere. */
#if defined(__SSE2__)
#include <emmintrin.h>

static void block8(const uint8_t *s, int64_t ls, uint8_t *d, int64_t ld, __m128i f)
{
    __m128i r[8];
    for (int k = 0; k < 8; k++)
        r[k] = _mm_xor_si128(_mm_loadl_epi64((const __m128i *)(s + k * ls)), f);
    __m128i a0 = _mm_unpacklo_epi8(r[0], r[1]), a1 = _mm_unpacklo_epi8(r[2], r[3]);
    __m128i a2 = _mm_unpacklo_epi8(r[4], r[5]), a3 = _mm_unpacklo_epi8(r[6], r[7]);
    __m128i b0 = _mm_unpacklo_epi16(a0, a1), b1 = _mm_unpackhi_epi16(a0, a1);
    __m128i b2 = _mm_unpacklo_epi16(a2, a3), b3 = _mm_unpackhi_epi16(a2, a3);
    __m128i c[4] = {_mm_unpacklo_epi32(b0, b2), _mm_unpackhi_epi32(b0, b2),
                    _mm_unpacklo_epi32(b1, b3), _mm_unpackhi_epi32(b1, b3)};
    for (int k = 0; k < 4; k++) { /* columns 2k and 2k + 1, eight rows each */
        _mm_storel_epi64((__m128i *)(d + 2 * k * ld), c[k]);
        _mm_storel_epi64((__m128i *)(d + (2 * k + 1) * ld), _mm_srli_si128(c[k], 8));
    }
}
#endif

static void transpose8(const uint8_t *src, int64_t rows, int64_t cols, int64_t ld_src,
                       uint8_t *dst, int64_t ld_dst, uint8_t flip)
{
    int64_t r8 = 0, c8 = 0;
#if defined(__SSE2__)
    __m128i f = _mm_set1_epi8((char)flip);
    r8 = rows & ~(int64_t)7;
    c8 = cols & ~(int64_t)7;
    for (int64_t r = 0; r < r8; r += 8)
        for (int64_t c = 0; c < c8; c += 8)
            block8(src + r * ld_src + c, ld_src, dst + c * ld_dst + r, ld_dst, f);
#endif
    for (int64_t c = 0; c < cols; c++) /* the edges: rows past r8, or columns past c8 */
        for (int64_t r = c < c8 ? r8 : 0; r < rows; r++)
            dst[c * ld_dst + r] = src[r * ld_src + c] ^ flip;
}

/* §3 for one a = acc + bias: clamp((a*M0 + 2^(s-1)) >> s, lo, hi). The shift is spelled
 * sg ^ ((p ^ sg) >>> s) (sg all ones for p < 0): floor division by 2^s for every int64 p,
 * without relying on how C shifts a negative value, in a form x86 vector units have. */
static inline int64_t requant1(int64_t a, int64_t m0, int64_t rnd, int64_t shift, int64_t lo,
                               int64_t hi)
{
    int64_t p = wrap((uint64_t)a * (uint64_t)m0 + (uint64_t)rnd);
    int64_t sg = -(int64_t)(p < 0);
    int64_t v = sg ^ (int64_t)((uint64_t)(p ^ sg) >> shift);
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

#define TILE_ELEMS 16384 /* requantized values between compute and transposed store */

#define REQUANT_ROWS(NAME, T)                                                              \
    NPU_CLONES                                                                             \
    static void NAME(const int32_t *acc, int64_t rows, int64_t n, int64_t ld_acc,         \
                     const int64_t *bias, const int64_t *m0, const int64_t *rnd,          \
                     const int64_t *shift, int64_t lo, int64_t hi, T *tile)               \
    {                                                                                      \
        for (int64_t r = 0; r < rows; r++) {                                               \
            const int32_t *src = acc + r * ld_acc;                                         \
            T *dst = tile + r * n;                                                         \
            for (int64_t c = 0; c < n; c++)                                                \
                dst[c] = (T)requant1((int64_t)src[c] + bias[c], m0[c], rnd[c], shift[c],   \
                                     lo, hi);                                              \
        }                                                                                  \
    }

REQUANT_ROWS(requant_rows8, uint8_t) /* int8 or uint8: the clamped value's low byte */
REQUANT_ROWS(requant_rows16, int16_t)

/* kind: 0 int8, 1 uint8, 2 int16 output. Returns 0, or -1 for an unknown kind. */
int npu_requant_t(const int32_t *acc, int64_t rows, int64_t n, int64_t ld_acc,
                  const int64_t *bias, const int64_t *m0, const int64_t *rnd,
                  const int64_t *shift, int64_t lo, int64_t hi, int kind, void *out,
                  int64_t ld_out)
{
    union {
        uint8_t b[TILE_ELEMS];
        int16_t h[TILE_ELEMS];
    } tile;
    int64_t width = n < TILE_ELEMS ? n : TILE_ELEMS, step = TILE_ELEMS / width;
    if (kind < 0 || kind > 2)
        return -1;
    for (int64_t r0 = 0; r0 < rows; r0 += step) {
        int64_t m = rows - r0 < step ? rows - r0 : step;
        for (int64_t c0 = 0; c0 < n; c0 += width) {
            int64_t nc = n - c0 < width ? n - c0 : width;
            const int32_t *a = acc + r0 * ld_acc + c0;
            if (kind == 2) {
                int16_t *o = (int16_t *)out + c0 * ld_out + r0;
                requant_rows16(a, m, nc, ld_acc, bias + c0, m0 + c0, rnd + c0, shift + c0,
                               lo, hi, tile.h);
                for (int64_t c = 0; c < nc; c++)
                    for (int64_t r = 0; r < m; r++)
                        o[c * ld_out + r] = tile.h[r * nc + c];
            } else {
                requant_rows8(a, m, nc, ld_acc, bias + c0, m0 + c0, rnd + c0, shift + c0,
                              lo, hi, tile.b);
                transpose8(tile.b, m, nc, nc, (uint8_t *)out + c0 * ld_out + r0, ld_out, 0);
            }
        }
    }
    return 0;
}

#define REQUANT_ROW(NAME, S, T)                                                            \
    NPU_CLONES                                                                             \
    static void NAME(const S *src, int64_t m, int64_t bias, int64_t m0, int64_t rnd,      \
                     int64_t shift, int64_t lo, int64_t hi, T *dst)                        \
    {                                                                                      \
        for (int64_t i = 0; i < m; i++)                                                    \
            dst[i] = (T)requant1((int64_t)src[i] + bias, m0, rnd, shift, lo, hi);         \
    }

/* float sums of the exact float GEMM: integers (float32: below 2^24; float64: below
 * 2^53), so the conversion to int64 is exact. */
REQUANT_ROW(requant_row_f32_8, float, uint8_t)
REQUANT_ROW(requant_row_f32_16, float, int16_t)
REQUANT_ROW(requant_row_f64_8, double, uint8_t)
REQUANT_ROW(requant_row_f64_16, double, int16_t)

/* §3 of the float GEMM's exact sums `src` [rows, m] (row stride ld_src; src_kind 0 float32,
 * 1 float64), one channel per row, into `out` [rows, m] (row stride ld_out, kind as
 * npu_requant_t). Returns 0, or -1 for an unknown kind. */
int npu_requant_rows(const void *src, int src_kind, int64_t rows, int64_t m, int64_t ld_src,
                     const int64_t *bias, const int64_t *m0, const int64_t *rnd,
                     const int64_t *shift, int64_t lo, int64_t hi, int kind, void *out,
                     int64_t ld_out)
{
    if (kind < 0 || kind > 2 || src_kind < 0 || src_kind > 1)
        return -1;
    for (int64_t r = 0; r < rows; r++) {
        int64_t b = bias[r], k = m0[r], d = rnd[r], s = shift[r];
        if (src_kind == 0) {
            const float *f = (const float *)src + r * ld_src;
            if (kind == 2)
                requant_row_f32_16(f, m, b, k, d, s, lo, hi, (int16_t *)out + r * ld_out);
            else
                requant_row_f32_8(f, m, b, k, d, s, lo, hi, (uint8_t *)out + r * ld_out);
        } else {
            const double *f = (const double *)src + r * ld_src;
            if (kind == 2)
                requant_row_f64_16(f, m, b, k, d, s, lo, hi, (int16_t *)out + r * ld_out);
            else
                requant_row_f64_8(f, m, b, k, d, s, lo, hi, (uint8_t *)out + r * ld_out);
        }
    }
    return 0;
}

void npu_fill_hwc(const uint8_t *x, int64_t c, int64_t h, int64_t w, uint8_t *buf,
                  int64_t hp, int64_t wp, int64_t top, int64_t left, uint8_t zp,
                  uint8_t flip)
{
    int64_t row = wp * c, bottom = hp - top - h, right = wp - left - w;
    memset(buf, zp, (size_t)(top * row));
    memset(buf + (top + h) * row, zp, (size_t)(bottom * row));
    for (int64_t i = 0; i < h; i++) {
        uint8_t *dst = buf + (top + i) * row;
        memset(dst, zp, (size_t)(left * c));
        memset(dst + (left + w) * c, zp, (size_t)(right * c));
        transpose8(x + i * w, c, w, h * w, dst + left * c, c, flip); /* [C, W] -> [W, C] */
    }
}

void npu_patches(const uint8_t *buf, int64_t wp, int64_t c, int64_t oh, int64_t ow,
                 int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw,
                 int64_t c0, int64_t cb, uint8_t *out)
{
    int64_t run = (dw == 1 && cb == c) ? kw * c : cb; /* bytes copied per memcpy */
    int64_t per_tap = run == cb ? kw : 1;
    for (int64_t y = 0; y < oh; y++)
        for (int64_t x = 0; x < ow; x++)
            for (int64_t i = 0; i < kh; i++) {
                const uint8_t *s = buf + ((y * sh + i * dh) * wp + x * sw) * c + c0;
                for (int64_t j = 0; j < per_tap; j++) {
                    memcpy(out, s + j * dw * c, (size_t)run);
                    out += run;
                }
            }
}

void npu_lookup2(const uint8_t *a, const uint8_t *b, int64_t count, const void *table,
                 int64_t itemsize, void *y)
{
    if (itemsize == 1) {
        const uint8_t *t = (const uint8_t *)table;
        uint8_t *o = (uint8_t *)y;
        for (int64_t i = 0; i < count; i++)
            o[i] = t[((int64_t)a[i] << 8) | b[i]];
    } else {
        const uint16_t *t = (const uint16_t *)table;
        uint16_t *o = (uint16_t *)y;
        for (int64_t i = 0; i < count; i++)
            o[i] = t[((int64_t)a[i] << 8) | b[i]];
    }
}

/* One output row of a depthwise conv, channels last: acc[x, ch] for x < ow. Each product
 * fits int16: |(x + zp) - zp| <= 255, |w| <= 128. AVX2 at most: 64-byte vectors would leave
 * layers of 32 or 96 channels mostly to the scalar remainder loop. */
#if defined(NPU_CLONES_ON)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
static void depthwise_row(const uint8_t *row0, int64_t wp, int64_t c, int64_t ow, int64_t kh,
                          int64_t kw, int64_t sw, int64_t dh, int64_t dw, const int16_t *wt,
                          int16_t zp, int32_t *acc)
{
    for (int64_t x = 0; x < ow; x++) {
        int32_t *a = acc + x * c;
        for (int64_t ch = 0; ch < c; ch++)
            a[ch] = 0;
        for (int64_t i = 0; i < kh; i++)
            for (int64_t j = 0; j < kw; j++) {
                const uint8_t *s = row0 + ((i * dh) * wp + x * sw + j * dw) * c;
                const int16_t *wv = wt + (i * kw + j) * c;
                for (int64_t ch = 0; ch < c; ch++)
                    a[ch] += (int16_t)((int16_t)(s[ch] - zp) * wv[ch]);
            }
    }
}

/* A depthwise conv (one filter per channel) of the padded channels-last uint8 `buf`
 * [Hp, Wp, C] (values x + zp) with the int8 weights `wt` [kh*kw, C] (as int16), row by
 * row: each output row's int32 sums (exact: at most kh*kw products of 2^15) are
 * requantized at once into `out` [C, oh*ow]. `acc` is scratch of [ow, C] int32. */
int npu_depthwise(const uint8_t *buf, int64_t wp, int64_t c, int64_t oh, int64_t ow,
                  int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw,
                  const int16_t *wt, int32_t zp, int32_t *acc, const int64_t *bias,
                  const int64_t *m0, const int64_t *rnd, const int64_t *shift, int64_t lo,
                  int64_t hi, int kind, void *out)
{
    int64_t size = kind == 2 ? 2 : 1;
    if (kind < 0 || kind > 2)
        return -1;
    for (int64_t y = 0; y < oh; y++) {
        depthwise_row(buf + y * sh * wp * c, wp, c, ow, kh, kw, sw, dh, dw, wt, zp, acc);
        npu_requant_t(acc, ow, c, c, bias, m0, rnd, shift, lo, hi, kind,
                      (char *)out + y * ow * size, oh * ow);
    }
    return 0;
}

#ifndef NPUC_SOURCE_DIGEST
#define NPUC_SOURCE_DIGEST "unknown"
#endif

/* The digest of this file that setup.py compiled in (compiler/core/native.py checks it). */
const char *npuc_source_digest(void)
{
    return NPUC_SOURCE_DIGEST;
}
