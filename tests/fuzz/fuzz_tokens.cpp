// libFuzzer target: the tokenizer side. There is no tokenizer *file* parser
// yet (io/tokenizer.hpp is byte-level); this fuzzes what exists: the
// `--tokens` id list (io/token_ids.hpp) and the byte tokenizer's
// encode/decode round trip.
#include "fuzz_common.hpp"

#include <dsv2/io/token_ids.hpp>
#include <dsv2/io/tokenizer.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);

    // Byte tokenizer: decode(encode(s)) == s for any bytes, with or without BOS.
    const dsv2::ByteTokenizer tok;
    for (bool bos : {false, true}) {
        const auto ids = tok.encode(text, bos);
        DSV2_FUZZ_ASSERT(ids.size() == size + (bos ? 1 : 0));
        for (auto id : ids) DSV2_FUZZ_ASSERT(id >= 0 && id <= tok.eos);
        DSV2_FUZZ_ASSERT(tok.decode(ids) == text);
    }

    // Id list: an accepted list prints back to a list that parses the same.
    dsv2::fuzz::expect_dsv2_errors_only([&] {
        const auto ids = dsv2::parse_token_ids(text);
        DSV2_FUZZ_ASSERT(!ids.empty());
        std::string printed;
        for (auto id : ids) printed += std::to_string(id) + ",";
        DSV2_FUZZ_ASSERT(dsv2::parse_token_ids(printed) == ids);
    });
    return 0;
}
