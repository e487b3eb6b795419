// What every component includes: the backend concept, tensors, scratch and
// the config, plus the one sentence each component asserts about B.
#pragma once

#include "dsv2/backend/backend.hpp"
#include "dsv2/core/tensor.hpp"
#include "dsv2/core/workspace.hpp"
#include "dsv2/model/config.hpp"

#define DSV2_REQUIRE_BACKEND(B)                                                                     \
    static_assert(::dsv2::Backend<B>,                                                               \
                  "dsv2: this backend does not provide the primitives listed in backend/backend.hpp " \
                  "(include dsv2/dsv2.hpp or dsv2/cuda.cuh first; see docs/backends.md)")
