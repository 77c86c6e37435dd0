// Row-wise and element-wise kernels of the forward pass: RMSNorm, RoPE,
// SwiGLU, residual add, bias add, KV-cache store, activation quantization
// and embedding gather.
// Each follows its scalar definition in kernels/src/reference.rs.
#include "common.cuh"

// out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight; grid = rows, block 256.
extern "C" __global__ void __launch_bounds__(256)
rmsnorm_rows(const float* __restrict__ x, const float* __restrict__ weight, float* __restrict__ out, u32 d, float eps) {
    __shared__ float red[32];
    const float* row = x + (size_t)blockIdx.x * d;
    float ss = 0.0f;
    for (u32 i = threadIdx.x; i < d; i += blockDim.x) ss += row[i] * row[i];
    ss = block_sum(ss, red);
    const float scale = 1.0f / sqrtf(ss / (float)d + eps);
    for (u32 i = threadIdx.x; i < d; i += blockDim.x) out[(size_t)blockIdx.x * d + i] = weight[i] * (row[i] * scale);
}

// HF rotate-half RoPE of every head of rows [n][width] at positions pos0 + t:
// element i pairs with i + hd/2, angle (pos0 + t) * inv_freq[i].
// grid = (n, width / hd), block = hd / 2 (rounded up to 32).
extern "C" __global__ void rope_rows(float* __restrict__ buf, const float* __restrict__ inv_freq, u32 width, u32 hd,
                                     u32 pos0) {
    const u32 t = blockIdx.x, head = blockIdx.y, i = threadIdx.x, half = hd / 2;
    if (i >= half) return;
    float* h = buf + (size_t)t * width + head * hd;
    const float angle = (float)(pos0 + t) * inv_freq[i];
    float s, c;
    sincosf(angle, &s, &c);
    const float a = h[i], b = h[i + half];
    h[i] = a * c - b * s;
    h[i + half] = b * c + a * s;
}

// gate[i] = silu(gate[i]) * up[i].
extern "C" __global__ void swiglu(float* __restrict__ gate, const float* __restrict__ up, u32 n) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// dst[i] += src[i].
extern "C" __global__ void add(float* __restrict__ dst, const float* __restrict__ src, u32 n) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] += src[i];
}

// rows[t][i] += bias[i] for n * width elements.
extern "C" __global__ void add_bias(float* __restrict__ rows, const float* __restrict__ bias, u32 width, u32 n) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) rows[i] += bias[i % width];
}

// Cache slots pos0 .. pos0 + n of one layer receive k and v ([n][kv_dim]).
extern "C" __global__ void kv_store_f32(const float* __restrict__ k, const float* __restrict__ v, float* __restrict__ kc,
                                        float* __restrict__ vc, u32 kv_dim, u32 pos0, u32 n) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n * kv_dim) {
        kc[(size_t)pos0 * kv_dim + i] = k[i];
        vc[(size_t)pos0 * kv_dim + i] = v[i];
    }
}

// As kv_store_f32, rounding to f16 (nearest even, as the CPU cache does).
extern "C" __global__ void kv_store_f16(const float* __restrict__ k, const float* __restrict__ v, __half* __restrict__ kc,
                                        __half* __restrict__ vc, u32 kv_dim, u32 pos0, u32 n) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n * kv_dim) {
        kc[(size_t)pos0 * kv_dim + i] = __float2half_rn(k[i]);
        vc[(size_t)pos0 * kv_dim + i] = __float2half_rn(v[i]);
    }
}

// Activations for q4/q8 products (reference::quantize_acts, bit for bit):
// for token t and group g of x [n][cols], d = max|x| / 127, quants
// roundeven(x * (1 / d)) clamped to +-127 (0 for an all-zero group; 0 past
// cols), and their sum. One warp per (group, token): lane j is element j.
// grid = (ceil(groups / 8), n), block 256.
extern "C" __global__ void __launch_bounds__(256)
quantize_acts(const float* __restrict__ x, signed char* __restrict__ aq, float* __restrict__ ad,
              int* __restrict__ asum, u32 cols, u32 n) {
    const u32 groups = (cols + GROUP - 1) / GROUP;
    const u32 lane = threadIdx.x & 31, g = blockIdx.x * 8 + (threadIdx.x >> 5), t = blockIdx.y;
    if (g >= groups || t >= n) return;  // whole warps
    const u32 k = g * GROUP + lane;
    const float v = k < cols ? x[(size_t)t * cols + k] : 0.0f;
    const float d = warp_max(fabsf(v)) / 127.0f;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    const int q = max(-127, min(127, __float2int_rn(__fmul_rn(v, id))));
    const size_t at = (size_t)t * groups + g;
    aq[at * GROUP + lane] = (signed char)q;
    const int sum = __reduce_add_sync(0xffffffffu, q);
    if (lane == 0) {
        ad[at] = d;
        asum[at] = sum;
    }
}

// out[t] = row ids[t] of the embedding table, dequantized; grid = n,
// block 256. q4/q8 tables are tiled (common.cuh): row `row` is row
// row % 8 of row block row / 8.
template <bool IS_Q4>
__device__ __forceinline__ void embed_tiled(const u32* __restrict__ ids, const unsigned char* __restrict__ qs,
                                            const __half* __restrict__ scales, float* __restrict__ out, u32 cols) {
    const u32 row = ids[blockIdx.x], groups = (cols + GROUP - 1) / GROUP, r = row % 8;
    for (u32 i = threadIdx.x; i < cols; i += blockDim.x) {
        const size_t tile = (size_t)(row / 8) * groups + i / GROUP;
        const int q = IS_Q4 ? q4_at(qs + tile * Q4_TILE, r, i % GROUP) : q8_at(qs + tile * Q8_TILE, r, i % GROUP);
        out[(size_t)blockIdx.x * cols + i] = (float)q * __half2float(scales[tile * 8 + r]);
    }
}

extern "C" __global__ void __launch_bounds__(256)
embed_q4(const u32* __restrict__ ids, const unsigned char* __restrict__ qs, const __half* __restrict__ scales,
         float* __restrict__ out, u32 cols) {
    embed_tiled<true>(ids, qs, scales, out, cols);
}

extern "C" __global__ void __launch_bounds__(256)
embed_q8(const u32* __restrict__ ids, const unsigned char* __restrict__ qs, const __half* __restrict__ scales,
         float* __restrict__ out, u32 cols) {
    embed_tiled<false>(ids, qs, scales, out, cols);
}

extern "C" __global__ void __launch_bounds__(256)
embed_f16(const u32* __restrict__ ids, const __half* __restrict__ w, const void* unused, float* __restrict__ out,
          u32 cols) {
    const u32 row = ids[blockIdx.x];
    for (u32 i = threadIdx.x; i < cols; i += blockDim.x)
        out[(size_t)blockIdx.x * cols + i] = __half2float(w[(size_t)row * cols + i]);
}

extern "C" __global__ void __launch_bounds__(256)
embed_f32(const u32* __restrict__ ids, const float* __restrict__ w, const void* unused, float* __restrict__ out,
          u32 cols) {
    const u32 row = ids[blockIdx.x];
    for (u32 i = threadIdx.x; i < cols; i += blockDim.x) out[(size_t)blockIdx.x * cols + i] = w[(size_t)row * cols + i];
}
