// led_common: what led-local takes from the pinned llama.cpp's `common` library, behind a C surface
// (cffi binds C). A library of its own, so led_engine stays plain C and loads without it.
#pragma once

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct llama_model;

// A JSON schema (JSON text) as a GBNF grammar, by common/json-schema-to-grammar, the converter llama-server
// uses for response_format. Returns a malloc'd string (free with led_common_free), or NULL with the
// converter's message in error (error_size bytes, always terminated).
char * led_json_schema_to_grammar(const char * schema_json, char * error, size_t error_size);

// A model's chat templates as common/chat reads them (the GGUF's default and "tool_use" templates, its
// own Jinja engine): what llama-server renders tool requests with and parses tool calls back by.
typedef struct led_chat led_chat;

led_chat * led_chat_new(const struct llama_model * model, char * error, size_t error_size);
void       led_chat_free(led_chat * chat);

// Render one chat request. request_json: {"messages": OpenAI messages, "tools": OpenAI tools or null,
// "tool_choice": "auto" | "required" | "none", "parallel_tool_calls": bool (absent: as the template can),
// "enable_thinking": bool}. (llama.cpp's parallel_tool_calls lets one call block hold several calls; its
// grammar lets a model write several blocks either way.)
// Returns malloc'd JSON: {"prompt", "format", "format_name", "grammar", "grammar_lazy", "grammar_triggers":
// [{"type": "token" | "word" | "pattern" | "pattern_full", "value", "token"}], "preserved_tokens",
// "additional_stops", "generation_prompt", "parser" (the serialized output parser), "supports_thinking",
// "thinking_start_tag", "thinking_end_tags", "caps": what the template can render, {"supports_tools": bool, ...}};
// NULL with a message in error.
char * led_chat_apply(const led_chat * chat, const char * request_json, char * error, size_t error_size);

// Parse generated text back into an OpenAI assistant message ({"role", "content", "reasoning_content",
// "tool_calls"}). parser_json: {"format", "parser", "generation_prompt"} from led_chat_apply, and
// "reasoning": bool (split <think> sections out into reasoning_content). is_partial: the text may stop
// mid-way (streaming). Returns malloc'd JSON; NULL with a message in error.
char * led_chat_parse(const char * text, bool is_partial, const char * parser_json, char * error,
                      size_t error_size);

void led_common_free(char * s);

#ifdef __cplusplus
}
#endif
