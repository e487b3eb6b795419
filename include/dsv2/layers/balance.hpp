// Load-balance statistics of one MoE layer over a batch (DeepSeek-V2 §2.2.3):
// the expert-, device- and communication-level auxiliary losses (with
// α = 1; multiply by your α1, α2, α3) and per-expert token counts. Experts
// are placed on `n_devices` devices in contiguous equal groups; each token
// may reach at most `max_devices` of them (M, i.e. topk_group).
#pragma once

#include "dsv2/layers/moe.hpp"

#include <vector>

namespace dsv2 {

struct BalanceStats {
    std::vector<std::int64_t> counts;  // (E) tokens routed to each expert
    std::vector<double> f, P;          // (E) the paper's f_i and P_i
    double expert_loss = 0, device_loss = 0, comm_loss = 0;
};

inline BalanceStats balance_statistics(const RoutingRecord& r, std::int64_t n_devices, std::int64_t max_devices) {
    const std::int64_t t = r.n_tokens, e = r.n_experts, k = r.top_k;
    DSV2_CHECK(t > 0 && e > 0 && k > 0, ShapeError, "[balance] empty routing record ({} tokens, {} experts, K={})", t, e, k);
    DSV2_CHECK(n_devices >= 1 && e % n_devices == 0, ShapeError,
               "[balance] {} experts cannot be split evenly over {} devices", e, n_devices);
    DSV2_CHECK(max_devices >= 1 && max_devices <= n_devices, ShapeError,
               "[balance] max devices per token {} outside 1..{}", max_devices, n_devices);
    const std::int64_t per_device = e / n_devices;
    BalanceStats s;
    s.counts.assign(static_cast<std::size_t>(e), 0);
    s.f.assign(static_cast<std::size_t>(e), 0.0);
    s.P.assign(static_cast<std::size_t>(e), 0.0);
    std::vector<double> sent(static_cast<std::size_t>(n_devices), 0.0);  // tokens sent to each device
    std::vector<char> reached(static_cast<std::size_t>(n_devices));
    for (std::int64_t i = 0; i < t; ++i) {
        std::fill(reached.begin(), reached.end(), 0);
        for (std::int64_t j = 0; j < k; ++j) {
            const std::int32_t x = r.idx[static_cast<std::size_t>(i * k + j)];
            ++s.counts[static_cast<std::size_t>(x)];
            reached[static_cast<std::size_t>(x / per_device)] = 1;
        }
        for (std::int64_t dv = 0; dv < n_devices; ++dv) sent[static_cast<std::size_t>(dv)] += reached[static_cast<std::size_t>(dv)];
        for (std::int64_t x = 0; x < e; ++x) s.P[static_cast<std::size_t>(x)] += r.scores[static_cast<std::size_t>(i * e + x)];
    }
    for (std::int64_t x = 0; x < e; ++x) {
        s.f[static_cast<std::size_t>(x)] = static_cast<double>(e) / static_cast<double>(k * t) * static_cast<double>(s.counts[static_cast<std::size_t>(x)]);
        s.P[static_cast<std::size_t>(x)] /= static_cast<double>(t);
        s.expert_loss += s.f[static_cast<std::size_t>(x)] * s.P[static_cast<std::size_t>(x)];
    }
    for (std::int64_t dv = 0; dv < n_devices; ++dv) {
        double f_dev = 0, p_dev = 0;
        for (std::int64_t x = dv * per_device; x < (dv + 1) * per_device; ++x) {
            f_dev += s.f[static_cast<std::size_t>(x)];
            p_dev += s.P[static_cast<std::size_t>(x)];
        }
        f_dev /= static_cast<double>(per_device);
        const double f_comm = static_cast<double>(n_devices) / static_cast<double>(max_devices * t) * sent[static_cast<std::size_t>(dv)];
        s.device_loss += f_dev * p_dev;
        s.comm_loss += f_comm * p_dev;
    }
    return s;
}

}  // namespace dsv2
