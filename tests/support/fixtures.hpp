// Access to the golden fixtures written by tests/reference/make_fixtures.py
// (tests/data/<case>/), and conversions between them and dsv2 tensors.
#pragma once

#include "compare.hpp"

#include <dsv2/dsv2.hpp>

#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>

#ifndef DSV2_TEST_DATA
#error "DSV2_TEST_DATA must name the tests/data directory"
#endif

namespace dsv2::test {

inline std::filesystem::path data_dir() { return DSV2_TEST_DATA; }

using CpuCtx = Context<cpu>;

// One fixture directory: its config, checkpoint, meta.json and golden arrays.
struct Case {
    std::string name;
    std::filesystem::path dir;
    Config config;
    nlohmann::json meta;

    explicit Case(const std::string& case_name) : name(case_name), dir(data_dir() / case_name) {
        if (std::filesystem::exists(dir / "config.json")) config = load_config(dir / "config.json");
        std::ifstream m(dir / "meta.json");
        if (m.good()) meta = nlohmann::json::parse(m);
    }
    NpyArray npy(const std::string& file) const { return read_npy(dir / (file + ".npy")); }
    std::vector<double> f64(const std::string& file) const { return npy(file).as<double>(file); }
    std::vector<std::int64_t> i64(const std::string& file) const { return npy(file).as<std::int64_t>(file); }
    std::vector<std::int64_t> shape(const std::string& file) const { return npy(file).shape; }
    const Checkpoint& checkpoint() const {
        if (!ckpt_) ckpt_ = std::make_shared<Checkpoint>(dir);
        return *ckpt_;
    }
    std::vector<std::int64_t> seq_lens() const { return i64("seq_lens"); }
    std::vector<std::int32_t> tokens() const {
        auto t = i64("tokens");
        return {t.begin(), t.end()};
    }
    // The batch's prompts, tokens split by seq_lens.
    std::vector<std::vector<std::int32_t>> prompts() const {
        const auto all = tokens();
        std::vector<std::vector<std::int32_t>> out;
        std::size_t at = 0;
        for (auto len : seq_lens()) {
            const auto end = at + static_cast<std::size_t>(len);
            out.emplace_back(all.begin() + static_cast<std::ptrdiff_t>(at), all.begin() + static_cast<std::ptrdiff_t>(end));
            at = end;
        }
        return out;
    }

private:
    mutable std::shared_ptr<Checkpoint> ckpt_;
};

// A CPU tensor holding `values` converted to E.
template <class E, int R>
Tensor<E, cpu, R> make_tensor(const std::vector<double>& values, const std::array<std::int64_t, R>& shape) {
    Tensor<E, cpu, R> t(shape);
    REQUIRE(static_cast<std::int64_t>(values.size()) == t.numel());
    for (std::size_t i = 0; i < values.size(); ++i) t.data()[i] = convert<E>(values[i]);
    return t;
}

// Any host view, flattened in row-major order, as doubles.
template <class E, int R>
std::vector<double> to_f64(View<E, cpu, R> v) {
    std::vector<double> out;
    out.reserve(static_cast<std::size_t>(v.numel()));
    std::array<std::int64_t, R> ix{};
    for (std::int64_t n = 0; n < v.numel(); ++n) {
        std::int64_t off = 0;
        for (int d = 0; d < R; ++d) off += ix[d] * v.stride[d];
        out.push_back(convert<double>(v.data[off]));
        for (int d = R - 1; d >= 0; --d) {
            if (++ix[d] < v.shape[d]) break;
            ix[d] = 0;
        }
    }
    return out;
}

template <class T, class E, int R>
void compare_view(const std::string& name, View<E, cpu, R> actual, const Case& c, const std::string& golden) {
    const auto expected = c.f64(golden);
    compare(c.name + "/" + name, DTypeTraits<T>::name, to_f64(actual), expected,
            std::vector<std::int64_t>(actual.shape.begin(), actual.shape.end()), tolerance<T>());
}

// Loads a component's weights from the case's checkpoint under `prefix`
// (e.g. "model.layers.1.mlp.").
template <class Module>
void load_component(CpuCtx& ctx, Module& m, const Case& c, const std::string& prefix) {
    LoadOptions opt;
    opt.allow_unexpected = true;
    load_weights(ctx, m, c.checkpoint(), opt, prefix);
}

// Logits of every prompt token when all unfinished sequences advance one
// token per step, in one batch (the decode path); rows in the order of one
// prefill of all prompts (sequence after sequence).
template <class Model, class Session>
std::vector<double> logits_token_by_token(CpuCtx& ctx, const Model& model, Session& session,
                                          const std::vector<std::int64_t>& ids,
                                          const std::vector<std::vector<std::int32_t>>& toks) {
    const std::int64_t v = model.config.vocab_size;
    std::vector<std::int64_t> begin(toks.size(), 0);
    for (std::size_t s = 1; s < toks.size(); ++s) begin[s] = begin[s - 1] + std::ssize(toks[s - 1]);
    std::vector<double> stepped(static_cast<std::size_t>((begin.back() + std::ssize(toks.back())) * v),
                                std::numeric_limits<double>::quiet_NaN());
    for (std::size_t pos = 0;; ++pos) {
        std::vector<SequenceTokens> batch;
        std::vector<std::size_t> which;
        for (std::size_t s = 0; s < toks.size(); ++s) {
            if (pos >= toks[s].size()) continue;
            batch.push_back({ids[s], std::span<const std::int32_t>(toks[s]).subspan(pos, 1)});
            which.push_back(s);
        }
        if (batch.empty()) break;
        const auto logits = to_f64(model.forward(ctx, session, batch, Logits::last));
        for (std::size_t i = 0; i < which.size(); ++i)
            std::copy_n(logits.begin() + static_cast<std::int64_t>(i) * v, v,
                        stepped.begin() + (begin[which[i]] + static_cast<std::int64_t>(pos)) * v);
    }
    return stepped;
}

// V2-Lite's attention shape (16 heads, rank 512 + 64) in a two-layer tiny
// model, for the decode kernels of that shape in a whole model. Dense MLPs:
// a routed top-k near a tie could flip on any rounding and hide the
// attention's error behind an expert's.
inline Config v2_lite_attention_config() {
    Config cfg = Config::tiny();
    cfg.num_attention_heads = 16;
    cfg.kv_lora_rank = 512;
    cfg.qk_rope_head_dim = 64;
    cfg.num_hidden_layers = 2;
    cfg.first_k_dense_replace = 2;
    cfg.validate();
    return cfg;
}

}  // namespace dsv2::test
