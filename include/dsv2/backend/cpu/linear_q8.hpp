// y = x w^T and y = x w for int8 weights with per-row scales
// (core/quantized.hpp).
// Decode (N <= kGemvRows, f32 activations): the int8 rows are read in place,
// by the VNNI kernel of gemv_q8.hpp where the CPU has it (activations as
// 16-bit fixed point, integer dot products), else widened and FMA'd in f32;
// each output is scaled once. Larger N (prefill): the f32 GEMM of
// gemm_panels.hpp, tiles of int8 rows widened to f32 exactly; without
// AVX-512, blocks of rows are dequantized into a per-thread buffer for
// Eigen's GEMM, as linear() does for 16-bit weights.
#pragma once

#include "dsv2/backend/cpu/gemv_q8.hpp"
#include "dsv2/backend/cpu/linear.hpp"
#include "dsv2/core/quantized.hpp"

#include <array>
#include <span>
#include <vector>

namespace dsv2 {

namespace cpu_detail {
// The int8 rows are read in place by the same kernels; each output is scaled
// once at the end.
template <>
struct GemvKernel<QuantizedView<cpu>> {
    static constexpr bool available = true;
    using P = Product<float, QuantizedView<cpu>, cpu>;
    static bool readable(const QuantizedView<cpu>& w) { return w.values.rows_contiguous() && w.scales.stride[0] == 1; }
    // The activations of every product of a group as VNNI digits, split
    // once before the parallel region rather than once per piece (a decode
    // group has ~17 pieces). Products that share their activations (gate
    // and up of one expert) share their digits. null: the f32 path (no VNNI,
    // rows too long, or a NaN or infinity in x).
    struct Prepared {
        const Q8Digits* digits = nullptr;
    };
    static void prepare(std::span<const P> group, std::vector<Prepared>& out) {
        out.assign(group.size(), Prepared{});
#if DSV2_X86_KERNELS
        if (!has_avx512_vnni()) return;
        thread_local std::vector<std::array<Q8Digits, kGemvRows>> store;  // kept: decode prepares every step
        if (store.size() < group.size()) store.resize(group.size());
        for (std::size_t j = 0; j < group.size(); ++j) {
            const auto& x = group[j].x;
            if (x.shape[1] > kQ8VnniMaxK) continue;
            if (j > 0 && x.data == group[j - 1].x.data && x.shape == group[j - 1].x.shape &&
                x.stride == group[j - 1].x.stride) {
                out[j] = out[j - 1];
                continue;
            }
            bool finite = true;
            for (std::int64_t i = 0; i < x.shape[0] && finite; ++i)
                finite = split_digits_avx512(x.data + i * x.stride[0], x.shape[1], store[j][static_cast<std::size_t>(i)]);
            if (finite) out[j].digits = store[j].data();
        }
#endif
    }
    static void rows(const P& p, [[maybe_unused]] const Prepared& prepared, std::int64_t r0, std::int64_t r1) {
#if DSV2_X86_KERNELS
        if (prepared.digits)
            return gemv_rows_q8_vnni(prepared.digits, p.x.shape[0], p.w.values.data, p.w.values.stride[0],
                                     p.x.shape[1], r0, r1, p.w.scales.data, p.y.data, p.y.stride[0]);
#endif
        gemv_rows(p.x.data, p.x.stride[0], p.x.shape[0], p.w.values.data, p.w.values.stride[0], p.x.shape[1], r0, r1,
                  p.y.data, p.y.stride[0]);
        for (std::int64_t i = 0; i < p.x.shape[0]; ++i)
            for (std::int64_t r = r0; r < r1; ++r) p.y.data[i * p.y.stride[0] + r] *= p.w.scales.data[r];
    }
    // y = x w with w (K, M) = diag(s) q: scale the few activation rows by the
    // row scales once, then stream the int8 columns in place.
    static void cols(const P& p, std::int64_t c0, std::int64_t c1) {
        const std::int64_t n = p.x.shape[0], k = p.x.shape[1];
        thread_local std::vector<float> xs;  // at most kGemvRows * K floats; decode allocates once
        xs.resize(static_cast<std::size_t>(n * k));
        for (std::int64_t i = 0; i < n; ++i)
            for (std::int64_t j = 0; j < k; ++j)
                xs[static_cast<std::size_t>(i * k + j)] = p.x.data[i * p.x.stride[0] + j] * p.w.scales.data[j];
        gemv_cols(xs.data(), k, n, p.w.values.data, p.w.values.stride[0], k, c0, c1, p.y.data, p.y.stride[0]);
    }
};
}  // namespace cpu_detail

template <class A>
void linear(Context<cpu>& ctx,
            std::type_identity_t<View<const A, cpu, 2>> x,  // (N, K)
            QuantizedView<cpu> w,                            // (M, K) int8 + (M) scales
            View<A, cpu, 2> y)                               // (N, M)
{
    using namespace cpu_detail;
    const std::int64_t n = x.shape[0], k = x.shape[1], m = w.values.shape[0];
    check_product("linear", n, k, w.values.shape[1], y.shape[0], y.shape[1], m,
                  x.rows_contiguous() && w.values.rows_contiguous() && y.rows_contiguous() && w.scales.stride[0] == 1);
    if (n == 0 || m == 0) return;
    const std::int8_t* q = w.values.data;
    const float* scales = w.scales.data;
    const std::int64_t ldq = w.values.stride[0];
    if constexpr (std::is_same_v<A, float>) {
        if (n <= kGemvRows) {
            const Product<A, QuantizedView<cpu>, cpu> p{x, w, y};
            return gemv_group_rows(ctx, std::span(&p, 1));
        }
    }
    if constexpr (std::is_same_v<A, float>) {
        if (try_gemm_panels(ctx, x.data, x.stride[0], n, q, ldq, scales, m, k, y.data, y.stride[0],
                            n * m * k >= kParallelWork))
            return;
    }
    const auto xm = as_matrix<A>(x);
    auto ym = as_matrix<A>(y);
    for_feature_blocks<A>(ctx, m, n * m * k >= kParallelWork, [&](std::int64_t m0, std::int64_t m1, std::vector<A>& wide) {
        wide.resize(static_cast<std::size_t>((m1 - m0) * k));
        for (std::int64_t r = m0; r < m1; ++r) {
            const A s = static_cast<A>(scales[r]);
            for (std::int64_t j = 0; j < k; ++j) wide[static_cast<std::size_t>((r - m0) * k + j)] = s * q[r * ldq + j];
        }
        const Eigen::Map<const RowMat<A>> wb(wide.data(), m1 - m0, k);
        ym.middleCols(m0, m1 - m0).noalias() = xm * wb.transpose();
    });
}

// y = x w for int8 weights stored (K, M), one scale per row k: the W_UK
// block of a quantized kv_b_proj (rows of the HF weight are this product's
// inner dimension). Since w = diag(s) q, y = (x diag(s)) q: decode scales the
// few activation rows once and streams the int8 columns in place; larger N
// dequantizes column blocks for Eigen.
template <class A>
void matmul(Context<cpu>& ctx,
            std::type_identity_t<View<const A, cpu, 2>> x,  // (N, K)
            QuantizedView<cpu> w,                            // (K, M) int8 + (K) scales
            View<A, cpu, 2> y)                               // (N, M)
{
    using namespace cpu_detail;
    const std::int64_t n = x.shape[0], k = x.shape[1], m = w.values.shape[1];
    check_product("matmul", n, k, w.values.shape[0], y.shape[0], y.shape[1], m,
                  x.rows_contiguous() && w.values.rows_contiguous() && y.rows_contiguous() && w.scales.stride[0] == 1);
    if (n == 0 || m == 0) return;
    const std::int8_t* q = w.values.data;
    const float* scales = w.scales.data;
    const std::int64_t ldq = w.values.stride[0];
    if constexpr (std::is_same_v<A, float>) {
        if (n <= kGemvRows) {
            const Product<A, QuantizedView<cpu>, cpu> p{x, w, y};
            return gemv_group_cols(ctx, std::span(&p, 1));
        }
    }
    const auto xm = as_matrix<A>(x);
    auto ym = as_matrix<A>(y);
    for_feature_blocks<A>(ctx, m, n * m * k >= kParallelWork, [&](std::int64_t m0, std::int64_t m1, std::vector<A>& wide) {
        const std::int64_t width = m1 - m0;
        wide.resize(static_cast<std::size_t>(k * width));
        for (std::int64_t j = 0; j < k; ++j) {
            const A s = static_cast<A>(scales[j]);
            for (std::int64_t c = 0; c < width; ++c) wide[static_cast<std::size_t>(j * width + c)] = s * q[j * ldq + m0 + c];
        }
        const Eigen::Map<const RowMat<A>> wb(wide.data(), k, width);
        ym.middleCols(m0, m1 - m0).noalias() = xm * wb;
    });
}

}  // namespace dsv2
