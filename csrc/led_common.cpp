#include "led_common.h"

#include "chat.h"
#include "json-schema-to-grammar.h"
#include "json.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <string>

static char * led_copy(const std::string & s) {
    char * out = static_cast<char *>(std::malloc(s.size() + 1));
    if (out != nullptr) {
        std::memcpy(out, s.c_str(), s.size() + 1);
    }
    return out;
}

// C++ exceptions must not cross into C: every failure becomes NULL and a message
template <typename F> static auto led_guard(F && f, char * error, size_t error_size) -> decltype(f()) {
    try {
        auto out = f();
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

char * led_json_schema_to_grammar(const char * schema_json, char * error, size_t error_size) {
    return led_guard([&] { return led_copy(json_schema_to_grammar(common_json::parse(schema_json), /*force_gbnf=*/true)); },
                     error, error_size);
}

struct led_chat {
    common_chat_templates_ptr templates;
};

led_chat * led_chat_new(const struct llama_model * model, char * error, size_t error_size) {
    return led_guard([&] {
        auto chat = std::make_unique<led_chat>();  // (freed if reading the templates throws)
        chat->templates = common_chat_templates_init(model, /*chat_template_override=*/"");
        return chat.release();
    }, error, error_size);
}

void led_chat_free(led_chat * chat) {
    delete chat;
}

static const char * led_trigger_type(common_grammar_trigger_type type) {
    switch (type) {
        case COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN:        return "token";
        case COMMON_GRAMMAR_TRIGGER_TYPE_WORD:         return "word";
        case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN:      return "pattern";
        case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN_FULL: return "pattern_full";
    }
    return "unknown";
}

static bool led_bool(const common_json & j, const char * key, bool fallback) {
    return j.contains(key) && j.at(key).is_boolean() ? j.at(key).get<bool>() : fallback;
}

static std::string led_string(const common_json & j, const char * key) {
    return j.contains(key) && j.at(key).is_string() ? j.at(key).get<std::string>() : std::string();
}

char * led_chat_apply(const led_chat * chat, const char * request_json, char * error, size_t error_size) {
    return led_guard([&] {
        const common_json request = common_json::parse(request_json);
        common_chat_templates_inputs inputs;
        inputs.messages = common_chat_msgs_parse_oaicompat(request.at("messages"));
        if (request.contains("tools") && !request.at("tools").is_null()) {
            inputs.tools = common_chat_tools_parse_oaicompat(request.at("tools"));
        }
        const std::string choice = led_string(request, "tool_choice");
        inputs.tool_choice = common_chat_tool_choice_parse_oaicompat(choice.empty() ? "auto" : choice);
        const std::map<std::string, bool> caps = common_chat_templates_get_caps(chat->templates.get());
        // as llama-server: absent, the template's own answer
        inputs.parallel_tool_calls = led_bool(request, "parallel_tool_calls", caps.at("supports_parallel_tool_calls"));
        inputs.enable_thinking = led_bool(request, "enable_thinking", true);
        inputs.reasoning_format = COMMON_REASONING_FORMAT_AUTO;
        inputs.add_generation_prompt = true;

        const common_chat_params params = common_chat_templates_apply(chat->templates.get(), inputs);
        common_json triggers = common_json::array();
        for (const auto & t : params.grammar_triggers) {
            common_json trigger = common_json::object();
            trigger["type"] = led_trigger_type(t.type);
            trigger["value"] = t.value;
            trigger["token"] = static_cast<int>(t.token);
            triggers.push_back(trigger);
        }
        common_json out = common_json::object();
        out["prompt"] = params.prompt;
        out["format"] = static_cast<int>(params.format);
        out["format_name"] = common_chat_format_name(params.format);
        out["grammar"] = params.grammar;
        out["grammar_lazy"] = params.grammar_lazy;
        out["grammar_triggers"] = triggers;
        out["preserved_tokens"] = params.preserved_tokens;
        out["additional_stops"] = params.additional_stops;
        out["generation_prompt"] = params.generation_prompt;
        out["parser"] = params.parser;
        out["supports_thinking"] = params.supports_thinking;
        out["thinking_start_tag"] = params.thinking_start_tag;
        out["thinking_end_tags"] = params.thinking_end_tags;
        out["caps"] = caps;
        return led_copy(out.dump());
    }, error, error_size);
}

char * led_chat_parse(const char * text, bool is_partial, const char * parser_json, char * error,
                      size_t error_size) {
    return led_guard([&] {
        const common_json p = common_json::parse(parser_json);
        common_chat_parser_params params;
        params.format = static_cast<common_chat_format>(p.at("format").get<int>());
        params.generation_prompt = led_string(p, "generation_prompt");
        params.reasoning_format = led_bool(p, "reasoning", true) ? COMMON_REASONING_FORMAT_AUTO
                                                                 : COMMON_REASONING_FORMAT_NONE;
        params.parse_tool_calls = led_bool(p, "parse_tool_calls", true);
        const std::string parser = led_string(p, "parser");
        if (!parser.empty()) {
            params.parser.load(parser);
        }
        return led_copy(common_chat_parse(text, is_partial, params).to_json_oaicompat().dump());
    }, error, error_size);
}

void led_common_free(char * s) {
    std::free(s);
}
