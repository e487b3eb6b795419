// Row-wise and element-wise primitives on the GPU: RMSNorm, SiLU gate,
// residual add, embedding lookup and dtype conversion. Same signatures and
// checks as backend/cpu/elementwise.hpp.
#pragma once
#if !defined(__CUDACC__)
#error "include <dsv2/cuda.cuh> from a .cu file compiled by nvcc"
#endif

#include "dsv2/backend/cuda/context.cuh"

namespace dsv2 {
namespace cuda_detail {

// Grid-stride loop over the n x cols elements of a row-major index space.
#define DSV2_CUDA_FOR_2D(i, j, n, cols)                                                                  \
    for (std::int64_t dsv2_e_ = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x,       \
                      dsv2_total_ = (n) * (cols);                                                       \
         dsv2_e_ < dsv2_total_; dsv2_e_ += static_cast<std::int64_t>(gridDim.x) * blockDim.x)            \
        if (const std::int64_t i = dsv2_e_ / (cols), j = dsv2_e_ % (cols); true)

constexpr int kThreads = 256;

// One block per row; the sum of squares in double as on the CPU.
template <class A, class T>
__global__ void rms_norm_kernel(const A* x, std::int64_t ldx, const T* w, std::int64_t d, double eps, A* y,
                                std::int64_t ldy) {
    __shared__ double shared[32];
    const A* xr = x + blockIdx.x * ldx;
    A* yr = y + blockIdx.x * ldy;
    double ss = 0;
    for (std::int64_t j = threadIdx.x; j < d; j += blockDim.x) ss += static_cast<double>(xr[j]) * xr[j];
    ss = block_sum(ss, shared);
    const A inv = static_cast<A>(1.0 / sqrt(ss / static_cast<double>(d) + eps));
    for (std::int64_t j = threadIdx.x; j < d; j += blockDim.x) yr[j] = xr[j] * inv * load<A>(w + j);
}

template <class A>
__global__ void silu_mul_kernel(const A* g, std::int64_t ldg, const A* u, std::int64_t ldu, A* o, std::int64_t ldo,
                                std::int64_t n, std::int64_t f) {
    DSV2_CUDA_FOR_2D(i, j, n, f) {
        const A gv = g[i * ldg + j];
        o[i * ldo + j] = gv / (A(1) + exp(-gv)) * u[i * ldu + j];
    }
}

template <class A>
__global__ void add_kernel(A* y, std::int64_t ldy, const A* x, std::int64_t ldx, std::int64_t n, std::int64_t d) {
    DSV2_CUDA_FOR_2D(i, j, n, d) { y[i * ldy + j] += x[i * ldx + j]; }
}

template <class A, class T>
__global__ void embedding_kernel(const T* table, std::int64_t ldt, const std::int32_t* tokens, std::int64_t st,
                                 A* out, std::int64_t ldo, std::int64_t n, std::int64_t d) {
    DSV2_CUDA_FOR_2D(i, j, n, d) {
        out[i * ldo + j] = load<A>(table + static_cast<std::int64_t>(tokens[i * st]) * ldt + j);
    }
}

template <class D, class S>
__global__ void convert_kernel(const S* src, std::int64_t lds, std::int64_t sc, D* dst, std::int64_t ldd,
                               std::int64_t n, std::int64_t k) {
    DSV2_CUDA_FOR_2D(i, j, n, k) {
        using W = std::conditional_t<std::is_same_v<D, double> || std::is_same_v<S, double>, double, float>;
        store(dst + i * ldd + j, load<W>(src + i * lds + j * sc));
    }
}

// Row stride of a view, whatever its row count.
template <class V>
std::int64_t ld(const V& v) { return v.stride[0]; }

}  // namespace cuda_detail

// y = x * rsqrt(mean(x^2) + eps) * w; `y` may alias `x`.
template <class A, class T>
void rms_norm(Context<cuda>& ctx,
              std::type_identity_t<View<const A, cuda, 2>> x,  // (N, D)
              View<const T, cuda, 1> w,                        // (D)
              double eps,
              View<A, cuda, 2> y)                              // (N, D)
{
    using namespace cuda_detail;
    const std::int64_t n = x.shape[0], d = x.shape[1];
    DSV2_CHECK(w.shape[0] == d && y.shape == x.shape, ShapeError, "rms_norm: x {}, weight ({}), y {}",
               shape_str(x.shape), w.shape[0], shape_str(y.shape));
    DSV2_CHECK(x.rows_contiguous() && y.rows_contiguous() && w.stride[0] == 1, ShapeError,
               "rms_norm: rows must be contiguous");
    if (n == 0) return;
    rms_norm_kernel<<<static_cast<unsigned>(n), kThreads, 0, ctx.stream>>>(x.data, ld(x), w.data, d, eps, y.data, ld(y));
    DSV2_CUDA_LAUNCHED();
}

// out = silu(gate) * up; `out` may alias either input.
template <class A>
void silu_mul(Context<cuda>& ctx,
              std::type_identity_t<View<const A, cuda, 2>> gate,  // (N, F)
              std::type_identity_t<View<const A, cuda, 2>> up,    // (N, F)
              View<A, cuda, 2> out)                               // (N, F)
{
    using namespace cuda_detail;
    DSV2_CHECK(gate.shape == up.shape && up.shape == out.shape, ShapeError, "silu_mul: gate {}, up {}, out {}",
               shape_str(gate.shape), shape_str(up.shape), shape_str(out.shape));
    DSV2_CHECK(gate.rows_contiguous() && up.rows_contiguous() && out.rows_contiguous(), ShapeError,
               "silu_mul: rows must be contiguous");
    const std::int64_t n = gate.shape[0], f = gate.shape[1];
    if (n * f == 0) return;
    silu_mul_kernel<<<blocks_for(n * f, kThreads), kThreads, 0, ctx.stream>>>(gate.data, ld(gate), up.data, ld(up),
                                                                              out.data, ld(out), n, f);
    DSV2_CUDA_LAUNCHED();
}

// y += x.
template <class A>
void add_inplace(Context<cuda>& ctx,
                 View<A, cuda, 2> y,                              // (N, D)
                 std::type_identity_t<View<const A, cuda, 2>> x)  // (N, D)
{
    using namespace cuda_detail;
    DSV2_CHECK(x.shape == y.shape, ShapeError, "add_inplace: y {}, x {}", shape_str(y.shape), shape_str(x.shape));
    DSV2_CHECK(x.rows_contiguous() && y.rows_contiguous(), ShapeError, "add_inplace: rows must be contiguous");
    const std::int64_t n = y.shape[0], d = y.shape[1];
    if (n * d == 0) return;
    add_kernel<<<blocks_for(n * d, kThreads), kThreads, 0, ctx.stream>>>(y.data, ld(y), x.data, ld(x), n, d);
    DSV2_CUDA_LAUNCHED();
}

// out[i] = table[tokens[i]]. Token ids are validated by the caller (Model).
template <class A, class T>
void embedding(Context<cuda>& ctx,
               View<const T, cuda, 2> table,              // (V, D)
               View<const std::int32_t, cuda, 1> tokens,  // (N)
               View<A, cuda, 2> out)                      // (N, D)
{
    using namespace cuda_detail;
    const std::int64_t n = tokens.shape[0], d = table.shape[1];
    DSV2_CHECK(out.shape[0] == n && out.shape[1] == d, ShapeError, "embedding: table {}, {} tokens, out {}",
               shape_str(table.shape), n, shape_str(out.shape));
    DSV2_CHECK(table.rows_contiguous() && out.rows_contiguous(), ShapeError, "embedding: rows must be contiguous");
    if (n * d == 0) return;
    embedding_kernel<<<blocks_for(n * d, kThreads), kThreads, 0, ctx.stream>>>(
        table.data, ld(table), tokens.data, tokens.stride[0], out.data, ld(out), n, d);
    DSV2_CUDA_LAUNCHED();
}

// dst = src, converting element types; `src` may have any column stride.
template <class D, class S>
void convert_rows(Context<cuda>& ctx,
                  View<const S, cuda, 2> src,  // (N, K)
                  View<D, cuda, 2> dst)        // (N, K)
{
    using namespace cuda_detail;
    DSV2_CHECK(src.shape == dst.shape, ShapeError, "convert_rows: src {}, dst {}", shape_str(src.shape),
               shape_str(dst.shape));
    DSV2_CHECK(dst.rows_contiguous(), ShapeError, "convert_rows: destination rows must be contiguous");
    const std::int64_t n = src.shape[0], k = src.shape[1];
    if (n * k == 0) return;
    convert_kernel<<<blocks_for(n * k, kThreads), kThreads, 0, ctx.stream>>>(src.data, ld(src), src.stride[1],
                                                                             dst.data, ld(dst), n, k);
    DSV2_CUDA_LAUNCHED();
}

}  // namespace dsv2
