// Row-wise and element-wise primitives on the CPU: RMSNorm, SiLU gate,
// residual add, embedding lookup and dtype conversion.
#pragma once

#include "dsv2/backend/cpu/context.hpp"
#include "dsv2/backend/cpu/exp16.hpp"

#include <cmath>

namespace dsv2 {

// y = x * rsqrt(mean(x^2) + eps) * w. The sum of squares is reduced in f32
// or wider whatever the storage type; `y` may alias `x`.
template <class A, class T>
void rms_norm(Context<cpu>& ctx,
              std::type_identity_t<View<const A, cpu, 2>> x,  // (N, D)
              View<const T, cpu, 1> w,  // (D)
              double eps,
              View<A, cpu, 2> y)        // (N, D)
{
    const std::int64_t n = x.shape[0], d = x.shape[1];
    DSV2_CHECK(w.shape[0] == d && y.shape == x.shape, ShapeError,
               "rms_norm: x {}, weight ({}), y {}", shape_str(x.shape), w.shape[0], shape_str(y.shape));
    DSV2_CHECK(x.rows_contiguous() && y.rows_contiguous() && w.stride[0] == 1, ShapeError,
               "rms_norm: rows must be contiguous");
#pragma omp parallel for num_threads(ctx.threads) schedule(static) if (n * d > 32768)
    for (std::int64_t i = 0; i < n; ++i) {
        const A* xr = x.data + i * x.stride[0];
        A* yr = y.data + i * y.stride[0];
        double ss = 0;  // double: exact enough for f64, free for the sizes involved
        for (std::int64_t j = 0; j < d; ++j) ss += static_cast<double>(xr[j]) * xr[j];
        const A inv = static_cast<A>(1.0 / std::sqrt(ss / static_cast<double>(d) + eps));
        for (std::int64_t j = 0; j < d; ++j) yr[j] = xr[j] * inv * convert<A>(w.data[j]);
    }
}

#if DSV2_X86_KERNELS
namespace cpu_detail {
// libm's scalar expf, called per element, was a quarter of the serial time
// of an int8 decode token (perf, V2-Lite-8 on the Zen 5 VM).
DSV2_AVX512 inline void silu_mul_avx512(const float* g, const float* u, float* o, std::int64_t f) {
    for (std::int64_t j = 0; j < f; j += 16) {
        const __mmask16 m = lanes_mask(f - j);
        const __m512 gv = _mm512_maskz_loadu_ps(m, g + j), uv = _mm512_maskz_loadu_ps(m, u + j);
        const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        _mm512_mask_storeu_ps(o + j, m, _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), uv));
    }
}
}  // namespace cpu_detail
#endif

// out = silu(gate) * up, the SwiGLU activation; `out` may alias either input.
template <class A>
void silu_mul(Context<cpu>& ctx,
              std::type_identity_t<View<const A, cpu, 2>> gate,  // (N, F)
              std::type_identity_t<View<const A, cpu, 2>> up,    // (N, F)
              View<A, cpu, 2> out)         // (N, F)
{
    DSV2_CHECK(gate.shape == up.shape && up.shape == out.shape, ShapeError,
               "silu_mul: gate {}, up {}, out {}", shape_str(gate.shape), shape_str(up.shape),
               shape_str(out.shape));
    const std::int64_t n = gate.shape[0], f = gate.shape[1];
#pragma omp parallel for num_threads(ctx.threads) schedule(static) if (n * f > 32768)
    for (std::int64_t i = 0; i < n; ++i) {
        const A* g = gate.data + i * gate.stride[0];
        const A* u = up.data + i * up.stride[0];
        A* o = out.data + i * out.stride[0];
#if DSV2_X86_KERNELS
        if constexpr (std::is_same_v<A, float>) {
            if (cpu_detail::has_avx512()) {
                cpu_detail::silu_mul_avx512(g, u, o, f);
                continue;
            }
        }
#endif
        for (std::int64_t j = 0; j < f; ++j) o[j] = g[j] / (A(1) + std::exp(-g[j])) * u[j];
    }
}

// y += x, the residual connection.
template <class A>
void add_inplace(Context<cpu>& ctx,
                 View<A, cpu, 2> y,        // (N, D)
                 std::type_identity_t<View<const A, cpu, 2>> x)  // (N, D)
{
    DSV2_CHECK(x.shape == y.shape, ShapeError, "add_inplace: y {}, x {}", shape_str(y.shape),
               shape_str(x.shape));
    const std::int64_t n = y.shape[0], d = y.shape[1];
#pragma omp parallel for num_threads(ctx.threads) schedule(static) if (n * d > 32768)
    for (std::int64_t i = 0; i < n; ++i) {
        A* yr = y.data + i * y.stride[0];
        const A* xr = x.data + i * x.stride[0];
        for (std::int64_t j = 0; j < d; ++j) yr[j] += xr[j];
    }
}

// out[i] = table[tokens[i]]. Token ids are validated by the caller (Model).
template <class A, class T>
void embedding(Context<cpu>& ctx,
               View<const T, cpu, 2> table,             // (V, D)
               View<const std::int32_t, cpu, 1> tokens,  // (N)
               View<A, cpu, 2> out)                      // (N, D)
{
    const std::int64_t n = tokens.shape[0], d = table.shape[1];
    DSV2_CHECK(out.shape[0] == n && out.shape[1] == d, ShapeError, "embedding: table {}, {} tokens, out {}",
               shape_str(table.shape), n, shape_str(out.shape));
#pragma omp parallel for num_threads(ctx.threads) schedule(static) if (n * d > 32768)
    for (std::int64_t i = 0; i < n; ++i) {
        const T* src = table.data + static_cast<std::int64_t>(tokens.data[i * tokens.stride[0]]) * table.stride[0];
        A* dst = out.data + i * out.stride[0];
        for (std::int64_t j = 0; j < d; ++j) dst[j] = convert<A>(src[j]);
    }
}

// dst = src, converting element types (loading weights, storing cache rows).
template <class D, class S>
void convert_rows(Context<cpu>& ctx,
                  View<const S, cpu, 2> src,  // (N, K)
                  View<D, cpu, 2> dst)        // (N, K)
{
    DSV2_CHECK(src.shape == dst.shape, ShapeError, "convert_rows: src {}, dst {}", shape_str(src.shape),
               shape_str(dst.shape));
    const std::int64_t n = src.shape[0], k = src.shape[1];
#pragma omp parallel for num_threads(ctx.threads) schedule(static) if (n * k > 65536)
    for (std::int64_t i = 0; i < n; ++i) {
        const S* s = src.data + i * src.stride[0];
        D* d = dst.data + i * dst.stride[0];
        for (std::int64_t j = 0; j < k; ++j) d[j] = convert<D>(s[j * src.stride[1]]);
    }
}

}  // namespace dsv2
