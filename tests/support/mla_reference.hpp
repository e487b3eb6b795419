// MLA decode's reference for the kernel tests: attention in double over a
// sequence's cached rows, read through its block table.
#pragma once

#include <dsv2/dsv2.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace dsv2::test {

// out[h, c] of one sequence in double: softmax(scale q Kᵀ) V over its first
// `len` cached rows, read through the block table (pages of `page` rows of w).
template <class T>
inline std::vector<double> mla_reference(const std::vector<T>& pv, const float* q, std::int64_t ldq,
                                         const std::vector<std::int32_t>& table, std::int64_t page,
                                         std::int64_t heads, std::int64_t rank, std::int64_t w, std::int64_t len,
                                         double scale) {
    std::vector<double> want;
    for (std::int64_t h = 0; h < heads; ++h) {
        std::vector<double> s(static_cast<std::size_t>(len));
        double mx = -1e300;
        for (std::int64_t j = 0; j < len; ++j) {
            const T* row = pv.data() + (table[j / page] * page + j % page) * w;
            double dot = 0;
            for (std::int64_t c = 0; c < w; ++c) dot += double(q[h * ldq + c]) * dsv2::convert<double>(row[c]);
            s[j] = scale * dot;
            mx = std::max(mx, s[j]);
        }
        double den = 0;
        for (auto& e : s) den += (e = std::exp(e - mx));
        for (std::int64_t c = 0; c < rank; ++c) {
            double acc = 0;
            for (std::int64_t j = 0; j < len; ++j)
                acc += s[j] * dsv2::convert<double>(pv[(table[j / page] * page + j % page) * w + c]);
            want.push_back(acc / den);
        }
    }
    return want;
}

}  // namespace dsv2::test
