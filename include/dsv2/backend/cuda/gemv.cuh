// Decode-sized products y = x wᵀ with 16-bit weights: at most 8 rows of f32
// activations, a group of products in one launch. A decode step's products
// read every weight once and do two FLOPs per weight per token, so they are
// bound by memory and, through cuBLAS (a rounding kernel and a GEMM per
// product), by launches: a routed MoE layer issued ~8 launches per expert.
// Here each warp streams two weight rows with 16-byte loads, widens them
// exactly to f32 and takes the dot products with the activations in f32 (as
// the CPU backend does, so no activation rounding), and one launch covers
// every product of the group.
#pragma once

#if !defined(__CUDACC__)
#error "include <dsv2/cuda.cuh> from a .cu file compiled by nvcc"
#endif

#include "dsv2/backend/cuda/context.cuh"

#include <cstdint>
#include <vector>

namespace dsv2 {
namespace cuda_detail {

constexpr int kGemvMaxRows = 8;      // activation rows (tokens) per product
constexpr int kGemvMaxProducts = 48;  // per launch: the batch travels as a kernel parameter (< 4 KiB)
constexpr int kGemvWarps = 8, kGemvRowsPerWarp = 2;

struct GemvProduct {
    const void* w;  // (m, k), 16-byte aligned rows
    const float* x;  // (n, k), 16-byte aligned rows
    float* y;        // (n, m)
    long long ldw, ldx, ldy;
    int n, m, k;
    int first_row;  // where this product's rows start in the launch's numbering
};
struct GemvBatch {
    GemvProduct p[kGemvMaxProducts];
    int count;
};

// Whether a product (n x k activations, m x k weights) can take the
// kernel: few rows, 16-byte aligned rows, sizes in int.
template <class T>
bool gemv_fits(const T* w, long long ldw, const float* x, long long ldx, std::int64_t n, std::int64_t m,
               std::int64_t k) {
    const auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
    return n >= 1 && n <= kGemvMaxRows && m >= 1 && m <= INT32_MAX && k % 8 == 0 && k <= INT32_MAX && ldw % 8 == 0 &&
           ldx % 4 == 0 && aligned(w) && aligned(x);
}

__device__ __forceinline__ void widen8(const uint4& v, float (&f)[8], std::true_type /*bf16*/) {
    const std::uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = __uint_as_float(u[i] << 16);
        f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
    }
}
__device__ __forceinline__ void widen8(const uint4& v, float (&f)[8], std::false_type /*f16*/) {
    const std::uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 p = __half22float2(*reinterpret_cast<const __half2*>(&u[i]));
        f[2 * i] = p.x;
        f[2 * i + 1] = p.y;
    }
}

// grid: one block per kGemvWarps * kGemvRowsPerWarp output rows of the batch.
template <class T>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_group_kernel(const GemvBatch batch, int total_rows) {
    const int lane = threadIdx.x % 32;
    const int row0 = (blockIdx.x * kGemvWarps + threadIdx.x / 32) * kGemvRowsPerWarp;
    if (row0 >= total_rows) return;
    int pi = 0;
    while (pi + 1 < batch.count && batch.p[pi + 1].first_row <= row0) ++pi;
    const GemvProduct& p = batch.p[pi];
    const int r0 = row0 - p.first_row;
    const bool two = r0 + 1 < p.m;  // a product's rows may end at an odd row
    const auto* w0 = static_cast<const T*>(p.w) + static_cast<long long>(r0) * p.ldw;
    const T* w1 = two ? w0 + p.ldw : w0;
    float acc0[kGemvMaxRows] = {}, acc1[kGemvMaxRows] = {};
#pragma unroll 2
    for (int c = lane * 8; c < p.k; c += 32 * 8) {
        float a[8], b[8];
        widen8(__ldg(reinterpret_cast<const uint4*>(w0 + c)), a, std::is_same<T, bf16>{});
        widen8(__ldg(reinterpret_cast<const uint4*>(w1 + c)), b, std::is_same<T, bf16>{});
#pragma unroll
        for (int t = 0; t < kGemvMaxRows; ++t) {
            if (t < p.n) {
                const float4 x0 = *reinterpret_cast<const float4*>(p.x + t * p.ldx + c);
                const float4 x1 = *reinterpret_cast<const float4*>(p.x + t * p.ldx + c + 4);
                const float xs[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    acc0[t] = fmaf(a[i], xs[i], acc0[t]);
                    acc1[t] = fmaf(b[i], xs[i], acc1[t]);
                }
            }
        }
    }
#pragma unroll
    for (int t = 0; t < kGemvMaxRows; ++t) {
        if (t < p.n) {
            const float s0 = warp_sum(acc0[t]), s1 = warp_sum(acc1[t]);
            if (lane == 0) {
                p.y[t * p.ldy + r0] = s0;
                if (two) p.y[t * p.ldy + r0 + 1] = s1;
            }
        }
    }
}

// Queues the products (each passed gemv_fits) in launches of up to
// kGemvMaxProducts. Every product's rows are numbered from an even row, so
// a warp's pair of rows never straddles two products.
template <class T>
void gemv_group(Context<cuda>& ctx, const std::vector<GemvProduct>& products) {
    constexpr int rows_per_block = kGemvWarps * kGemvRowsPerWarp;
    for (std::size_t first = 0; first < products.size(); first += kGemvMaxProducts) {
        GemvBatch batch{};
        int rows = 0;
        batch.count = static_cast<int>(std::min<std::size_t>(kGemvMaxProducts, products.size() - first));
        for (int i = 0; i < batch.count; ++i) {
            batch.p[i] = products[first + static_cast<std::size_t>(i)];
            batch.p[i].first_row = rows;
            DSV2_CHECK(batch.p[i].m <= INT32_MAX - rows - 2, Unsupported, "[cuda] gemv_group: {} output rows",
                       static_cast<long long>(rows) + batch.p[i].m);
            rows += (batch.p[i].m + 1) / 2 * 2;
        }
        if (rows == 0) continue;
        gemv_group_kernel<T><<<(rows + rows_per_block - 1) / rows_per_block, kGemvWarps * 32, 0, ctx.stream>>>(batch,
                                                                                                               rows);
        DSV2_CUDA_LAUNCHED();
    }
}

}  // namespace cuda_detail
}  // namespace dsv2
