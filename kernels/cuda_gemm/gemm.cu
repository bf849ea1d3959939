// Tiled GEMM, C = A @ B, all row-major: A is M x K, B is K x N, C is M x N.
//
// A block computes a BM x BN tile of C. Each step along K stages a BM x BK tile of A and a BK x BN tile of B
// in shared memory; each thread then accumulates a TM x TN sub-tile of C in registers, in fp32 whatever T is.
// Thread (ty, tx) owns rows ty + i * (BM / TM) and columns tx + j * (BN / TN): neighbouring threads take
// neighbouring columns, so their shared-memory reads of B hit distinct banks and their stores to C coalesce.
//
// Every load and store is bounds-checked, so M, N and K need not be multiples of the tile sizes; the
// out-of-range part of a staged tile is zero-filled, which adds nothing to the sum.
//
// Compiled by NVRTC (kernels/cuda_gemm/compile.py) for one instantiation at a time. COTUNE_FP16 is defined
// only for fp16 builds, so fp32 builds need no CUDA headers at all.

#ifdef COTUNE_FP16
#include <cuda_fp16.h>
#endif

__device__ __forceinline__ float to_float(float x) { return x; }

template <typename T>
__device__ __forceinline__ T from_float(float x);

template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}

#ifdef COTUNE_FP16
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
#endif

// __launch_bounds__ tells ptxas the block size, so it keeps registers per thread low enough for the whole
// block to fit on an SM (spilling if it must) instead of producing a kernel that fails to launch.
template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
    gemm(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C, int M, int N, int K) {
  constexpr int THREADS_M = BM / TM;
  constexpr int THREADS_N = BN / TN;
  constexpr int THREADS = THREADS_M * THREADS_N;
  static_assert(BM % TM == 0 && BN % TN == 0, "TM must divide BM and TN must divide BN");
  static_assert(THREADS <= 1024, "a CUDA block has at most 1024 threads");
  // Every thread loads the same number of elements of each tile, so the load loops unroll fully and no
  // thread idles behind a remainder check.
  static_assert((BM * BK) % THREADS == 0, "tile loads must divide evenly: BM * BK % threads != 0");
  static_assert((BK * BN) % THREADS == 0, "tile loads must divide evenly: BK * BN % threads != 0");
  // Static shared memory is capped at 48 KiB per block; more would need dynamic shared memory.
  static_assert(sizeof(T) * (BM * BK + BK * BN) <= 48 * 1024, "tiles exceed 48 KiB of static shared memory");

  __shared__ T As[BM][BK];
  __shared__ T Bs[BK][BN];

  const int tid = threadIdx.x;
  const int tx = tid % THREADS_N;
  const int ty = tid / THREADS_N;
  const int row0 = blockIdx.y * BM;
  const int col0 = blockIdx.x * BN;
  const T zero = from_float<T>(0.0f);

  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

  for (int k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
    for (int l = 0; l < BM * BK / THREADS; ++l) {
      const int idx = tid + l * THREADS;
      const int r = idx / BK, c = idx % BK;
      const int gr = row0 + r, gc = k0 + c;
      As[r][c] = (gr < M && gc < K) ? A[static_cast<long long>(gr) * K + gc] : zero;
    }
#pragma unroll
    for (int l = 0; l < BK * BN / THREADS; ++l) {
      const int idx = tid + l * THREADS;
      const int r = idx / BN, c = idx % BN;
      const int gr = k0 + r, gc = col0 + c;
      Bs[r][c] = (gr < K && gc < N) ? B[static_cast<long long>(gr) * N + gc] : zero;
    }
    __syncthreads();

#pragma unroll
    for (int k = 0; k < BK; ++k) {
      float a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = to_float(As[ty + i * THREADS_M][k]);
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = to_float(Bs[k][tx + j * THREADS_N]);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    // The next step overwrites the tiles; wait until every thread has read them.
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int r = row0 + ty + i * THREADS_M;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int c = col0 + tx + j * THREADS_N;
      if (r < M && c < N) C[static_cast<long long>(r) * N + c] = from_float<T>(acc[i][j]);
    }
  }
}
