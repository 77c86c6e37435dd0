// GEMM for prefill: out[t][r] = dot(W[r], x[t]) for n tokens; W [rows, cols],
// out [n, rows] f32. Parameters as gemv.cu, plus n: q4/q8 weights read the
// int8 activations aq / ad / asum of x (common.cuh), f16/f32 weights read x
// [n, cols] f32.
//
// Geometry (host: cuda/src/launch.rs, gemm; mirrored by cuda/src/tiles.rs):
// 256 threads; a block computes GEMM_TR = 64 rows (8 row blocks) x GEMM_TT =
// 32 tokens; grid = (ceil(rows / 64), ceil(n / 32)). K is walked one group
// (32) at a time; each thread accumulates 4 rows x 2 tokens (rows tr + 16i,
// tokens tt + 16j, tr = tid % 16, tt = tid / 16).
//
// q4/q8: the group's 8 tiles go to shared memory as words of four int8 (a
// warp reads one whole tile: coalesced), next to the 32 tokens' activation
// words; __dp4a gives exact integer sums, and every (row, token) is then
// accumulated in the reference's order and rounding,
// acc = acc + (float)isum * (wd * ad) with no fused multiply-add, so the
// result equals reference::matmul_q bit for bit.
// f16/f32: the weight tile is converted to f32 in shared memory (each weight
// read once per 32 tokens), f32 multiply-adds.
#include "common.cuh"

#define GEMM_TR 64
#define GEMM_TT 32
#define GEMM_THREADS 256
// Entries declare at least 2 resident blocks (<= 128 registers a thread):
// without a minimum, ptxas for sm_80/sm_87 squeezes gemm_q4 into 40
// registers and spills (scripts/cuda-build.sh checks there are no spills).

struct Q4 {};
struct Q8 {};

// Writes a thread's 4 rows x 2 tokens of results, acc[i][j] for row
// row0 + 16i and token tok0 + 16j, to out [n, rows] (those inside it).
__device__ __forceinline__ void store_acc(float acc[4][2], float* __restrict__ out, u32 row0, u32 tok0, u32 rows,
                                          u32 n) {
#pragma unroll
    for (int j = 0; j < 2; j++) {
        const u32 t = tok0 + 16 * j;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const u32 r = row0 + 16 * i;
            if (t < n && r < rows) out[(size_t)t * rows + r] = acc[i][j];
        }
    }
}

// Weight words of group g for the block's 8 row blocks: ws[row][k] = four
// quants (elements 4k .. 4k + 3) of row `row` (0..63). Returns the offset
// the words carry (q4: 8, q8: 0).
__device__ __forceinline__ int load_w_words(Q4, const unsigned char* __restrict__ qs, u32 rb0, u32 n_rb, u32 g,
                                            u32 groups, int ws[GEMM_TR][9]) {
    // Thread tid: row block tid / 32, tile word tid % 32 (chunk w / 8, row w % 8).
    const u32 tid = threadIdx.x, rb = tid >> 5, w = tid & 31, c = w >> 3, r = w & 7;
    u32 word = 0x88888888u;  // q = 0
    if (rb0 + rb < n_rb) word = __ldg(reinterpret_cast<const u32*>(qs + ((size_t)(rb0 + rb) * groups + g) * Q4_TILE) + w);
    ws[8 * rb + r][c] = q4_lo(word);
    ws[8 * rb + r][4 + c] = q4_hi(word);
    return 8;
}

__device__ __forceinline__ int load_w_words(Q8, const unsigned char* __restrict__ qs, u32 rb0, u32 n_rb, u32 g,
                                            u32 groups, int ws[GEMM_TR][9]) {
    // Thread tid: row block tid / 32, tile words 2m, 2m + 1 (m = tid % 32):
    // chunk m / 4, rows 2 (m % 4) and 2 (m % 4) + 1.
    const u32 tid = threadIdx.x, rb = tid >> 5, m = tid & 31, c = m >> 2, r = 2 * (m & 3);
    uint2 v = make_uint2(0x80808080u, 0x80808080u);
    if (rb0 + rb < n_rb) v = __ldg(reinterpret_cast<const uint2*>(qs + ((size_t)(rb0 + rb) * groups + g) * Q8_TILE) + m);
    ws[8 * rb + r][c] = q8_signed(v.x);
    ws[8 * rb + r + 1][c] = q8_signed(v.y);
    return 0;
}

template <typename Kind>
__device__ __forceinline__ void gemm_q(const unsigned char* __restrict__ qs, const __half* __restrict__ scales,
                                       const signed char* __restrict__ aq, const float* __restrict__ ad,
                                       const int* __restrict__ asum, float* __restrict__ out, u32 rows, u32 cols,
                                       u32 n) {
    __shared__ int ws[GEMM_TR][9];
    __shared__ int xs[GEMM_TT][9];
    __shared__ float wd[GEMM_TR];
    __shared__ float xd[GEMM_TT];
    __shared__ int xsum[GEMM_TT];
    const u32 tid = threadIdx.x, tr = tid & 15, tt = tid >> 4;
    const u32 row_base = blockIdx.x * GEMM_TR, tok_base = blockIdx.y * GEMM_TT;
    const u32 groups = (cols + GROUP - 1) / GROUP, n_rb = (rows + 7) / 8, rb0 = row_base / 8;
    const int* aw = reinterpret_cast<const int*>(aq);
    float acc[4][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}, {0.0f, 0.0f}, {0.0f, 0.0f}};
    for (u32 g = 0; g < groups; g++) {
        __syncthreads();
        const int off = load_w_words(Kind(), qs, rb0, n_rb, g, groups, ws);
        if (tid < GEMM_TR) {
            const u32 row = row_base + tid;
            wd[tid] = row / 8 < n_rb ? __half2float(scales[((size_t)(row / 8) * groups + g) * 8 + row % 8]) : 0.0f;
        }
        {
            // Activation loader: token tid / 8, word tid % 8.
            const u32 t = tok_base + (tid >> 3);
            xs[tid >> 3][tid & 7] = t < n ? __ldg(aw + ((size_t)t * groups + g) * 8 + (tid & 7)) : 0;
        }
        if (tid < GEMM_TT) {
            const u32 t = tok_base + tid;
            xd[tid] = t < n ? __ldg(ad + (size_t)t * groups + g) : 0.0f;
            xsum[tid] = t < n ? __ldg(asum + (size_t)t * groups + g) : 0;
        }
        __syncthreads();
        int isum[4][2] = {{0, 0}, {0, 0}, {0, 0}, {0, 0}};
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int a[4], b[2];
#pragma unroll
            for (int i = 0; i < 4; i++) a[i] = ws[tr + 16 * i][k];
#pragma unroll
            for (int j = 0; j < 2; j++) b[j] = xs[tt + 16 * j][k];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 2; j++) isum[i][j] = __dp4a(a[i], b[j], isum[i][j]);
        }
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const int s = isum[i][j] - off * xsum[tt + 16 * j];
                acc[i][j] = __fadd_rn(acc[i][j], __fmul_rn((float)s, __fmul_rn(wd[tr + 16 * i], xd[tt + 16 * j])));
            }
    }
    store_acc(acc, out, row_base + tr, tok_base + tt, rows, n);
}

// Writes the 8 values of part `part` (0..3: elements 8 * part .. + 7) of
// group g of row `row` (zero past cols).
template <typename T>
__device__ __forceinline__ void load_w8(const T* __restrict__ w, u32 row, u32 g, u32 cols, int part, float vals[8]) {
#pragma unroll
    for (int e = 0; e < 8; e++) {
        const u32 k = g * GROUP + 8 * part + e;
        vals[e] = k < cols ? (float)w[(size_t)row * cols + k] : 0.0f;
    }
}

template <typename T>
__device__ __forceinline__ void gemm_f(const T* __restrict__ w, const float* __restrict__ x, float* __restrict__ out,
                                       u32 rows, u32 cols, u32 n) {
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
            load_w8(w, wl_row, g, cols, wl_part, vals);
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
    store_acc(acc, out, row_base + tr, tok_base + tt, rows, n);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 2)
gemm_q4(const unsigned char* __restrict__ qs, const __half* __restrict__ scales, const float* x,
        const signed char* __restrict__ aq, const float* __restrict__ ad, const int* __restrict__ asum,
        float* __restrict__ out, u32 rows, u32 cols, u32 n) {
    gemm_q<Q4>(qs, scales, aq, ad, asum, out, rows, cols, n);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 2)
gemm_q8(const unsigned char* __restrict__ qs, const __half* __restrict__ scales, const float* x,
        const signed char* __restrict__ aq, const float* __restrict__ ad, const int* __restrict__ asum,
        float* __restrict__ out, u32 rows, u32 cols, u32 n) {
    gemm_q<Q8>(qs, scales, aq, ad, asum, out, rows, cols, n);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 2)
gemm_f16(const __half* __restrict__ w, const void* scales, const float* __restrict__ x, const signed char* aq,
         const float* ad, const int* asum, float* __restrict__ out, u32 rows, u32 cols, u32 n) {
    gemm_f(w, x, out, rows, cols, n);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 2)
gemm_f32(const float* __restrict__ w, const void* scales, const float* __restrict__ x, const signed char* aq,
         const float* ad, const int* asum, float* __restrict__ out, u32 rows, u32 cols, u32 n) {
    gemm_f(w, x, out, rows, cols, n);
}
