// Argument checks that every backend's implementation of a primitive shares,
// so a bad call fails with the same message on the CPU and on the GPU.
#pragma once

#include "dsv2/core/error.hpp"
#include "dsv2/core/tensor.hpp"

#include <vector>

namespace dsv2 {

// mla_decode: q (B, H, C+Dr), pages (P, page_size, C+Dr), block tables
// (B, max_blocks), B host lengths, out (B, H, C). Returns the longest length.
template <class Q, class P, class Tables, class Out>
std::int64_t check_mla_decode(const Q& q, const P& pages, const Tables& block_tables,
                              const std::vector<std::int64_t>& lengths, const Out& out) {
    const std::int64_t batch = q.shape[0], heads = q.shape[1], w = q.shape[2], rank = out.shape[2];
    const std::int64_t page = pages.shape[1];
    DSV2_CHECK(pages.shape[2] == w && out.shape[0] == batch && out.shape[1] == heads && rank < w &&
                   std::ssize(lengths) == batch && block_tables.shape[0] == batch && pages.contiguous() &&
                   q.stride[2] == 1 && out.stride[2] == 1 && block_tables.stride[1] == 1,
               ShapeError, "mla_decode: q {}, pages {}, tables {}, {} lengths, out {}", shape_str(q.shape),
               shape_str(pages.shape), shape_str(block_tables.shape), lengths.size(), shape_str(out.shape));
    std::int64_t max_len = 0;
    for (auto len : lengths) {
        DSV2_CHECK(len >= 1 && len <= block_tables.shape[1] * page, RangeError,
                   "mla_decode: length {} outside 1..{}", len, block_tables.shape[1] * page);
        max_len = std::max(max_len, len);
    }
    return max_len;
}

}  // namespace dsv2
