// Rotary position embedding with YaRN scaling, as DeepSeek-V2 checkpoints
// expect it (HF `DeepseekV2YarnRotaryEmbedding`): inv_freq blends
// extrapolated and interpolated frequencies with a linear ramp between the
// correction dims of beta_fast and beta_slow, and cos/sin carry the
// magnitude mscale(factor, mscale) / mscale(factor, mscale_all_dim).
#pragma once

#include "dsv2/layers/common.hpp"

#include <numbers>
#include <vector>

namespace dsv2 {

// inv_freq for a rope slice of `dim` lanes, on the host, in double.
inline std::vector<double> rotary_inv_freq(const Config& cfg) {
    const std::int64_t dim = cfg.qk_rope_head_dim, half = dim / 2;
    const double base = cfg.rope_theta;
    std::vector<double> inv(static_cast<std::size_t>(half));
    for (std::int64_t i = 0; i < half; ++i) inv[i] = 1.0 / std::pow(base, static_cast<double>(2 * i) / dim);
    if (cfg.rope_scaling.kind != RopeScalingKind::yarn) return inv;

    const RopeScaling& r = cfg.rope_scaling;
    const double original = static_cast<double>(r.original_max_position_embeddings);
    // The lane whose wavelength completes `rotations` turns over the original context.
    auto correction_dim = [&](double rotations) {
        return dim * std::log(original / (rotations * 2 * std::numbers::pi)) / (2 * std::log(base));
    };
    const double low = std::max(std::floor(correction_dim(r.beta_fast)), 0.0);
    double high = std::min(std::ceil(correction_dim(r.beta_slow)), static_cast<double>(dim - 1));
    if (low == high) high += 0.001;  // avoid a zero-width ramp
    for (std::int64_t i = 0; i < half; ++i) {
        const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
        const double extrapolate = 1.0 - ramp;  // high-frequency lanes keep their frequency
        inv[i] = inv[i] / r.factor * (1.0 - extrapolate) + inv[i] * extrapolate;
    }
    return inv;
}

template <class T, class B>
struct Rotary {
    DSV2_REQUIRE_BACKEND(B);
    using A = acc_t<T>;

    Tensor<double, B, 1> inv_freq;  // (Dr/2), derived from the config, not a checkpoint tensor
    double mscale = 1.0;

    Rotary() = default;
    Rotary(Context<B>& ctx, const Config& cfg) : inv_freq({cfg.qk_rope_head_dim / 2}), mscale(cfg.rotary_mscale()) {
        const auto host = rotary_inv_freq(cfg);
        copy_to_device(ctx, host.data(), inv_freq.data(), inv_freq.numel());
    }

    // cos/sin tables for the tokens of one step; every layer reuses them.
    void tables(Context<B>& ctx,
                View<const std::int64_t, B, 1> positions,  // (N)
                View<A, B, 2> cos,                         // (N, Dr/2)
                View<A, B, 2> sin) const                   // (N, Dr/2)
    {
        rotary_tables(ctx, inv_freq.cview(), mscale, positions, cos, sin);
    }

    // Rotates the rope lanes of x in place (HF layout on output).
    static void apply(Context<B>& ctx, View<const A, B, 2> cos, View<const A, B, 2> sin,
                      View<A, B, 3> x)  // (N, H, Dr)
    {
        apply_rotary(ctx, cos, sin, x);
    }
};

}  // namespace dsv2
