// MLA decode straight from the paged latent cache: one new token per
// sequence, its absorbed query [q_nope·W_UK | q_pe] (H heads of C + Dr = 576)
// attending over the sequence's cached rows [c | k_pe], the first C lanes of
// which are also the values. The context is split across blocks whose
// partial softmaxes a second kernel merges (flash-decoding, as FlashMLA does).
//
// 16-bit caches take the tensor cores through mma.sync (m16n8k16, bf16/f16
// in, f32 accumulate). A block holds 16·RT heads' queries in shared memory
// and streams the sequence's rows through a cp.async ring of 32-row tiles,
// so each cached row is read from memory once per 16·RT heads
// (once for DeepSeek-V2's 128 heads at RT = 4, two blocks sharing it in L2).
// Warp (r, half) owns heads 16r..16r+15: it computes their scores over its
// half of the 576 lanes, adds its partner's half through shared memory, runs
// the online softmax in registers (both partners get the same numbers), and
// accumulates P·V for its half of the 512 output lanes in registers
// (16 × 256 f32 per warp). The query and P are rounded to the cache's type
// for the tensor cores; the sums stay f32. Other storage types take the
// general path (gather + attention).
#pragma once
#if !defined(__CUDACC__)
#error "include <dsv2/cuda.cuh> from a .cu file compiled by nvcc"
#endif

#include "dsv2/backend/cuda/attention.cuh"
#include "dsv2/backend/shapes.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace dsv2 {
namespace cuda_detail {

constexpr int kDecRank = 512, kDecWidth = 576;  // C and C + Dr of DeepSeek-V2
constexpr int kDecKeys = 32;                    // cache rows per tile
constexpr int kDecPitch = kDecWidth + 8;        // shared row pitch, in elements: 1168 bytes
                                                // = 73 chunks of 16, odd, so ldmatrix rows hit distinct banks
constexpr int kDecChunks = kDecWidth * 2 / 16;  // 16-byte chunks per cached row
static_assert(kDecKeys * kDecChunks % 256 == 0, "a tile's chunks divide evenly among 64, 128 or 256 threads");

template <int RT>
constexpr int dec_threads() {
    return 64 * RT;  // two warps per 16 heads
}
// Tiles in the cp.async ring. Three, except for 16 heads, whose two warps
// would leave half of a multiprocessor's schedulers idle: two tiles let two
// blocks share a multiprocessor.
template <int RT>
constexpr int dec_stages() {
    return RT == 1 ? 2 : 3;
}
template <int RT>
constexpr std::size_t dec_smem() {
    return sizeof(std::uint16_t) * (16 * RT + dec_stages<RT>() * kDecKeys) * kDecPitch  // Q, K ring
           + sizeof(float) * 2 * RT * 32 * 16;                                           // partial scores
}

template <class T>
constexpr bool dec_is_bf16 = std::is_same_v<T, bf16>;

__device__ __forceinline__ std::uint32_t smem_addr(const void* p) {
    return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(std::uint32_t dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], std::uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], std::uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
// D += A·B, 16x8x16, A row-major and B column-major fragments.
template <bool Bf16>
__device__ __forceinline__ void mma16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
    if constexpr (Bf16) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}
// Two floats as a packed pair of the cache's type, low half first.
template <bool Bf16>
__device__ __forceinline__ std::uint32_t pack2(float lo, float hi) {
    if constexpr (Bf16) {
        const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<const std::uint32_t*>(&v);
    } else {
        const __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<const std::uint32_t*>(&v);
    }
}
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
// Synchronises the two warps (64 threads) of one group of 16 heads.
__device__ __forceinline__ void pair_barrier(int id) { asm volatile("bar.sync %0, 64;\n" ::"r"(id)); }

// grid (H / (16·RT), splits, B). Writes unnormalised partial outputs and
// their running max (natural-log units of the scaled score) and sum per
// (sequence, split, head).
template <class T, int RT>
__global__ void __launch_bounds__(dec_threads<RT>(), RT == 1 ? 2 : 1) mla_decode_split_kernel(
    const float* q, std::int64_t qs0, std::int64_t qs1, const T* pages, std::int64_t page_size,
    std::int64_t n_pages, const std::int32_t* tables, std::int64_t ts0, const std::int32_t* lengths,
    std::int64_t chunk, float scale, float* part_o, float* part_m, float* part_l, std::int64_t heads,
    DeviceErrors* errors) {
    constexpr bool kBf16 = dec_is_bf16<T>;
    constexpr int kThreads = dec_threads<RT>(), kHeads = 16 * RT, kDecStages = dec_stages<RT>();
    extern __shared__ __align__(128) unsigned char dec_smem_raw[];
    auto* qs = reinterpret_cast<std::uint16_t*>(dec_smem_raw);             // (16·RT, pitch)
    std::uint16_t* ring = qs + kHeads * kDecPitch;                          // (stages, 32, pitch)
    auto* partial = reinterpret_cast<float*>(ring + kDecStages * kDecKeys * kDecPitch);  // (2·RT warps, 16, 32 lanes)

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int rt = warp % RT, half = warp / RT;  // heads 16·rt.., lanes and outputs of this half
    const int g = lane / 4, c = lane % 4;        // fragment row and column pair
    const std::int64_t h0 = blockIdx.x * static_cast<std::int64_t>(kHeads), split = blockIdx.y, b = blockIdx.z;
    const std::int64_t len = lengths[b];
    const std::int64_t begin = split * chunk, end = begin + chunk < len ? begin + chunk : len;
    const std::int64_t splits = gridDim.y, base = (b * splits + split) * heads + h0;
    if (begin >= end) {  // a short sequence's empty split
        if (tid < kHeads) {
            part_m[base + tid] = -INFINITY;
            part_l[base + tid] = 0.f;
        }
        return;
    }
    const int n_tiles = static_cast<int>((end - begin + kDecKeys - 1) / kDecKeys);

    // Tile t of the ring: 32 rows, 72 chunks each, rows past the end zero.
    // Tiles start at multiples of 32, so with pages of a multiple of 32 rows
    // (64 in the model) a tile lies in one page: one table lookup per tile.
    const bool tile_in_page = page_size % kDecKeys == 0;
    auto load_tile = [&](int t) {
        if (t < n_tiles) {
            const std::int64_t start = begin + static_cast<std::int64_t>(t) * kDecKeys;
            const int rows = static_cast<int>(end - start < kDecKeys ? end - start : kDecKeys);
            const std::uint32_t dst = smem_addr(ring + (t % kDecStages) * kDecKeys * kDecPitch);
            if (tile_in_page) {
                const std::int64_t blk = tables[b * ts0 + start / page_size];
                const bool page_ok = blk >= 0 && blk < n_pages;
                if (!page_ok && tid == 0) report(errors, DeviceErrors::cache_page, blk, n_pages);
                const T* src = pages + (page_ok ? (blk * page_size + start % page_size) * kDecWidth : 0);
#pragma unroll 3
                for (int i = 0; i < kDecKeys * kDecChunks / kThreads; ++i) {
                    const int e = tid + i * kThreads, j = e / kDecChunks, v = e % kDecChunks;
                    const bool valid = page_ok && j < rows;
                    cp_async16(dst + 2 * (j * kDecPitch + v * 8), valid ? src + j * kDecWidth + v * 8 : pages, valid);
                }
            } else {
                for (int e = tid; e < kDecKeys * kDecChunks; e += kThreads) {
                    const int j = e / kDecChunks, v = e % kDecChunks;
                    bool valid = j < rows;
                    const T* src = pages;
                    if (valid) {
                        const std::int64_t key = start + j, blk = tables[b * ts0 + key / page_size];
                        if (blk >= 0 && blk < n_pages) {
                            src = pages + (blk * page_size + key % page_size) * kDecWidth + v * 8;
                        } else {
                            valid = false;
                            if (v == 0) report(errors, DeviceErrors::cache_page, blk, n_pages);
                        }
                    }
                    cp_async16(dst + 2 * (j * kDecPitch + v * 8), src, valid);
                }
            }
        }
        cp_async_commit();  // an empty group past the end keeps the count uniform
    };
    for (int t = 0; t < kDecStages - 1; ++t) load_tile(t);

    // The queries, rounded to the cache's type.
    for (int e = tid; e < kHeads * (kDecWidth / 2); e += kThreads) {
        const int h = e / (kDecWidth / 2), cc = 2 * (e % (kDecWidth / 2));
        const float* src = q + b * qs0 + (h0 + h) * qs1 + cc;
        *reinterpret_cast<std::uint32_t*>(qs + h * kDecPitch + cc) = pack2<kBf16>(src[0], src[1]);
    }

    float o[32][4];  // 16 heads x 256 output lanes: n-tile j holds lanes half·256 + 8j + 2c, +1
#pragma unroll
    for (int j = 0; j < 32; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f;  // rows g and g + 8
    const float scale_log2 = scale * 1.4426950408889634f;
    // ldmatrix row addresses: A (16 heads x 16 lanes), B of S (16 keys x 16 lanes), B of PV (trans).
    const std::uint32_t q_addr =
        smem_addr(qs + (16 * rt + lane % 16) * kDecPitch + (lane / 16) * 8 + half * (kDecWidth / 2));
    const int k_row = lane % 8 + (lane / 16) * 8, k_col = ((lane / 8) % 2) * 8 + half * (kDecWidth / 2);
    const int v_row = lane % 8 + ((lane / 8) % 2) * 8, v_col = (lane / 16) * 8 + half * (kDecRank / 2);
    float* my_partial = partial + warp * 16 * 32;
    const float* their_partial = partial + (rt + (1 - half) * RT) * 16 * 32;

    for (int t = 0; t < n_tiles; ++t) {
        cp_async_wait<kDecStages - 2>();
        __syncthreads();  // tile t is in; everyone is done with tile t - 1, whose stage the next load reuses
        load_tile(t + kDecStages - 1);
        const std::uint16_t* tile = ring + (t % kDecStages) * kDecKeys * kDecPitch;
        const std::uint32_t tile_addr = smem_addr(tile);

        // S (16 heads x 32 keys) over this warp's 288 lanes.
        float s[4][4];
#pragma unroll
        for (int j = 0; j < 4; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll 6
        for (int k = 0; k < kDecWidth / 2; k += 16) {
            std::uint32_t a[4], b01[4], b23[4];
            ldmatrix_x4(a, q_addr + 2 * k);
            ldmatrix_x4(b01, tile_addr + 2 * (k_row * kDecPitch + k_col + k));
            ldmatrix_x4(b23, tile_addr + 2 * ((k_row + 16) * kDecPitch + k_col + k));
            mma16816<kBf16>(s[0], a, b01[0], b01[1]);
            mma16816<kBf16>(s[1], a, b01[2], b01[3]);
            mma16816<kBf16>(s[2], a, b23[0], b23[1]);
            mma16816<kBf16>(s[3], a, b23[2], b23[3]);
        }
        // Add the partner's half of the lanes.
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int i = 0; i < 4; ++i) my_partial[(j * 4 + i) * 32 + lane] = s[j][i];
        pair_barrier(1 + rt);
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int i = 0; i < 4; ++i) s[j][i] += their_partial[(j * 4 + i) * 32 + lane];

        // Online softmax in base 2; keys past the end score -inf.
        const int valid = static_cast<int>(end - (begin + static_cast<std::int64_t>(t) * kDecKeys));
        float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const bool in = 8 * j + 2 * c + i < valid;
                s[j][i] = in ? s[j][i] * scale_log2 : -INFINITY;
                s[j][2 + i] = in ? s[j][2 + i] * scale_log2 : -INFINITY;
                mx_lo = fmaxf(mx_lo, s[j][i]);
                mx_hi = fmaxf(mx_hi, s[j][2 + i]);
            }
        }
#pragma unroll
        for (int off = 1; off < 4; off <<= 1) {
            mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, off));
            mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, off));
        }
        const float new_lo = fmaxf(m_lo, mx_lo), new_hi = fmaxf(m_hi, mx_hi);
        const float alpha_lo = fast_exp2(m_lo - new_lo), alpha_hi = fast_exp2(m_hi - new_hi);
        m_lo = new_lo;
        m_hi = new_hi;
        float sum_lo = 0.f, sum_hi = 0.f;
        std::uint32_t p[2][4];  // P as A fragments of two k-steps of 16 keys
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float p0 = fast_exp2(s[j][0] - new_lo), p1 = fast_exp2(s[j][1] - new_lo);
            const float p2 = fast_exp2(s[j][2] - new_hi), p3 = fast_exp2(s[j][3] - new_hi);
            sum_lo += p0 + p1;
            sum_hi += p2 + p3;
            p[j / 2][(j % 2) * 2] = pack2<kBf16>(p0, p1);
            p[j / 2][(j % 2) * 2 + 1] = pack2<kBf16>(p2, p3);
        }
        l_lo = l_lo * alpha_lo + sum_lo;  // a quad's partial sums; added across the quad at the end
        l_hi = l_hi * alpha_hi + sum_hi;
#pragma unroll
        for (int j = 0; j < 32; ++j) {
            o[j][0] *= alpha_lo;
            o[j][1] *= alpha_lo;
            o[j][2] *= alpha_hi;
            o[j][3] *= alpha_hi;
        }
        // O += P V over this warp's 256 output lanes; V is the first 512 lanes of the rows.
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
#pragma unroll
            for (int j = 0; j < 32; j += 2) {
                std::uint32_t v[4];
                ldmatrix_x4_trans(v, tile_addr + 2 * ((16 * kk + v_row) * kDecPitch + v_col + 8 * j));
                mma16816<kBf16>(o[j], p[kk], v[0], v[1]);
                mma16816<kBf16>(o[j + 1], p[kk], v[2], v[3]);
            }
        }
    }
    cp_async_wait<0>();

#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        l_lo += __shfl_xor_sync(0xffffffffu, l_lo, off);
        l_hi += __shfl_xor_sync(0xffffffffu, l_hi, off);
    }
    const std::int64_t row_lo = base + 16 * rt + g, row_hi = row_lo + 8;
#pragma unroll
    for (int j = 0; j < 32; ++j) {
        const int col = half * (kDecRank / 2) + 8 * j + 2 * c;
        *reinterpret_cast<float2*>(part_o + row_lo * kDecRank + col) = make_float2(o[j][0], o[j][1]);
        *reinterpret_cast<float2*>(part_o + row_hi * kDecRank + col) = make_float2(o[j][2], o[j][3]);
    }
    if (half == 0 && c == 0) {
        constexpr float ln2 = 0.6931471805599453f;
        part_m[row_lo] = m_lo * ln2;
        part_m[row_hi] = m_hi * ln2;
        part_l[row_lo] = l_lo;
        part_l[row_hi] = l_hi;
    }
}

// grid (H, B): merges the splits of one (sequence, head).
template <int = 0>
__global__ void mla_decode_combine_kernel(const float* part_o, const float* part_m, const float* part_l,
                                          std::int64_t splits, std::int64_t heads, float* out, std::int64_t os0,
                                          std::int64_t os1) {
    const std::int64_t h = blockIdx.x, b = blockIdx.y;
    float mx = -INFINITY;
    for (std::int64_t s = 0; s < splits; ++s) mx = fmaxf(mx, part_m[(b * splits + s) * heads + h]);
    float total = 0.f;
    for (std::int64_t s = 0; s < splits; ++s) {
        const std::int64_t i = (b * splits + s) * heads + h;
        if (part_l[i] > 0.f) total += part_l[i] * __expf(part_m[i] - mx);
    }
    for (int c = threadIdx.x; c < kDecRank; c += blockDim.x) {
        float acc = 0.f;
        for (std::int64_t s = 0; s < splits; ++s) {
            const std::int64_t i = (b * splits + s) * heads + h;
            if (part_l[i] > 0.f) acc += part_o[i * kDecRank + c] * __expf(part_m[i] - mx);
        }
        out[b * os0 + h * os1 + c] = acc / total;
    }
}

// Splits of the context per (sequence, head group): as few as fill the GPU's
// `slots` (multiprocessors x resident blocks) in whole waves, since each
// split costs a partial output and a share of the merge.
inline std::int64_t decode_splits(std::int64_t units, std::int64_t tiles, std::int64_t slots) {
    std::int64_t best = 1, best_cost = std::numeric_limits<std::int64_t>::max();
    for (std::int64_t s = 1; s <= std::min<std::int64_t>(tiles, 1024); ++s) {
        const std::int64_t waves = (units * s + slots - 1) / slots, per_split = (tiles + s - 1) / s;
        const std::int64_t cost = waves * (per_split + 2);  // + 2: a split's fixed cost, in tiles
        if (cost < best_cost) {
            best = s;
            best_cost = cost;
        }
    }
    return best;
}

template <class T, int RT>
void mla_decode_tensor_cores(Context<cuda>& ctx, View<const float, cuda, 3> q, View<const T, cuda, 3> pages,
                             View<const std::int32_t, cuda, 2> block_tables, const std::vector<std::int64_t>& lengths,
                             std::int64_t max_len, double scale, View<float, cuda, 3> out) {
    const std::int64_t batch = q.shape[0], heads = q.shape[1], page = pages.shape[1];
    int sms = 0;
    DSV2_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, ctx.device));
    const std::int64_t head_blocks = heads / (16 * RT), tiles = (max_len + kDecKeys - 1) / kDecKeys;
    const std::int64_t splits = std::min<std::int64_t>(decode_splits(batch * head_blocks, tiles, sms * (RT == 1 ? 2 : 1)), 65535);
    const std::int64_t chunk = (tiles + splits - 1) / splits * kDecKeys;
    std::vector<std::int32_t> lens32(lengths.begin(), lengths.end());
    const std::size_t parts = static_cast<std::size_t>(batch * splits * heads);
    char* base = static_cast<char*>(ctx.scratch(align_up(parts * kDecRank * sizeof(float)) +
                                                2 * align_up(parts * sizeof(float)) +
                                                align_up(static_cast<std::size_t>(batch) * sizeof(std::int32_t))));
    auto* part_o = reinterpret_cast<float*>(base);
    auto* part_m = reinterpret_cast<float*>(base + align_up(parts * kDecRank * sizeof(float)));
    auto* part_l = reinterpret_cast<float*>(reinterpret_cast<char*>(part_m) + align_up(parts * sizeof(float)));
    auto* dev_lens = reinterpret_cast<std::int32_t*>(reinterpret_cast<char*>(part_l) + align_up(parts * sizeof(float)));
    // Pageable source: the copy is staged before the call returns, so no
    // stream synchronisation is needed (a decode step stays asynchronous).
    DSV2_CUDA_CHECK(cudaMemcpyAsync(dev_lens, lens32.data(), lens32.size() * sizeof(std::int32_t),
                                    cudaMemcpyHostToDevice, ctx.stream));
    constexpr std::size_t smem = dec_smem<RT>();
    DSV2_CUDA_CHECK(cudaFuncSetAttribute(mla_decode_split_kernel<T, RT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem)));
    const dim3 grid(static_cast<unsigned>(head_blocks), static_cast<unsigned>(splits), static_cast<unsigned>(batch));
    mla_decode_split_kernel<T, RT><<<grid, dec_threads<RT>(), smem, ctx.stream>>>(
        q.data, q.stride[0], q.stride[1], pages.data, page, pages.shape[0], block_tables.data, block_tables.stride[0],
        dev_lens, chunk, static_cast<float>(scale), part_o, part_m, part_l, heads, ctx.device_errors());
    DSV2_CUDA_LAUNCHED();
    mla_decode_combine_kernel<<<dim3(static_cast<unsigned>(heads), static_cast<unsigned>(batch)), 128, 0, ctx.stream>>>(
        part_o, part_m, part_l, splits, heads, out.data, out.stride[0], out.stride[1]);
    DSV2_CUDA_LAUNCHED();
}

}  // namespace cuda_detail

// out[b, h] = softmax(scale · q[b, h] · Kᵀ) V over the first lengths[b] cached
// rows of sequence b (block table row b), the query at the last position.
template <class T>
void mla_decode(Context<cuda>& ctx,
                View<const float, cuda, 3> q,                      // (B, H, C+Dr)
                View<const T, cuda, 3> pages,                      // (P, page_size, C+Dr)
                View<const std::int32_t, cuda, 2> block_tables,    // (B, max_blocks)
                const std::vector<std::int64_t>& lengths,          // (B), host
                double scale,
                View<float, cuda, 3> out)                          // (B, H, C)
{
    using namespace cuda_detail;
    const std::int64_t max_len = check_mla_decode(q, pages, block_tables, lengths, out);
    const std::int64_t batch = q.shape[0], heads = q.shape[1], w = q.shape[2], rank = out.shape[2];
    const std::int64_t page = pages.shape[1];
    if (batch == 0) return;
    constexpr bool tensor_cores = std::is_same_v<T, bf16> || std::is_same_v<T, f16>;
    if (!tensor_cores || w != kDecWidth || rank != kDecRank || heads % 16 != 0 || batch > 65535) {
        // The general path: gather each sequence's rows, then attention.
        Tensor<float, cuda, 2> rows({max_len, w});
        for (std::int64_t b = 0; b < batch; ++b) {
            const std::int64_t len = lengths[static_cast<std::size_t>(b)];
            cache_gather(ctx, pages, block_tables[b], rows.view().rows(0, len));
            const View<const float, cuda, 3> keys(rows.data(), {len, 1, w});
            const View<const float, cuda, 3> values(rows.data(), {len, 1, rank}, {w, w, 1});
            attention(ctx, q.rows(b, b + 1), keys, values, len - 1, scale, out.rows(b, b + 1));
        }
        synchronize(ctx);  // `rows` is freed on return
        return;
    }
    if constexpr (tensor_cores) {
        if (heads % 64 == 0) {
            cuda_detail::mla_decode_tensor_cores<T, 4>(ctx, q, pages, block_tables, lengths, max_len, scale, out);
        } else if (heads % 32 == 0) {
            cuda_detail::mla_decode_tensor_cores<T, 2>(ctx, q, pages, block_tables, lengths, max_len, scale, out);
        } else {
            cuda_detail::mla_decode_tensor_cores<T, 1>(ctx, q, pages, block_tables, lengths, max_len, scale, out);
        }
    }
}

}  // namespace dsv2
