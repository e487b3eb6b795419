// Attention on the GPU, and the latent-cache row movement it needs. Same
// contract as backend/cpu/attention.hpp: queries of one sequence at
// consecutive positions attend causally to its keys, H query heads over Hk
// key/value heads (the absorbed MLA path is Hk = 1 over the latent rows).
//
// The kernel is the simple, correct one: one block per (query token, query
// head), keys in tiles of one per thread, an online softmax (running max and
// sum, the accumulator rescaled per tile), so any context length fits. The
// bandwidth-bound decode kernel over the paged cache is mla_decode.cuh.
#pragma once
#if !defined(__CUDACC__)
#error "include <dsv2/cuda.cuh> from a .cu file compiled by nvcc"
#endif

#include "dsv2/backend/cuda/elementwise.cuh"
#include "dsv2/backend/shapes.hpp"

#include <limits>

namespace dsv2 {
namespace cuda_detail {

constexpr int kAttnThreads = 128;  // also the key tile: one score per thread

template <class A>
__global__ void attention_kernel(const A* q, std::int64_t qs0, std::int64_t qs1,  //
                                 const A* k, std::int64_t ks0, std::int64_t ks1,  //
                                 const A* v, std::int64_t vs0, std::int64_t vs1,  //
                                 A* out, std::int64_t os0, std::int64_t os1,       //
                                 std::int64_t dk, std::int64_t dv, std::int64_t group, std::int64_t first_position,
                                 A scale) {
    extern __shared__ unsigned char attn_smem[];
    A* qs = reinterpret_cast<A*>(attn_smem);  // (dk)
    A* scores = qs + dk;                      // (kAttnThreads)
    A* acc = scores + kAttnThreads;           // (dv)
    A* red = acc + dv;                        // (32)
    const std::int64_t i = blockIdx.x, h = blockIdx.y, g = h / group;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, warps = blockDim.x / 32;
    const A* qrow = q + i * qs0 + h * qs1;
    for (std::int64_t c = tid; c < dk; c += blockDim.x) qs[c] = qrow[c];
    for (std::int64_t c = tid; c < dv; c += blockDim.x) acc[c] = A(0);
    __syncthreads();
    const std::int64_t visible = first_position + i + 1;
    A m = -std::numeric_limits<A>::infinity(), l = A(0);
    for (std::int64_t start = 0; start < visible; start += kAttnThreads) {
        const int len = static_cast<int>(visible - start < kAttnThreads ? visible - start : kAttnThreads);
        for (int kk = warp; kk < len; kk += warps) {
            const A* key = k + (start + kk) * ks0 + g * ks1;
            A dot = A(0);
            for (std::int64_t c = lane; c < dk; c += 32) dot += qs[c] * key[c];
            dot = warp_sum(dot);
            if (lane == 0) scores[kk] = dot * scale;
        }
        __syncthreads();
        const A tile_max = block_max(tid < len ? scores[tid] : -std::numeric_limits<A>::infinity(), red);
        const A new_m = tile_max > m ? tile_max : m;
        const A corr = exp(m - new_m);
        const A p = tid < len ? exp(scores[tid] - new_m) : A(0);
        __syncthreads();  // every thread has read its score before it is overwritten
        if (tid < len) scores[tid] = p;
        l = l * corr + block_sum(p, red);  // block_sum's barriers publish the probabilities
        m = new_m;
        for (std::int64_t c = tid; c < dv; c += blockDim.x) {
            A a = acc[c] * corr;
            const A* vcol = v + start * vs0 + g * vs1 + c;
            for (int kk = 0; kk < len; ++kk) a += scores[kk] * vcol[kk * vs0];
            acc[c] = a;
        }
        __syncthreads();  // scores are rewritten by the next tile
    }
    A* orow = out + i * os0 + h * os1;
    for (std::int64_t c = tid; c < dv; c += blockDim.x) orow[c] = acc[c] / l;
}

// The slots live in device memory, so they are checked here: if any lies
// outside the cache's `slots_total` rows it is reported (DeviceErrors) and
// nothing is written, as the CPU backend checks every slot before writing one.
// Each block scans all N slots (a few KiB from L2: the grid is capped).
template <class T, class A>
__global__ void cache_write_kernel(const A* rows, std::int64_t ldr, const std::int64_t* slots, std::int64_t ss,
                                   T* pages, std::int64_t slots_total, std::int64_t n, std::int64_t w,
                                   DeviceErrors* errors) {
    __shared__ int any_bad;
    if (threadIdx.x == 0) any_bad = 0;
    __syncthreads();
    for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const std::int64_t slot = slots[i * ss];
        if (slot < 0 || slot >= slots_total) {
            any_bad = 1;
            if (blockIdx.x == 0) report(errors, DeviceErrors::cache_slot, slot, slots_total);
        }
    }
    __syncthreads();
    if (any_bad) return;
    DSV2_CUDA_FOR_2D(i, j, n, w) store(pages + slots[i * ss] * w + j, rows[i * ldr + j]);
}

// Likewise a block table entry outside the cache's `n_pages`: reported, and
// its rows read as zero.
template <class A, class T>
__global__ void cache_gather_kernel(const T* pages, std::int64_t page, std::int64_t n_pages, const std::int32_t* table,
                                    std::int64_t st, A* out, std::int64_t ldo, std::int64_t s_len, std::int64_t w,
                                    DeviceErrors* errors) {
    DSV2_CUDA_FOR_2D(j, c, s_len, w) {
        const std::int64_t block = table[(j / page) * st];
        if (block < 0 || block >= n_pages) {
            if (c == 0) report(errors, DeviceErrors::cache_page, block, n_pages);
            out[j * ldo + c] = A(0);
            continue;
        }
        out[j * ldo + c] = load<A>(pages + (block * page + j % page) * w + c);
    }
}

}  // namespace cuda_detail

template <class A>
void attention(Context<cuda>& ctx,
               std::type_identity_t<View<const A, cuda, 3>> q,  // (n, H, Dk)
               std::type_identity_t<View<const A, cuda, 3>> k,  // (S, Hk, Dk)
               std::type_identity_t<View<const A, cuda, 3>> v,  // (S, Hk, Dv)
               std::int64_t first_position,  // position of q[0]; q[i] sees keys 0..first_position+i
               double scale,
               View<A, cuda, 3> out)  // (n, H, Dv)
{
    using namespace cuda_detail;
    const std::int64_t n = q.shape[0], heads = q.shape[1], dk = q.shape[2];
    const std::int64_t s_len = k.shape[0], kv_heads = k.shape[1], dv = v.shape[2];
    check_attention(q, k, v, first_position, out);
    DSV2_CHECK(n <= INT32_MAX && heads <= 65535, Unsupported, "attention: {} queries x {} heads is too many", n,
               heads);
    if (n == 0 || heads == 0) return;
    const std::size_t smem = static_cast<std::size_t>(dk + kAttnThreads + dv + 32) * sizeof(A);
    DSV2_CHECK(smem <= 48 * 1024, Unsupported, "attention: head dims {} and {} need {} bytes of shared memory", dk, dv,
               smem);
    const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(heads));
    attention_kernel<A><<<grid, kAttnThreads, smem, ctx.stream>>>(
        q.data, q.stride[0], q.stride[1], k.data, k.stride[0], k.stride[1], v.data, v.stride[0], v.stride[1],
        out.data, out.stride[0], out.stride[1], dk, dv, heads / kv_heads, first_position, static_cast<A>(scale));
    DSV2_CUDA_LAUNCHED();
}

// pages[slot / page_size, slot % page_size, :] = rows[i] for each token i.
template <class T, class A>
void cache_write(Context<cuda>& ctx,
                 View<const A, cuda, 2> rows,              // (N, W)
                 View<const std::int64_t, cuda, 1> slots,  // (N)
                 View<T, cuda, 3> pages)                   // (P, page_size, W)
{
    using namespace cuda_detail;
    const std::int64_t n = rows.shape[0], w = rows.shape[1];
    check_cache_write(rows, slots, pages);
    if (n * w == 0) return;
    cache_write_kernel<<<std::min(blocks_for(n * w, kThreads), 1024u), kThreads, 0, ctx.stream>>>(
        rows.data, rows.stride[0], slots.data, slots.stride[0], pages.data, pages.shape[0] * pages.shape[1], n, w,
        ctx.device_errors());
    DSV2_CUDA_LAUNCHED();
}

// out[j] = the cached row at position j of one sequence, j < out.shape[0].
template <class A, class T>
void cache_gather(Context<cuda>& ctx,
                  View<const T, cuda, 3> pages,                   // (P, page_size, W)
                  View<const std::int32_t, cuda, 1> block_table,  // (blocks)
                  View<A, cuda, 2> out)                           // (S, W)
{
    using namespace cuda_detail;
    const std::int64_t s_len = out.shape[0], w = out.shape[1], page = pages.shape[1];
    check_cache_gather(pages, block_table, out);
    if (s_len * w == 0) return;
    cache_gather_kernel<<<blocks_for(s_len * w, kThreads), kThreads, 0, ctx.stream>>>(
        pages.data, page, pages.shape[0], block_table.data, block_table.stride[0], out.data, out.stride[0], s_len, w,
        ctx.device_errors());
    DSV2_CUDA_LAUNCHED();
}

}  // namespace dsv2
