// Backend tags. A backend is an empty tag type plus a `Context<B>` value and
// a set of primitives overloaded on that context (see backend/backend.hpp).
#pragma once

namespace dsv2 {

struct cpu {};   // host memory, Eigen + OpenMP
struct cuda {};  // device memory, cuBLAS + CUB + hand-written kernels

template <class B>
struct Context;

}  // namespace dsv2
