// Shared helpers of Ferrite's CUDA kernels (included by every .cu file).
//
// Weight layouts are those of format/src/quant.rs (format version 2): a
// quantized [rows, cols] tensor is a quants plane of 8-row TILES followed by
// a scales plane. Rows are taken in blocks of 8 (padded to a multiple of 8
// with zero rows of scale 0), groups(cols) groups of 32 per row. For row
// block b and group g, tile (b * groups + g) holds that group of rows
// 8b .. 8b+8 as 32-byte chunks; bytes 4r .. 4r+4 of a chunk belong to row
// 8b + r:
//   q4 tile, 128 bytes (4 chunks): byte 4r + i of chunk c holds element
//      4c + i (low nibble) and 16 + 4c + i (high nibble), each q + 8;
//   q8 tile, 256 bytes (8 chunks): byte 4r + i of chunk c is element 4c + i
//      stored excess-128 (the unsigned byte q + 128).
// So the 32-bit word w of a tile is row (w % 8)'s four consecutive quants
// of chunk w / 8. Block b's tiles are one contiguous run of groups * 128
// (q4) or groups * 256 (q8) bytes. Scales plane: for tile (b, g) the 8 rows'
// f16 scales, in row order (16 bytes). f16/f32 tensors are plain row-major.
//
// Activations multiplied with q4/q8 weights are int8 per group of 32
// (elementwise.cu: quantize_acts, as reference::quantize_acts): for token
// t and group g, aq[(t * groups + g) * 32 + j], scale ad[t * groups + g]
// and sum asum[t * groups + g].
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

// Tile (b, g) of a q4 / q8 tensor, as bytes from the start of the quants.
#define Q4_TILE 128
#define Q8_TILE 256

// Element j (0..31) of row r (0..7) of a q4 tile, as its signed value.
__device__ __forceinline__ int q4_at(const unsigned char* tile, u32 r, u32 j) {
    const u32 k = j & 15;
    const u32 b = tile[(k >> 2) * 32 + r * 4 + (k & 3)];
    return (int)(j < 16 ? (b & 15u) : (b >> 4)) - 8;
}

// Element j (0..31) of row r (0..7) of a q8 tile, as its signed value.
__device__ __forceinline__ int q8_at(const unsigned char* tile, u32 r, u32 j) {
    return (int)tile[(j >> 2) * 32 + r * 4 + (j & 3)] - 128;
}

// A q8 word (four excess-128 bytes) as four signed bytes: q + 128 xor 0x80
// is q in two's complement.
__device__ __forceinline__ int q8_signed(u32 word) { return (int)(word ^ 0x80808080u); }

// The low / high nibbles of a q4 word as four bytes q + 8 (0..15, so also
// valid signed bytes for __dp4a; the + 8 is corrected with the
// activations' sum).
__device__ __forceinline__ int q4_lo(u32 word) { return (int)(word & 0x0F0F0F0Fu); }
__device__ __forceinline__ int q4_hi(u32 word) { return (int)((word >> 4) & 0x0F0F0F0Fu); }
