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
// linear_group / matmul_group run several decode products in one parallel
// region: on a small machine the fork/join, not the bytes, is what a
// 64K-MAC product costs.
#pragma once

#include "dsv2/backend/cpu/context.hpp"
#include "dsv2/backend/cpu/gemm_panels.hpp"
#include "dsv2/backend/cpu/gemv.hpp"
#include "dsv2/backend/product.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <span>
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

// The GEMM path of every product: splits the m output features into blocks
// (feature_block), one task each over the threads, and calls
// f(m0, m1, wide) with a per-thread buffer for widened weight blocks.
template <class A, class F>
void for_feature_blocks(Context<cpu>& ctx, std::int64_t m, bool parallel, F&& f) {
    const std::int64_t block = feature_block(m, ctx.threads);
    const std::int64_t blocks = (m + block - 1) / block;
#pragma omp parallel num_threads(ctx.threads) if (parallel)
    {
        std::vector<A> wide;
#pragma omp for schedule(dynamic, 1)
        for (std::int64_t b = 0; b < blocks; ++b) f(b * block, std::min(m, (b + 1) * block), wide);
    }
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

// A decode product is split over the threads only from this many
// multiply-adds: a parallel region costs 1.4-7 us under libgomp's default
// wait policy but 83-120 us when the threads sleep (OMP_WAIT_POLICY=passive,
// measured on a 2-vCPU VM), which is what a 1M-MAC bf16 product takes on one
// core.
inline constexpr std::int64_t kParallelGemv = std::int64_t{1} << 20;

// Splits the units (weight rows or columns) of a group of products over the
// threads in one parallel region, and calls f(product, begin, end) for each
// piece. extent(j) is product j's unit count, cost(j) the multiply-adds per
// unit.
//
// The pieces shrink as the work runs out — each a quarter of what is left
// over two threads (remaining / (2·threads)), down to 1/32 of a thread's
// share — and go, in order, to whichever thread is free. An equal static
// split left a thread waiting at the region's end for 9% of decode's time
// (perf, int8 V2-Lite-8): on a shared VM the two vCPUs do not stream at the
// same speed. A piece never spans two products; begin and end are multiples
// of `align` except at a product's end.
template <class Extent, class Cost, class F>
void split_group(Context<cpu>& ctx, std::size_t count, Extent&& extent, Cost&& cost, std::int64_t align, F&& f) {
    std::int64_t total = 0;
    for (std::size_t j = 0; j < count; ++j) total += extent(j) * cost(j);
    const int threads = total >= kParallelGemv ? ctx.threads : 1;
    if (threads == 1) {
        for (std::size_t j = 0; j < count; ++j)
            if (extent(j) > 0) f(j, std::int64_t{0}, extent(j));
        return;
    }
    struct Piece {
        std::size_t product;
        std::int64_t begin, end;
    };
    thread_local std::vector<Piece> pieces;  // the calling thread's, reused: no allocation per step
    pieces.clear();
    const std::int64_t smallest = std::max<std::int64_t>(1, total / (32 * threads));
    std::int64_t left = total;
    for (std::size_t j = 0; j < count; ++j) {
        const std::int64_t e = extent(j), c = std::max<std::int64_t>(1, cost(j));
        for (std::int64_t b = 0; b < e;) {
            const std::int64_t want = std::max(smallest, left / (2 * threads));
            const std::int64_t units = ((want + c - 1) / c + align - 1) / align * align;
            const std::int64_t b1 = std::min(e, b + units);
            pieces.push_back({j, b, b1});
            left -= (b1 - b) * c;
            b = b1;
        }
    }
    const auto n_pieces = static_cast<std::int64_t>(pieces.size());
    const Piece* piece = pieces.data();
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (std::int64_t i = 0; i < n_pieces; ++i) f(piece[i].product, piece[i].begin, piece[i].end);
}

// The decode kernels for a weight view type W: prepare(group, out) converts
// each product's activations once (a Prepared per product), rows(p,
// prepared, r0, r1) computes output features [r0, r1) of y = x w^T, and
// cols(p, c0, c1) columns [c0, c1) of y = x w. Weight types without kernels use the GEMM path. (A class template,
// so that other headers — linear_q8.hpp — can add weight types.)
template <class W>
struct GemvKernel {
    static constexpr bool available = false;
};
template <class T>
struct GemvKernel<View<const T, cpu, 2>> {
    static constexpr bool available = gemv_weight_v<T>;
    using P = Product<float, View<const T, cpu, 2>, cpu>;
    static bool readable(const View<const T, cpu, 2>& w) { return w.rows_contiguous(); }
    struct Prepared {};  // the kernels read the f32 activations as they are
    static void prepare(std::span<const P> group, std::vector<Prepared>& out) { out.resize(group.size()); }
    static void rows(const P& p, const Prepared&, std::int64_t r0, std::int64_t r1) {
        gemv_rows(p.x.data, p.x.stride[0], p.x.shape[0], p.w.data, p.w.stride[0], p.x.shape[1], r0, r1, p.y.data,
                  p.y.stride[0]);
    }
    static void cols(const P& p, std::int64_t c0, std::int64_t c1) {
        gemv_cols(p.x.data, p.x.stride[0], p.x.shape[0], p.w.data, p.w.stride[0], p.x.shape[1], c0, c1, p.y.data,
                  p.y.stride[0]);
    }
};

template <class A, class W>
inline constexpr bool gemv_ready_v = std::is_same_v<A, float> && GemvKernel<W>::available;

template <class A, class W>
bool all_decode(std::span<const Product<A, W, cpu>> group) {
    return std::all_of(group.begin(), group.end(), [](const auto& p) { return p.x.shape[0] <= kGemvRows; });
}

// Every product of a decode group (all with at most kGemvRows activation
// rows), y = x w^T, in one parallel region. Each kernel converts the
// activations it needs (GemvKernel<W>::prepare: the int8 kernel's digits)
// once per product, here, before the region; pieces are single rows.
template <class W>
void gemv_group_rows(Context<cpu>& ctx, std::span<const Product<float, W, cpu>> group) {
    using K = GemvKernel<W>;
    thread_local std::vector<typename K::Prepared> prepared;  // the calling thread's, reused
    K::prepare(group, prepared);
    const auto* ready = prepared.data();
    split_group(
        ctx, group.size(), [&](std::size_t j) { return group[j].w.size(0); },
        [&](std::size_t j) { return group[j].x.shape[0] * group[j].x.shape[1]; }, 1,
        [&](std::size_t j, std::int64_t r0, std::int64_t r1) { K::rows(group[j], ready[j], r0, r1); });
}
// The same for y = x w: columns are the units, 64 at a time (the width of
// gemv_cols_avx512's smaller block).
template <class W>
void gemv_group_cols(Context<cpu>& ctx, std::span<const Product<float, W, cpu>> group) {
    split_group(
        ctx, group.size(), [&](std::size_t j) { return group[j].w.size(1); },
        [&](std::size_t j) { return group[j].x.shape[0] * group[j].x.shape[1]; }, 64,
        [&](std::size_t j, std::int64_t c0, std::int64_t c1) { GemvKernel<W>::cols(group[j], c0, c1); });
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
    if constexpr (gemv_ready_v<A, View<const T, cpu, 2>>) {
        if (n <= kGemvRows) {
            const Product<A, View<const T, cpu, 2>, cpu> p{x, w, y};
            return gemv_group_rows(ctx, std::span(&p, 1));
        }
    }
    if constexpr (std::is_same_v<A, float> && (std::is_same_v<T, bf16> || std::is_same_v<T, f16>)) {
        if (try_gemm_panels(ctx, x.data, x.stride[0], n, w.data, w.stride[0], nullptr, m, k, y.data, y.stride[0],
                            n * m * k >= kParallelWork))
            return;
    }
    const auto xm = as_matrix<A>(x);
    auto ym = as_matrix<A>(y);
    for_feature_blocks<A>(ctx, m, n * m * k >= kParallelWork, [&](std::int64_t m0, std::int64_t m1, std::vector<A>& wide) {
        if constexpr (std::is_same_v<T, A>) {
            const auto wb = as_matrix<A>(w.rows(m0, m1));
            ym.middleCols(m0, m1 - m0).noalias() = xm * wb.transpose();
        } else {
            wide.resize(static_cast<std::size_t>((m1 - m0) * k));
            widen<A>(w, m0, m1, 0, k, wide.data());
            const Eigen::Map<const RowMat<A>> wb(wide.data(), m1 - m0, k);
            ym.middleCols(m0, m1 - m0).noalias() = xm * wb.transpose();
        }
    });
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
    if constexpr (gemv_ready_v<A, View<const T, cpu, 2>>) {
        if (n <= kGemvRows) {
            const Product<A, View<const T, cpu, 2>, cpu> p{x, w, y};
            return gemv_group_cols(ctx, std::span(&p, 1));
        }
    }
    const auto xm = as_matrix<A>(x);
    auto ym = as_matrix<A>(y);
    for_feature_blocks<A>(ctx, m, n * m * k >= kParallelWork, [&](std::int64_t m0, std::int64_t m1, std::vector<A>& wide) {
        if constexpr (std::is_same_v<T, A>) {
            const auto wb = as_matrix<A>(w.cols(m0, m1));
            ym.middleCols(m0, m1 - m0).noalias() = xm * wb;
        } else {
            wide.resize(static_cast<std::size_t>((m1 - m0) * k));
            widen<A>(w, 0, k, m0, m1, wide.data());
            const Eigen::Map<const RowMat<A>> wb(wide.data(), k, m1 - m0);
            ym.middleCols(m0, m1 - m0).noalias() = xm * wb;
        }
    });
}

}  // namespace dsv2

namespace dsv2 {

// A group of products y = x w^T (e.g. the gate and up projections of every
// expert a decode token chose). Decode groups run in one parallel region;
// larger products each run as linear() does.
template <class A, class W>
void linear_group(Context<cpu>& ctx, const std::vector<Product<A, W, cpu>>& group) {
    using namespace cpu_detail;
    for (const auto& p : group)
        check_product("linear_group", p.x.shape[0], p.x.shape[1], p.w.size(1), p.y.shape[0], p.y.shape[1], p.w.size(0),
                      p.x.rows_contiguous() && p.y.rows_contiguous());
    if constexpr (gemv_ready_v<A, W>) {
        if (all_decode(std::span(group))) {
            for (const auto& p : group)
                DSV2_CHECK(GemvKernel<W>::readable(p.w), ShapeError, "linear_group: weights need unit stride along rows");
            return gemv_group_rows(ctx, std::span(group));
        }
    }
    for (const auto& p : group) linear(ctx, p.x, p.w, p.y);
}

// A group of products y = x w, weights stored (K, M) (W_UK of every head).
template <class A, class W>
void matmul_group(Context<cpu>& ctx, const std::vector<Product<A, W, cpu>>& group) {
    using namespace cpu_detail;
    for (const auto& p : group)
        check_product("matmul_group", p.x.shape[0], p.x.shape[1], p.w.size(0), p.y.shape[0], p.y.shape[1], p.w.size(1),
                      p.x.rows_contiguous() && p.y.rows_contiguous());
    if constexpr (gemv_ready_v<A, W>) {
        if (all_decode(std::span(group))) {
            for (const auto& p : group)
                DSV2_CHECK(GemvKernel<W>::readable(p.w), ShapeError, "matmul_group: weights need unit stride along rows");
            return gemv_group_cols(ctx, std::span(group));
        }
    }
    for (const auto& p : group) matmul(ctx, p.x, p.w, p.y);
}

}  // namespace dsv2
