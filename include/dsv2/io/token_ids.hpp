// Token ids written as text, "1, 17, 42": the `--tokens` argument of the
// dsv2 command. Every item must be a whole decimal integer that fits an
// int32; range against the vocabulary is checked later, by Model::forward.
#pragma once

#include "dsv2/core/error.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace dsv2 {

// Parses comma-separated token ids; blank items are skipped. Throws
// RangeError naming the item that is not an id, or when no id is given.
inline std::vector<std::int32_t> parse_token_ids(std::string_view text, std::string_view who = "--tokens") {
    std::vector<std::int32_t> ids;
    std::size_t pos = 0;
    while (pos <= text.size()) {
        const std::size_t comma = std::min(text.find(',', pos), text.size());
        const std::string_view item = text.substr(pos, comma - pos);
        pos = comma + 1;
        const auto b = item.find_first_not_of(" \t");
        if (b == std::string_view::npos) continue;
        const auto e = item.find_last_not_of(" \t");
        const std::string_view digits = item.substr(b, e - b + 1);
        // An optional sign, then 1..10 decimal digits: no overflow below.
        const std::size_t first = (digits[0] == '-' || digits[0] == '+') ? 1 : 0;
        const bool well_formed = digits.size() > first && digits.size() - first <= 10 &&
                                 digits.find_first_not_of("0123456789", first) == std::string_view::npos;
        std::int64_t v = 0;
        if (well_formed) {
            for (std::size_t i = first; i < digits.size(); ++i) v = v * 10 + (digits[i] - '0');
            if (digits[0] == '-') v = -v;
        }
        DSV2_CHECK(well_formed && v >= std::numeric_limits<std::int32_t>::min() &&
                       v <= std::numeric_limits<std::int32_t>::max(),
                   RangeError, "{}: '{}' is not a token id", who, std::string(item));
        ids.push_back(static_cast<std::int32_t>(v));
    }
    DSV2_CHECK(!ids.empty(), RangeError, "{}: no token ids given", who);
    return ids;
}

}  // namespace dsv2
