// Matrix products on the CPU. Activations are in the arithmetic type A;
// weights are in the storage type T. Decode (f32 activations, at most
// kGemvRows rows) runs the matrix-vector kernels of gemv.hpp, which read
// any weight type in place. Otherwise, when T != A, blocks of weights are
// widened into a per-thread buffer and multiplied by Eigen's GEMM; when
// T == A, Eigen reads the weights in place.
//
// Work is split over blocks of output features, one block per task: every
// thread streams its own slice of the weight matrix, which is what decode
// (memory-bound, N small) wants, and large N still gets full GEMM blocks.
#pragma once

#include "dsv2/backend/cpu/context.hpp"
#include "dsv2/backend/cpu/gemm_bf16.hpp"
#include "dsv2/backend/cpu/gemv.hpp"

#include <Eigen/Core>

#include <vector>

namespace dsv2 {
namespace cpu_detail {

template <class S>
using RowMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class S>
using MapRow = Eigen::Map<RowMat<S>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class S>
using MapRowC = Eigen::Map<const RowMat<S>, Eigen::Unaligned, Eigen::OuterStride<>>;

template <class S, class B>
MapRowC<S> as_matrix(View<const S, B, 2> v) {
    return MapRowC<S>(v.data, v.shape[0], v.shape[1], Eigen::OuterStride<>(v.stride[0]));
}
template <class S, class B>
MapRow<S> as_matrix(View<S, B, 2> v) {
    return MapRow<S>(v.data, v.shape[0], v.shape[1], Eigen::OuterStride<>(v.stride[0]));
}

// Output-feature blocks: several per thread for balance, a multiple of 16
// rows so that widened blocks stay cache-line aligned.
inline std::int64_t feature_block(std::int64_t m, int threads) {
    const std::int64_t target = (m + 4 * threads - 1) / (4 * threads);
    return std::max<std::int64_t>(16, (target + 15) / 16 * 16);
}

// Widen rows [r0, r1) x cols [c0, c1) of a storage-typed matrix into `dst`
// (row-major, leading dimension c1 - c0).
template <class A, class T>
void widen(View<const T, cpu, 2> w, std::int64_t r0, std::int64_t r1, std::int64_t c0, std::int64_t c1,
           A* dst) {
    const std::int64_t ld = c1 - c0;
    for (std::int64_t r = r0; r < r1; ++r) {
        const T* src = w.data + r * w.stride[0] + c0;
        A* out = dst + (r - r0) * ld;
        for (std::int64_t c = 0; c < ld; ++c) out[c] = convert<A>(src[c]);
    }
}

// Below this many multiply-adds a product runs on one thread: waking the
// team costs more than it saves.
inline constexpr std::int64_t kParallelWork = std::int64_t{1} << 16;

inline void check_product(std::string_view op, std::int64_t xn, std::int64_t xk, std::int64_t wk,
                          std::int64_t yn, std::int64_t ym, std::int64_t wm, bool rows_ok) {
    DSV2_CHECK(xk == wk && xn == yn && ym == wm, ShapeError,
               "{}: x is ({}, {}), weight gives ({} -> {}), y is ({}, {})", op, xn, xk, wk, wm, yn, ym);
    DSV2_CHECK(rows_ok, ShapeError, "{}: every operand needs unit stride along its rows", op);
}

// Up to this many activation rows, products with f32 activations run as
// matrix-vector kernels that read the weights in place (gemv.hpp): decode.
inline constexpr std::int64_t kGemvRows = 4;

// Splits [0, m) into one contiguous, `align`-multiple slice per thread and
// runs f(begin, end) on each: every thread streams its own weights.
template <class F>
void split_range(Context<cpu>& ctx, std::int64_t m, std::int64_t align, bool parallel, F&& f) {
    const int threads = parallel ? ctx.threads : 1;
    const std::int64_t per = (m + threads - 1) / threads;
    const std::int64_t chunk = std::max<std::int64_t>(align, (per + align - 1) / align * align);
    const std::int64_t parts = (m + chunk - 1) / chunk;
#pragma omp parallel for num_threads(threads) schedule(static, 1) if (parts > 1)
    for (std::int64_t p = 0; p < parts; ++p) f(p * chunk, std::min(m, (p + 1) * chunk));
}

}  // namespace cpu_detail

// y = x w^T, the Hugging Face `nn.Linear` layout.
template <class A, class T>
void linear(Context<cpu>& ctx,
            std::type_identity_t<View<const A, cpu, 2>> x,  // (N, K)
            View<const T, cpu, 2> w,  // (M, K)
            View<A, cpu, 2> y)        // (N, M)
{
    using namespace cpu_detail;
    const std::int64_t n = x.shape[0], k = x.shape[1], m = w.shape[0];
    check_product("linear", n, k, w.shape[1], y.shape[0], y.shape[1], m,
                  x.rows_contiguous() && w.rows_contiguous() && y.rows_contiguous());
    if (n == 0 || m == 0) return;
    if constexpr (std::is_same_v<A, float> && gemv_weight_v<T>) {
        if (n <= kGemvRows) {
            split_range(ctx, m, 4, n * m * k >= kParallelWork, [&](std::int64_t r0, std::int64_t r1) {
                gemv_rows(x.data, x.stride[0], n, w.data, w.stride[0], k, r0, r1, y.data, y.stride[0]);
            });
            return;
        }
    }
    if constexpr (std::is_same_v<A, float> && std::is_same_v<T, bf16>) {
        if (try_gemm_bf16(ctx, x.data, x.stride[0], n, w.data, w.stride[0], m, k, y.data, y.stride[0],
                          n * m * k >= kParallelWork))
            return;
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
            if constexpr (std::is_same_v<T, A>) {
                const auto wb = as_matrix<A>(w.rows(m0, m1));
                ym.middleCols(m0, m1 - m0).noalias() = xm * wb.transpose();
            } else {
                wide.resize(static_cast<std::size_t>((m1 - m0) * k));
                widen<A>(w, m0, m1, 0, k, wide.data());
                const Eigen::Map<const RowMat<A>> wb(wide.data(), m1 - m0, k);
                ym.middleCols(m0, m1 - m0).noalias() = xm * wb.transpose();
            }
        }
    }
}

// y = x w, for weights stored (K, M) — e.g. the W_UK block of kv_b_proj that
// the absorbed attention path folds into the query.
template <class A, class T>
void matmul(Context<cpu>& ctx,
            std::type_identity_t<View<const A, cpu, 2>> x,  // (N, K)
            View<const T, cpu, 2> w,  // (K, M)
            View<A, cpu, 2> y)        // (N, M)
{
    using namespace cpu_detail;
    const std::int64_t n = x.shape[0], k = x.shape[1], m = w.shape[1];
    check_product("matmul", n, k, w.shape[0], y.shape[0], y.shape[1], m,
                  x.rows_contiguous() && w.rows_contiguous() && y.rows_contiguous());
    if (n == 0 || m == 0) return;
    if constexpr (std::is_same_v<A, float> && gemv_weight_v<T>) {
        if (n <= kGemvRows) {
            split_range(ctx, m, 64, n * m * k >= kParallelWork, [&](std::int64_t c0, std::int64_t c1) {
                gemv_cols(x.data, x.stride[0], n, w.data, w.stride[0], k, c0, c1, y.data, y.stride[0]);
            });
            return;
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
            if constexpr (std::is_same_v<T, A>) {
                const auto wb = as_matrix<A>(w.cols(m0, m1));
                ym.middleCols(m0, m1 - m0).noalias() = xm * wb;
            } else {
                wide.resize(static_cast<std::size_t>((m1 - m0) * k));
                widen<A>(w, 0, k, m0, m1, wide.data());
                const Eigen::Map<const RowMat<A>> wb(wide.data(), k, m1 - m0);
                ym.middleCols(m0, m1 - m0).noalias() = xm * wb;
            }
        }
    }
}

}  // namespace dsv2
