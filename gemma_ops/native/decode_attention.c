/* Decode-step attention over the KV cache for bfloat16 on the CPU: one new query token per running sequence.
 *
 * Why a kernel of our own: at a decode step each sequence has G query heads per KV head and one row of keys
 * per cached position, so the work is G dot products and G scaled adds per key, and its cost is reading the
 * keys and values once. PyTorch's CPU attention runs this as small matrix products, 1.7 times as long
 * (benchmarks.op_profile --llama-shape). Built and loaded by gemma_ops.native_attention; tests/gemma_ops/test_native_attention.py
 * checks it against float32 attention.
 *
 * Layout (strides in elements): q [B, KVH * G, D]; keys, values [B, KVH, L, D] (last dim contiguous);
 * out [B, KVH * G, D]. Sequence b attends to its first min(positions[b] + 1, L) keys. Scores and the softmax
 * are float32; products of two bfloat16 numbers are exact in float32, sums are float32.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#define BLOCK 4 /* query heads handled together: the keys and values are read once per block */
/* Each block function is compiled once per row count 1..BLOCK (a constant after inlining, see attend_rows), so
 * its accumulators stay in registers and a group of 2 or 1 query heads does no padded work. */
#define INLINE static inline __attribute__((always_inline))

typedef struct {
    const uint16_t *q, *k, *v;
    uint16_t *out;
    const int64_t *positions;
    int64_t kv_heads, groups, dim, keys;
    int64_t q_b, q_h, k_b, k_h, k_l, v_b, v_h, v_l, o_b, o_h;
    float scale, softcap;
    int64_t first, last; /* sequences [first, last) */
    int failed;          /* set when the job could not allocate its scratch memory */
} Job;

static inline float bf16_to_float(uint16_t x) {
    union { uint32_t u; float f; } c;
    c.u = (uint32_t)x << 16;
    return c.f;
}

static inline uint16_t float_to_bf16(float f) { /* round to nearest even; NaN stays NaN */
    union { uint32_t u; float f; } c;
    c.f = f;
    if ((c.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((c.u >> 16) | 0x40u);
    c.u += 0x7fffu + ((c.u >> 16) & 1u);
    return (uint16_t)(c.u >> 16);
}

/* scores[g][l] = q_g . k_l for the block's query heads q_rows[0..rows) and keys 0..n-1. */
INLINE void block_scores(const Job *a, const int rows, const uint16_t *const *q_rows, const uint16_t *keys,
                         int64_t n, float *scores, float *scratch) {
    const int64_t D = a->dim;
#if defined(__AVX512BF16__)
    if (D % 32 == 0) {
        for (int64_t l = 0; l < n; l++) {
            const uint16_t *row = keys + l * a->k_l;
            __m512 acc[BLOCK];
            for (int g = 0; g < rows; g++) acc[g] = _mm512_setzero_ps();
            for (int64_t d = 0; d < D; d += 32) {
                const __m512bh key = (__m512bh)_mm512_loadu_si512(row + d);
                for (int g = 0; g < rows; g++)
                    acc[g] = _mm512_dpbf16_ps(acc[g], (__m512bh)_mm512_loadu_si512(q_rows[g] + d), key);
            }
            for (int g = 0; g < rows; g++) scores[g * a->keys + l] = _mm512_reduce_add_ps(acc[g]);
        }
        return;
    }
#endif
    float *qf = scratch, *kf = scratch + rows * D; /* [BLOCK, D] and [D] */
    for (int g = 0; g < rows; g++)
        for (int64_t d = 0; d < D; d++) qf[g * D + d] = bf16_to_float(q_rows[g][d]);
    for (int64_t l = 0; l < n; l++) {
        const uint16_t *row = keys + l * a->k_l;
        for (int64_t d = 0; d < D; d++) kf[d] = bf16_to_float(row[d]);
        for (int g = 0; g < rows; g++) {
            float part[16] = {0}, s = 0;
            int64_t d = 0;
            for (; d + 16 <= D; d += 16)
                for (int j = 0; j < 16; j++) part[j] += qf[g * D + d + j] * kf[d + j];
            for (; d < D; d++) s += qf[g * D + d] * kf[d];
            for (int j = 0; j < 16; j++) s += part[j];
            scores[g * a->keys + l] = s;
        }
    }
}

/* acc[g][:] = sum over l of probs[g][l] * v_l for the block's rows (acc [rows, D] float32). */
INLINE void block_values(const Job *a, const int rows, const uint16_t *values, int64_t n, const float *probs,
                         float *acc, float *scratch) {
    const int64_t D = a->dim;
#if defined(__AVX512BF16__)
    if (D % 64 == 0) {
        for (int64_t d = 0; d < D; d += 64) { /* 4 x 16 output columns of every head of the block in registers */
            __m512 o[BLOCK][4];
            for (int g = 0; g < rows; g++)
                for (int c = 0; c < 4; c++) o[g][c] = _mm512_setzero_ps();
            for (int64_t l = 0; l < n; l++) {
                const uint16_t *row = values + l * a->v_l + d;
                __m512 x[4];
                for (int c = 0; c < 4; c++) {
                    const __m256i half = _mm256_loadu_si256((const __m256i *)(row + 16 * c));
                    x[c] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
                }
                for (int g = 0; g < rows; g++) {
                    const __m512 p = _mm512_set1_ps(probs[g * a->keys + l]);
                    for (int c = 0; c < 4; c++) o[g][c] = _mm512_fmadd_ps(p, x[c], o[g][c]);
                }
            }
            for (int g = 0; g < rows; g++)
                for (int c = 0; c < 4; c++) _mm512_storeu_ps(acc + g * D + d + 16 * c, o[g][c]);
        }
        return;
    }
#endif
    float *vf = scratch;
    for (int64_t i = 0; i < rows * D; i++) acc[i] = 0;
    for (int64_t l = 0; l < n; l++) {
        const uint16_t *row = values + l * a->v_l;
        for (int64_t d = 0; d < D; d++) vf[d] = bf16_to_float(row[d]);
        for (int g = 0; g < rows; g++) {
            const float p = probs[g * a->keys + l];
            float *o = acc + g * D;
            for (int64_t d = 0; d < D; d++) o[d] += p * vf[d];
        }
    }
}

/* Query heads head0 .. head0 + rows - 1 of sequence b against its first n keys and values -> out. */
INLINE void attend_rows(const Job *a, const int rows, int64_t b, int64_t head0, const uint16_t *keys,
                        const uint16_t *values, int64_t n, float *scores, float *acc, float *scratch) {
    const int64_t D = a->dim;
    const uint16_t *q_rows[BLOCK];
    for (int g = 0; g < rows; g++) q_rows[g] = a->q + b * a->q_b + (head0 + g) * a->q_h;
    block_scores(a, rows, q_rows, keys, n, scores, scratch);
    float inv[BLOCK];
    for (int g = 0; g < rows; g++) {
        float *s = scores + g * a->keys, top = -INFINITY, sum = 0;
        for (int64_t l = 0; l < n; l++) {
            float x = s[l] * a->scale;
            if (a->softcap > 0) x = tanhf(x / a->softcap) * a->softcap;
            s[l] = x;
            top = x > top ? x : top;
        }
        for (int64_t l = 0; l < n; l++) {
            s[l] = expf(s[l] - top);
            sum += s[l];
        }
        inv[g] = 1.0f / sum;
    }
    block_values(a, rows, values, n, scores, acc, scratch);
    for (int g = 0; g < rows; g++) {
        uint16_t *dst = a->out + b * a->o_b + (head0 + g) * a->o_h;
        for (int64_t d = 0; d < D; d++) dst[d] = float_to_bf16(acc[g * D + d] * inv[g]);
    }
}

static void run_job(Job *a) {
    const int64_t D = a->dim, G = a->groups;
    /* scores [BLOCK, keys], acc [BLOCK, D], scratch [(BLOCK + 1) D] */
    float *scores = malloc(sizeof(float) * (BLOCK * a->keys + (2 * BLOCK + 1) * D));
    if (scores == NULL) {
        a->failed = 1;
        return;
    }
    float *acc = scores + BLOCK * a->keys, *scratch = acc + BLOCK * D;
    for (int64_t b = a->first; b < a->last; b++) {
        int64_t n = a->positions[b] + 1;
        n = n < 1 ? 1 : (n > a->keys ? a->keys : n);
        for (int64_t h = 0; h < a->kv_heads; h++) {
            const uint16_t *keys = a->k + b * a->k_b + h * a->k_h, *values = a->v + b * a->v_b + h * a->v_h;
            for (int64_t g0 = 0; g0 < G; g0 += BLOCK) {
                const int64_t head0 = h * G + g0;
                switch (G - g0 < BLOCK ? (int)(G - g0) : BLOCK) { /* a literal row count for each copy */
                case 4: attend_rows(a, 4, b, head0, keys, values, n, scores, acc, scratch); break;
                case 3: attend_rows(a, 3, b, head0, keys, values, n, scores, acc, scratch); break;
                case 2: attend_rows(a, 2, b, head0, keys, values, n, scores, acc, scratch); break;
                default: attend_rows(a, 1, b, head0, keys, values, n, scores, acc, scratch); break;
                }
            }
        }
    }
    free(scores);
}

/* strides: q_b, q_h, k_b, k_h, k_l, v_b, v_h, v_l, o_b, o_h. Returns 0; 1: arguments it cannot run; 2: out of
 * memory. Sequences are spread over ``threads`` OpenMP threads: built with -fopenmp, the library shares the
 * libgomp that PyTorch has loaded, so its threads are PyTorch's and do not contend with them. */
int decode_attention_bf16(const uint16_t *q, const uint16_t *k, const uint16_t *v, uint16_t *out,
                          const int64_t *positions, int64_t batch, int64_t kv_heads, int64_t groups, int64_t dim,
                          int64_t keys, const int64_t *strides, float scale, float softcap, int threads) {
    if (batch < 1 || kv_heads < 1 || groups < 1 || dim < 1 || keys < 1) return 1;
    threads = threads < 1 ? 1 : (threads > batch ? (int)batch : threads);
    int failed = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(| : failed)
    for (int t = 0; t < threads; t++) {
        Job job = {q, k, v, out, positions, kv_heads, groups, dim, keys,
                   strides[0], strides[1], strides[2], strides[3], strides[4],
                   strides[5], strides[6], strides[7], strides[8], strides[9],
                   scale, softcap, batch * t / threads, batch * (t + 1) / threads, 0};
        run_job(&job);
        failed |= job.failed;
    }
    return failed ? 2 : 0;
}
