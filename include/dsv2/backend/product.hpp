// The unit of a grouped product (linear_group / matmul_group), shared by
// every backend.
#pragma once

#include "dsv2/core/tensor.hpp"

namespace dsv2 {

// One product of a group: y = x w^T for linear_group, y = x w for
// matmul_group. W is the weight view (View<const T, B, 2> or a quantized
// view). A group runs as one unit of work: on the CPU, in decode, its rows are
// split over the threads in one parallel region instead of one per product,
// because waking the team costs more than a small product (docs/backends.md).
template <class A, class W, class B>
struct Product {
    View<const A, B, 2> x;
    W w;
    View<A, B, 2> y;
};

}  // namespace dsv2
