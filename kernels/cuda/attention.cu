// Attention over the KV cache. The cache of one layer is `[max_ctx][kv_dim]`
// keys and the same for values (f16 or f32), keys already rotated; the
// query at absolute position p attends to keys lo..=p (lo > 0 only under a
// sliding window). Scores are scale * dot(q, k); softmax in f32.
//
// Decode (one query per head), flash-decoding: attn_decode_* splits the
// key range into chunks (grid = heads x splits, host: cuda/src/launch.rs,
// decode_splits); each block writes its chunk's max, sum of exponentials
// and unnormalized output; attn_combine merges the chunks per head.
//
// Prefill, flash-attention style: attn_prefill_* gives a block 16 queries
// of one head (4 warps x 4 queries); key/value tiles of 32 keys are staged in
// shared memory and each query keeps an online softmax (running max, sum,
// output) in registers. head_dim <= 128.
#include "common.cuh"

#define ATT_THREADS 128
#define ATT_MAX_CHUNK 256
#define ATT_MAX_HD 256
#define PF_QPB 16
#define PF_QPW 4
#define PF_KT 32
#define PF_MAX_HD 128

__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ float ld(const __half* p) { return __half2float(*p); }

template <typename T>
__device__ __forceinline__ void attn_decode(const float* __restrict__ q, const T* __restrict__ kc,
                                            const T* __restrict__ vc, float* __restrict__ part_o,
                                            float* __restrict__ part_ml, u32 group, u32 hd, u32 kv_dim, u32 key_lo,
                                            u32 key_hi, u32 chunk, float scale) {
    __shared__ float qs[ATT_MAX_HD];
    __shared__ float sc[ATT_MAX_CHUNK];
    __shared__ float red[32];
    const u32 h = blockIdx.x, s = blockIdx.y, splits = gridDim.y;
    const u32 kvh = h / group;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const u32 start = key_lo + s * chunk;
    const u32 end = min(key_hi, start + chunk);
    const u32 nk = end > start ? end - start : 0;
    for (u32 d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = q[h * hd + d];
    __syncthreads();
    for (u32 j = warp; j < nk; j += warps) {
        const T* k = kc + (size_t)(start + j) * kv_dim + kvh * hd;
        float dot = 0.0f;
        for (u32 d = lane; d < hd; d += WARP) dot += qs[d] * ld(k + d);
        dot = warp_sum(dot);
        if (lane == 0) sc[j] = scale * dot;
    }
    __syncthreads();
    float m = -INFINITY;
    for (u32 j = threadIdx.x; j < nk; j += blockDim.x) m = fmaxf(m, sc[j]);
    m = warp_max(m);
    __syncthreads();
    if (lane == 0) red[warp] = m;
    __syncthreads();
    m = -INFINITY;
    for (int w = 0; w < warps; w++) m = fmaxf(m, red[w]);
    float l = 0.0f;
    for (u32 j = threadIdx.x; j < nk; j += blockDim.x) {
        const float p = expf(sc[j] - m);
        sc[j] = p;
        l += p;
    }
    l = block_sum(l, red);  // synchronizes: sc is complete
    for (u32 d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.0f;
        for (u32 j = 0; j < nk; j++) o += sc[j] * ld(vc + (size_t)(start + j) * kv_dim + kvh * hd + d);
        part_o[((size_t)h * splits + s) * hd + d] = o;
    }
    if (threadIdx.x == 0) {
        part_ml[((size_t)h * splits + s) * 2] = m;
        part_ml[((size_t)h * splits + s) * 2 + 1] = l;
    }
}

extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attn_decode_f16(const float* q, const __half* kc, const __half* vc, float* part_o, float* part_ml, u32 group, u32 hd,
                u32 kv_dim, u32 key_lo, u32 key_hi, u32 chunk, float scale) {
    attn_decode(q, kc, vc, part_o, part_ml, group, hd, kv_dim, key_lo, key_hi, chunk, scale);
}

extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attn_decode_f32(const float* q, const float* kc, const float* vc, float* part_o, float* part_ml, u32 group, u32 hd,
                u32 kv_dim, u32 key_lo, u32 key_hi, u32 chunk, float scale) {
    attn_decode(q, kc, vc, part_o, part_ml, group, hd, kv_dim, key_lo, key_hi, chunk, scale);
}

// out[h * hd + d] = sum_s e^(m_s - M) o_s[d] / sum_s e^(m_s - M) l_s.
// grid = heads, block = ATT_THREADS.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attn_combine(const float* __restrict__ part_o, const float* __restrict__ part_ml, float* __restrict__ out, u32 hd,
             u32 splits) {
    const u32 h = blockIdx.x;
    float m = -INFINITY;
    for (u32 s = 0; s < splits; s++) m = fmaxf(m, part_ml[((size_t)h * splits + s) * 2]);
    float l = 0.0f;
    for (u32 s = 0; s < splits; s++) {
        const size_t at = ((size_t)h * splits + s) * 2;
        l += expf(part_ml[at] - m) * part_ml[at + 1];
    }
    const float inv = 1.0f / l;
    for (u32 d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.0f;
        for (u32 s = 0; s < splits; s++) {
            const size_t at = (size_t)h * splits + s;
            o += expf(part_ml[at * 2] - m) * part_o[at * hd + d];
        }
        out[h * hd + d] = o * inv;
    }
}

// q and out are [n][n_heads * hd]; query t sits at absolute position
// pos0 + t and attends to keys max(0, pos + 1 - window)..=pos (window 0:
// none). grid = (n_heads, ceil(n / 16)), block = 128.
template <typename T>
__device__ __forceinline__ void attn_prefill(const float* __restrict__ q, const T* __restrict__ kc,
                                             const T* __restrict__ vc, float* __restrict__ out, u32 n, u32 pos0,
                                             u32 group, u32 hd, u32 kv_dim, u32 window, float scale) {
    __shared__ float ks[PF_KT][PF_MAX_HD + 1];
    __shared__ float vs[PF_KT][PF_MAX_HD + 1];
    __shared__ float qs[PF_QPB][PF_MAX_HD];
    const u32 h = blockIdx.x, n_heads = gridDim.x, kvh = h / group, q_dim = n_heads * hd;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 t0 = blockIdx.y * PF_QPB;
    const u32 t_last = min(n, t0 + PF_QPB) - 1;
    for (u32 i = threadIdx.x; i < PF_QPB * hd; i += blockDim.x) {
        const u32 qi = i / hd, d = i % hd, t = t0 + qi;
        qs[qi][d] = t < n ? q[(size_t)t * q_dim + h * hd + d] : 0.0f;
    }
    const u32 first_pos = pos0 + t0;
    const u32 block_lo = window && first_pos + 1 > window ? first_pos + 1 - window : 0;
    const u32 block_hi = pos0 + t_last + 1;  // exclusive
    float m[PF_QPW], l[PF_QPW], o[PF_QPW][PF_MAX_HD / WARP];
#pragma unroll
    for (int i = 0; i < PF_QPW; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < PF_MAX_HD / WARP; c++) o[i][c] = 0.0f;
    }
    for (u32 kt = block_lo; kt < block_hi; kt += PF_KT) {
        __syncthreads();
        for (u32 i = threadIdx.x; i < PF_KT * hd; i += blockDim.x) {
            const u32 j = i / hd, d = i % hd, key = kt + j;
            const bool ok = key < block_hi;
            ks[j][d] = ok ? ld(kc + (size_t)key * kv_dim + kvh * hd + d) : 0.0f;
            vs[j][d] = ok ? ld(vc + (size_t)key * kv_dim + kvh * hd + d) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < PF_QPW; i++) {
            const u32 qi = warp * PF_QPW + i, t = t0 + qi;
            if (t >= n) continue;
            const u32 pos = pos0 + t;
            const u32 lo = window && pos + 1 > window ? pos + 1 - window : 0;
            const u32 key = kt + lane;
            const bool valid = key >= lo && key <= pos;
            float s = -INFINITY;
            if (valid) {
                float dot = 0.0f;
                for (u32 d = 0; d < hd; d++) dot += qs[qi][d] * ks[lane][d];
                s = scale * dot;
            }
            const float tile_max = warp_max(s);
            if (tile_max == -INFINITY) continue;
            const float m_new = fmaxf(m[i], tile_max);
            const float corr = expf(m[i] - m_new);
            const float p = valid ? expf(s - m_new) : 0.0f;
            l[i] = l[i] * corr + warp_sum(p);
            m[i] = m_new;
#pragma unroll
            for (int c = 0; c < PF_MAX_HD / WARP; c++) o[i][c] *= corr;
            for (int j = 0; j < PF_KT; j++) {
                const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
                for (int c = 0; c < PF_MAX_HD / WARP; c++) {
                    const u32 d = lane + WARP * c;
                    if (d < hd) o[i][c] += pj * vs[j][d];
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < PF_QPW; i++) {
        const u32 t = t0 + warp * PF_QPW + i;
        if (t >= n) continue;
        const float inv = 1.0f / l[i];
#pragma unroll
        for (int c = 0; c < PF_MAX_HD / WARP; c++) {
            const u32 d = lane + WARP * c;
            if (d < hd) out[(size_t)t * q_dim + h * hd + d] = o[i][c] * inv;
        }
    }
}

extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attn_prefill_f16(const float* q, const __half* kc, const __half* vc, float* out, u32 n, u32 pos0, u32 group, u32 hd,
                 u32 kv_dim, u32 window, float scale) {
    attn_prefill(q, kc, vc, out, n, pos0, group, hd, kv_dim, window, scale);
}

extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attn_prefill_f32(const float* q, const float* kc, const float* vc, float* out, u32 n, u32 pos0, u32 group, u32 hd,
                 u32 kv_dim, u32 window, float scale) {
    attn_prefill(q, kc, vc, out, n, pos0, group, hd, kv_dim, window, scale);
}
