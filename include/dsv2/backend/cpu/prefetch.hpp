// Software prefetch of rows that a kernel will read next, spread over the
// loop that runs before it: one cache line per step, into L2.
//
// Why by hand: the hardware prefetchers stop at every 4 KiB page and need a
// few misses in a row to start, so short rows (a weight tile's 12 rows of a
// few KB, a tile of latent-cache rows scattered over pages, the 48 bytes an
// output tile adds to each of 32 rows) arrive late if nothing asks for them.
// Asked for a line at a time from inside the arithmetic, the reads overlap
// it instead of stalling the next tile; asked for in bursts, they did not
// (docs/benchmarks.md).
#pragma once

#include "dsv2/backend/cpu/gemv.hpp"

#include <algorithm>
#include <cstdint>

namespace dsv2::cpu_detail {

#if DSV2_X86_KERNELS

// Every line of n rows of w elements each, the rows given by their pointers.
template <class Row>
struct RowPrefetcher {
    const Row* const* rows = nullptr;
    std::int64_t n = 0, row = 0, line = 0, lines_per_row = 0, row_bytes = 0;

    void start(const Row* const* next_rows, std::int64_t next_n, std::int64_t w) {
        rows = next_rows;
        n = next_n;
        row = line = 0;
        row_bytes = w * static_cast<std::int64_t>(sizeof(Row));
        lines_per_row = (row_bytes + 63) / 64 + 1;  // rows need not start on a line
    }
    // The address the next step asks for, null once every row is asked for.
    // The last step of a row names its last byte: addresses stay inside the row.
    const char* address() const {
        if (row == n) return nullptr;
        return reinterpret_cast<const char*>(rows[row]) + std::min(line * 64, row_bytes - 1);
    }
    // Every line of the next row at once, into L1: for loops that must stay
    // free of branches (the q8 MLA kernels). Into L2, as step() asks, was
    // slower there (docs/benchmarks.md).
    void whole_row() {
        if (row == n) return;
        const char* p = reinterpret_cast<const char*>(rows[row++]);
        for (std::int64_t l = 0; l + 1 < lines_per_row; ++l) _mm_prefetch(p + l * 64, _MM_HINT_T0);
        _mm_prefetch(p + row_bytes - 1, _MM_HINT_T0);
    }
    void step() {
        const char* p = address();
        if (!p) return;
        _mm_prefetch(p, _MM_HINT_T1);
        if (++line == lines_per_row) {
            line = 0;
            ++row;
        }
    }
};

#endif  // DSV2_X86_KERNELS

}  // namespace dsv2::cpu_detail
