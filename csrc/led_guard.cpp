// The one call of our sampler glue that llama.cpp answers by throwing: a grammar's accept. C cannot catch a
// C++ exception, and one that unwinds through C frames ends the process (std::terminate), so the accept goes
// through here. llama.cpp's grammar step can refuse a token its own apply allowed: a token element (<[id]>,
// !<[id]>) next to characters is checked as a whole token by apply and character by character by accept
// ("Unexpected empty grammar stack after accepting piece"; llama-server answers it with a 500, found by
// tests/fuzz_grammar.py).

#include "led_sampler.h"

#include "llama.h"

#include <exception>

extern "C" bool led_accept(struct llama_sampler * smpl, int32_t token) {
    try {
        llama_sampler_accept(smpl, token);
        return true;
    } catch (const std::exception &) {
        return false;
    }
}
