// Tokenizers. The embedded model speaks bytes: ids 0..255 are UTF-8 bytes,
// then BOS and EOS. (Reading DeepSeek-V2's byte-level BPE tokenizer.json is
// future work; until then real checkpoints take token ids.)
#pragma once

#include "dsv2/core/error.hpp"
#include "dsv2/model/config.hpp"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dsv2 {

struct ByteTokenizer {
    std::int32_t bos = 256;
    std::int32_t eos = 257;

    // The byte tokenizer fits a model whose vocabulary is the 256 bytes plus
    // its BOS/EOS ids (and nothing else).
    static bool fits(const Config& c) {
        return c.vocab_size == 258 && c.bos_token_id == 256 && c.eos_token_id == 257;
    }

    std::vector<std::int32_t> encode(std::string_view text, bool add_bos = true) const {
        std::vector<std::int32_t> ids;
        ids.reserve(text.size() + 1);
        if (add_bos) ids.push_back(bos);
        for (unsigned char c : text) ids.push_back(c);
        return ids;
    }

    // Bytes of the ids below 256; special ids produce nothing.
    std::string decode(const std::vector<std::int32_t>& ids) const {
        std::string out;
        for (auto id : ids)
            if (id >= 0 && id < 256) out.push_back(static_cast<char>(id));
        return out;
    }
};

}  // namespace dsv2
