// One forward step over a batch of sequences, flattened as vLLM does: the
// new tokens of every sequence are rows of one (N, D) matrix, sequence after
// sequence. A Step says where each sequence's rows are, which positions they
// hold and which cache slots they write; the model builds it once per step
// and every layer reads it.
#pragma once

#include "dsv2/layers/common.hpp"

#include <vector>

namespace dsv2 {

template <class A, class B>
struct Step {
    struct Sequence {
        std::int64_t seq_id = 0;          // cache sequence
        std::int64_t row_begin = 0;       // first row in the flattened batch
        std::int64_t n_tokens = 0;        // new tokens this step
        std::int64_t first_position = 0;  // position of the first new token
        View<const std::int32_t, B, 1> block_table;  // its cache pages
        std::int64_t context() const { return first_position + n_tokens; }
    };

    std::vector<Sequence> sequences;             // host
    std::int64_t n_tokens = 0;                   // N
    View<const std::int64_t, B, 1> positions;    // (N)
    View<const std::int64_t, B, 1> slots;        // (N) flat cache slot of each token
    View<const A, B, 2> cos, sin;                // (N, Dr/2) rotary tables
};

}  // namespace dsv2
