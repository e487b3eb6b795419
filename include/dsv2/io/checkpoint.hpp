// Hugging Face checkpoints: config.json plus one model.safetensors or shards
// listed in model.safetensors.index.json. Loading checks every tensor the
// config implies (present, exact shape, floating-point dtype, finite values)
// before the model is handed out; a failed load returns nothing half-built.
#pragma once

#include "dsv2/io/safetensors.hpp"
#include "dsv2/model/model.hpp"
#include "dsv2/model/random.hpp"

#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>
#include <set>

namespace dsv2 {

// The tensors of one checkpoint directory, across its shards.
class Checkpoint {
public:
    explicit Checkpoint(const std::filesystem::path& dir) : dir_(dir) {
        const auto index = dir / "model.safetensors.index.json";
        const auto single = dir / "model.safetensors";
        if (std::filesystem::exists(index)) {
            open_sharded(index);
        } else {
            DSV2_CHECK(std::filesystem::exists(single), CheckpointError,
                       "[checkpoint] {}: neither model.safetensors nor model.safetensors.index.json found", dir.string());
            files_.push_back(std::make_unique<SafetensorsFile>(single));
            for (const auto& [name, t] : files_.back()->tensors()) where_[name] = {files_.back().get(), &t};
        }
    }

    struct Located {
        const SafetensorsFile* file = nullptr;
        const StTensor* tensor = nullptr;
    };
    const Located* find(const std::string& name) const {
        auto it = where_.find(name);
        return it == where_.end() ? nullptr : &it->second;
    }
    std::vector<std::string> names() const {
        std::vector<std::string> out;
        for (const auto& [n, l] : where_) out.push_back(n);
        return out;
    }
    const std::filesystem::path& dir() const { return dir_; }

private:
    void open_sharded(const std::filesystem::path& index_path) {
        std::ifstream in(index_path);
        nlohmann::json index;
        try {
            index = nlohmann::json::parse(in);
        } catch (const nlohmann::json::exception& e) {
            DSV2_FAIL(CheckpointError, "[checkpoint] {}: malformed JSON: {}", index_path.string(), e.what());
        }
        const auto map = index.find("weight_map");
        DSV2_CHECK(index.is_object() && map != index.end() && map->is_object(), CheckpointError,
                   "[checkpoint] {}: missing object 'weight_map'", index_path.string());
        std::map<std::string, const SafetensorsFile*> opened;
        for (const auto& [name, file] : map->items()) {
            DSV2_CHECK(file.is_string(), CheckpointError, "[checkpoint] {}: weight_map.{} is not a file name",
                       index_path.string(), name);
            const std::string shard = file.get<std::string>();
            DSV2_CHECK(!shard.empty() && shard.find('/') == std::string::npos && shard != "." && shard != "..",
                       CheckpointError, "[checkpoint] {}: weight_map.{}: shard name \"{}\" must be a plain file name",
                       index_path.string(), name, shard);
            auto it = opened.find(shard);
            if (it == opened.end()) {
                files_.push_back(std::make_unique<SafetensorsFile>(dir_ / shard));
                it = opened.emplace(shard, files_.back().get()).first;
            }
            const StTensor* t = it->second->find(name);
            DSV2_CHECK(t != nullptr, CheckpointError, "[checkpoint] {}: index lists it in {}, which does not contain it",
                       name, shard);
            where_[name] = {it->second, t};
        }
    }

    std::filesystem::path dir_;
    std::vector<std::unique_ptr<SafetensorsFile>> files_;
    std::map<std::string, Located> where_;
};

struct LoadOptions {
    bool check_finite = true;         // reject NaN/Inf weights
    bool allow_unexpected = false;    // tolerate tensors the config does not use
    // Called as (tensors done, tensors total) while loading; empty: silent.
    std::function<void(std::int64_t, std::int64_t)> progress;
};

// Fills every weight of `module` (a Model or any component with
// for_each_weight) from the checkpoint, names prefixed with `prefix`.
template <class Module, class B>
void load_weights(Context<B>& ctx, Module& module, const Checkpoint& ckpt, const LoadOptions& opt = {},
                  const std::string& prefix = "") {
    // Pass 1 checks every name, shape and dtype, and the unexpected
    // tensors, before a single weight is written: a checkpoint that does not
    // fit leaves `module` untouched. (Values are checked in pass 2, as they
    // are read; load_model never hands out a module whose pass 2 failed.)
    std::set<std::string> used;
    std::int64_t total = 0, done = 0;
    module.for_each_weight([&](const std::string& local, auto& tensor) {
        const std::string name = prefix + local;
        const auto* loc = ckpt.find(name);
        DSV2_CHECK(loc != nullptr, CheckpointError, "[checkpoint] {}: missing tensor {} (expected shape {})",
                   ckpt.dir().string(), name, shape_str(tensor.shape()));
        const StTensor& t = *loc->tensor;
        const std::string file = loc->file->path().filename().string();
        const auto& expected = tensor.shape();
        DSV2_CHECK(std::equal(t.shape.begin(), t.shape.end(), expected.begin(), expected.end()), CheckpointError,
                   "[checkpoint] {} in {}: expected shape {}, found ({})", name, file, shape_str(expected),
                   fmt::join(t.shape, ", "));
        DSV2_CHECK(st_is_float(t.dtype), CheckpointError,
                   "[checkpoint] {} in {}: expected a floating-point dtype (F64, F32, F16, BF16), found {}", name, file,
                   st_name(t.dtype));
        used.insert(name);
        ++total;
    });
    if (!opt.allow_unexpected && prefix.empty()) {
        std::vector<std::string> extra;
        for (const auto& n : ckpt.names())
            if (!used.count(n)) extra.push_back(n);
        DSV2_CHECK(extra.empty(), CheckpointError,
                   "[checkpoint] {}: {} unexpected tensor(s) that the config does not use, e.g. {} "
                   "(set LoadOptions::allow_unexpected to ignore them)",
                   ckpt.dir().string(), extra.size(), extra.front());
    }
    module.for_each_weight([&](const std::string& local, auto& tensor) {
        using E = typename std::decay_t<decltype(tensor)>::value_type;
        const std::string name = prefix + local;
        const auto* loc = ckpt.find(name);
        const StTensor& t = *loc->tensor;
        const std::string file = loc->file->path().filename().string();
        std::vector<E> host(static_cast<std::size_t>(t.numel()));
        loc->file->read(t, host.data());
        if (opt.check_finite) {
            for (std::size_t i = 0; i < host.size(); ++i) {
                const double v = convert<double>(host[i]);
                if (std::isfinite(v)) [[likely]] continue;
                // Inf after conversion but finite on disk: the value does not
                // fit T (e.g. 1e5 in an F32 checkpoint loaded as f16).
                std::vector<double> source(host.size());
                loc->file->read(t, source.data());
                if constexpr (requires { DTypeTraits<E>::name; }) {
                    DSV2_CHECK(!std::isfinite(source[i]), CheckpointError,
                               "[checkpoint] {} in {}: element {} is {}, beyond the range of {} (it would load as {}); "
                               "load the model in a wider dtype",
                               name, file, i, source[i], DTypeTraits<E>::name, v);
                }
                DSV2_FAIL(CheckpointError,
                          "[checkpoint] {} in {}: element {} is {} (turn off LoadOptions::check_finite to accept it)", name,
                          file, i, v);
            }
        }
        upload(ctx, host, tensor);
        if (opt.progress) opt.progress(++done, total);
    });
}

// Builds a model from a Hugging Face checkpoint directory.
template <class T, class B>
Model<T, B> load_model(Context<B>& ctx, const std::filesystem::path& dir, const LoadOptions& opt = {}) {
    const Config cfg = load_config(dir / "config.json");
    Checkpoint ckpt(dir);
    Model<T, B> model(ctx, cfg);
    load_weights(ctx, model, ckpt, opt);
    return model;
}

}  // namespace dsv2
