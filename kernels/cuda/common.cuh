// Shared helpers of Ferrite's CUDA kernels (included by every .cu file).
//
// Weight layouts are those of format/src/quant.rs: a quantized [rows, cols]
// tensor is a quants plane (rows x groups(cols) groups, a q4 group is 16
// bytes: byte j holds element j in its low nibble and element j + 16 in its
// high nibble, each stored as q + 8; a q8 group is 32 signed bytes) followed
// by one f16 scale per group. Rows are padded to whole groups with zero
// quants. f16/f32 tensors are plain row-major [rows, cols].
#pragma once
#include <cuda_fp16.h>

#define GROUP 32
#define WARP 32

typedef unsigned int u32;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result. `red` is 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < warps ? red[lane] : 0.0f;
    return warp_sum(v);
}

// Byte k (0..3) of `word`, an unsigned value 0..255, as a float plus 2^23:
// the byte becomes the low mantissa bits of 0x4B0000xx (no int-to-float
// conversion instruction). Subtracting 2^23 + bias gives the signed value
// exactly.
__device__ __forceinline__ float byte_as_float(u32 word, u32 k, float magic_plus_bias) {
    return __int_as_float((int)__byte_perm(word, 0x4B000000u, 0x7540u + k)) - magic_plus_bias;
}

// Value of element j (0..31) of q4 group `g` (16 bytes).
__device__ __forceinline__ float q4_elem(const unsigned char* g, u32 j) {
    const u32 b = g[j & 15];
    return (float)((int)(j < 16 ? (b & 15u) : (b >> 4)) - 8);
}
