// Token sampling from a row of logits: greedy, temperature, top-k, top-p,
// seeded. Greedy (temperature 0) breaks ties toward the lower id, like argmax.
#pragma once

#include "dsv2/core/error.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <span>
#include <vector>

namespace dsv2 {

struct SamplerOptions {
    double temperature = 0.0;  // 0: greedy
    std::int64_t top_k = 0;    // 0: no limit
    double top_p = 1.0;        // 1: no nucleus cut
    std::uint64_t seed = 0;
};

class Sampler {
public:
    explicit Sampler(const SamplerOptions& o = {}) : opt_(o), rng_(o.seed) {
        DSV2_CHECK(o.temperature >= 0 && std::isfinite(o.temperature), RangeError,
                   "[sampler] temperature: expected >= 0, found {}", o.temperature);
        DSV2_CHECK(o.top_k >= 0, RangeError, "[sampler] top_k: expected >= 0, found {}", o.top_k);
        DSV2_CHECK(o.top_p > 0 && o.top_p <= 1, RangeError, "[sampler] top_p: expected in (0, 1], found {}", o.top_p);
    }

    template <class A>
    std::int32_t operator()(std::span<const A> logits) {
        DSV2_CHECK(!logits.empty(), RangeError, "[sampler] empty logits");
        if (opt_.temperature == 0.0 || opt_.top_k == 1) {
            return static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
        }
        // Candidates sorted by logit, best first, cut by top-k.
        order_.resize(logits.size());
        std::iota(order_.begin(), order_.end(), 0);
        std::size_t keep = logits.size();
        if (opt_.top_k > 0) keep = std::min<std::size_t>(keep, static_cast<std::size_t>(opt_.top_k));
        std::partial_sort(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(keep), order_.end(),
                          [&](std::int32_t a, std::int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
        order_.resize(keep);
        // Softmax at temperature over the candidates, in double.
        probs_.resize(keep);
        const double top = static_cast<double>(logits[order_[0]]);
        double sum = 0;
        for (std::size_t i = 0; i < keep; ++i) sum += probs_[i] = std::exp((static_cast<double>(logits[order_[i]]) - top) / opt_.temperature);
        // Nucleus: the smallest prefix whose mass reaches top_p.
        double mass = 0;
        std::size_t cut = keep;
        for (std::size_t i = 0; i < keep; ++i) {
            mass += probs_[i] / sum;
            if (mass >= opt_.top_p) {
                cut = i + 1;
                break;
            }
        }
        std::discrete_distribution<std::size_t> pick(probs_.begin(), probs_.begin() + static_cast<std::ptrdiff_t>(cut));
        return order_[pick(rng_)];
    }

private:
    SamplerOptions opt_;
    std::mt19937_64 rng_;
    std::vector<std::int32_t> order_;
    std::vector<double> probs_;
};

}  // namespace dsv2
