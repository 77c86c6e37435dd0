// GEMV for decode: y[r] = dot(W[r], x) for W [rows, cols] and one token.
// Parameters (shared with gemm.cu, some unused per type): w (quants plane or
// f16/f32 data), scales (q4/q8), x [cols] f32 (f16/f32 weights), aq / ad /
// asum the int8 activations of x (q4/q8 weights: common.cuh), y [rows].
//
// Geometry (host: cuda/src/launch.rs, gemv; mirrored on the host by
// cuda/src/tiles.rs, whose tests check it against the reference): one block
// of GEMV_THREADS = 128 threads (4 warps) per 8-row block, grid =
// ceil(rows / 8). The row block's tiles are one contiguous run; each warp
// reads 512 consecutive bytes of it per step (lane l: the 16 bytes at
// 16 * l, one coalesced 16-byte load), the 4 warps interleaved, so the
// block streams its run front to back:
//   q4: 4 tiles per warp step; lane l holds group 4 * step' + l / 8, chunk
//       (l % 8) / 2, rows 4 * (l % 2) .. + 3 (words x, y, z, w);
//   q8: 2 tiles per warp step; lane l holds group 2 * step' + l / 16, chunk
//       (l % 16) / 2, rows 4 * (l % 2) .. + 3.
// Each word meets one (q8) or two (q4: low nibbles with activations 4c..,
// high with 16 + 4c..) activation words in __dp4a; the lane scales its
// partial integer sum by (weight scale * activation scale) in f32. Lanes of
// equal l % 2 are reduced with shuffles, warps through shared memory in a
// fixed order.
#include "common.cuh"

#define GEMV_THREADS 128
#define GEMV_WARPS (GEMV_THREADS / WARP)
#define GEMV_ROWS 8

// Reduces acc over the lanes of equal parity and the warps, and writes rows
// 8b .. 8b + 8 (those below `rows`).
__device__ __forceinline__ void gemv_store(float acc[4], float* __restrict__ y, u32 b, u32 rows) {
    __shared__ float red[GEMV_WARPS][GEMV_ROWS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int r = 0; r < 4; r++) {
#pragma unroll
        for (int o = 2; o < 32; o <<= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], o);
    }
    if (lane < 2) {
#pragma unroll
        for (int r = 0; r < 4; r++) red[warp][4 * lane + r] = acc[r];
    }
    __syncthreads();
    if (threadIdx.x < GEMV_ROWS) {
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < GEMV_WARPS; w++) s += red[w][threadIdx.x];
        const u32 row = b * GEMV_ROWS + threadIdx.x;
        if (row < rows) y[row] = s;
    }
}

// The four f16 scales of rows 4h .. 4h + 3 of tile t, as floats.
__device__ __forceinline__ void scales4(const __half* __restrict__ scales, size_t t, u32 h, float d[4]) {
    const uint2 s = __ldg(reinterpret_cast<const uint2*>(scales + t * GEMV_ROWS + 4 * h));
    const __half2 a = *reinterpret_cast<const __half2*>(&s.x), b = *reinterpret_cast<const __half2*>(&s.y);
    d[0] = __low2float(a);
    d[1] = __high2float(a);
    d[2] = __low2float(b);
    d[3] = __high2float(b);
}

// What gemv_q4 and gemv_q8 differ in: the tile size (a tile spans TILE / 16
// lanes of a warp step) and a lane's integer dot products s[r] of its four
// words (rows 4h + r of chunk c) with the activation words `aw` of their
// group.
struct Q4 {
    static constexpr u32 TILE = Q4_TILE;
    // Low nibbles meet activation word c (elements 4c..), high nibbles
    // word 4 + c (16 + 4c..).
    static __device__ __forceinline__ void dots(const u32 w[4], const int* __restrict__ aw, u32 c, int s[4]) {
        const int alo = __ldg(aw + c), ahi = __ldg(aw + 4 + c);
        // 8 * (sum of the 8 activations met here): the nibbles are q + 8.
        const int corr = __dp4a(0x08080808, alo, __dp4a(0x08080808, ahi, 0));
#pragma unroll
        for (int r = 0; r < 4; r++) s[r] = __dp4a(q4_lo(w[r]), alo, __dp4a(q4_hi(w[r]), ahi, 0)) - corr;
    }
};

struct Q8 {
    static constexpr u32 TILE = Q8_TILE;
    static __device__ __forceinline__ void dots(const u32 w[4], const int* __restrict__ aw, u32 c, int s[4]) {
        const int a = __ldg(aw + c);
#pragma unroll
        for (int r = 0; r < 4; r++) s[r] = __dp4a(q8_signed(w[r]), a, 0);
    }
};

template <typename Kind>
__device__ __forceinline__ void gemv_q(const unsigned char* __restrict__ qs, const __half* __restrict__ scales,
                                       const signed char* __restrict__ aq, const float* __restrict__ ad,
                                       float* __restrict__ y, u32 rows, u32 cols) {
    // Lanes per tile (q4: 8, q8: 16) and tiles per warp step (q4: 4, q8: 2).
    constexpr u32 LANES = Kind::TILE / 16, TILES = WARP / LANES;
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, b = blockIdx.x;
    const u32 groups = (cols + GROUP - 1) / GROUP;
    const u32 h = lane & 1, c = (lane % LANES) >> 1;
    const unsigned char* run = qs + (size_t)b * groups * Kind::TILE;
    const int* aw = reinterpret_cast<const int*>(aq);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 4
    for (u32 g = TILES * warp + lane / LANES; g < groups; g += TILES * GEMV_WARPS) {
        const uint4 q = __ldg(reinterpret_cast<const uint4*>(run + (size_t)g * Kind::TILE + 16 * (lane % LANES)));
        const u32 w[4] = {q.x, q.y, q.z, q.w};
        int s[4];
        Kind::dots(w, aw + g * 8, c, s);
        const float da = __ldg(ad + g);
        float d[4];
        scales4(scales, (size_t)b * groups + g, h, d);
#pragma unroll
        for (int r = 0; r < 4; r++) acc[r] += (float)s[r] * (d[r] * da);
    }
    gemv_store(acc, y, b, rows);
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
gemv_q4(const unsigned char* __restrict__ qs, const __half* __restrict__ scales, const float* __restrict__ x,
        const signed char* __restrict__ aq, const float* __restrict__ ad, const int* __restrict__ asum,
        float* __restrict__ y, u32 rows, u32 cols) {
    gemv_q<Q4>(qs, scales, aq, ad, y, rows, cols);
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
gemv_q8(const unsigned char* __restrict__ qs, const __half* __restrict__ scales, const float* __restrict__ x,
        const signed char* __restrict__ aq, const float* __restrict__ ad, const int* __restrict__ asum,
        float* __restrict__ y, u32 rows, u32 cols) {
    gemv_q<Q8>(qs, scales, aq, ad, y, rows, cols);
}

// f16/f32 rows are not padded: warp w takes rows 8b + 2w and 8b + 2w + 1,
// its lanes stride over the elements (coalesced) with x in f32.
template <typename T>
__device__ __forceinline__ void gemv_plain(const T* __restrict__ w, const float* __restrict__ x, float* __restrict__ y,
                                           u32 rows, u32 cols) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (u32 k = 0; k < 2; k++) {
        const u32 row = blockIdx.x * GEMV_ROWS + 2 * warp + k;
        if (row >= rows) break;
        const T* wr = w + (size_t)row * cols;
        float acc = 0.0f;
        for (u32 i = lane; i < cols; i += WARP) acc += (float)wr[i] * __ldg(x + i);
        acc = warp_sum(acc);
        if (lane == 0) y[row] = acc;
    }
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
gemv_f16(const __half* __restrict__ w, const void* scales, const float* __restrict__ x, const signed char* aq,
         const float* ad, const int* asum, float* __restrict__ y, u32 rows, u32 cols) {
    gemv_plain(w, x, y, rows, cols);
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
gemv_f32(const float* __restrict__ w, const void* scales, const float* __restrict__ x, const signed char* aq,
         const float* ad, const int* asum, float* __restrict__ y, u32 rows, u32 cols) {
    gemv_plain(w, x, y, rows, cols);
}
