// GEMM for prefill: out[t][r] = dot(W[r], x[t]) for n tokens; W [rows, cols]
// in q4, q8, f16 or f32, x [n, cols] f32, out [n, rows] f32.
//
// Geometry (host: cuda/src/launch.rs, gemm): 256 threads; a block computes
// a tile of GEMM_TR = 64 rows x GEMM_TT = 32 tokens; grid = (ceil(rows /
// 64), ceil(n / 32)). The K dimension is walked one group (32) at a time:
// the weight tile is dequantized into shared memory once per block (each
// weight byte is read once per 32 tokens) next to the matching activation
// tile; each thread accumulates 4 rows x 2 tokens in registers.
#include "common.cuh"

#define GEMM_TR 64
#define GEMM_TT 32
#define GEMM_THREADS 256

struct Q4 {};
struct Q8 {};

// Writes the 8 dequantized values of part `part` (0..3: elements 8*part ..
// 8*part + 7) of group `g` of row `row` into ws[k][col] (k = element).
__device__ __forceinline__ void load_w8(Q4, const unsigned char* __restrict__ qs, const __half* __restrict__ scales,
                                        u32 row, u32 g, u32 groups, u32 cols, int part, float vals[8]) {
    const size_t at = (size_t)row * groups + g;
    const float d = __half2float(scales[at]);
    const uint2 q = __ldg(reinterpret_cast<const uint2*>(qs + at * 16 + 8 * (part & 1)));
    const u32 w[2] = {q.x, q.y};
    const int shift = part >= 2 ? 4 : 0;
#pragma unroll
    for (int e = 0; e < 8; e++) vals[e] = (float)((int)((w[e >> 2] >> (8 * (e & 3) + shift)) & 15u) - 8) * d;
}

__device__ __forceinline__ void load_w8(Q8, const unsigned char* __restrict__ qs, const __half* __restrict__ scales,
                                        u32 row, u32 g, u32 groups, u32 cols, int part, float vals[8]) {
    const size_t at = (size_t)row * groups + g;
    const float d = __half2float(scales[at]);
    const uint2 q = __ldg(reinterpret_cast<const uint2*>(qs + at * 32 + 8 * part));
    const u32 w[2] = {q.x, q.y};
#pragma unroll
    for (int e = 0; e < 8; e++) vals[e] = (float)(signed char)((w[e >> 2] >> (8 * (e & 3))) & 255u) * d;
}

template <typename T>
__device__ __forceinline__ void load_w8(T, const T* __restrict__ w, const void*, u32 row, u32 g, u32 groups, u32 cols,
                                        int part, float vals[8]) {
#pragma unroll
    for (int e = 0; e < 8; e++) {
        const u32 k = g * GROUP + 8 * part + e;
        vals[e] = k < cols ? (float)w[(size_t)row * cols + k] : 0.0f;
    }
}

template <typename Kind, typename W, typename S>
__device__ __forceinline__ void gemm(const W* __restrict__ w, const S* __restrict__ scales, const float* __restrict__ x,
                                     float* __restrict__ out, u32 rows, u32 cols, u32 n) {
    __shared__ float ws[GROUP][GEMM_TR + 1];
    __shared__ float xs[GROUP][GEMM_TT + 1];
    const int tid = threadIdx.x;
    const int tr = tid & 15, tt = tid >> 4;
    const u32 row_base = blockIdx.x * GEMM_TR, tok_base = blockIdx.y * GEMM_TT;
    const u32 groups = (cols + GROUP - 1) / GROUP;
    float acc[4][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}, {0.0f, 0.0f}, {0.0f, 0.0f}};
    // Weight loader: row tid / 4, part tid % 4. Activation loader: token
    // tid / 8, elements 4 * (tid % 8) .. + 3.
    const u32 wl_row = row_base + (tid >> 2);
    const int wl_part = tid & 3;
    const u32 xl_tok = tok_base + (tid >> 3);
    const int xl_k = 4 * (tid & 7);
    for (u32 g = 0; g < groups; g++) {
        float vals[8];
        if (wl_row < rows) {
            load_w8(Kind(), w, scales, wl_row, g, groups, cols, wl_part, vals);
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++) vals[e] = 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int e = 0; e < 8; e++) ws[8 * wl_part + e][tid >> 2] = vals[e];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const u32 k = g * GROUP + xl_k + e;
            xs[xl_k + e][tid >> 3] = (xl_tok < n && k < cols) ? x[(size_t)xl_tok * cols + k] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < GROUP; k++) {
            float a[4], b[2];
#pragma unroll
            for (int i = 0; i < 4; i++) a[i] = ws[k][tr + 16 * i];
#pragma unroll
            for (int j = 0; j < 2; j++) b[j] = xs[k][tt + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 2; j++) acc[i][j] += a[i] * b[j];
        }
    }
#pragma unroll
    for (int j = 0; j < 2; j++) {
        const u32 t = tok_base + tt + 16 * j;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const u32 r = row_base + tr + 16 * i;
            if (t < n && r < rows) out[(size_t)t * rows + r] = acc[i][j];
        }
    }
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
gemm_q4(const unsigned char* __restrict__ qs, const __half* __restrict__ scales, const float* __restrict__ x,
        float* __restrict__ out, u32 rows, u32 cols, u32 n) {
    gemm<Q4>(qs, scales, x, out, rows, cols, n);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
gemm_q8(const unsigned char* __restrict__ qs, const __half* __restrict__ scales, const float* __restrict__ x,
        float* __restrict__ out, u32 rows, u32 cols, u32 n) {
    gemm<Q8>(qs, scales, x, out, rows, cols, n);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
gemm_f16(const __half* __restrict__ w, const void* unused, const float* __restrict__ x, float* __restrict__ out,
         u32 rows, u32 cols, u32 n) {
    gemm<__half>(w, unused, x, out, rows, cols, n);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
gemm_f32(const float* __restrict__ w, const void* unused, const float* __restrict__ x, float* __restrict__ out,
         u32 rows, u32 cols, u32 n) {
    gemm<float>(w, unused, x, out, rows, cols, n);
}
