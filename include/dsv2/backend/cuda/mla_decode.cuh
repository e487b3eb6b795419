// MLA decode straight from the paged latent cache: one new token per
// sequence, its absorbed query [q_nope·W_UK | q_pe] (H heads of C + Dr = 576)
// attending over the sequence's cached rows [c | k_pe], the first C lanes of
// which are also the values. Memory-bound by design: each cache row is read
// from HBM once per group of heads, with 16-byte loads, and the context is
// split across blocks whose partial softmaxes are merged by a second kernel
// (flash-decoding, as FlashMLA does).
//
// 16-bit caches use tensor cores (WMMA, bf16/f16 in, f32 accumulate): a
// block holds 32 heads' queries and a tile of 32 cache rows in shared memory,
// S = Q Kᵀ and O += P V are 16x16x16 MMAs, the online softmax runs between
// them. Other storage types take the general path (gather + attention).
//
// This is a first tensor-core version: no cp.async pipelining and no wgmma,
// so it is not yet at FlashMLA's ~90% of peak bandwidth.
#pragma once
#if !defined(__CUDACC__)
#error "include <dsv2/cuda.cuh> from a .cu file compiled by nvcc"
#endif

#include "dsv2/backend/cuda/attention.cuh"
#include "dsv2/backend/shapes.hpp"

#include <mma.h>

#include <vector>

namespace dsv2 {
namespace cuda_detail {

constexpr int kDecRank = 512, kDecWidth = 576;  // C and C + Dr of DeepSeek-V2
constexpr int kDecHeads = 32;                   // heads per block
constexpr int kDecKeys = 32;                    // cache rows per tile
constexpr int kDecThreads = 256;

template <class T>
using wmma_t = std::conditional_t<std::is_same_v<T, bf16>, __nv_bfloat16, __half>;

constexpr std::size_t kDecSmem = sizeof(float) * kDecHeads * kDecRank      // O
                                 + 2 * kDecHeads * kDecWidth               // Q
                                 + 2 * kDecKeys * kDecWidth                // K tile
                                 + sizeof(float) * kDecHeads * kDecKeys    // S
                                 + 2 * kDecHeads * kDecKeys                // P
                                 + sizeof(float) * 3 * kDecHeads;          // m, l, correction

// grid (H / kDecHeads, splits, B). Writes unnormalised partial outputs and
// their running max and sum per (sequence, split, head).
template <class T>
__global__ void __launch_bounds__(kDecThreads) mla_decode_split_kernel(
    const float* q, std::int64_t qs0, std::int64_t qs1, const T* pages, std::int64_t page_size,
    std::int64_t n_pages, const std::int32_t* tables, std::int64_t ts0, const std::int32_t* lengths,
    std::int64_t chunk, float scale, float* part_o, float* part_m, float* part_l, std::int64_t heads,
    DeviceErrors* errors) {
    namespace wmma = nvcuda::wmma;
    using W = wmma_t<T>;
    extern __shared__ __align__(128) unsigned char dec_smem[];
    float* o = reinterpret_cast<float*>(dec_smem);            // (32, 512)
    W* qs = reinterpret_cast<W*>(o + kDecHeads * kDecRank);   // (32, 576)
    W* ks = qs + kDecHeads * kDecWidth;                       // (32, 576)
    float* s = reinterpret_cast<float*>(ks + kDecKeys * kDecWidth);  // (32 heads, 32 keys)
    W* p = reinterpret_cast<W*>(s + kDecHeads * kDecKeys);    // (32, 32)
    float* m = reinterpret_cast<float*>(p + kDecHeads * kDecKeys);
    float* l = m + kDecHeads;
    float* corr = l + kDecHeads;

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const std::int64_t h0 = blockIdx.x * static_cast<std::int64_t>(kDecHeads), split = blockIdx.y, b = blockIdx.z;
    const std::int64_t len = lengths[b];
    const std::int64_t begin = split * chunk, end = begin + chunk < len ? begin + chunk : len;
    const std::int64_t splits = gridDim.y;

    for (int e = tid; e < kDecHeads * kDecRank; e += kDecThreads) o[e] = 0.f;
    for (int e = tid; e < kDecHeads * kDecWidth; e += kDecThreads) {
        const int h = e / kDecWidth, c = e % kDecWidth;
        store(reinterpret_cast<T*>(qs) + e, q[b * qs0 + (h0 + h) * qs1 + c]);
    }
    if (tid < kDecHeads) {
        m[tid] = -INFINITY;
        l[tid] = 0.f;
    }
    __syncthreads();

    for (std::int64_t start = begin; start < end; start += kDecKeys) {
        const int n_keys = static_cast<int>(end - start < kDecKeys ? end - start : kDecKeys);
        // 1. The tile of cache rows, 16 bytes per load; rows past the end are zero.
        constexpr int vec_per_row = kDecWidth * 2 / 16;
        for (int e = tid; e < kDecKeys * vec_per_row; e += kDecThreads) {
            const int j = e / vec_per_row, v = e % vec_per_row;
            uint4 val = make_uint4(0, 0, 0, 0);
            if (j < n_keys) {
                const std::int64_t key = start + j;
                const std::int64_t blk = tables[b * ts0 + key / page_size];
                if (blk >= 0 && blk < n_pages) {
                    val = reinterpret_cast<const uint4*>(pages + (blk * page_size + key % page_size) * kDecWidth)[v];
                } else if (v == 0) {
                    report(errors, DeviceErrors::cache_page, blk, n_pages);  // the table is in device memory
                }
            }
            reinterpret_cast<uint4*>(ks + j * kDecWidth)[v] = val;
        }
        __syncthreads();
        // 2. S = Q Kᵀ: four 16x16 tiles, warps 0-3.
        if (warp < 4) {
            const int ti = warp / 2, tj = warp % 2;
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.f);
            for (int k = 0; k < kDecWidth; k += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, W, wmma::row_major> fa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, W, wmma::col_major> fb;
                wmma::load_matrix_sync(fa, qs + ti * 16 * kDecWidth + k, kDecWidth);
                wmma::load_matrix_sync(fb, ks + tj * 16 * kDecWidth + k, kDecWidth);
                wmma::mma_sync(acc, fa, fb, acc);
            }
            wmma::store_matrix_sync(s + ti * 16 * kDecKeys + tj * 16, acc, kDecKeys, wmma::mem_row_major);
        }
        __syncthreads();
        // 3. Online softmax: each warp takes 4 heads, one key per lane.
        for (int h = warp; h < kDecHeads; h += kDecThreads / 32) {
            const float x = lane < n_keys ? s[h * kDecKeys + lane] * scale : -INFINITY;
            const float m_new = fmaxf(m[h], warp_max(x));
            const float pv = lane < n_keys ? __expf(x - m_new) : 0.f;
            const float sum = warp_sum(pv);
            store(reinterpret_cast<T*>(p) + h * kDecKeys + lane, pv);
            if (lane == 0) {
                const float c = __expf(m[h] - m_new);
                corr[h] = c;
                l[h] = l[h] * c + sum;
                m[h] = m_new;
            }
        }
        __syncthreads();
        for (int e = tid; e < kDecHeads * kDecRank; e += kDecThreads) o[e] *= corr[e / kDecRank];
        __syncthreads();
        // 4. O += P V: 2 x 32 tiles of 16x16, eight per warp; V is the first 512 lanes of K.
        for (int t = warp; t < 2 * (kDecRank / 16); t += kDecThreads / 32) {
            const int ti = t / (kDecRank / 16), tc = t % (kDecRank / 16);
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::load_matrix_sync(acc, o + ti * 16 * kDecRank + tc * 16, kDecRank, wmma::mem_row_major);
            for (int k = 0; k < kDecKeys; k += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, W, wmma::row_major> fa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, W, wmma::row_major> fb;
                wmma::load_matrix_sync(fa, p + ti * 16 * kDecKeys + k, kDecKeys);
                wmma::load_matrix_sync(fb, ks + k * kDecWidth + tc * 16, kDecWidth);
                wmma::mma_sync(acc, fa, fb, acc);
            }
            wmma::store_matrix_sync(o + ti * 16 * kDecRank + tc * 16, acc, kDecRank, wmma::mem_row_major);
        }
        __syncthreads();
    }
    const std::int64_t base = (b * splits + split) * heads + h0;
    for (int e = tid; e < kDecHeads * kDecRank; e += kDecThreads) part_o[base * kDecRank + e] = o[e];
    if (tid < kDecHeads) {
        part_m[base + tid] = m[tid];
        part_l[base + tid] = l[tid];
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
    if (!tensor_cores || w != kDecWidth || rank != kDecRank || heads % kDecHeads != 0 || batch > 65535) {
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
        int sms = 0;
        DSV2_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, ctx.device));
        const std::int64_t head_blocks = heads / kDecHeads, tiles = (max_len + kDecKeys - 1) / kDecKeys;
        const std::int64_t want = (2 * sms + batch * head_blocks - 1) / (batch * head_blocks);
        const std::int64_t splits = std::clamp<std::int64_t>(want, 1, std::min<std::int64_t>(tiles, 65535));
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
        copy_to_device(ctx, lens32.data(), dev_lens, batch);
        DSV2_CUDA_CHECK(cudaFuncSetAttribute(mla_decode_split_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(kDecSmem)));
        const dim3 grid(static_cast<unsigned>(head_blocks), static_cast<unsigned>(splits), static_cast<unsigned>(batch));
        mla_decode_split_kernel<T><<<grid, kDecThreads, kDecSmem, ctx.stream>>>(
            q.data, q.stride[0], q.stride[1], pages.data, page, pages.shape[0], block_tables.data,
            block_tables.stride[0], dev_lens, chunk, static_cast<float>(scale), part_o, part_m, part_l, heads,
            ctx.device_errors());
        DSV2_CUDA_LAUNCHED();
        mla_decode_combine_kernel<<<dim3(static_cast<unsigned>(heads), static_cast<unsigned>(batch)), 128, 0,
                                    ctx.stream>>>(part_o, part_m, part_l, splits, heads, out.data, out.stride[0],
                                                  out.stride[1]);
        DSV2_CUDA_LAUNCHED();
    }
}

}  // namespace dsv2
