// Split-context attention for decode (flash-decoding): when a step has
// fewer (token, key-group) tasks than threads — one decode token over the
// latent cache is a single task — each thread takes a contiguous slice of
// the keys, computes its partial softmax (row max m_t, row sum l_t and the
// unnormalised output o_t = exp(s - m_t) V_t), and a final merge rescales:
//     o = Σ_t exp(m_t - m) o_t / Σ_t exp(m_t - m) l_t,   m = max_t m_t.
// Every thread then streams 1/threads of the cache, so long contexts cost
// little next to the weights.
#pragma once

#include "dsv2/backend/cpu/linear.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace dsv2::cpu_detail {

// Below this many visible keys per thread, splitting costs more than it saves.
inline constexpr std::int64_t kMinKeysPerSplit = 256;

// One task: `group` query rows against `visible` keys/values, written to og.
template <class A>
void attention_split_task(int threads,
                          const A* q, std::int64_t q_ld,  // (group, dk)
                          const A* k, std::int64_t k_ld,  // (visible, dk)
                          const A* v, std::int64_t v_ld,  // (visible, dv)
                          A* o, std::int64_t o_ld,        // (group, dv)
                          std::int64_t group, std::int64_t dk, std::int64_t dv, std::int64_t visible, A scale) {
    using Mat = RowMat<A>;
    using CMap = Eigen::Map<const Mat, Eigen::Unaligned, Eigen::OuterStride<>>;
    const int parts = static_cast<int>(std::clamp<std::int64_t>(visible / kMinKeysPerSplit, 1, threads));
    const std::int64_t chunk = (visible + parts - 1) / parts;
    std::vector<Mat> partial(static_cast<std::size_t>(parts));          // (group, dv) each
    std::vector<A> row_max(static_cast<std::size_t>(parts * group)), row_sum(row_max.size());
    const CMap qm(q, group, dk, Eigen::OuterStride<>(q_ld));
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int p = 0; p < parts; ++p) {
        const std::int64_t s0 = p * chunk, s1 = std::min(visible, s0 + chunk);
        const CMap km(k + s0 * k_ld, s1 - s0, dk, Eigen::OuterStride<>(k_ld));
        const CMap vm(v + s0 * v_ld, s1 - s0, dv, Eigen::OuterStride<>(v_ld));
        Mat scores = (qm * km.transpose()) * scale;  // (group, s1 - s0)
        for (std::int64_t r = 0; r < group; ++r) {
            auto row = scores.row(r);
            const A mx = row.maxCoeff();
            row = (row.array() - mx).exp();
            row_max[static_cast<std::size_t>(p * group + r)] = mx;
            row_sum[static_cast<std::size_t>(p * group + r)] = row.sum();
        }
        partial[static_cast<std::size_t>(p)].noalias() = scores * vm;
    }
    for (std::int64_t r = 0; r < group; ++r) {
        A m = -std::numeric_limits<A>::infinity();
        for (int p = 0; p < parts; ++p) m = std::max(m, row_max[static_cast<std::size_t>(p * group + r)]);
        A denom = 0;
        A* out = o + r * o_ld;
        std::fill(out, out + dv, A(0));
        for (int p = 0; p < parts; ++p) {
            const A f = std::exp(row_max[static_cast<std::size_t>(p * group + r)] - m);
            denom += f * row_sum[static_cast<std::size_t>(p * group + r)];
            const A* src = partial[static_cast<std::size_t>(p)].row(r).data();
            for (std::int64_t c = 0; c < dv; ++c) out[c] += f * src[c];
        }
        for (std::int64_t c = 0; c < dv; ++c) out[c] /= denom;
    }
}

}  // namespace dsv2::cpu_detail
