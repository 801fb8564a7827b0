/* The additive attention's score on a CPU, fused: 2 w^T sigmoid(keys + queries) and its gradients in one pass
 * over the keys, where PyTorch's operators write and read the (rows, K, P, A) sigmoid several times over.
 * Built by score_kernel.py with the system's C compiler (-fopenmp: the loops share out over the OpenMP threads of
 * the libgomp that torch has loaded already). fp32, contiguous tensors:
 *   keys (B, P, A), queries (B, K, A): query row b*K + k reads memory row b; w (A); scores and grad (B, K, P). */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>

#if defined(__x86_64__) && defined(__GLIBC__)
/* glibc's libmvec has vector forms of expf; math.h declares them only under -ffast-math, which this file is not
 * built with (it would let the compiler assume that no value is infinite or NaN). */
float expf(float) __attribute__((simd("notinbranch")));
#endif

static inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

void score_forward(const float *keys, const float *queries, const float *w, float *scores,
                   int64_t B, int64_t K, int64_t P, int64_t A, int threads) {
  #pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < B * K * P; i++) {
    int64_t row = i / P, p = i % P;  /* row: a query row, b * K + k */
    const float *key = keys + (row / K * P + p) * A, *query = queries + row * A;
    float sum = 0.0f;
    #pragma omp simd reduction(+:sum)
    for (int64_t a = 0; a < A; a++) sum += w[a] * sigmoid(key[a] + query[a]);
    scores[i] = 2.0f * sum;
  }
}

/* grad: d loss / d scores. Writes grad_keys (B, P, A), grad_queries (B, K, A), and grad_w (threads, A): each
 * thread's share of the weight's gradient, which the caller sums. */
void score_backward(const float *keys, const float *queries, const float *w, const float *grad,
                    float *grad_keys, float *grad_queries, float *grad_w,
                    int64_t B, int64_t K, int64_t P, int64_t A, int threads) {
  memset(grad_w, 0, sizeof(float) * A * threads);
  #pragma omp parallel num_threads(threads)
  {
    float *gw = grad_w + (int64_t)omp_get_thread_num() * A;
    #pragma omp for schedule(static)
    for (int64_t b = 0; b < B; b++) {
      memset(grad_queries + b * K * A, 0, sizeof(float) * K * A);
      for (int64_t p = 0; p < P; p++) {
        const float *key = keys + (b * P + p) * A;
        float *gk = grad_keys + (b * P + p) * A;
        memset(gk, 0, sizeof(float) * A);  /* each of the K queries adds its share, the row still in cache */
        for (int64_t k = 0; k < K; k++) {
          const float *query = queries + (b * K + k) * A;
          float *gq = grad_queries + (b * K + k) * A;
          float g = 2.0f * grad[(b * K + k) * P + p];
          #pragma omp simd
          for (int64_t a = 0; a < A; a++) {
            float s = sigmoid(key[a] + query[a]), d = g * w[a] * s * (1.0f - s);
            gw[a] += g * s;
            gk[a] += d;
            gq[a] += d;
          }
        }
      }
    }
  }
}
