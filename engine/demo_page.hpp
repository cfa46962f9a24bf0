// engine/demo_page.hpp: the demo page served on GET / (engine/demo/index.html), embedded in the
// binary at build time by tools/embed_file.py (see engine/meson.build).
#pragma once

#include <string_view>

namespace wsed::engine {

// The page's bytes (static storage; valid for the whole run).
std::string_view demo_page_html();

}  // namespace wsed::engine
