// Weight-only int8 matrices: int8 values with one f32 scale per output row
// (symmetric, scale = max|w_row| / 127), activations stay f32 and products
// accumulate in f32. Rows are the HF `nn.Linear` output features, so a
// matrix-vector product scales each row's dot product once at the end.
//
// The products are in backend/cpu/linear_q8.hpp. Components hold one of
// these wherever `Matrix<q8, cpu>` (layers/common.hpp) names a linear weight.
#pragma once

#include "dsv2/core/tensor.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace dsv2 {

// A read-only view of a quantized (M, K) matrix.
template <class B>
struct QuantizedView {
    View<const std::int8_t, B, 2> values;  // (M, K)
    View<const float, B, 1> scales;        // (M)

    std::int64_t size(int dim) const { return values.shape[dim]; }
    QuantizedView rows(std::int64_t begin, std::int64_t end) const {
        return {values.rows(begin, end), scales.slice(0, begin, end)};
    }
};

template <class B>
struct QuantizedMatrix {
    using Shape = std::array<std::int64_t, 2>;
    // What it is filled from: loaders and initialisers visiting weights
    // produce f32 values, and upload() quantizes them (model/random.hpp).
    using value_type = float;
    Tensor<std::int8_t, B, 2> values;  // (M, K)
    Tensor<float, B, 1> scales;        // (M)

    QuantizedMatrix() = default;
    explicit QuantizedMatrix(const Shape& shape) : values(shape), scales({shape[0]}) {}

    const Shape& shape() const { return values.shape(); }
    std::int64_t size(int dim) const { return values.size(dim); }
    std::int64_t numel() const { return values.numel(); }
    std::size_t bytes() const { return values.bytes() + scales.bytes(); }
    QuantizedView<B> cview() const { return {values.cview(), scales.cview()}; }
};

// Quantizes row-major (M, K) values `src` (any float storage type) into `q`,
// on `threads` threads (0: OpenMP's default) when the matrix is large.
template <class S>
void quantize_rows(const S* src, std::int64_t m, std::int64_t k, std::int8_t* q, float* scales, int threads = 0) {
#if defined(_OPENMP)
    if (threads <= 0) threads = omp_get_max_threads();
#else
    (void)threads;
#endif
#pragma omp parallel for num_threads(threads) schedule(static) if (m * k > 1 << 20)
    for (std::int64_t r = 0; r < m; ++r) {
        const S* row = src + r * k;
        float amax = 0;
        for (std::int64_t j = 0; j < k; ++j) amax = std::max(amax, std::abs(convert<float>(row[j])));
        const float scale = amax > 0 ? amax / 127.0f : 1.0f;
        const float inv = 1.0f / scale;
        for (std::int64_t j = 0; j < k; ++j) {
            const float v = std::nearbyint(convert<float>(row[j]) * inv);
            q[r * k + j] = static_cast<std::int8_t>(std::clamp(v, -127.0f, 127.0f));
        }
        scales[r] = scale;
    }
}

// Host matrix -> quantized matrix in host-accessible memory.
template <class S, class B>
    requires HostMemory<B>
QuantizedMatrix<B> quantize(View<const S, B, 2> w) {
    DSV2_CHECK(w.contiguous(), ShapeError, "quantize: expected a contiguous matrix, found shape {}", shape_str(w.shape));
    QuantizedMatrix<B> q({w.shape[0], w.shape[1]});
    quantize_rows(w.data, w.shape[0], w.shape[1], q.values.data(), q.scales.data());
    return q;
}

}  // namespace dsv2
