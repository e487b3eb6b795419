// Matrix products on the GPU through cuBLAS, in the CPU backend's row-major
// terms. cuBLAS is column-major, so a row-major (R, C) matrix with leading
// dimension ld is its column-major transpose; y = x wᵀ becomes
// yᵀ = w xᵀ, i.e. gemm(op(w) = T, op(x) = N).
//
// f32 and f64 weights: SGEMM / DGEMM on the activations in place (no TF32).
// bf16 and f16 weights: the activations are rounded to the weight type into
// the context's scratch, then cublasGemmEx with f32 accumulation and f32
// output (tensor cores). That rounding is the one numerical difference from
// the CPU, which widens the weights instead; parity tests bound it per dtype.
// Decode-sized products (at most 8 rows) with 16-bit weights take gemv.cuh
// instead: weights widened, f32 throughout, a group in one launch.
#pragma once

#if !defined(__CUDACC__)
#error "include <dsv2/cuda.cuh> from a .cu file compiled by nvcc"
#endif

#include "dsv2/backend/cuda/context.cuh"
#include "dsv2/backend/cuda/gemv.cuh"
#include "dsv2/backend/product.hpp"

#include <optional>
#include <vector>

namespace dsv2 {
namespace cuda_detail {

template <class T>
constexpr cudaDataType_t cuda_type() {
    if constexpr (std::is_same_v<T, bf16>) return CUDA_R_16BF;
    else if constexpr (std::is_same_v<T, f16>) return CUDA_R_16F;
    else if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
    else return CUDA_R_64F;
}

// Leading dimension of a row-major matrix view as cuBLAS wants it (>= cols, >= 1).
template <class V>
long long leading(const V& v) {
    const std::int64_t cols = std::max<std::int64_t>(v.shape[1], 1);
    return static_cast<long long>(v.shape[0] <= 1 ? cols : std::max(v.stride[0], cols));
}

// dst (N, K) contiguous = src (N, K) strided, converted to T.
template <class T, class A>
__global__ void round_rows_kernel(const A* src, std::int64_t lds, std::int64_t n, std::int64_t k, T* dst) {
    const std::int64_t total = n * k;
    for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
         e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
        const std::int64_t i = e / k, j = e % k;
        store(dst + e, src[i * lds + j]);
    }
}

inline void check_product(std::string_view op, std::int64_t xn, std::int64_t xk, std::int64_t wk, std::int64_t yn,
                          std::int64_t ym, std::int64_t wm, bool rows_ok) {
    DSV2_CHECK(xk == wk && xn == yn && ym == wm, ShapeError,
               "{}: x is ({}, {}), weight gives ({} -> {}), y is ({}, {})", op, xn, xk, wk, wm, yn, ym);
    DSV2_CHECK(rows_ok, ShapeError, "{}: every operand needs unit stride along its rows", op);
}

template <class A, class T>
void check_linear(View<const A, cuda, 2> x, View<const T, cuda, 2> w, View<A, cuda, 2> y) {
    check_product("linear", x.shape[0], x.shape[1], w.shape[1], y.shape[0], y.shape[1], w.shape[0],
                  x.rows_contiguous() && w.rows_contiguous() && y.rows_contiguous());
}

// Products that may take gemv.cuh: f32 activations, 16-bit weights.
template <class A, class T>
inline constexpr bool gemv_types = std::is_same_v<A, float> && (std::is_same_v<T, bf16> || std::is_same_v<T, f16>);

// y = x wᵀ (shapes checked) as a gemv.cuh product, when gemv_fits it.
template <class A, class T>
std::optional<GemvProduct> as_gemv(View<const A, cuda, 2> x, View<const T, cuda, 2> w, View<A, cuda, 2> y) {
    const std::int64_t n = x.shape[0], k = x.shape[1], m = w.shape[0];
    if (!gemv_fits(w.data, leading(w), x.data, leading(x), n, m, k)) return std::nullopt;
    return GemvProduct{w.data, x.data, y.data, leading(w), leading(x), leading(y),
                       static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), 0};
}

// Column-major C(m, n) = op(A)(m, k) · op(B)(k, n), A in the weight type T,
// B and C in the arithmetic type A.
template <class A, class T>
void gemm(Context<cuda>& ctx, cublasOperation_t op_a, std::int64_t m, std::int64_t n, std::int64_t k, const T* a,
          long long lda, const A* b, long long ldb, A* c, long long ldc) {
    const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
    DSV2_CHECK(m <= INT32_MAX && n <= INT32_MAX && k <= INT32_MAX, Unsupported, "[cuda] gemm ({}, {}, {}) too large",
               m, n, k);
    if constexpr (std::is_same_v<T, A> && std::is_same_v<A, float>) {
        const float one = 1.f, zero = 0.f;
        DSV2_CUBLAS_CHECK(cublasSgemm(ctx.blas, op_a, CUBLAS_OP_N, im, in, ik, &one, a, static_cast<int>(lda), b,
                                      static_cast<int>(ldb), &zero, c, static_cast<int>(ldc)));
    } else if constexpr (std::is_same_v<T, A> && std::is_same_v<A, double>) {
        const double one = 1.0, zero = 0.0;
        DSV2_CUBLAS_CHECK(cublasDgemm(ctx.blas, op_a, CUBLAS_OP_N, im, in, ik, &one, a, static_cast<int>(lda), b,
                                      static_cast<int>(ldb), &zero, c, static_cast<int>(ldc)));
    } else {
        static_assert(std::is_same_v<A, float> && (std::is_same_v<T, bf16> || std::is_same_v<T, f16>),
                      "dsv2 cuda: 16-bit weights take f32 activations; f32 and f64 weights their own type");
        // Round the activations (k x n column-major, i.e. n rows of k) to T.
        T* b16 = static_cast<T*>(ctx.scratch(static_cast<std::size_t>(n * k) * sizeof(T)));
        round_rows_kernel<<<blocks_for(n * k, 256), 256, 0, ctx.stream>>>(b, ldb, n, k, b16);
        DSV2_CUDA_LAUNCHED();
        const float one = 1.f, zero = 0.f;
        DSV2_CUBLAS_CHECK(cublasGemmEx(ctx.blas, op_a, CUBLAS_OP_N, im, in, ik, &one, a, cuda_type<T>(),
                                       static_cast<int>(lda), b16, cuda_type<T>(), ik, &zero, c, CUDA_R_32F,
                                       static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
}

}  // namespace cuda_detail

// y = x wᵀ, the Hugging Face `nn.Linear` layout.
template <class A, class T>
void linear(Context<cuda>& ctx,
            std::type_identity_t<View<const A, cuda, 2>> x,  // (N, K)
            View<const T, cuda, 2> w,                        // (M, K)
            View<A, cuda, 2> y)                              // (N, M)
{
    using namespace cuda_detail;
    const std::int64_t n = x.shape[0], k = x.shape[1], m = w.shape[0];
    check_linear(x, w, y);
    if (n == 0 || m == 0) return;
    if constexpr (gemv_types<A, T>) {
        if (const auto product = as_gemv(x, w, y)) {
            gemv_group<T>(ctx, {*product});
            return;
        }
    }
    gemm<A, T>(ctx, CUBLAS_OP_T, m, n, k, w.data, leading(w), x.data, leading(x), y.data, leading(y));
}

// y = x w, for weights stored (K, M).
template <class A, class T>
void matmul(Context<cuda>& ctx,
            std::type_identity_t<View<const A, cuda, 2>> x,  // (N, K)
            View<const T, cuda, 2> w,                        // (K, M)
            View<A, cuda, 2> y)                              // (N, M)
{
    using namespace cuda_detail;
    const std::int64_t n = x.shape[0], k = x.shape[1], m = w.shape[1];
    check_product("matmul", n, k, w.shape[0], y.shape[0], y.shape[1], m,
                  x.rows_contiguous() && w.rows_contiguous() && y.rows_contiguous());
    if (n == 0 || m == 0) return;
    gemm<A, T>(ctx, CUBLAS_OP_N, m, n, k, w.data, leading(w), x.data, leading(x), y.data, leading(y));
}

// Groups of products. Decode-sized ones with 16-bit weights (a step's
// routed experts, MLA's per-head products) share gemv launches; the others
// are one cuBLAS call each, queued on the context's stream.
template <class A, class W>
void linear_group(Context<cuda>& ctx, const std::vector<Product<A, W, cuda>>& group) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(std::declval<W>().data)>>;
    if constexpr (cuda_detail::gemv_types<A, T>) {
        using namespace cuda_detail;
        std::vector<GemvProduct> small;
        for (const auto& p : group) {
            check_linear(p.x, p.w, p.y);
            if (const auto product = as_gemv(p.x, p.w, p.y)) {
                small.push_back(*product);
            } else {
                linear(ctx, p.x, p.w, p.y);  // cuBLAS, or nothing for an empty product
            }
        }
        gemv_group<T>(ctx, small);
    } else {
        for (const auto& p : group) linear(ctx, p.x, p.w, p.y);
    }
}
template <class A, class W>
void matmul_group(Context<cuda>& ctx, const std::vector<Product<A, W, cuda>>& group) {
    for (const auto& p : group) matmul(ctx, p.x, p.w, p.y);
}

}  // namespace dsv2
