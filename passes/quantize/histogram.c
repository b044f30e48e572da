/* Native kernels of calibration statistics (passes/quantize/histogram.py), via ctypes.
 *
 * They compute exactly what the numpy path computes, in one pass each instead of several:
 * - npq_minmax: min and max of float32 values (a flag when one is not finite);
 * - npq_abs_hist: counts of the bin indices (int32)(|x| * scale) in float32 arithmetic,
 *   the numpy path's `np.abs`, `np.multiply` and truncating cast, added into counts[0..bins]
 *   (an index above bins, impossible for |x| <= edge, is clamped to bins for memory safety;
 *   the float is compared before the cast, which is undefined out of the int32 range).
 * Four interleaved count arrays keep runs of equal indices (ReLU's zeros) from waiting on
 * each other's increments.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif


/* Returns 1 when a value is not finite (then v - v is NaN, else 0): the caller takes numpy's
 * path for such a batch, whose NaN rules differ. x86-64 always has SSE2: four vector lanes,
 * and minps/maxps compute exactly `v < m ? v : m` / `v > m ? v : m`; elsewhere plain C. */
int npq_minmax(const float *x, int64_t n, float *lo, float *hi)
{
    float mn = INFINITY, mx = -INFINITY, z = 0.0f;
    int64_t i = 0;
#if defined(__SSE2__)
    __m128 vmn = _mm_set1_ps(INFINITY), vmx = _mm_set1_ps(-INFINITY), vz = _mm_setzero_ps();
    __m128 wmn = vmn, wmx = vmx, wz = vz;
    for (; i + 8 <= n; i += 8) {
        __m128 a = _mm_loadu_ps(x + i), b = _mm_loadu_ps(x + i + 4);
        vmn = _mm_min_ps(a, vmn);
        vmx = _mm_max_ps(a, vmx);
        vz = _mm_add_ps(vz, _mm_sub_ps(a, a));
        wmn = _mm_min_ps(b, wmn);
        wmx = _mm_max_ps(b, wmx);
        wz = _mm_add_ps(wz, _mm_sub_ps(b, b));
    }
    float lanes[3][8];
    _mm_storeu_ps(lanes[0], vmn), _mm_storeu_ps(lanes[0] + 4, wmn);
    _mm_storeu_ps(lanes[1], vmx), _mm_storeu_ps(lanes[1] + 4, wmx);
    _mm_storeu_ps(lanes[2], vz), _mm_storeu_ps(lanes[2] + 4, wz);
    for (int k = 0; k < 8; k++) {
        mn = lanes[0][k] < mn ? lanes[0][k] : mn;
        mx = lanes[1][k] > mx ? lanes[1][k] : mx;
        z += lanes[2][k];
    }
#endif
    for (; i < n; i++) {
        float v = x[i];
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
        z += v - v;
    }
    *lo = mn;
    *hi = mx;
    return z != 0.0f;
}

#define HIST_WAYS 4

static inline int64_t bin_of(float v, float scale, int64_t bins)
{
    float a = fabsf(v) * scale;
    return a < (float)bins ? (int64_t)(int32_t)a : bins; /* NaN, too: the last index */
}

/* `scratch` holds HIST_WAYS * (bins + 1) uint32 counts. */
void npq_abs_hist(const float *x, int64_t n, float scale, int64_t bins, int64_t *counts,
                  uint32_t *scratch)
{
    int64_t stride = bins + 1, done = 0;
    memset(scratch, 0, (size_t)(HIST_WAYS * stride) * sizeof(uint32_t));
    while (done < n) { /* chunks small enough that a uint32 count cannot wrap */
        int64_t end = n - done > ((int64_t)1 << 30) ? done + ((int64_t)1 << 30) : n;
        int64_t i = done;
        for (; i + HIST_WAYS <= end; i += HIST_WAYS)
            for (int w = 0; w < HIST_WAYS; w++)
                scratch[w * stride + bin_of(x[i + w], scale, bins)]++;
        for (; i < end; i++)
            scratch[bin_of(x[i], scale, bins)]++;
        for (int w = 0; w < HIST_WAYS; w++)
            for (int64_t b = 0; b < stride; b++) {
                counts[b] += scratch[w * stride + b];
                scratch[w * stride + b] = 0;
            }
        done = end;
    }
}

#ifndef NPUC_SOURCE_DIGEST
#define NPUC_SOURCE_DIGEST "unknown"
#endif

/* The digest of this file that setup.py compiled in (compiler/core/native.py checks it). */
const char *npuc_source_digest(void)
{
    return NPUC_SOURCE_DIGEST;
}
