// y = x w^T for int8 weights with per-row scales (core/quantized.hpp).
// Decode (N <= kGemvRows, f32 activations): the int8 rows are read in place,
// by the VNNI kernel of gemv_q8.hpp where the CPU has it (activations as
// 16-bit fixed point, integer dot products), else widened and FMA'd in f32;
// each output is scaled once. Larger N:
// blocks of rows are dequantized into a per-thread buffer for Eigen's GEMM,
// as linear() does for 16-bit weights.
#pragma once

#include "dsv2/backend/cpu/gemv_q8.hpp"
#include "dsv2/backend/cpu/linear.hpp"
#include "dsv2/core/quantized.hpp"

namespace dsv2 {

namespace cpu_detail {
// The int8 rows are read in place by the same kernels; each output is scaled
// once at the end.
template <>
struct GemvKernel<QuantizedView<cpu>> {
    static constexpr bool available = true;
    using P = Product<float, QuantizedView<cpu>, cpu>;
    static bool readable(const QuantizedView<cpu>& w) { return w.values.rows_contiguous() && w.scales.stride[0] == 1; }
    static void rows(const P& p, std::int64_t r0, std::int64_t r1) {
#if DSV2_X86_KERNELS
        if (has_avx512_vnni() && p.x.shape[1] <= kQ8VnniMaxK) {
            Q8Digits digits[kGemvRows];
            for (std::int64_t i = 0; i < p.x.shape[0]; ++i)
                split_digits(p.x.data + i * p.x.stride[0], p.x.shape[1], digits[i]);
            return gemv_rows_q8_vnni(digits, p.x.shape[0], p.w.values.data, p.w.values.stride[0], p.x.shape[1], r0, r1,
                                     p.w.scales.data, p.y.data, p.y.stride[0]);
        }
#endif
        gemv_rows(p.x.data, p.x.stride[0], p.x.shape[0], p.w.values.data, p.w.values.stride[0], p.x.shape[1], r0, r1,
                  p.y.data, p.y.stride[0]);
        for (std::int64_t i = 0; i < p.x.shape[0]; ++i)
            for (std::int64_t r = r0; r < r1; ++r) p.y.data[i * p.y.stride[0] + r] *= p.w.scales.data[r];
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
    const std::int64_t block = feature_block(m, ctx.threads);
    const std::int64_t blocks = (m + block - 1) / block;
    const auto xm = as_matrix<A>(x);
    auto ym = as_matrix<A>(y);
#pragma omp parallel num_threads(ctx.threads) if (n * m * k >= kParallelWork)
    {
        std::vector<A> wide;
#pragma omp for schedule(dynamic, 1)
        for (std::int64_t b = 0; b < blocks; ++b) {
            const std::int64_t m0 = b * block, m1 = std::min(m, m0 + block);
            wide.resize(static_cast<std::size_t>((m1 - m0) * k));
            for (std::int64_t r = m0; r < m1; ++r) {
                const A s = static_cast<A>(scales[r]);
                for (std::int64_t j = 0; j < k; ++j) wide[static_cast<std::size_t>((r - m0) * k + j)] = s * q[r * ldq + j];
            }
            const Eigen::Map<const RowMat<A>> wb(wide.data(), m1 - m0, k);
            ym.middleCols(m0, m1 - m0).noalias() = xm * wb.transpose();
        }
    }
}

}  // namespace dsv2
