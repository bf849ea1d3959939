/* Tiled fp32 matmul C[M,N] = A[M,K] @ B[K,N], row-major. Tuned through -D defines:
 *   TILE_M, TILE_N, TILE_K  cache tile sizes
 *   UNROLL                  unroll factor of the innermost loop
 *   LOOP_ORDER              0: ikj inner loops (unit stride over B and C, vectorises)
 *                           1: ijk inner loops (dot products, strided over B)
 *                           2: kij inner loops (rank-1 updates of the C tile)
 *   CRASH_ON_PURPOSE        test hook: 1 dereferences NULL, 2 loops forever, 3 computes a wrong result
 */
#include <stddef.h>
#include <string.h>

#ifndef TILE_M
#define TILE_M 32
#endif
#ifndef TILE_N
#define TILE_N 32
#endif
#ifndef TILE_K
#define TILE_K 32
#endif
#ifndef UNROLL
#define UNROLL 1
#endif
#ifndef LOOP_ORDER
#define LOOP_ORDER 0
#endif

#define STR_(x) #x
#define STR(x) STR_(x)
#define MIN(a, b) ((a) < (b) ? (a) : (b))

static void tile(const float *restrict A, const float *restrict B, float *restrict C, int N, int K,
                 int i0, int i1, int j0, int j1, int k0, int k1) {
#if LOOP_ORDER == 0
    for (int i = i0; i < i1; ++i)
        for (int k = k0; k < k1; ++k) {
            const float a = A[(size_t)i * K + k];
            _Pragma(STR(GCC unroll UNROLL))
            for (int j = j0; j < j1; ++j) C[(size_t)i * N + j] += a * B[(size_t)k * N + j];
        }
#elif LOOP_ORDER == 1
    for (int i = i0; i < i1; ++i)
        for (int j = j0; j < j1; ++j) {
            float acc = 0.0f;
            _Pragma(STR(GCC unroll UNROLL))
            for (int k = k0; k < k1; ++k) acc += A[(size_t)i * K + k] * B[(size_t)k * N + j];
            C[(size_t)i * N + j] += acc;
        }
#else
    for (int k = k0; k < k1; ++k)
        for (int i = i0; i < i1; ++i) {
            const float a = A[(size_t)i * K + k];
            _Pragma(STR(GCC unroll UNROLL))
            for (int j = j0; j < j1; ++j) C[(size_t)i * N + j] += a * B[(size_t)k * N + j];
        }
#endif
}

void matmul(const float *restrict A, const float *restrict B, float *restrict C, int M, int N, int K) {
#if defined(CRASH_ON_PURPOSE) && CRASH_ON_PURPOSE == 1
    volatile int *p = NULL;
    *p = 1;
#elif defined(CRASH_ON_PURPOSE) && CRASH_ON_PURPOSE == 2
    for (volatile int spin = 1; spin;) {
    }
#endif
    memset(C, 0, sizeof(float) * (size_t)M * N);
    for (int i0 = 0; i0 < M; i0 += TILE_M)
        for (int k0 = 0; k0 < K; k0 += TILE_K)
            for (int j0 = 0; j0 < N; j0 += TILE_N)
                tile(A, B, C, N, K, i0, MIN(i0 + TILE_M, M), j0, MIN(j0 + TILE_N, N), k0, MIN(k0 + TILE_K, K));
#if defined(CRASH_ON_PURPOSE) && CRASH_ON_PURPOSE == 3
    C[0] += 1.0f;
#endif
}
