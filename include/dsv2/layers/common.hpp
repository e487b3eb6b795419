// What every component includes: the backend concept, tensors, scratch and
// the config, plus the one sentence each component asserts about B, and the
// type of a linear weight for element type T.
#pragma once

#include "dsv2/backend/backend.hpp"
#include "dsv2/core/quantized.hpp"
#include "dsv2/core/tensor.hpp"
#include "dsv2/core/workspace.hpp"
#include "dsv2/model/config.hpp"

#define DSV2_REQUIRE_BACKEND(B)                                                                     \
    static_assert(::dsv2::Backend<B>,                                                               \
                  "dsv2: this backend does not provide the primitives listed in backend/backend.hpp " \
                  "(include dsv2/dsv2.hpp or dsv2/cuda.cuh first; see docs/backends.md)")

namespace dsv2 {

template <class T, class B>
struct MatrixOf {
    using type = Tensor<T, B, 2>;
};
template <class B>
struct MatrixOf<q8, B> {
    static_assert(std::is_same_v<B, cpu>,
                  "dsv2: int8 weights run on the CPU backend only so far (no CUDA product for QuantizedView yet; "
                  "see docs/usage.md)");
    using type = QuantizedMatrix<B>;
};

// A linear weight (M, K) in the HF layout: a dense tensor of T, or int8 rows
// with per-row scales for q8. Everything else a component stores is a
// Tensor of dense_t<T> (core/dtype.hpp).
template <class T, class B>
using Matrix = typename MatrixOf<T, B>::type;

}  // namespace dsv2
