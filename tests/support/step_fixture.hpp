// Builds a layer-level `Step` the way Model::run does (positions, cache
// slots, rotary tables), for tests that drive MLA or a DecoderLayer without
// a Model. Also: tolerances for comparing two paths of our own code.
#pragma once

#include "fixtures.hpp"

#include <algorithm>
#include <limits>
#include <vector>

namespace dsv2::test {

// Two paths through our code computed in the same arithmetic type differ by
// rounding only; f64 gets a tolerance far below the golden one, so a small
// real discrepancy cannot hide under it.
template <class T>
constexpr Tolerance rounding_tolerance() {
    if constexpr (std::is_same_v<acc_t<T>, double>) {
        return {1e-11, 1e-12, 1e-22};
    } else {
        return tolerance<float>();
    }
}

// Two paths whose cached latent rows are computed differently (a whole
// model, where each layer's input differs by rounding; or products of other
// batch shapes): a value stored in a 16-bit cache can land one storage ulp
// apart, and later layers carry that on. Measured on the tiny cases (naive vs absorbed,
// token by token vs prefill): max |err| 1.2e-4 (bf16) and 2.4e-4 (f16),
// nmse <= 1e-9, from 1 (bf16) and 4 (f16) one-ulp flips in layer 1's cache.
// The bound is a few storage ulps, still 10-25x below the golden tolerance.
template <class T>
constexpr Tolerance cached_rounding_tolerance() {
    if constexpr (std::is_same_v<T, f16>) {
        constexpr double eps = 0x1p-11;  // storage ulp at 1
        return {4 * eps, 4 * eps, eps * eps};
    } else if constexpr (std::is_same_v<T, bf16>) {
        // With bf16 activations in prefill products a near-tie expert choice
        // can go either way between two paths through a whole model (tiny_v2
        // token 7, naive vs absorbed: 0.22 vs 0.07 in one logit row, NMSE
        // 1.1e-4), so only the golden bound holds for every element.
        return tolerance<bf16>();
    } else {
        return rounding_tolerance<T>();
    }
}

// One step over `parts` (sequence, new-token count), in batch order. The
// constructor appends each part's tokens to the cache, like Model::forward;
// the Step's views point into this object, so keep it alive while using it.
template <class T>
class StepFixture {
public:
    using A = acc_t<T>;
    struct Part {
        std::int64_t seq_id = 0;
        std::int64_t n_tokens = 0;
    };

    StepFixture(CpuCtx& ctx, const Rotary<T, cpu>& rotary, LatentCache<T, cpu>& cache, const std::vector<Part>& parts) {
        std::vector<std::int64_t> pos, slot;
        for (const auto& p : parts) {
            const std::int64_t first = cache.append(p.seq_id, p.n_tokens);
            step_.sequences.push_back({p.seq_id, std::ssize(pos), p.n_tokens, first, cache.block_table(p.seq_id)});
            for (std::int64_t i = 0; i < p.n_tokens; ++i) {
                pos.push_back(first + i);
                slot.push_back(cache.slot(p.seq_id, first + i));
            }
        }
        const std::int64_t n = std::ssize(pos), half = rotary.inv_freq.numel();
        positions_ = Tensor<std::int64_t, cpu, 1>({n});
        slots_ = Tensor<std::int64_t, cpu, 1>({n});
        std::copy(pos.begin(), pos.end(), positions_.data());
        std::copy(slot.begin(), slot.end(), slots_.data());
        cos_ = Tensor<A, cpu, 2>({n, half});
        sin_ = Tensor<A, cpu, 2>({n, half});
        rotary.tables(ctx, positions_.cview(), cos_.view(), sin_.view());
        step_.n_tokens = n;
        step_.positions = positions_.cview();
        step_.slots = slots_.cview();
        step_.cos = cos_.cview();
        step_.sin = sin_.cview();
    }
    StepFixture(const StepFixture&) = delete;
    StepFixture& operator=(const StepFixture&) = delete;

    const Step<A, cpu>& step() const { return step_; }
    std::int64_t n_tokens() const { return step_.n_tokens; }

private:
    Step<A, cpu> step_;
    Tensor<std::int64_t, cpu, 1> positions_, slots_;
    Tensor<A, cpu, 2> cos_, sin_;
};

// Rows [begin, begin + n) of a flattened (N, W) golden array.
inline std::vector<double> golden_rows(const std::vector<double>& all, std::int64_t width, std::int64_t begin,
                                       std::int64_t n) {
    return {all.begin() + begin * width, all.begin() + (begin + n) * width};
}

// Feeds sequences to a layer in steps, as a server would: at each step every
// unfinished sequence gets its next chunk (sizes cycling through `chunks`,
// offset by the sequence index so that sequences interleave in the batch and
// in the page pool; a chunk longer than every prompt is one prefill).
// x_all holds the sequences' input rows back to back (lens[s] rows of width
// d each); forward(ws, step, x, y) runs the layer; returns its outputs in
// the same order as x_all.
template <class T, class Forward>
std::vector<double> run_in_chunks(CpuCtx& ctx, const Rotary<T, cpu>& rotary, LatentCache<T, cpu>& cache,
                                  const std::vector<double>& x_all, std::int64_t d,
                                  const std::vector<std::int64_t>& lens, const std::vector<std::int64_t>& chunks,
                                  Forward&& forward) {
    using A = acc_t<T>;
    std::vector<std::int64_t> begin(lens.size(), 0);  // first row of each sequence in x_all
    for (std::size_t s = 1; s < lens.size(); ++s) begin[s] = begin[s - 1] + lens[s - 1];
    const std::int64_t total = begin.back() + lens.back();
    Workspace<cpu> ws;
    std::vector<double> out(static_cast<std::size_t>(total * d), std::numeric_limits<double>::quiet_NaN());
    std::vector<std::int64_t> done(lens.size(), 0);
    for (std::size_t step = 0;; ++step) {
        std::vector<typename StepFixture<T>::Part> parts;
        std::vector<double> x;
        for (std::size_t s = 0; s < lens.size(); ++s) {
            const std::int64_t n = std::min(chunks[(step + s) % chunks.size()], lens[s] - done[s]);
            if (n <= 0) continue;
            parts.push_back({static_cast<std::int64_t>(s), n});
            const auto rows = golden_rows(x_all, d, begin[s] + done[s], n);
            x.insert(x.end(), rows.begin(), rows.end());
        }
        if (parts.empty()) break;
        ws.reset();
        StepFixture<T> sf(ctx, rotary, cache, parts);
        auto xt = make_tensor<A, 2>(x, {sf.n_tokens(), d});
        Tensor<A, cpu, 2> y({sf.n_tokens(), d});
        forward(ws, sf.step(), xt.cview(), y.view());
        const auto yv = to_f64(y.cview());
        for (const auto& seq : sf.step().sequences) {
            const auto s = static_cast<std::size_t>(seq.seq_id);
            std::copy_n(yv.begin() + seq.row_begin * d, seq.n_tokens * d, out.begin() + (begin[s] + done[s]) * d);
            done[s] += seq.n_tokens;
        }
    }
    return out;
}

}  // namespace dsv2::test
