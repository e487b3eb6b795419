// Argument checks that every backend's implementation of a primitive shares,
// so a bad call fails with the same message on the CPU and on the GPU.
#pragma once

#include "dsv2/core/error.hpp"
#include "dsv2/core/tensor.hpp"

#include <vector>

namespace dsv2 {

// Decode over a paged cache (`op` names the caller): q (B, H, C+Dr), pages
// (P, page_size, row), block tables (B, max_blocks), B host lengths, out
// (B, H, C); `row` is what a page row must hold (C+Dr elements, or the bytes
// of an 8-bit row). Returns the longest length.
template <class Q, class P, class Tables, class Out>
std::int64_t check_paged_decode(const char* op, const Q& q, const P& pages, std::int64_t row,
                                const Tables& block_tables, const std::vector<std::int64_t>& lengths,
                                const Out& out) {
    const std::int64_t batch = q.shape[0], heads = q.shape[1], w = q.shape[2], rank = out.shape[2];
    const std::int64_t page = pages.shape[1];
    DSV2_CHECK(pages.shape[2] == row && out.shape[0] == batch && out.shape[1] == heads && rank < w &&
                   std::ssize(lengths) == batch && block_tables.shape[0] == batch && pages.contiguous() &&
                   q.stride[2] == 1 && out.stride[2] == 1 && block_tables.stride[1] == 1,
               ShapeError, "{}: q {}, pages {}, tables {}, {} lengths, out {}", op, shape_str(q.shape),
               shape_str(pages.shape), shape_str(block_tables.shape), lengths.size(), shape_str(out.shape));
    std::int64_t max_len = 0;
    for (auto len : lengths) {
        DSV2_CHECK(len >= 1 && len <= block_tables.shape[1] * page, RangeError, "{}: length {} outside 1..{}", op,
                   len, block_tables.shape[1] * page);
        max_len = std::max(max_len, len);
    }
    return max_len;
}

// mla_decode: pages of C+Dr elements per row.
template <class Q, class P, class Tables, class Out>
std::int64_t check_mla_decode(const Q& q, const P& pages, const Tables& block_tables,
                              const std::vector<std::int64_t>& lengths, const Out& out) {
    return check_paged_decode("mla_decode", q, pages, q.shape[2], block_tables, lengths, out);
}

// attention: q (n, H, Dk), k (S, Hk, Dk), v (S, Hk, Dv), out (n, H, Dv),
// queries at first_position.. with causal visibility.
template <class Q, class K, class V, class Out>
void check_attention(const Q& q, const K& k, const V& v, std::int64_t first_position, const Out& out) {
    const std::int64_t n = q.shape[0], heads = q.shape[1], dk = q.shape[2];
    const std::int64_t s_len = k.shape[0], kv_heads = k.shape[1], dv = v.shape[2];
    DSV2_CHECK(k.shape[2] == dk && v.shape[0] == s_len && v.shape[1] == kv_heads && kv_heads > 0 &&
                   heads % kv_heads == 0 && out.shape[0] == n && out.shape[1] == heads && out.shape[2] == dv,
               ShapeError, "attention: q {}, k {}, v {}, out {}", shape_str(q.shape), shape_str(k.shape),
               shape_str(v.shape), shape_str(out.shape));
    DSV2_CHECK(first_position >= 0 && first_position + n <= s_len, ShapeError,
               "attention: queries at positions {}..{} need {} keys, found {}", first_position,
               first_position + n - 1, first_position + n, s_len);
    DSV2_CHECK(q.stride[2] == 1 && k.stride[2] == 1 && v.stride[2] == 1 && out.stride[2] == 1, ShapeError,
               "attention: head vectors must be contiguous");
}

// cache_write: rows (N, W) into pages (P, page_size, W) at N slots.
template <class Rows, class Slots, class Pages>
void check_cache_write(const Rows& rows, const Slots& slots, const Pages& pages) {
    DSV2_CHECK(pages.shape[2] == rows.shape[1] && slots.shape[0] == rows.shape[0] && pages.contiguous() &&
                   rows.rows_contiguous(),
               ShapeError, "cache_write: rows {}, {} slots, pages {}", shape_str(rows.shape), slots.shape[0],
               shape_str(pages.shape));
}

// cache_gather: the first S rows of one sequence, through its block table,
// from pages (P, page_size, W) into out (S, W).
template <class Pages, class Table, class Out>
void check_cache_gather(const Pages& pages, const Table& block_table, const Out& out) {
    DSV2_CHECK(pages.shape[2] == out.shape[1] && block_table.shape[0] * pages.shape[1] >= out.shape[0] &&
                   pages.contiguous() && out.rows_contiguous(),
               ShapeError, "cache_gather: pages {}, {} blocks, out {}", shape_str(pages.shape), block_table.shape[0],
               shape_str(out.shape));
}

}  // namespace dsv2
