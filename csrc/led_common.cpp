#include "led_common.h"

#include "json-schema-to-grammar.h"
#include "json.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

static char * led_copy(const std::string & s) {
    char * out = static_cast<char *>(std::malloc(s.size() + 1));
    if (out != nullptr) {
        std::memcpy(out, s.c_str(), s.size() + 1);
    }
    return out;
}

char * led_json_schema_to_grammar(const char * schema_json, char * error, size_t error_size) {
    // C++ exceptions must not cross into C: every failure becomes NULL and a message
    try {
        char * out = led_copy(json_schema_to_grammar(common_json::parse(schema_json), /*force_gbnf=*/true));
        if (out == nullptr) {
            std::snprintf(error, error_size, "out of memory");
        }
        return out;
    } catch (const std::exception & e) {
        std::snprintf(error, error_size, "%s", e.what());
    } catch (...) {
        std::snprintf(error, error_size, "unknown error");
    }
    return nullptr;
}

void led_common_free(char * s) {
    std::free(s);
}
