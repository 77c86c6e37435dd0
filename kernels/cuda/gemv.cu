// GEMV for decode: y[r] = dot(W[r], x), W [rows, cols] in q4, q8, f16 or
// f32, x [cols] f32, y [rows] f32.
//
// Geometry (host: cuda/src/launch.rs, gemv): 256 threads = 8 warps; each
// warp owns GEMV_RPW = 4 consecutive rows, a block 32 rows; grid =
// ceil(rows / 32). x is staged through shared memory in tiles of
// GEMV_KTILE elements (zero past cols), swizzled by 16-byte chunk (chunk c
// of group g stored at c ^ (g & 7)) so that lanes reading whole groups hit
// distinct banks. For q4/q8 each lane loads one whole group of each of its
// warp's 4 rows with 16-byte loads (a warp reads 32 consecutive groups of a
// row: coalesced), dequantizes in registers (byte_perm, no conversions),
// accumulates sum(q * x) per group and scales once per group; lanes are
// reduced with shuffles.
#include "common.cuh"

#define GEMV_THREADS 256
#define GEMV_RPW 4
#define GEMV_ROWS (GEMV_RPW * (GEMV_THREADS / WARP))
#define GEMV_KTILE 4096

__device__ __forceinline__ int swz(int i) {
    const int g = i >> 5, c = (i >> 2) & 7;
    return (g << 5) | ((c ^ (g & 7)) << 2) | (i & 3);
}

__device__ __forceinline__ void load_x_tile(const float* __restrict__ x, float* xs, u32 k0, u32 cols) {
    for (u32 i = threadIdx.x; i < GEMV_KTILE; i += blockDim.x) {
        const u32 k = k0 + i;
        xs[swz(i)] = k < cols ? x[k] : 0.0f;
    }
}

// The 8 float4 chunks of group `gl` of the tile.
__device__ __forceinline__ void x_group(const float* xs, int gl, float4 xv[8]) {
#pragma unroll
    for (int c = 0; c < 8; c++) xv[c] = *reinterpret_cast<const float4*>(&xs[(gl << 5) | ((c ^ (gl & 7)) << 2)]);
}

__device__ __forceinline__ float dot4(float a, float b, float c, float d, float4 x) {
    return a * x.x + b * x.y + c * x.z + d * x.w;
}

// sum(q[j] * x[j]) over one q4 group.
__device__ __forceinline__ float dot_q4(uint4 q, const float4 xv[8]) {
    const float M = 8388616.0f;  // 2^23 + 8
    const u32 w[4] = {q.x, q.y, q.z, q.w};
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const u32 lo = w[i] & 0x0F0F0F0Fu, hi = (w[i] >> 4) & 0x0F0F0F0Fu;
        s += dot4(byte_as_float(lo, 0, M), byte_as_float(lo, 1, M), byte_as_float(lo, 2, M), byte_as_float(lo, 3, M),
                  xv[i]);
        s += dot4(byte_as_float(hi, 0, M), byte_as_float(hi, 1, M), byte_as_float(hi, 2, M), byte_as_float(hi, 3, M),
                  xv[4 + i]);
    }
    return s;
}

// sum(q[j] * x[j]) over one q8 group (two 16-byte halves).
__device__ __forceinline__ float dot_q8(uint4 a, uint4 b, const float4 xv[8]) {
    const float M = 8388736.0f;  // 2^23 + 128
    const u32 w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const u32 u = w[i] ^ 0x80808080u;  // signed byte b -> b + 128
        s += dot4(byte_as_float(u, 0, M), byte_as_float(u, 1, M), byte_as_float(u, 2, M), byte_as_float(u, 3, M), xv[i]);
    }
    return s;
}

__device__ __forceinline__ void store_rows(float acc[GEMV_RPW], float* __restrict__ y, u32 row0, u32 rows) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int r = 0; r < GEMV_RPW; r++) {
        const float v = warp_sum(acc[r]);
        if (lane == 0 && row0 + r < rows) y[row0 + r] = v;
    }
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
gemv_q4(const unsigned char* __restrict__ qs, const __half* __restrict__ scales, const float* __restrict__ x,
        float* __restrict__ y, u32 rows, u32 cols) {
    __shared__ __align__(16) float xs[GEMV_KTILE];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 row0 = blockIdx.x * GEMV_ROWS + warp * GEMV_RPW;
    const u32 groups = (cols + GROUP - 1) / GROUP;
    float acc[GEMV_RPW] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (u32 k0 = 0; k0 < cols; k0 += GEMV_KTILE) {
        __syncthreads();
        load_x_tile(x, xs, k0, cols);
        __syncthreads();
        const u32 g0 = k0 / GROUP;
        for (u32 gl = lane; gl < GEMV_KTILE / GROUP && g0 + gl < groups; gl += WARP) {
            const u32 g = g0 + gl;
            uint4 q[GEMV_RPW];
            float d[GEMV_RPW];
#pragma unroll
            for (int r = 0; r < GEMV_RPW; r++) {
                const u32 row = min(row0 + r, rows - 1);
                const size_t at = (size_t)row * groups + g;
                q[r] = __ldg(reinterpret_cast<const uint4*>(qs + at * 16));
                d[r] = __half2float(scales[at]);
            }
            float4 xv[8];
            x_group(xs, gl, xv);
#pragma unroll
            for (int r = 0; r < GEMV_RPW; r++) acc[r] += d[r] * dot_q4(q[r], xv);
        }
    }
    store_rows(acc, y, row0, rows);
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
gemv_q8(const unsigned char* __restrict__ qs, const __half* __restrict__ scales, const float* __restrict__ x,
        float* __restrict__ y, u32 rows, u32 cols) {
    __shared__ __align__(16) float xs[GEMV_KTILE];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 row0 = blockIdx.x * GEMV_ROWS + warp * GEMV_RPW;
    const u32 groups = (cols + GROUP - 1) / GROUP;
    float acc[GEMV_RPW] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (u32 k0 = 0; k0 < cols; k0 += GEMV_KTILE) {
        __syncthreads();
        load_x_tile(x, xs, k0, cols);
        __syncthreads();
        const u32 g0 = k0 / GROUP;
        for (u32 gl = lane; gl < GEMV_KTILE / GROUP && g0 + gl < groups; gl += WARP) {
            const u32 g = g0 + gl;
            uint4 a[GEMV_RPW], b[GEMV_RPW];
            float d[GEMV_RPW];
#pragma unroll
            for (int r = 0; r < GEMV_RPW; r++) {
                const u32 row = min(row0 + r, rows - 1);
                const size_t at = (size_t)row * groups + g;
                const uint4* p = reinterpret_cast<const uint4*>(qs + at * 32);
                a[r] = __ldg(p);
                b[r] = __ldg(p + 1);
                d[r] = __half2float(scales[at]);
            }
            float4 xv[8];
            x_group(xs, gl, xv);
#pragma unroll
            for (int r = 0; r < GEMV_RPW; r++) acc[r] += d[r] * dot_q8(a[r], b[r], xv);
        }
    }
    store_rows(acc, y, row0, rows);
}

// f16/f32 rows are not padded: lanes stride over elements (coalesced
// 2- or 4-byte loads).
template <typename T>
__device__ __forceinline__ void gemv_plain(const T* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,
                                           u32 rows, u32 cols) {
    __shared__ __align__(16) float xs[GEMV_KTILE];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 row0 = blockIdx.x * GEMV_ROWS + warp * GEMV_RPW;
    float acc[GEMV_RPW] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (u32 k0 = 0; k0 < cols; k0 += GEMV_KTILE) {
        __syncthreads();
        load_x_tile(x, xs, k0, cols);
        __syncthreads();
        const u32 n = min((u32)GEMV_KTILE, cols - k0);
        for (u32 i = lane; i < n; i += WARP) {
            const float xv = xs[swz(i)];
#pragma unroll
            for (int r = 0; r < GEMV_RPW; r++) {
                const u32 row = min(row0 + r, rows - 1);
                acc[r] += (float)w[(size_t)row * cols + k0 + i] * xv;
            }
        }
    }
    store_rows(acc, y, row0, rows);
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
gemv_f16(const __half* __restrict__ w, const void* unused, const float* __restrict__ x, float* __restrict__ y,
         u32 rows, u32 cols) {
    gemv_plain(w, x, y, rows, cols);
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
gemv_f32(const float* __restrict__ w, const void* unused, const float* __restrict__ x, float* __restrict__ y,
         u32 rows, u32 cols) {
    gemv_plain(w, x, y, rows, cols);
}
