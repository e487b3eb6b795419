// libFuzzer target: model.safetensors.index.json. The scratch directory holds
// two valid shards (s1.safetensors, s2.safetensors) and a config.json; the
// input is the index that maps tensor names to shard files.
#include "fuzz_common.hpp"

#include <dsv2/backend/cpu.hpp>
#include <dsv2/io/checkpoint.hpp>

#include <cstring>

namespace {

std::vector<char> f32_bytes(std::initializer_list<float> v) {
    std::vector<char> out(v.size() * sizeof(float));
    std::memcpy(out.data(), v.begin(), out.size());
    return out;
}

const std::filesystem::path& shard_dir() {
    static const std::filesystem::path dir = [] {
        const auto d = dsv2::fuzz::scratch_dir();
        dsv2::write_safetensors(d / "s1.safetensors", {{"a", dsv2::StDType::F32, {2}, f32_bytes({1, 2})},
                                                       {"b", dsv2::StDType::F32, {1, 1}, f32_bytes({3})}});
        dsv2::write_safetensors(d / "s2.safetensors", {{"c", dsv2::StDType::F32, {3}, f32_bytes({4, 5, 6})},
                                                       {"model.norm.weight", dsv2::StDType::F32, {1}, f32_bytes({7})}});
        return d;
    }();
    return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto& dir = shard_dir();
    dsv2::fuzz::write_file("model.safetensors.index.json", data, size);
    dsv2::fuzz::expect_dsv2_errors_only([&] {
        const dsv2::Checkpoint ckpt(dir);
        for (const auto& name : ckpt.names()) {
            const auto* loc = ckpt.find(name);
            DSV2_FUZZ_ASSERT(loc != nullptr && loc->file != nullptr && loc->tensor != nullptr);
            DSV2_FUZZ_ASSERT(loc->tensor->name == name);
        }
    });
    return 0;
}
