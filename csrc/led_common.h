// led_common: what led-local takes from the pinned llama.cpp's `common` library, behind a C surface
// (cffi binds C). A library of its own, so led_engine stays plain C and loads without it.
#pragma once

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// A JSON schema (JSON text) as a GBNF grammar, by common/json-schema-to-grammar, the converter llama-server
// uses for response_format. Returns a malloc'd string (free with led_common_free), or NULL with the
// converter's message in error (error_size bytes, always terminated).
char * led_json_schema_to_grammar(const char * schema_json, char * error, size_t error_size);

void led_common_free(char * s);

#ifdef __cplusplus
}
#endif
